//! The tensor inventory (`model::inventory`) is exactly what the loaders read: a whole
//! generation of the tiny model on the CPU records every key the weight stores hand out (and
//! every key the VAE loader asks for); each is listed with the checkpoint's shape, and each
//! listed key is read. Then: the loaders, `info` and the inventory refuse the same damage.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use contentv::cli::load::{load_pipeline, tiny_model_dir};
use contentv::io::safetensors::ShardedCheckpoint;
use contentv::model::inventory::{self, Inventory};
use contentv::model::pipeline::{GenerateParams, VideoGeometry};
use contentv::model::vae::VaeConfig;
use contentv::runtime::weights::record_reads;
use contentv::Device;

/// `record_reads` is one process-wide recorder: the tests that use it take turns.
static READS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn compare(comp: &str, dir: &Path, inv: &Inventory, read: &BTreeMap<String, Vec<usize>>) {
    assert!(!read.is_empty(), "{comp}: nothing recorded");
    let ck = ShardedCheckpoint::open_dir(dir).unwrap();
    let listed: BTreeMap<&str, &inventory::Entry> =
        inv.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    assert_eq!(
        listed.len(),
        inv.entries.len(),
        "{comp}: a key listed twice"
    );
    for (k, shape) in read {
        let e = listed
            .get(k.as_str())
            .unwrap_or_else(|| panic!("{comp}: the loader reads {k}, the inventory lacks it"));
        assert!(
            e.shape.accepts(shape),
            "{comp}: {k} is read as {shape:?}, the inventory says {:?}",
            e.shape
        );
    }
    for e in &inv.entries {
        assert!(
            read.contains_key(&e.key),
            "{comp}: the inventory lists {}, which no loader reads",
            e.key
        );
    }
    assert!(
        inv.problems(&ck).is_empty(),
        "{comp}: {:?}",
        inv.problems(&ck)
    );
}

#[test]
fn inventory_is_exactly_what_the_loaders_read() {
    let _turn = READS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tiny_model_dir();
    record_reads(true);
    let (pipe, _) = load_pipeline(&dir, &Device::Cpu, &Default::default()).unwrap();
    let params = GenerateParams {
        prompt: "a red ball".into(),
        negative_prompt: String::new(),
        geometry: VideoGeometry::new(5, 32, 32).unwrap(),
        steps: 1,
        guidance: 5.0,
        shift: None,
        seed: 0,
        init_noise: None,
        rescue_latents: None,
        cancel: None,
    };
    pipe.generate(&params, &mut |_| {}).unwrap();
    let reads = record_reads(false);
    for comp in [
        "transformer",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "vae",
    ] {
        let cdir = dir.join(comp);
        let ck = ShardedCheckpoint::open_dir(&cdir).unwrap();
        let read: BTreeMap<String, Vec<usize>> = reads
            .iter()
            .filter(|(d, _)| *d == cdir)
            .map(|(_, k)| (k.clone(), ck.get(k).unwrap().1.shape.clone()))
            .collect();
        let inv = inventory::for_component(comp, &cdir).unwrap();
        compare(comp, &cdir, &inv, &read);
    }
    // The VAE reads through the same store (recorded above); its two inventory entry points
    // agree.
    let vdir = dir.join("vae");
    let cfg = VaeConfig::from_file(&vdir.join("config.json")).unwrap();
    let ck = ShardedCheckpoint::open_dir(&vdir).unwrap();
    let inv = inventory::vae(&cfg, &|k| ck.contains(k), &vdir).unwrap();
    assert_eq!(
        inv,
        inventory::for_component("vae", &vdir).unwrap(),
        "for_component differs"
    );
}

