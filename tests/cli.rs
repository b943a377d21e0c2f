//! The CLI and the chat as a new user meets them, through the built binary:
//! every mistake gets a sentence that says what is wrong, before any model
//! is loaded where it can be.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wasi_nn_llm_tests::{GEMMA, MODEL, guest, host_cli, model_path};

fn run(args: &[&str], stdin: &str, dir: Option<&Path>) -> Output {
    use std::io::Write;
    let mut command = Command::new(host_cli());
    command.arg("run").args(["--threads", "2"]);
    if let Some(dir) = dir {
        command.current_dir(dir).args(["--dir", "."]);
    }
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the host");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    child.wait_with_output().expect("running the host")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The host refuses `args` with a message containing `expected`, loading no model.
fn refused(args: &[&str], expected: &str) {
    let out = run(args, "", None);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} should fail: {err}");
    assert!(err.contains(expected), "{args:?}: expected {expected:?} in {err:?}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A GGUF header with one key and no tensors: valid, but for an
/// architecture no llama.cpp knows.
fn gguf_of_unknown_architecture() -> Vec<u8> {
    let string = |s: &str| [(s.len() as u64).to_le_bytes().as_slice(), s.as_bytes()].concat();
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes()); // version
    bytes.extend(0u64.to_le_bytes()); // tensors
    bytes.extend(1u64.to_le_bytes()); // key-value pairs
    bytes.extend(string("general.architecture"));
    bytes.extend(8u32.to_le_bytes()); // GGUF_TYPE_STRING
    bytes.extend(string("nosucharch"));
    bytes
}

#[test]
fn a_bad_model_file_gets_its_own_sentence_before_llama_cpp_sees_it() {
    let dir = scratch("models");
    let chat = guest("chat");
    let chat = chat.to_str().unwrap();
    let path = |name: &str| dir.join(name).display().to_string();

    refused(&["--model", "foo=/nonexistent.gguf", chat], "no such file: /nonexistent.gguf");

    std::fs::write(dir.join("text.gguf"), "just some text\n").unwrap();
    refused(&["--model", &format!("foo={}", path("text.gguf")), chat], "text.gguf is not a GGUF file");

    std::fs::create_dir_all(dir.join("folder.gguf")).unwrap();
    refused(&["--model", &format!("foo={}", path("folder.gguf")), chat], "folder.gguf is a directory");

    let real = std::fs::read(model_path(MODEL)).unwrap();
    std::fs::write(dir.join("head.gguf"), &real[..1000]).unwrap();
    refused(&["--model", &format!("foo={}", path("head.gguf")), chat], "head.gguf is a damaged GGUF file");
    std::fs::write(dir.join("half.gguf"), &real[..real.len() / 2]).unwrap();
    refused(&["--model", &format!("foo={}", path("half.gguf")), chat], "half.gguf is cut short");

    std::fs::write(dir.join("alien.gguf"), gguf_of_unknown_architecture()).unwrap();
    refused(&["--model", &format!("foo={}", path("alien.gguf")), chat], "architecture \"nosucharch\"");
}

#[test]
fn a_catalog_model_registers_under_another_name() {
    let out = run(&["--model", "default=smollm2", guest("chat").to_str().unwrap(), "default"], "", None);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("loading model \"default\""), "{err}");
    assert!(err.contains("chatting with \"default\""), "{err}");
    // A path needs a name; a name that is neither is neither.
    let chat = guest("chat");
    refused(&["--model", "./x.gguf", chat.to_str().unwrap()], "a path needs a name");
    refused(&["--model", "foo=nosuchmodel", chat.to_str().unwrap()], "\"nosuchmodel\" is neither a path");
}

#[test]
fn a_bad_component_fails_before_any_model_is_loaded() {
    let dir = scratch("components");
    let text = dir.join("not-a-component.wasm");
    std::fs::write(&text, "hello").unwrap();
    for (file, expected) in [
        (dir.join("missing.wasm"), "no such file"),
        (text, "is not WebAssembly"),
        (guest("chat").with_file_name("does-not-exist.wasm"), "no such file"),
    ] {
        let out = run(&["--model", "smollm2", file.to_str().unwrap()], "", None);
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("loading model"), "no model may load before the component is checked: {err}");
    }
}

