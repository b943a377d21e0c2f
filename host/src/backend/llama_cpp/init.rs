//! llama.cpp itself, as this host is built with it: the process-wide
//! backend (llama.cpp allows one), its version, and what it can run on
//! (the CPU code compiled in, the GPUs it finds).

use std::sync::OnceLock;

use anyhow::anyhow;
use llama_cpp_2::llama_backend::LlamaBackend;

/// The process-wide llama.cpp backend (llama.cpp allows one). Its logs go
/// to `tracing` when `WASI_NN_LLM_LOG` (the CLI's log filter) is set, and
/// nowhere otherwise: llama.cpp logs every load at length.
pub fn backend() -> anyhow::Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let enabled = std::env::var_os("WASI_NN_LLM_LOG").is_some();
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default().with_logs_enabled(enabled));
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow!("llama.cpp backend: {e}"))
}

/// The inference library and its version as this host is built with it
/// (what a guest reads in `model-identity`). llama-cpp-sys-2 builds
/// llama.cpp outside git, so llama.cpp's own build info knows no version:
/// the crate's, which pins one llama.cpp tree, stands for it (a test keeps
/// it equal to Cargo.lock's).
pub const BACKEND: (&str, &str) = ("llama.cpp", "llama-cpp-sys-2 0.1.161");

/// Whether this build has a GPU backend of llama.cpp (the `cuda` or
/// `vulkan` feature).
pub fn gpu_build() -> bool {
    cfg!(any(feature = "cuda", feature = "vulkan"))
}

/// The instruction set this build's CPU code is compiled for: `avx512` (a
/// build for this machine's own CPU, as `make` builds), `avx2` (`make
/// cuda`'s x86-64-v3, to run on another machine's CPU) or `baseline`.
pub fn cpu_code() -> &'static str {
    if cfg!(target_feature = "avx512f") {
        "avx512"
    } else if cfg!(target_feature = "avx2") {
        "avx2"
    } else {
        "baseline"
    }
}

/// The GPUs llama.cpp can offload to in this process, described for people.
///
/// Empty on a CPU build, and also on a GPU build run where no device or
/// driver is usable: ggml's CUDA backend then registers no device (the CUDA
/// runtime answers "driver version is insufficient" where no driver is
/// installed) and every layer stays on the CPU. The `cuda` build links no
/// driver library (`GGML_CUDA_NO_VMM`), so it starts on such a machine.
pub fn gpus() -> anyhow::Result<Vec<String>> {
    use llama_cpp_2::LlamaBackendDeviceType::{Gpu, IntegratedGpu};
    backend()?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, Gpu | IntegratedGpu))
        .map(|d| format!("{} {} ({} MiB)", d.name, d.description, d.memory_total >> 20))
        .collect())
}
