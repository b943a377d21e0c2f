//! The candle backend behind the engine seam: the chat guest runs on it
//! unchanged, and a snapshot names the backend that wrote it, so neither
//! backend loads the other's state. (Its conformance: `conformance.rs`.)

use std::io::Write as _;
use std::process::{Command, Stdio};

use wasi_nn_llm_host::engine::{BackendKind, Engine, EngineConfig, Quota, SessionOptions};
use wasi_nn_llm_host::error::{LlmError, SnapshotError};
use wasi_nn_llm_tests::{CTX_SIZE, MODEL, THREADS, chatml, guest, host, host_cli, model_path};

fn candle() -> Engine {
    let config =
        EngineConfig { backend: BackendKind::Candle, threads: THREADS, ctx_size: CTX_SIZE, ..EngineConfig::default() };
    Engine::load(MODEL, &model_path(MODEL), &config).expect("candle loads SmolLM2")
}

#[test]
fn the_chat_guest_runs_unchanged_on_candle() {
    let mut child = Command::new(host_cli())
        .args([
            "run",
            "--threads",
            "2",
            "--backend",
            "candle",
            "--model",
            &format!("{MODEL}={}", model_path(MODEL).display()),
        ])
        .arg(guest("chat"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the host");
    child.stdin.take().expect("stdin").write_all(b"What is the capital of France?\n").expect("writing the question");
    let out = child.wait_with_output().expect("the chat ends at end of input");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("model \"{MODEL}\": candle")), "the host says which backend serves: {stderr}");
    assert!(stdout.contains("Paris"), "a greedy SmolLM2 on candle knows the capital: {stdout}");
    assert!(stderr.contains("[end-of-sequence"), "the reply ends at end of sequence: {stderr}");
}

#[test]
fn a_snapshot_is_refused_by_the_other_backend_by_name() {
    let (candle, llama, quota) = (candle(), host().engine(), Quota::unlimited());
    let saved = |engine: &Engine| {
        let session = engine.open_session(&SessionOptions::default(), &quota).expect("a session");
        session.append(&chatml("Hello there")).expect("append");
        session.save().expect("save")
    };
    let refused = |engine: &Engine, blob: &[u8]| match engine.restore_session(blob, &quota) {
        Err(LlmError::InvalidSnapshot(SnapshotError::OtherBackend(backend))) => backend,
        Ok(_) => panic!("{:?} restored another backend's state", engine.backend()),
        Err(e) => panic!("{:?}: expected other-backend, got {e}", engine.backend()),
    };
    assert_eq!(refused(&candle, &saved(llama)), "llama.cpp");
    assert_eq!(refused(llama, &saved(&candle)), "candle");
    // Each still restores its own.
    let own = candle.restore_session(&saved(&candle), &quota).expect("candle restores its own state");
    assert_eq!(
        own.tokens().expect("tokens").len(),
        candle.count_tokens(&chatml("Hello there")).expect("count") as usize
    );
}

#[test]
fn lark_and_json_schema_hold_on_candle_and_gbnf_is_llama_cpps_alone() {
    use wasi_nn_llm_host::engine::{Constraint, Feature, GenerateParams};
    let (candle, quota) = (candle(), Quota::unlimited());
    assert!(!candle.features().contains(&Feature::Gbnf), "{:?}", candle.features());
    assert!(host().engine().features().contains(&Feature::Gbnf));
    let generate = |constraint: Constraint| {
        let session = candle.open_session(&SessionOptions::default(), &quota).expect("a session");
        session.append(&chatml("Name a city and its population as JSON.")).expect("append");
        let params = GenerateParams { constraint: Some(constraint), ..GenerateParams::greedy(256) };
        let mut stream = session.generate(&params)?;
        let mut text = String::new();
        while let Some(chunk) = stream.next_chunk()? {
            text.push_str(&chunk.text);
        }
        Ok::<_, LlmError>((text, stream.finish().expect("a finish").reason.clone()))
    };
    let (text, reason) = generate(Constraint::Lark(r#"start: "yes" | "no""#.into())).expect("lark");
    assert!(text == "yes" || text == "no", "{text:?} ({reason:?})");
    assert_eq!(reason, wasi_nn_llm_host::engine::FinishReason::EndOfSequence);
    let schema = r#"{"type":"object","properties":{"city":{"type":"string"},"population":{"type":"integer"}},"required":["city","population"],"additionalProperties":false}"#;
    let (text, _) = generate(Constraint::JsonSchema(schema.into())).expect("json schema");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert!(value["city"].is_string() && value["population"].is_i64(), "{value}");
    match generate(Constraint::Grammar(r#"root ::= "a""#.into())) {
        Err(LlmError::Unsupported(why)) => assert!(why.contains("GBNF"), "{why}"),
        other => panic!("GBNF on candle: {other:?}"),
    }
    assert!(matches!(generate(Constraint::Lark("start: (".into())), Err(LlmError::InvalidGrammar(_))));
}