/// Every key of each inventory is distinct, and a checkpoint missing keys or with another
/// shape gets every problem at once, with the checkpoint's shape quoted.
#[test]
fn problems_are_listed_together_with_the_stored_shape() {
    let dir = tiny_model_dir().join("transformer");
    let inv = inventory::for_component("transformer", &dir).unwrap();
    let keys: BTreeSet<&str> = inv.keys().collect();
    assert_eq!(keys.len(), inv.entries.len());
    let ck = ShardedCheckpoint::open_dir(&dir).unwrap();
    assert!(inv.problems(&ck).is_empty());
    // Ask for another width: every square linear is misshaped, each named.
    let mut c = contentv::model::mmdit::TransformerConfig::from_weights(
        &contentv::runtime::WeightStore::open(&dir, &Device::Cpu, contentv::DType::BF16)
            .unwrap()
            .root(),
    )
    .unwrap();
    let d = c.dim;
    c.dim = d + 16;
    let other = inventory::transformer(&c, &|k| ck.contains(k), &dir).unwrap();
    let p = other.problems(&ck);
    let want = format!(
        "transformer_blocks.0.attn.to_q.weight: the checkpoint has [{d}, {d}], the config needs [{}, {}]",
        d + 16,
        d + 16
    );
    assert!(p.contains(&want), "{want} not in {p:#?}");
    assert!(p.len() > 20, "{}", p.len());
    // The error quotes the first 20, in the loaders' order (the embedders first).
    let first = format!(
        "pos_embed.proj.bias: the checkpoint has [{d}], the config needs [{}]",
        d + 16
    );
    assert!(p.contains(&first), "{first} not in {p:#?}");
    let e = other.check(&dir, &ck).unwrap_err().to_string();
    assert!(e.contains("more") && e.contains(&first), "{e}");
}

/// The description is the loaders run against a recorder, so it cannot drift from a load: the
/// same loaders run against the real store read exactly the recorded keys with the recorded
/// shapes, and its tags are the store's policies (the fused groups the layer layout uses, the
/// INT8 linears `--quantize int8` quantizes, the per-run linears streaming leaves out).
#[test]
fn description_and_real_load_are_one_code_path() {
    use contentv::model::inventory::Recorder;
    use contentv::runtime::{DType, WeightStore};
    let _turn = READS.lock().unwrap_or_else(|e| e.into_inner());
    let root = tiny_model_dir();
    for comp in ["transformer", "text_encoder", "text_encoder_3"] {
        let dir = root.join(comp);
        let store = WeightStore::open(&dir, &Device::Cpu, DType::BF16).unwrap();
        let has = |k: &str| store.contains(k);
        // The recorded description, and the same loaders reading the real store.
        let (inv, real): (Inventory, contentv::Result<()>) = match comp {
            "transformer" => {
                let c =
                    contentv::model::mmdit::TransformerConfig::from_weights(&store.root()).unwrap();
                let inv = Recorder::record(&has, |r| contentv::model::mmdit::describe(r, &c));
                record_reads(true);
                let real = contentv::model::mmdit::describe(&store.root(), &c);
                (inv.unwrap(), real)
            }
            "text_encoder" => {
                let c = contentv::model::clip::ClipConfig::from_dir(&dir).unwrap();
                let inv = Recorder::record(&has, |r| contentv::model::clip::describe(r, &c));
                record_reads(true);
                let real = contentv::model::clip::describe(&store.root(), &c);
                (inv.unwrap(), real)
            }
            _ => {
                let c = contentv::model::t5::T5Config::from_dir(&dir).unwrap();
                let inv = Recorder::record(&has, |r| contentv::model::t5::describe(r, &c));
                record_reads(true);
                let real = contentv::model::t5::describe(&store.root(), &c);
                (inv.unwrap(), real)
            }
        };
        let reads = record_reads(false);
        real.unwrap();
        let read: BTreeSet<&str> = reads
            .iter()
            .filter(|(d, _)| *d == dir)
            .map(|(_, k)| k.as_str())
            .collect();
        let listed: BTreeSet<&str> = inv.keys().collect();
        assert_eq!(
            read, listed,
            "{comp}: the real load and the description differ"
        );
        let ck = ShardedCheckpoint::open_dir(&dir).unwrap();
        for e in &inv.entries {
            let stored = &ck.get(&e.key).unwrap().1.shape;
            assert!(
                e.shape.accepts(stored),
                "{comp}: {} {stored:?} vs {:?}",
                e.key,
                e.shape
            );
        }
        assert_eq!(inv, inventory::for_component(comp, &dir).unwrap(), "{comp}");
        // Every linear of the description is one the real store delivers as asked.
        for l in &inv.linears {
            let lin = store
                .root()
                .linear(&l.name, l.in_features, l.out_features, l.bias)
                .unwrap();
            assert_eq!(
                lin.weight.shape(),
                [l.out_features, l.in_features],
                "{}",
                l.name
            );
        }
    }
    // The transformer's tags: q|k|v fused per block (k|v for the last block's text), the
    // attention and MLP linears INT8, the modulation per run; the last block is the one
    // definition's (`TransformerConfig::is_last_block`).
    let dir = root.join("transformer");
    let inv = inventory::for_component("transformer", &dir).unwrap();
    let store = WeightStore::open(&dir, &Device::Cpu, DType::BF16).unwrap();
    let c = contentv::model::mmdit::TransformerConfig::from_weights(&store.root()).unwrap();
    let last = c.layers - 1;
    assert!(c.is_last_block(last) && !c.is_last_block(0));
    let b = |i: usize, n: &str| format!("transformer_blocks.{i}.attn.{n}");
    assert!(inv.fused.contains(&vec![
        b(0, "add_q_proj"),
        b(0, "add_k_proj"),
        b(0, "add_v_proj")
    ]));
    assert!(inv
        .fused
        .contains(&vec![b(last, "add_k_proj"), b(last, "add_v_proj")]));
    assert_eq!(inv.fused.len(), 2 * c.layers);
    assert!(!inv.keys().any(|k| k == b(last, "add_q_proj.weight")));
    assert!(
        store.contains(&b(last, "add_q_proj.weight")),
        "the checkpoint has it, unread"
    );
    assert!(inv.int8_linears().contains(&b(0, "to_q")));
    assert!(!inv.int8_linears().iter().any(|n| n.contains("norm")));
    assert_eq!(inv.per_run_linears().len(), 2 * c.layers);
}

