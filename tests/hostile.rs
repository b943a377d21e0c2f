//! Nothing a guest sends takes the host down: every bad input of the matrix
//! gets a typed error, quotas answer `limit-exceeded` naming the limit, the
//! policy's grants decide which component reaches which model, and a guest
//! that traps, spins or hoards leaves a clean engine behind. The same host
//! process serves a normal chat correctly afterwards.

use std::thread;

use serde_json::Value;
use wasi_nn_llm_host::engine::{Quota, SessionOptions};
use wasi_nn_llm_tests::{GEMMA, MODEL, case, host, policed, run_lines, serial};

/// The extension error a case got, as the guest's Debug of it.
fn llm_error<'a>(lines: &'a [Value], name: &str) -> &'a str {
    case(lines, name)["llm-error"].as_str().unwrap_or_else(|| panic!("{name}: no extension error in {lines:#?}"))
}

fn nn_error<'a>(lines: &'a [Value], name: &str) -> &'a str {
    case(lines, name)["nn-error"].as_str().unwrap_or_else(|| panic!("{name}: no wasi-nn error in {lines:#?}"))
}

fn ok<'a>(lines: &'a [Value], name: &str) -> &'a str {
    case(lines, name)["ok"].as_str().unwrap_or_else(|| panic!("{name}: not ok in {lines:#?}"))
}

/// A greedy three-turn chat through the probe: what "serves correctly" means.
fn chat() -> Value {
    let lines = host().probe(&["chat", MODEL, "24", "What is the capital of France?", "And of Italy?"]);
    Value::Array(lines)
}

/// Every session slot of `model` can be opened again: nothing leaked.
fn assert_clean(model: &str) {
    let engine = host().engine_of(model);
    let quota = Quota::unlimited();
    let sessions: Vec<_> = (0..engine.max_sessions())
        .map(|i| {
            engine
                .open_session(&SessionOptions::default(), &quota)
                .unwrap_or_else(|e| panic!("{model}: slot {i} of {} still taken: {e}", engine.max_sessions()))
        })
        .collect();
    assert_eq!(sessions.len(), engine.max_sessions());
}

#[test]
fn the_bad_input_matrix_gets_typed_errors_and_the_host_serves_a_normal_chat_after() {
    let _serial = serial();
    let before = chat();
    let runtime = policed("");
    let (code, lines) = run_lines(&runtime, "hostile", &["bad-inputs", MODEL]).expect("the guest ran to its end");
    assert_eq!(code, 0, "{lines:#?}");

    for (name, error) in [
        ("token-out-of-range", "InvalidToken"),
        ("token-negative-as-u32", "InvalidToken(InvalidToken { token: 4294967295"),
        ("detokenize-out-of-range", "InvalidToken"),
        ("generate-on-empty-session", "InvalidArgument"),
        ("prompt-longer-than-context", "PromptTooLong(ContextOverflow {"),
        ("context-length-zero", "InvalidArgument"),
        ("context-length-huge", "LimitExceeded(Limit { name: \"context-length\""),
        ("generate-on-full-context", "ContextFull(ContextOverflow {"),
        ("max-tokens-zero", "InvalidArgument"),
        ("temperature-nan", "InvalidArgument"),
        ("temperature-negative", "InvalidArgument"),
        ("top-p-above-one", "InvalidArgument"),
        ("logit-bias-bad-token", "InvalidToken"),
        ("invalid-grammar", "InvalidGrammar"),
        ("grammar-unknown-rule", "InvalidGrammar"),
        ("invalid-json-schema", "InvalidGrammar"),
        ("schema-not-json", "InvalidGrammar"),
        ("restore-empty", "InvalidSnapshot(SnapshotError::Truncated)"),
        ("restore-truncated", "InvalidSnapshot(SnapshotError::Truncated)"),
        ("restore-bit-flipped", "InvalidSnapshot(SnapshotError::Corrupted)"),
        ("restore-oversized", "InvalidSnapshot"),
        ("restore-garbage", "InvalidSnapshot"),
        ("append-while-streaming", "SessionBusy"),
        ("generate-while-streaming", "SessionBusy"),
    ] {
        let got = llm_error(&lines, name);
        assert!(got.contains(error), "{name}: expected {error}, got {got}");
    }
    // Base wasi-nn: wasmtime-wasi-nn reduces every backend error to
    // runtime-error (see errors.rs); what matters is that it is an error.
    for name in [
        "tensor-negative-token",
        "tensor-token-out-of-range",
        "compute-empty-prompt",
        "compute-invalid-utf8",
        "compute-prompt-as-fp32",
        "compute-dims-disagree",
        "compute-tokens-as-u8",
        "compute-tokens-ragged",
        "compute-tokens-empty",
        "compute-unknown-input",
        "compute-no-inputs",
        "compute-unknown-param",
        "raw-bytes-load",
    ] {
        assert_eq!(nn_error(&lines, name), "ErrorCode::RuntimeError", "{name}");
    }
    assert_eq!(nn_error(&lines, "unknown-model"), "ErrorCode::NotFound");

    assert_eq!(ok(&lines, "append-empty"), "0");
    assert!(ok(&lines, "context-filled-while-generating").contains("ContextFull"));
    assert!(ok(&lines, "max-tokens-huge").contains("ContextFull"));
    assert!(ok(&lines, "after-cancel-storm").contains("MaxTokens"));
    assert!(ok(&lines, "penalty-window-huge").contains("MaxTokens"));
    assert!(ok(&lines, "session-after-graph-dropped").contains("Paris"));
    assert!(ok(&lines, "after-matrix").contains("Paris"));

    assert_clean(MODEL);
    assert_eq!(chat(), before, "the chat after the matrix differs from the one before");
}

