//! `contentv device`: the GPU as the engine sees it (name, arch, memory, driver), the kernel
//! image each module loads on it and the cuBLASLt library, or why there is no usable GPU.
//! The first thing to run on a new machine (scripts/gpu-check.sh starts with it).
use serde_json::json;

use super::args::DeviceArgs;
use super::Ui;
use crate::error::Result;
use crate::runtime::blaslt;
use crate::runtime::device::{cuda_version_str, kernel_toolkit_version, Device};

pub fn run(a: &DeviceArgs, ui: &Ui) -> Result<()> {
    let dev = match Device::cuda(a.ordinal) {
        Ok(d) => d,
        Err(e) => {
            if ui.json {
                // A JSON reader gets an answer on stdout too (the error also goes to stderr).
                println!(
                    "{}",
                    json!({"error": e.to_string(), "ordinal": a.ordinal, "usable": false})
                );
            }
            return Err(e);
        }
    };
    let g = dev.gpu().expect("Device::cuda returns a GPU");
    let modules = g.load_modules()?;
    let lt = blaslt::lib().map(|l| l.path.clone());
    if ui.json {
        let report = json!({
            "name": g.name,
            "ordinal": g.ordinal,
            "arch": format!("sm_{}{}", g.compute_capability.0, g.compute_capability.1),
            "sm_count": g.sm_count,
            "memory_bytes": g.total_mem,
            "max_shared_memory_per_block": g.max_smem_optin,
            "driver_cuda": cuda_version_str(g.driver_version),
            "kernels_cuda": cuda_version_str(kernel_toolkit_version()),
            "modules": modules.iter().map(|(m, t)| json!({"module": m, "image": t})).collect::<Vec<_>>(),
            "cublaslt": lt.as_ref().ok(),
            "cublaslt_error": lt.as_ref().err(),
        });
        println!("{report}");
    } else {
        println!(
            "GPU {}: {} (sm_{}{}, {} SMs, {:.1} GiB, {} KiB shared memory per block)",
            g.ordinal,
            g.name,
            g.compute_capability.0,
            g.compute_capability.1,
            g.sm_count,
            g.total_mem as f64 / (1u64 << 30) as f64,
            g.max_smem_optin / 1024
        );
        println!(
            "driver: CUDA {}; kernels built with CUDA {}",
            cuda_version_str(g.driver_version),
            cuda_version_str(kernel_toolkit_version())
        );
        for (m, t) in &modules {
            println!("kernels/{m}.cu: {t} image");
        }
        match &lt {
            Ok(p) => println!("cuBLASLt: {p}"),
            Err(e) => println!("cuBLASLt: not loadable: {e}"),
        }
    }
    if let Err(e) = lt {
        ui.warn(&format!("every dense GEMM needs cuBLASLt: {e}"));
    }
    Ok(())
}
