//! `contentv roofline`: the modelled step and decode tables, bad flags, and `--measure` (a clear
//! error without a GPU; on a CUDA device every row timed). Split from tests/cli.rs; helpers in
//! tests/common/bin.rs.
use std::process::Command;

mod common;

use common::bin::{output, run, text, BIN};

#[test]
fn roofline_prints_a_step_and_a_decode() {
    let o = run(&["roofline", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["video_tokens"], 41_472);
    assert_eq!(v["batch"], 2);
    let tf = v["step_tflop"].as_f64().unwrap();
    assert!((tf - 1743.0).abs() < 15.0, "{tf}");
    assert!(v["decode"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"].as_str().unwrap().contains("conv")));
    // A smaller size on another GPU, as a table.
    let o = run(&[
        "roofline",
        "--frames",
        "9",
        "--width",
        "256",
        "--height",
        "128",
        "--gpu",
        "4090",
        "--no-guidance",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("RTX 4090") && t.contains("joint attention") && t.contains("batch 1"),
        "{t}"
    );
    // Bad input is an error naming the flag or the value.
    let o = run(&["roofline", "--gpu", "v100"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("v100") && text(&o).contains("h100"),
        "{}",
        text(&o)
    );
    let o = run(&["roofline", "--frames", "8"]);
    assert!(
        !o.status.success() && text(&o).contains("4k+1"),
        "{}",
        text(&o)
    );
}

/// `roofline --measure` runs every op of the table at its shape on the GPU: without one it is a
/// clear error; on a CUDA device (the emulated one in CI, at a tiny size with rehearsal
/// ceilings) every row gets an achieved time and the totals are their sums.
#[test]
fn roofline_measure_times_every_row() {
    let args = [
        "roofline",
        "--measure",
        "--json",
        "--model",
        "assets/tiny-model",
        "--frames",
        "5",
        "--width",
        "32",
        "--height",
        "32",
    ];
    if let Some(why) = contentv::runtime::device::gpu_unavailable_reason() {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(text(&o).contains("--measure"), "{}", text(&o));
        println!("SKIP: roofline --measure on a device: {why}");
        return;
    }
    let o = output(
        Command::new(BIN)
            .args(args)
            .env("CONTENTV_BENCH_REHEARSAL", "1"),
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["measured"];
    for k in [
        "tensor_tflops",
        "fp32_tflops",
        "mem_gbs",
        "step_s",
        "decode_s",
    ] {
        assert!(m[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {m}");
    }
    for (part, total) in [("step", "step_s"), ("decode", "decode_s")] {
        let rows = v[part].as_array().unwrap();
        assert!(!rows.is_empty());
        let sum: f64 = rows
            .iter()
            .map(|r| r["measured_ms"].as_f64().expect("a row without a time"))
            .sum();
        let t = m[total].as_f64().unwrap() * 1e3;
        assert!(
            (sum - t).abs() <= 1e-6 * t,
            "{part}: rows {sum} ms, total {t} ms"
        );
    }
    assert_eq!(v["gpu"]["name"], "measured");
}
