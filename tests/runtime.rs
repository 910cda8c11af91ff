//! Runtime: device probing never panics, tensor views on the host, and (with a GPU) the
//! device round trips, the caching pool and pinned buffers.
use contentv::runtime::device::{gpu_unavailable_reason, Event};
use contentv::runtime::memory::{size_class, PinnedBuffer};
use contentv::{DType, Device, Tensor};

mod common;

#[test]
fn probe_never_panics_and_best_falls_back() {
    let reason = gpu_unavailable_reason();
    let (dev, why) = Device::best();
    assert_eq!(dev.is_cuda(), reason.is_none());
    if !dev.is_cuda() {
        let why = why.expect("a reason when falling back to the CPU");
        assert!(!why.is_empty());
        println!("CPU fallback: {why}");
        // Asking for the GPU explicitly is an error, not a panic.
        assert!(Device::cuda(0).is_err());
    }
}

#[test]
fn views_on_host() {
    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let t = Tensor::from_f32(data.clone(), &[2, 3, 4], &Device::Cpu).unwrap();
    assert!(t.is_contiguous());
    // narrow on the last dim: strided rows
    let n = t.narrow(2, 1, 2).unwrap();
    assert_eq!(n.shape(), &[2, 3, 2]);
    assert!(!n.is_contiguous());
    assert_eq!(n.row_stride().unwrap(), 4);
    assert_eq!(
        n.to_vec_f32().unwrap(),
        vec![1., 2., 5., 6., 9., 10., 13., 14., 17., 18., 21., 22.]
    );
    // permute then contiguous
    let p = t.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    let pc = p.contiguous().unwrap();
    assert!(pc.is_contiguous());
    let v = pc.to_vec_f32().unwrap();
    for a in 0..4 {
        for b in 0..2 {
            for c in 0..3 {
                assert_eq!(v[a * 6 + b * 3 + c], data[b * 12 + c * 4 + a]);
            }
        }
    }
    // reshape of a non-contiguous view copies
    let r = n.reshape(&[12]).unwrap();
    assert_eq!(r.to_vec_f32().unwrap()[..4], [1., 2., 5., 6.]);
    // errors, not panics
    assert!(t.reshape(&[5, 5]).is_err());
    assert!(t.narrow(1, 2, 2).is_err());
    assert!(t.permute(&[0, 0, 1]).is_err());
    assert!(Tensor::from_f32(vec![1.0; 5], &[2, 3], &Device::Cpu).is_err());
}

#[test]
fn dtype_conversions_on_host() {
    let v = vec![1.0f32, -2.5, 3.140625, 65504.0, 1e-3];
    let t = Tensor::from_f32(v.clone(), &[5], &Device::Cpu).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap();
    assert_eq!(b.dtype(), DType::BF16);
    let back = b.to_vec_f32().unwrap();
    for (x, y) in v.iter().zip(&back) {
        assert!((x - y).abs() <= x.abs() * 2f32.powi(-8), "{x} vs {y}");
    }
    let h = t.to_dtype(DType::F16).unwrap().to_vec_f32().unwrap();
    assert_eq!(h[3], 65504.0);
}

#[test]
fn mapped_views_are_zero_copy_and_bounds_checked() {
    use std::sync::Arc;
    let mut bytes = vec![0u8; 3];
    for x in [1.0f32, 2.0, 3.0] {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let backing: Arc<dyn contentv::runtime::tensor::Backing> = Arc::new(bytes);
    // unaligned start (3): must still read correctly
    let t = Tensor::from_mapped(backing.clone(), 3, 12, DType::F32, &[3]).unwrap();
    assert_eq!(t.to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0]);
    assert!(Tensor::from_mapped(backing.clone(), 4, 12, DType::F32, &[3]).is_err());
    assert!(Tensor::from_mapped(backing, 3, 12, DType::F32, &[4]).is_err());
}

#[test]
fn pool_size_classes() {
    assert_eq!(size_class(1), 512);
    assert_eq!(size_class(512), 512);
    assert_eq!(size_class(513), 1024);
    assert_eq!(size_class(1 << 20), 2 << 20);
    assert_eq!(size_class((2 << 20) + 1), 4 << 20);
}

/// The GPU tests of this file share one device and its pool; run them one at a time so that the
/// pool's counters see only the test that reads them.
static GPU_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn gpu_round_trip_and_views() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let _one_at_a_time = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let data: Vec<f32> = (0..1000).map(|i| (i as f32).sin()).collect();
    let t = Tensor::from_f32(data.clone(), &[10, 100], &dev).unwrap();
    assert!(t.device().is_cuda());
    assert_eq!(t.to_vec_f32().unwrap(), data);
    let z = Tensor::zeros(&[7, 13], DType::BF16, &dev).unwrap();
    assert!(z.to_vec_f32().unwrap().iter().all(|&x| x == 0.0));
    // bf16 upload keeps bits
    let b = Tensor::from_f32(data.clone(), &[10, 100], &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let bd = b.to_device(&dev).unwrap();
    assert_eq!(bd.to_bytes().unwrap(), b.to_bytes().unwrap());
}

