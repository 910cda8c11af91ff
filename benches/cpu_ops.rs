//! Criterion benches of the CPU reference paths (the f32 ops the tiny model and the CI run on).
use contentv::ops::attention::{attention_cpu, AttnDims};
use contentv::ops::gemm::{linear_cpu, Act};
use contentv::ops::norm;
use contentv::runtime::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn rnd(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu");
    g.sample_size(10);
    let (m, k, n) = (378, 128, 512); // tiny transformer: 45 video + 333 text tokens, MLP
    let (x, w) = (rnd(m * k), rnd(n * k));
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("linear_cpu 378x128x512 (flop)", |b| {
        b.iter(|| linear_cpu(&x, &w, None, m, k, n, Act::GeluTanh))
    });
    let (m, k, n) = (256, 4096, 64); // tiny T5 projections at d_model 4096
    let (x, w) = (rnd(m * k), rnd(n * k));
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("linear_cpu 256x4096x64 (flop)", |b| {
        b.iter(|| linear_cpu(&x, &w, None, m, k, n, Act::None))
    });
    let d = AttnDims {
        b: 2,
        heads: 2,
        d: 64,
        sq: 378,
        sk: 378,
    };
    let q = rnd(2 * 378 * 128);
    g.throughput(Throughput::Elements((4 * 2 * 2 * 378 * 378 * 64) as u64));
    g.bench_function("attention_cpu b2 h2 s378 d64 (flop)", |b| {
        b.iter(|| attention_cpu(&q, &q, &q, None, &d, 0.125, false))
    });
    let t = Tensor::from_f32(rnd(2 * 378 * 128), &[2, 378, 128], &Device::Cpu).unwrap();
    let m6 = Tensor::from_f32(rnd(2 * 256), &[2, 256], &Device::Cpu).unwrap();
    g.throughput(Throughput::Bytes((2 * 378 * 128 * 4) as u64));
    g.bench_function("layer_norm_modulate [2,378,128]", |b| {
        b.iter(|| {
            norm::layer_norm_modulate(
                &t,
                &m6.narrow(1, 0, 128).unwrap(),
                &m6.narrow(1, 128, 128).unwrap(),
                1e-6,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(cpu, benches);
criterion_main!(cpu);