/// A checkpoint missing a tensor fails the description check and the loaders the same way:
/// both name the missing key (the description lists it first; the loader run directly, without
/// the check, stops at it).
#[test]
fn a_missing_key_fails_the_description_and_the_loader_alike() {
    use contentv::io::safetensors::write_safetensors;
    use contentv::runtime::{DType, WeightStore};
    let src = tiny_model_dir().join("transformer");
    let dst = std::env::temp_dir().join(format!("contentv-inv-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    let ck = ShardedCheckpoint::open_dir(&src).unwrap();
    let gone = "transformer_blocks.1.attn.to_k.weight";
    assert!(ck.contains(gone));
    let names: Vec<String> = ck
        .names()
        .filter(|n| *n != gone)
        .map(String::from)
        .collect();
    let owned: Vec<_> = names
        .iter()
        .map(|n| {
            let (_, info) = ck.get(n).unwrap();
            (
                n.as_str(),
                info.dtype,
                info.shape.clone(),
                ck.bytes(n).unwrap(),
            )
        })
        .collect();
    let tensors: Vec<_> = owned
        .iter()
        .map(|(n, d, s, b)| (*n, *d, s.as_slice(), *b))
        .collect();
    write_safetensors(
        &dst.join("diffusion_pytorch_model.safetensors"),
        &tensors,
        None,
    )
    .unwrap();
    for f in ["config.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
    }
    // The description (what `info` reports and every load checks first).
    let inv = inventory::for_component("transformer", &dst).unwrap();
    let p = inv.problems(&ShardedCheckpoint::open_dir(&dst).unwrap());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with(&format!("{gone}: missing")), "{p:?}");
    // The load refuses it with that line.
    let e = contentv::model::mmdit::Transformer::load(&dst, &Device::Cpu)
        .err()
        .expect("a transformer without attn.to_k loaded")
        .to_string();
    assert!(e.contains(&p[0]), "{e}");
    // The loaders themselves, without the check, stop at the same key.
    let store = WeightStore::open(&dst, &Device::Cpu, DType::BF16).unwrap();
    let c = contentv::model::mmdit::TransformerConfig::from_weights(&store.root()).unwrap();
    let e = contentv::model::mmdit::describe(&store.root(), &c)
        .unwrap_err()
        .to_string();
    assert!(e.contains(gone), "{e}");
    let _ = std::fs::remove_dir_all(&dst);
}
