//! model-identity (extension 0.1.4): which model file and engine serve a
//! name, as facts of the host, and a guest that runs only on the model it
//! was built for.

use std::sync::Arc;

use serde_json::Value;
use wasi_nn_llm_host::catalog::ModelSpec;
use wasi_nn_llm_host::engine::EngineConfig;
use wasi_nn_llm_host::registry::Models;
use wasi_nn_llm_host::runner::Runtime;
use wasi_nn_llm_tests::{GEMMA, MODEL, chatml, host, model_path, run_lines, sha256_hex};

/// `sha256sum` of a test model's file.
fn file_digest(model: &str) -> String {
    sha256_hex(&model_path(model))
}

#[test]
fn the_identity_is_the_files_digest_and_the_hosts_own_facts() {
    for model in [MODEL, GEMMA] {
        let lines = host().probe(&["identity", model]);
        let id = &lines[0];
        assert_eq!(id["digest"], file_digest(model), "{model}");
        assert_eq!(id["size"], std::fs::metadata(model_path(model)).unwrap().len());
        assert_eq!((id["format"].as_str(), id["backend"].as_str()), (Some("gguf"), Some("llama.cpp")));
        assert_eq!(id["backend-version"], wasi_nn_llm_host::backend::llama_cpp::BACKEND.1);
        assert_eq!(id["device"], "cpu", "the test host offloads nothing");
        assert!(id["host"].as_str().is_some_and(|h| h.starts_with("wasi-nn-llm ")));
    }
}

#[test]
fn a_guest_pinned_to_a_digest_runs_on_that_model_and_refuses_any_other_under_the_same_name() {
    let smollm2 = file_digest(MODEL);
    let prompt = chatml("What is the capital of France?");

    // The model it expects: it generates.
    let lines = host().probe(&["verified", MODEL, &smollm2, &prompt]);
    let text: String = lines.iter().filter_map(|l| l["chunk"]["text"].as_str()).collect();
    assert_eq!(text, "The capital of France is Paris.");

    // The operator puts another file behind the same name: the guest refuses.
    let config = EngineConfig { threads: 2, ctx_size: 512, max_sessions: 1, gpu_layers: Some(0), ..Default::default() };
    let swapped = Models::load(&[ModelSpec::new(MODEL, model_path(GEMMA))], &config).expect("loading gemma as smollm2");
    let runtime = Runtime::new(Arc::clone(&swapped)).expect("a runtime");
    let (code, lines) = run_lines(&runtime, "probe", &["verified", MODEL, &smollm2, &prompt]).expect("the guest ran");
    assert_eq!(code, 1, "{lines:?}");
    let error = lines.iter().find_map(|l| l["error"].as_str()).unwrap_or_default();
    assert!(error.contains("is not the one expected"), "{error}");
    assert!(error.contains(&file_digest(GEMMA)), "the refusal names the digest it found: {error}");
    assert!(lines.iter().all(|l: &Value| l.get("chunk").is_none()), "nothing was generated: {lines:?}");
}