#[test]
fn a_policy_denies_a_model_to_one_component_and_allows_it_to_another() {
    let _serial = serial();
    let runtime = policed(&format!(
        r#"
        [[grants]]
        component = "probe"
        models = ["{MODEL}"]

        [[grants]]
        component = "hostile"
        models = ["{GEMMA}"]
        "#
    ));
    let prompt = "The capital of France is";

    // probe may use SmolLM2 and not gemma.
    let (code, lines) = run_lines(&runtime, "probe", &["generate", MODEL, "8", prompt]).expect("probe ran");
    assert_eq!(code, 0);
    assert!(lines.iter().any(|l| l.get("chunk").is_some()), "{lines:?}");
    let (code, _) = run_lines(&runtime, "probe", &["generate", GEMMA, "8", prompt]).expect("probe ran");
    assert_eq!(code, 1, "probe must not reach {GEMMA}");

    // hostile may use gemma and not SmolLM2: the refusal is typed and names both.
    let (_, lines) = run_lines(&runtime, "hostile", &["hoard", MODEL, "1"]).expect("hostile ran");
    assert_eq!(case(&lines, "hoard")["opened"], 0);
    let denied = llm_error(&lines, "refused");
    assert!(denied.starts_with("Error::NotPermitted("), "{denied}");
    assert!(denied.contains("hostile") && denied.contains(MODEL), "{denied}");
    let (_, lines) = run_lines(&runtime, "hostile", &["hoard", GEMMA, "2"]).expect("hostile ran");
    assert_eq!(case(&lines, "hoard")["opened"], 2);

    // A grant by digest pins the exact build: the same bytes under another name.
    let probe = wasi_nn_llm_tests::guest("probe");
    let digest = wasi_nn_llm_host::policy::Identity::of(&probe, &std::fs::read(&probe).unwrap()).digest;
    let pinned = policed(&format!("[[grants]]\ndigest = \"{digest}\"\nmodels = [\"{GEMMA}\"]\n"));
    let (code, _) = run_lines(&pinned, "probe", &["generate", GEMMA, "4", prompt]).expect("probe ran");
    assert_eq!(code, 0);
    let (code, _) = run_lines(&pinned, "probe", &["generate", MODEL, "4", prompt]).expect("probe ran");
    assert_eq!(code, 1);

    // A closed front door: base wasi-nn's text convention off, the extension on.
    let closed = policed("[interfaces]\nwasi-nn-text = false\n");
    let (code, _) = run_lines(&closed, "probe", &["compute", MODEL, "4", prompt]).expect("probe ran");
    assert_eq!(code, 1, "compute must be refused");
    let (code, _) = run_lines(&closed, "probe", &["generate", MODEL, "4", prompt]).expect("probe ran");
    assert_eq!(code, 0);
    assert_clean(MODEL);
}

