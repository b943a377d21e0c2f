//! Guests built against earlier WITs (`wasi-nn-llm:llm@0.1.0`, and 0.1.4 on
//! both backends) run unchanged on this host, which serves a later 0.1.x.

use wasi_nn_llm_tests::{MODEL, Streamed, chatml, host, serial};

#[test]
fn a_0_1_0_guest_runs_on_the_current_host_with_the_same_output() {
    let _serial = serial();
    let prompt = chatml("What is the capital of France?");
    let old = host().run_guest("compat-0-1-0", &[MODEL, &prompt]);
    let current = Streamed::parse(&host().probe(&["generate", MODEL, "16", &prompt]));
    assert_eq!(old.trim_end_matches('\n'), current.text());
    assert!(old.contains("Paris"), "{old:?}");
}

/// A guest built against 0.1.4 (the last WIT before chat templates) runs
/// unchanged on this 0.1.6 host, on both backends: its `model-identity`
/// names the backend, and its JSON-schema constraint (0.1.0's `constraint`
/// field, served through llguidance on both) holds the reply.
#[test]
fn a_0_1_4_guest_runs_unchanged_on_both_backends() {
    let prompt = chatml("Is Paris the capital of France? Answer as JSON.");
    let llama = host().run_guest("compat-0-1-4", &[MODEL, &prompt]);
    let candle = std::process::Command::new(wasi_nn_llm_tests::host_cli())
        .args(["run", "--threads", "2", "--backend", "candle", "--model"])
        .arg(format!("{MODEL}={}", wasi_nn_llm_tests::model_path(MODEL).display()))
        .arg(wasi_nn_llm_tests::guest("compat-0-1-4"))
        .args([MODEL, &prompt])
        .output()
        .expect("running the host");
    assert!(candle.status.success(), "{}", String::from_utf8_lossy(&candle.stderr));
    let candle = String::from_utf8_lossy(&candle.stdout).into_owned();
    for (backend, out) in [("llama.cpp", llama), ("candle", candle)] {
        let line: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{backend}: {e}: {out}"));
        assert_eq!(line["backend"], backend, "{line}");
        assert_eq!(line["finish"], "FinishReason::EndOfSequence", "{line}");
        let reply: serde_json::Value = serde_json::from_str(line["reply"].as_str().expect("a reply"))
            .unwrap_or_else(|e| panic!("{backend}: the reply is not JSON ({e}): {line}"));
        assert!(matches!(reply["answer"].as_str(), Some("yes" | "no")), "{backend}: {reply}");
    }
}
