//! WasmEdge's GGML ABI (`wasi_ephemeral_nn`): the peer's own published
//! example guests, unmodified, answer on this host as the extension does
//! for the same prompt; the streaming one streams; the metadata output
//! parses as their code expects; a history re-sent every turn is prefilled
//! only from where it differs; and no bad input takes the host down.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcessStdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasi_nn_llm_host::runner::{Output, Runtime, Stdio};
use wasi_nn_llm_tests::{
    MODEL, Streamed, case, chatml, guest, guest_p1, host, host_cli, policed, serial, sha256_hex, workspace_root,
};

/// The three examples of second-state/WasmEdge-WASINN-examples, as published
/// (tests/wasmedge/README.md), with their SHA-256.
const BASIC: (&str, &str) =
    ("wasmedge-ggml-basic.wasm", "e808cd04e8b21b7a48a18d091bd5f2bfb78da3bd990201c9d4b2c8c7f9e43725");
const LLAMA: (&str, &str) =
    ("wasmedge-ggml-llama.wasm", "7dfe842dd0568da3bc50f6703a3ec257b067b7a12e6ef5e2e5e30bb1bfe83907");
const LLAMA_STREAM: (&str, &str) =
    ("wasmedge-ggml-llama-stream.wasm", "59019cf3429832bbf66d95257442df07a2a7f3055f47e2a08f439d25c12cab3c");

/// The operator's greedy setting, over what the guests ask for (they sample
/// at 0.1 and 0.8 with random seeds).
const GREEDY: &str = "[wasi-ephemeral-nn]\nconfig = { temp = 0.0 }\n";

/// A published guest, checked against its pinned digest.
fn published((file, sha256): (&str, &str)) -> PathBuf {
    let path = workspace_root().join("tests/wasmedge").join(file);
    assert_eq!(sha256_hex(&path), sha256, "{file} is not the published build");
    path
}

fn run(runtime: &Runtime, wasm: &Path, args: &[&str], stdin: &str) -> Output {
    let guest = runtime.load(wasm).expect("compiling the guest");
    let name = wasm.file_name().unwrap().to_string_lossy().into_owned();
    let argv: Vec<String> = std::iter::once(name).chain(args.iter().map(|a| a.to_string())).collect();
    runtime.run(&guest, &argv, Stdio::Captured { stdin: stdin.as_bytes().to_vec() }, &[]).expect("the guest ran")
}

/// The extension's greedy reply to `prompt` (the probe guest, up to `max` tokens).
fn extension_reply(prompt: &str, max: u32) -> (String, u64, u64) {
    let lines = host().probe(&["generate", MODEL, &max.to_string(), prompt]);
    let streamed = Streamed::parse(&lines);
    assert_eq!(streamed.finish["reason"], "FinishReason::EndOfSequence", "{lines:?}");
    let appended = lines.iter().find_map(|l| l["appended"].as_u64()).expect("the appended count");
    (streamed.text(), appended, streamed.tokens().len() as u64)
}

/// The value after `label` on one of the guest's `[INFO]` lines.
fn info<'a>(stdout: &'a str, label: &str) -> Vec<&'a str> {
    stdout.lines().filter_map(|l| l.strip_prefix(&format!("[INFO] {label}: "))).collect()
}

#[test]
fn the_published_guests_answer_as_the_extension_does() {
    let _serial = serial();
    let prompt = chatml("Write two sentences about the sea.");
    let (reply, input_tokens, output_tokens) = extension_reply(&prompt, 256);
    assert!(reply.len() > 40, "a reply of some length: {reply:?}");
    let runtime = policed(GREEDY);

    // basic: raw prompt, stream-stdout: the host writes the reply to the
    // guest's stdout during compute; the guest prints the rest.
    let out = run(&runtime, &published(BASIC), &[MODEL, &prompt], "");
    assert_eq!(out.exit_code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("Prompt:\n{prompt}\nResponse:\n{reply}\n"));

    // llama and llama-stream: the metadata before compute, the reply, the counts.
    for wasm in [published(LLAMA), published(LLAMA_STREAM)] {
        let out = run(&runtime, &wasm, &[MODEL, &prompt], "");
        assert_eq!(out.exit_code, 0, "{}: {}", wasm.display(), out.stderr);
        let (_, after) = out.stdout.split_once("Response:\n").expect("a response");
        let lines: Vec<&str> = after.lines().collect();
        assert_eq!(
            lines[..3],
            [
                &format!("[INFO] llama_commit: \"{}\"", wasi_nn_llm_host::backend::llama_cpp::BACKEND.1),
                "[INFO] llama_build_number: 0",
                &format!("[INFO] Number of input tokens: {input_tokens}")
            ]
        );
        let text = lines[3..lines.len() - 2].join("\n");
        assert_eq!(text.trim(), reply.trim(), "{}", wasm.display());
        let (input, output) = (input_tokens.to_string(), output_tokens.to_string());
        assert_eq!(info(&out.stdout, "Number of input tokens"), [input.as_str(), input.as_str()]);
        assert_eq!(info(&out.stdout, "Number of output tokens"), [output.as_str()]);
        // Said once, though the guest sends the same metadata again.
        assert_eq!(
            out.stderr.matches("n-gpu-layers ignored").count(),
            1,
            "the ignored key is said once: {}",
            out.stderr
        );
    }
}