#[test]
fn gpu_pool_reuses_memory() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let _one_at_a_time = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let g = dev.gpu().unwrap().clone();
    let _warm = Tensor::empty(&[1 << 20], DType::F32, &dev).unwrap();
    drop(_warm);
    let before = g.pool.stats().driver_allocs;
    for _ in 0..50 {
        let t = Tensor::empty(&[1 << 20], DType::F32, &dev).unwrap();
        drop(t);
    }
    assert_eq!(
        g.pool.stats().driver_allocs,
        before,
        "the pool must reuse freed blocks"
    );
}

#[test]
fn gpu_pinned_and_events() {
    let Some(dev) = common::cuda_or_skip() else {
        return;
    };
    let _one_at_a_time = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let g = dev.gpu().unwrap().clone();
    let mut p = PinnedBuffer::new(&g.ctx, 1 << 20).unwrap();
    p.as_mut_slice().fill(7);
    let t = Tensor::empty(&[1 << 20], DType::I8, &dev).unwrap();
    let e0 = Event::new(true).unwrap();
    let e1 = Event::new(true).unwrap();
    // t was allocated (and, in tests, poisoned) on the compute stream: the copy stream must
    // not write it before that (the emulated device's copy-first order showed the race).
    let allocated = Event::new(false).unwrap();
    allocated.record(&g.compute).unwrap();
    allocated.wait_on(&g.copy).unwrap();
    e0.record(&g.copy).unwrap();
    unsafe {
        cudarc::driver::result::memcpy_htod_async(
            t.dev_ptr().unwrap(),
            p.as_slice(),
            g.copy.cu_stream(),
        )
        .unwrap();
    }
    e1.record(&g.copy).unwrap();
    e1.wait_on(&g.compute).unwrap();
    let v = t.to_bytes().unwrap();
    assert!(v.iter().all(|&b| b == 7));
    e1.synchronize().unwrap();
    let ms = e0.elapsed_ms(&e1).unwrap();
    println!("pinned 1 MiB H2D: {ms:.3} ms");
    assert!(ms >= 0.0);
}

/// A two-layer checkpoint `blocks.{0,1}.{a,b,c}` (weights [3|5|2, 8] bf16 with biases) and
/// `blocks.0.z.weight` [1, 8] for the fused-linear tests, in a fresh folder.
fn fused_ckpt(tag: &str) -> std::path::PathBuf {
    use contentv::io::safetensors::{write_safetensors, StDtype};
    let dir = std::env::temp_dir().join(format!("contentv-fused-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bf = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let v = (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0;
                half::bf16::from_f32(v).to_bits().to_le_bytes()
            })
            .collect()
    };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..2 {
        for (m, n) in [("a", 3), ("b", 5), ("c", 2)] {
            let s = layer * 10 + n;
            owned.push((
                format!("blocks.{layer}.{m}.weight"),
                vec![n, 8],
                bf(n * 8, s),
            ));
            owned.push((format!("blocks.{layer}.{m}.bias"), vec![n], bf(n, s + 1)));
        }
        if layer == 0 {
            owned.push(("blocks.0.z.weight".into(), vec![1, 8], bf(8, 99)));
        }
    }
    let tensors: Vec<(&str, StDtype, &[usize], &[u8])> = owned
        .iter()
        .map(|(k, s, b)| (k.as_str(), StDtype::BF16, s.as_slice(), b.as_slice()))
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors, None).unwrap();
    dir
}

/// Like the transformer's: layer 0 (with a `z`) fuses a|b|c, layer 1 b|c (its `a` is unused).
fn fusion() -> contentv::runtime::weights::FusionPolicy {
    let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    contentv::runtime::weights::FusionPolicy {
        groups: std::sync::Arc::new(vec![
            g(&["blocks.0.a", "blocks.0.b", "blocks.0.c"]),
            g(&["blocks.1.b", "blocks.1.c"]),
        ]),
    }
}

/// Quantize-on-load for the linears of `names` (a..c, z) in both layers.
fn int8_for(names: &[&str]) -> contentv::runtime::weights::Int8Policy {
    contentv::runtime::weights::Int8Policy {
        group: None,
        linears: std::sync::Arc::new(
            (0..2)
                .flat_map(|l| names.iter().map(move |n| format!("blocks.{l}.{n}")))
                .collect(),
        ),
    }
}

fn cat(parts: &[Vec<f32>]) -> Vec<f32> {
    parts.concat()
}

fn weight_f32(w: &contentv::runtime::Weight) -> (Vec<f32>, Option<Vec<f32>>) {
    match w {
        contentv::runtime::Weight::Dense(t) => (t.to_vec_f32().unwrap(), None),
        contentv::runtime::Weight::Int8 { q, scale } => {
            (q.to_vec_f32().unwrap(), Some(scale.to_vec_f32().unwrap()))
        }
    }
}