#[test]
fn zero_counts_are_refused_with_the_valid_range() {
    for (flag, range) in [
        ("--ctx-size", "16..=1048576"),
        ("--max-sessions", "1..=256"),
        ("--lanes", "1..=256"),
        ("--threads", "1..=512"),
    ] {
        let out = Command::new(host_cli()).args(["run", flag, "0", "--model", "smollm2", "c.wasm"]).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{flag} 0 was accepted");
        assert!(err.contains(&format!("0 is not in {range}")), "{flag}: {err}");
    }
}

#[test]
fn the_chat_says_what_is_wrong_in_sentences() {
    let dir = scratch("chat");
    let chat = guest("chat");
    let chat = chat.to_str().unwrap();
    std::fs::write(dir.join("notes.txt"), "not a conversation").unwrap();

    let out = run(&["--model", MODEL, chat], "/undo\n/load notes.txt\nHi!\n/save smol.chat\n", Some(&dir));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[nothing to undo]"), "{err}");
    assert!(err.contains("[notes.txt is not a saved conversation]"), "{err}");
    assert!(err.contains("[saved to smol.chat]"), "{err}");

    // A damaged copy, and a conversation from the other model.
    let mut saved = std::fs::read(dir.join("smol.chat")).unwrap();
    let middle = saved.len() / 2;
    saved[middle] ^= 0xff;
    std::fs::write(dir.join("damaged.chat"), saved).unwrap();
    let out = run(&["--model", GEMMA, chat, GEMMA], "Hi!\n/save gemma.chat\n", Some(&dir));
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(&["--model", MODEL, chat], "/load damaged.chat\n/load gemma.chat\n/load smol.chat\n", Some(&dir));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[damaged.chat is damaged"), "{err}");
    // A later run on this machine seals with the same key, kept in the cache directory.
    assert!(err.contains("[loaded smol.chat as branch 1]"), "{err}");
    assert!(err.contains("[gemma.chat was saved from another model (this chat runs \"smollm2\")]"), "{err}");
    for line in err.lines().filter(|l| l.starts_with('[')) {
        assert!(!line.contains("::") && !line.contains("Error"), "Debug text reached the user: {line}");
    }

    // A host with another snapshot key refuses the conversation, and says it may be why.
    let other = dir.join("other.key");
    std::fs::remove_file(&other).ok();
    wasi_nn_llm_host::engine::SnapshotKey::create(&other).unwrap();
    let out =
        run(&["--snapshot-key", other.to_str().unwrap(), "--model", MODEL, chat], "/load smol.chat\n", Some(&dir));
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("[smol.chat is damaged, or was saved by a host with another snapshot key]"), "{err}");
}

#[test]
fn a_guests_bad_base_wasi_nn_calls_do_not_flood_the_operators_log() {
    // The hostile guest's matrix makes 14 failing base wasi-nn calls (and
    // many failing extension calls); with RUST_BACKTRACE set, wasmtime-wasi-nn's
    // glue logged each as an ERROR with a backtrace of about 130 lines.
    let model = format!("{MODEL}={}", model_path(MODEL).display());
    let out = Command::new(host_cli())
        .args(["run", "--threads", "2", "--model", &model])
        .arg(guest("hostile"))
        .args(["bad-inputs", MODEL])
        .env("RUST_BACKTRACE", "1")
        .env_remove("WASI_NN_LLM_LOG")
        .output()
        .expect("running the host");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"case\":\"compute-no-inputs\""), "the guest made its bad calls: {stdout}");
    assert!(!err.contains("ERROR") && !err.contains("backtrace"), "{err}");
    assert!(err.lines().count() < 20, "the operator's log holds {} lines:\n{err}", err.lines().count());
}