#[test]
fn the_streaming_guest_streams_piece_by_piece() {
    // The host CLI in a process of its own, its stdout read as it comes.
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-wasmedge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("greedy.toml");
    let model = wasi_nn_llm_tests::model_path(MODEL);
    std::fs::write(&policy, format!("[models.{MODEL}]\npath = {:?}\n{GREEDY}", model.display())).unwrap();
    let prompt = chatml("Write a short poem about the sea.");
    let mut child = Command::new(host_cli())
        .args(["run", "--threads", "2", "--policy", policy.to_str().unwrap()])
        .arg(published(LLAMA_STREAM))
        .args([MODEL, &prompt])
        .stdout(ProcessStdio::piped())
        .stderr(ProcessStdio::null())
        .spawn()
        .expect("starting the host");
    let mut stdout = child.stdout.take().expect("stdout");
    let (mut text, mut arrivals) = (Vec::new(), Vec::new());
    let mut buffer = [0u8; 4096];
    loop {
        let n = stdout.read(&mut buffer).expect("reading the host's stdout");
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buffer[..n]);
        arrivals.push((Instant::now(), text.len()));
    }
    assert!(child.wait().expect("the host ended").success());
    let text = String::from_utf8(text).expect("UTF-8 output");
    let reply_start = text.find("tokens: ").and_then(|i| text[i..].find('\n').map(|j| i + j + 1)).expect("the reply");
    let reply_end = text.rfind("\n[INFO] Number of input tokens").expect("the counts after the reply");
    // The reply's bytes came in many reads, spread over its generation.
    let during: Vec<Instant> =
        arrivals.iter().filter(|(_, len)| *len > reply_start && *len <= reply_end + 1).map(|(t, _)| *t).collect();
    assert!(during.len() >= 5, "the reply came in {} reads: {text}", during.len());
    let spread = *during.last().unwrap() - during[0];
    assert!(spread > Duration::from_millis(100), "the reply's pieces arrived within {spread:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A chat through the ABI with the whole history re-sent every turn.
fn resent_chat(runtime: &Runtime) -> Vec<Value> {
    let questions = ["What is the capital of France?", "And of Italy?", "Which of the two is larger?"];
    let args: Vec<&str> = ["chat", MODEL, "chatml", "24"].into_iter().chain(questions).collect();
    let out = run(runtime, &guest_p1("wasmedge-probe"), &args, "");
    assert_eq!(out.exit_code, 0, "{}\n{}", out.stdout, out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

#[test]
fn a_resent_history_is_prefilled_only_where_it_differs() {
    let _serial = serial();
    let kept = resent_chat(&policed(""));
    let cleared = resent_chat(&policed("[wasi-ephemeral-nn]\nreuse-kv = false\n"));
    assert_eq!(kept[0]["text"], cleared[0]["text"], "the first turn is the same either way");
    assert_eq!(kept[0]["text"], "The capital of France is Paris.");
    assert_eq!(kept[0]["cached_tokens"], 0);
    for turn in 1..kept.len() {
        let (previous, this) = (&kept[turn - 1], &kept[turn]);
        // The previous prompt and the reply's tokens, as re-tokenized.
        let held = previous["input_tokens"].as_u64().unwrap() + previous["output_tokens"].as_u64().unwrap();
        assert_eq!(this["cached_tokens"].as_u64(), Some(held), "turn {}: {this}", turn + 1);
        assert_eq!(cleared[turn]["cached_tokens"], 0, "without reuse nothing is kept: {}", cleared[turn]);
        assert!(this["pieces"].as_u64().unwrap() > 0);
    }
}

#[test]
fn no_bad_input_takes_the_host_down_and_it_serves_the_same_answer_after() {
    let _serial = serial();
    let runtime = policed(GREEDY);
    let prompt = chatml("What is the capital of France?");
    let before = run(&runtime, &published(LLAMA), &[MODEL, &prompt], "").stdout;

    let out = run(&runtime, &guest_p1("wasmedge-probe"), &["bad", MODEL], "");
    assert_eq!(out.exit_code, 0, "{}\n{}", out.stdout, out.stderr);
    let lines: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let (invalid, encoding, too_large, not_found, unsupported) = (1, 2, 7, 8, 6);
    for (name, errno) in [
        ("load-unknown-model", not_found),
        ("load-bytes", unsupported),
        ("load-preload-path", unsupported),
        ("load-onnx-encoding", encoding),
        ("load-builders-past-memory", invalid),
        ("name-past-memory", invalid),
        ("name-length-negative", too_large),
        ("name-not-utf8", invalid),
        ("graph-out-past-memory", invalid),
        ("config-not-json", encoding),
        ("config-not-object", encoding),
        ("config-wrong-type", invalid),
        ("config-host-path", invalid),
        ("config-past-memory", invalid),
        ("config-unknown-keys-ignored", 0),
        ("context-of-unknown-graph", invalid),
        ("set-input-unknown-context", invalid),
        ("compute-unknown-context", invalid),
        ("compute-single-unknown-context", invalid),
        ("fini-single-unknown-context", invalid),
        ("get-output-unknown-context", invalid),
        ("unload-unknown-graph", invalid),
        ("finalize-unknown-context", invalid),
        ("unload", 0),
        ("unload-twice", invalid),
        ("context-out-past-memory", invalid),
        ("tensor-past-memory", invalid),
        ("tensor-data-past-memory", invalid),
        ("tensor-dims-past-memory", invalid),
        ("tensor-type-f32", invalid),
        ("prompt-not-utf8", invalid),
        ("config-input-not-json", encoding),
        ("compute-before-input", invalid),
        ("compute-single-before-input", invalid),
        ("get-output-before-compute", 0),
        ("fini-single-before-compute-single", 0),
        ("get-output-buffer-past-memory", invalid),
        ("get-output-written-past-memory", invalid),
        ("prompt-too-long", 102),
        ("prompt-too-long-single", 102),
        ("context-full", 101),
        ("context-full-single", 101),
        ("n-predict-zero", 0),
        ("n-predict-zero-output", 0),
        ("too-many-contexts", too_large),
        ("normal-compute", 0),
        ("finalize", 0),
    ] {
        assert_eq!(case(&lines, name)["errno"], errno, "{name}: {}", out.stderr);
    }
    assert_eq!(case(&lines, "normal-output")["text"], "The capital of France is Paris.");
    // Every errno's reason is on the guest's stderr.
    for reason in
        ["no model is registered as \"no-such-model\"", "names a host file", "prompt-too-long", "context-full"]
    {
        assert!(out.stderr.contains(reason), "{reason:?} missing from {}", out.stderr);
    }

    // Nothing leaked, and the same process answers as before.
    let engine = host().engine();
    let quota = wasi_nn_llm_host::engine::Quota::unlimited();
    let all: Vec<_> = (0..engine.max_sessions())
        .map(|i| {
            engine.open_session(&Default::default(), &quota).unwrap_or_else(|e| panic!("slot {i} still taken: {e}"))
        })
        .collect();
    drop(all);
    assert_eq!(run(&runtime, &published(LLAMA), &[MODEL, &prompt], "").stdout, before);
}

#[test]
fn the_policy_governs_this_door_as_the_others() {
    let _serial = serial();
    let prompt = chatml("What is the capital of France?");
    let probe = guest_p1("wasmedge-probe");
    let chat_args = ["chat", MODEL, "chatml", "8", "Hello"];

    // A closed door.
    let out = run(&policed("[interfaces]\nwasi-ephemeral-nn = false\n"), &probe, &chat_args, "");
    assert_eq!(out.exit_code, 1);
    assert!(out.stdout.contains("load: errno 6") && out.stderr.contains("closes wasi_ephemeral_nn"), "{}", out.stderr);

    // Grants: by component (file) name, the reason names both.
    let granted = policed(&format!("[[grants]]\ncomponent = \"wasmedge-ggml-llama\"\nmodels = [\"{MODEL}\"]\n"));
    assert_eq!(run(&granted, &published(LLAMA), &[MODEL, &prompt], "").exit_code, 0);
    let out = run(&granted, &probe, &chat_args, "");
    assert!(out.stdout.contains("load: errno 8"), "{}", out.stdout);
    assert!(out.stderr.contains("does not let component \"wasmedge-probe\" use model"), "{}", out.stderr);

    // The operator's context caps the guest's ctx-size, and says so.
    let out = run(&policed("[wasi-ephemeral-nn]\nconfig = { ctx-size = 99999 }\n"), &probe, &chat_args, "");
    assert_eq!(out.exit_code, 0);
    assert!(out.stderr.contains("ctx-size 99999 capped"), "{}", out.stderr);

    // The operator's own config is read strictly.
    let policy = wasi_nn_llm_host::policy::Policy::parse("[wasi-ephemeral-nn]\nconfig = { tmep = 0.0 }\n").unwrap();
    let refused = Runtime::with_policy(host().runtime.models().clone(), std::sync::Arc::new(policy));
    assert!(refused.is_err_and(|e| format!("{e:#}").contains("\"tmep\" is not one this host uses")));
}

#[test]
fn guest_wasm_files_are_told_apart() {
    // `run` takes a wasip1 module, `serve` does not.
    assert!(Runtime::check_guest(&published(LLAMA)).is_ok());
    let refused = Runtime::check_component(&published(LLAMA)).unwrap_err();
    assert!(format!("{refused}").contains("core WebAssembly module"));
    assert!(Runtime::check_guest(&guest("chat")).is_ok());
}