/// `Prefix::linear_fused` is the row-concatenation of the member linears (dense and INT8
/// quantized on load), reads exactly the member keys, refuses a group of mixed INT8 / dense
/// members, and the streamed layer layout holds each declared group as one region (the layer
/// byte counts show it); on a GPU (or the emulated one) the streamed fused views give the same
/// values as the resident fused load.
#[test]
fn fused_linear_is_its_members_concatenated() {
    use contentv::runtime::residency::Residency;
    use contentv::runtime::weights::{record_reads, WeightStore};
    let dir = fused_ckpt("t");
    let mut devices = vec![Device::Cpu];
    devices.extend(common::cuda_or_skip());
    // Its device allocations would otherwise race gpu_pool_reuses_memory's allocation count.
    let _one_at_a_time = GPU_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    for dev in devices {
        for int8 in [false, true] {
            let store = WeightStore::open(&dir, &dev, DType::BF16).unwrap();
            store.set_fusion(Some(fusion()));
            if int8 {
                store.set_int8(Some(int8_for(&["a", "b", "c", "z"])));
            }
            let p0 = store.root().pp("blocks").pp(0);
            let sep: Vec<_> = [("a", 3), ("b", 5), ("c", 2)]
                .iter()
                .map(|(m, n)| p0.linear(m, 8, *n, true).unwrap())
                .collect();
            store.release_all();
            record_reads(true);
            let f = p0
                .linear_fused(&["a", "b", "c"], 8, &[3, 5, 2], true)
                .unwrap();
            let reads = record_reads(false);
            let keys: Vec<&str> = reads.iter().map(|(_, k)| k.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "blocks.0.a.bias",
                    "blocks.0.a.weight",
                    "blocks.0.b.bias",
                    "blocks.0.b.weight",
                    "blocks.0.c.bias",
                    "blocks.0.c.weight"
                ]
            );
            assert_eq!(f.weight.shape(), [10, 8]);
            assert_eq!(
                matches!(f.weight, contentv::runtime::Weight::Int8 { .. }),
                int8
            );
            let (fw, fs) = weight_f32(&f.weight);
            let parts: Vec<_> = sep.iter().map(|l| weight_f32(&l.weight)).collect();
            assert_eq!(
                fw,
                cat(&parts.iter().map(|p| p.0.clone()).collect::<Vec<_>>())
            );
            if int8 {
                let scales: Vec<Vec<f32>> = parts.iter().map(|p| p.1.clone().unwrap()).collect();
                assert_eq!(fs.unwrap(), cat(&scales));
            }
            let biases: Vec<Vec<f32>> = sep
                .iter()
                .map(|l| l.bias.as_ref().unwrap().to_vec_f32().unwrap())
                .collect();
            assert_eq!(f.bias.as_ref().unwrap().to_vec_f32().unwrap(), cat(&biases));

            // Streamed: layer 0 fuses a+b+c, layer 1 (no z) b+c; the values are the same.
            store.release_all();
            let r = Residency::streamed(&store, "blocks", 2, None).unwrap();
            for (i, names, outs) in [
                (0, &["a", "b", "c"][..], &[3usize, 5, 2][..]),
                (1, &["b", "c"][..], &[5, 2][..]),
            ] {
                let resident = {
                    let s2 = WeightStore::open(&dir, &dev, DType::BF16).unwrap();
                    s2.set_int8(store.int8_policy());
                    let l = s2
                        .root()
                        .pp("blocks")
                        .pp(i)
                        .linear_fused(names, 8, outs, true)
                        .unwrap();
                    (weight_f32(&l.weight), l.bias.unwrap().to_vec_f32().unwrap())
                };
                let _g = r.prepare(i).unwrap();
                let l = store
                    .root()
                    .pp("blocks")
                    .pp(i)
                    .linear_fused(names, 8, outs, true)
                    .unwrap();
                assert_eq!(weight_f32(&l.weight), resident.0, "layer {i} int8 {int8}");
                assert_eq!(l.bias.unwrap().to_vec_f32().unwrap(), resident.1);
            }
        }
        // The layout: one region per fused tensor kind (256-byte aligned entries).
        let store = WeightStore::open(&dir, &dev, DType::BF16).unwrap();
        let es = store.dtype().size();
        let al = |b: usize| b.div_ceil(256) * 256;
        let unfused = Residency::layer_bytes(&store, "blocks", 2);
        let sep = |n: usize| al(n * 8 * es) + al(n * es);
        let z = al(8 * es);
        assert_eq!(unfused[0] as usize, sep(3) + sep(5) + sep(2) + z);
        store.set_fusion(Some(fusion()));
        let fused = Residency::layer_bytes(&store, "blocks", 2);
        assert_eq!(fused[0] as usize, sep(10) + z);
        // Layer 1: b|c in one region, the unused a on its own (as the policy says).
        assert_eq!(fused[1] as usize, sep(7) + sep(3));

        // Mixed INT8 / dense members cannot be one GEMM.
        store.set_int8(Some(int8_for(&["a"])));
        let err = store
            .root()
            .pp("blocks")
            .pp(0)
            .linear_fused(&["a", "b", "c"], 8, &[3, 5, 2], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only some of them are INT8"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
