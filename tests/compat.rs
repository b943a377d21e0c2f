//! A guest built against the first published WIT (`wasi-nn-llm:llm@0.1.0`)
//! runs unchanged on this host, which serves a later 0.1.x.

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
