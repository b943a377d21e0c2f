//! Saved sessions: restored in a new host process they continue exactly as
//! the original; a damaged or foreign blob is refused with a typed error.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use wasi_nn_llm_host::engine::snapshot::Snapshot;
use wasi_nn_llm_tests::{CTX_SIZE, MODEL, MODELS, chatml, guest, host, host_cli, model_path};

/// Run the probe in a fresh host process with both test models and `dir`
/// visible to it as /data.
fn probe_process(dir: &Path, args: &[&str]) -> Vec<Value> {
    let models: Vec<String> = MODELS.iter().map(|m| format!("{m}={}", model_path(m).display())).collect();
    let out = Command::new(host_cli())
        .args(["run", "--threads", "2", "--ctx-size", &CTX_SIZE.to_string()])
        .args(models.iter().flat_map(|m| ["--model", m.as_str()]))
        .arg("--dir")
        .arg(format!("{}::/data", dir.display()))
        .arg(guest("probe"))
        .args(args)
        .output()
        .expect("running the host");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-snapshot-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn save_then_restore_in_a_new_process_continues_with_the_same_tokens() {
    let dir = scratch("roundtrip");
    for model in MODELS {
        let prompt = host().user_prompt(model, "Tell me a story about a brave knight.");
        let file = format!("/data/{model}.bin");
        let saved = probe_process(&dir, &["save", model, &file, &prompt]);
        let restored = probe_process(&dir, &["restore", model, &file]);
        let (saved, restored) = (&saved[0], &restored[0]);
        assert_eq!(saved["continued"].as_array().unwrap().len(), 24, "{model}");
        assert_eq!(restored["continued"], saved["continued"], "{model}: restored {restored}\nsaved {saved}");
        // Restoring reuses the whole KV cache: only the pending last token is evaluated.
        assert_eq!(restored["finish"]["cached"], saved["finish"]["cached"]);
        assert_eq!(saved["fork-restored"], saved["continued"], "{model}: a fork saved before its KV copy settled");
    }
    // A snapshot is bound to its model.
    let lines = probe_process(&dir, &["restore", wasi_nn_llm_tests::GEMMA, &format!("/data/{MODEL}.bin")]);
    assert_eq!(lines[0]["llm-error"], "Error::InvalidSnapshot(SnapshotError::WrongModel)");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn damaged_or_foreign_snapshots_are_refused_with_typed_errors() {
    let dir = scratch("bad");
    probe_process(&dir, &["save", MODEL, "/data/good.bin", &chatml("Hello!")]);
    let good = std::fs::read(dir.join("good.bin")).unwrap();
    let identity = host().engine().identity().unwrap();
    let snapshot = Snapshot::decode(&good, &identity).expect("the saved blob is valid");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let mut version = good.clone();
    version[8..12].copy_from_slice(&99u32.to_le_bytes());
    let foreign = Snapshot { model: [0xAB; 32], ..snapshot }.encode();
    let cases: [(&str, &[u8], &str); 5] = [
        ("truncated", &good[..good.len() - 100], "Truncated"),
        ("header-only", &good[..20], "Truncated"),
        ("bit-flip", &flipped, "Corrupted"),
        ("version", &version, "WrongVersion"),
        ("other-model", &foreign, "WrongModel"),
    ];
    for (name, blob, expected) in cases {
        std::fs::write(dir.join(name), blob).unwrap();
        let lines = probe_process(&dir, &["restore", MODEL, &format!("/data/{name}")]);
        let error = lines[0]["llm-error"].as_str().unwrap_or_else(|| panic!("{name}: {}", lines[0]));
        assert_eq!(error, format!("Error::InvalidSnapshot(SnapshotError::{expected})"), "{name}");
    }
    std::fs::remove_dir_all(dir).ok();
}