#[test]
fn instance_quotas_answer_limit_exceeded_naming_the_limit() {
    let _serial = serial();
    let runtime = policed("[limits]\ninstance-sessions = 2\ngenerate-tokens = 16\nconcurrent-generations = 1\n");
    let (code, lines) = run_lines(&runtime, "hostile", &["quota", MODEL]).expect("the guest ran");
    assert_eq!(code, 0, "{lines:#?}");
    let limit = |name: &str, key: &str, max: u32| {
        let got = llm_error(&lines, name);
        let want = format!("LimitExceeded(Limit {{ name: \"{key}\", max: {max} }})");
        assert!(got.contains(&want), "{name}: expected {want}, got {got}");
    };
    limit("third-session", "instance-sessions", 2);
    limit("fork-past-quota", "instance-sessions", 2);
    ok(&lines, "session-after-one-closed");
    limit("max-tokens-above-limit", "generate-tokens", 16);
    assert_eq!(ok(&lines, "max-tokens-default"), "(FinishReason::MaxTokens, 16)");
    limit("second-concurrent-generation", "concurrent-generations", 1);
    ok(&lines, "generation-after-first-ended");

    // KV bytes: each session reserves its whole context.
    let per_session = host().engine().kv_bytes(host().engine().ctx_size());
    let runtime = policed(&format!("[limits]\ninstance-kv-bytes = {}\n", per_session * 3 + 1));
    let (_, lines) = run_lines(&runtime, "hostile", &["hoard", MODEL, "100"]).expect("the guest ran");
    assert_eq!(case(&lines, "hoard")["opened"], 3);
    assert!(llm_error(&lines, "refused").contains("name: \"instance-kv-bytes\""));

    // Wall time per generation: the stream ends with the typed error after
    // what it delivered, and the session keeps exactly that.
    let runtime = policed("[limits]\ngenerate-seconds = 0.5\n");
    let (_, lines) = run_lines(&runtime, "hostile", &["slow", MODEL]).expect("the guest ran");
    assert!(llm_error(&lines, "slow-generation").contains("name: \"generate-seconds\""));
    let delivered = case(&lines, "delivered");
    assert!(delivered["tokens"].as_u64().unwrap() > 0, "{delivered}");
    assert_clean(MODEL);
}

#[test]
fn a_guest_that_traps_spins_hoards_or_grows_leaves_a_clean_engine() {
    let _serial = serial();
    let before = chat();

    // Hoarding: the engine's own session limit answers, then the instance
    // ends and everything it held is reclaimed.
    let open = policed("");
    let (_, lines) = run_lines(&open, "hostile", &["hoard", MODEL, "1000"]).expect("the guest ran");
    assert_eq!(case(&lines, "hoard")["opened"], host().engine().max_sessions());
    assert!(llm_error(&lines, "refused").contains("name: \"sessions\""));
    assert_clean(MODEL);

    // A trap with generations in flight.
    let trapped = run_lines(&open, "hostile", &["trap", MODEL]).expect_err("the guest traps");
    assert!(trapped.contains("trapped"), "{trapped}");
    // What the guest printed before it, its panic message, is in the error.
    assert!(trapped.contains("hostile: a panic with") && trapped.contains("generations in flight"), "{trapped}");
    assert_clean(MODEL);

    // Guest code that never returns is interrupted at its wall-time limit.
    let limited = policed("[limits]\nguest-seconds = 2\n");
    let spun = run_lines(&limited, "hostile", &["spin", MODEL]).expect_err("the guest is interrupted");
    assert!(spun.contains("guest-seconds"), "{spun}");
    assert_clean(MODEL);

    // Linear memory stops growing at the limit; the guest sees a failed allocation.
    let capped = policed("[limits]\nguest-memory-bytes = 67108864\n");
    let (_, lines) = run_lines(&capped, "hostile", &["grow"]).expect("the guest ran");
    let mb = case(&lines, "grow-refused")["mb"].as_u64().unwrap();
    assert!(mb < 64, "grew to {mb} MB under a 64 MB limit");

    assert_eq!(chat(), before, "the chat after the abuse differs from the one before");
}

#[test]
fn concurrent_guests_hammering_one_model_all_get_answers() {
    let _serial = serial();
    let before = chat();
    let runtime = policed("");
    thread::scope(|scope| {
        // Two matrices (at most two sessions each) and two chats fit well in the
        // engine's eight sessions; more would be refused with limit-exceeded.
        let hammers: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| run_lines(&runtime, "hostile", &["bad-inputs", MODEL]).expect("the guest ran")))
            .collect();
        let chats: Vec<_> = (0..2).map(|_| scope.spawn(chat)).collect();
        for h in hammers {
            let (code, lines) = h.join().expect("a hammer thread");
            assert_eq!(code, 0);
            assert!(ok(&lines, "after-matrix").contains("Paris"));
        }
        for c in chats {
            // Batch shapes differ under load, so only the first reply's start is stable.
            let lines = c.join().expect("a chat thread");
            assert!(!lines.as_array().unwrap().is_empty());
        }
    });
    assert_clean(MODEL);
    assert_eq!(chat(), before, "the chat after the hammering differs from the one before");
}
