//! Bad requests get typed errors, and the host keeps serving.

use wasi_nn_llm_host::engine::Quota;
use wasi_nn_llm_host::policy::{Identity, Policy};
use wasi_nn_llm_host::registry::Access;
use wasi_nn_llm_tests::{MODEL, Streamed, case, chatml, host};

/// All a base wasi-nn guest learns of any backend failure in wasmtime-wasi-nn 48.
const UPSTREAM_BACKEND_ERROR: &str = "Failed while accessing backend";

#[test]
fn unknown_model_raw_bytes_and_overlong_prompts_are_typed_errors_and_the_host_serves_on() {
    let lines = host().probe(&["errors", MODEL]);

    assert_eq!(case(&lines, "unknown-model")["nn-error"], "ErrorCode::NotFound");

    // Base wasi-nn through wasmtime-wasi-nn: the backend's typed error is
    // reduced to `runtime-error` and the crate's fixed text (a finding for
    // upstream; the extension's errors below are what we propose).
    let raw = case(&lines, "raw-bytes-load");
    assert_eq!(raw["nn-error"], "ErrorCode::RuntimeError");
    assert_eq!(raw["message"], UPSTREAM_BACKEND_ERROR, "{raw}");

    let long = case(&lines, "prompt-too-long")["llm-error"].as_str().unwrap();
    assert!(long.starts_with("Error::PromptTooLong(ContextOverflow {"), "{long}");
    assert!(long.contains("used: 0, limit: 64"), "{long}");

    let base = case(&lines, "base-prompt-too-long");
    assert_eq!(base["nn-error"], "ErrorCode::RuntimeError");
    assert_eq!(base["message"], UPSTREAM_BACKEND_ERROR, "{base}");

    // The refused append left the session usable.
    let after = case(&lines, "after-errors");
    assert!(!after["text"].as_str().unwrap().is_empty(), "{after}");
    // Nothing of the refused prompt stayed in the session.
    assert_eq!(after["finish"]["cached"], 0, "{after}");
    assert!(after["finish"]["prompt"].as_u64().unwrap() < 10, "{after}");

    // And the same host serves a fresh guest normally.
    let again = Streamed::parse(&host().probe(&["generate", MODEL, "16", &chatml("What is the capital of France?")]));
    assert!(again.text().contains("Paris"), "{:?}", again.text());
}

/// Host-side, the ggml backend does know the typed reason the guest is not told.
#[test]
fn base_wasi_nn_backend_refuses_an_overlong_prompt_with_prompt_too_long() {
    use wasmtime_wasi_nn::backend::NamedTensor;
    use wasmtime_wasi_nn::wit::TensorType;

    let who = Identity { name: "test".into(), digest: String::new() };
    let access = Access::new(host().runtime.models(), &Policy::default(), &who, Quota::unlimited());
    let registry = access.nn_registry();
    let graph = registry.get(MODEL).expect("registered");
    let mut exec = graph.init_execution_context().expect("execution context");
    let prompt = "word ".repeat(20_000).into_bytes();
    let tensor = wasmtime_wasi_nn::Tensor::new(vec![prompt.len() as u32], TensorType::U8, prompt);
    let error = match exec.compute_with_io(vec![NamedTensor { name: "prompt".into(), tensor }]) {
        Ok(_) => panic!("a 20000-word prompt cannot fit a 2048-token context"),
        Err(e) => e,
    };
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(&error);
    while let Some(e) = source {
        chain.push_str(&format!("{e} | "));
        source = e.source();
    }
    assert!(chain.contains("prompt-too-long: the session would hold"), "{chain}");
    assert!(chain.contains("its context limit is 2048"), "{chain}");
}
