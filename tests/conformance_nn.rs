//! The base wasi-nn conformance suite (`tests/spec/base`, a guest built
//! from the spec's WIT alone) on two hosts, both wasmtime: wasmtime 48's own
//! wasi-nn with its ONNX backend (`wasi-nn-stock-host`, nothing of this
//! project in its wasi-nn path) and this project's host with its ggml
//! backend, in both of its conventions (text and tensor).
//!
//! Each host runs in a process of its own, and a check that takes its host
//! down (a panic, a trap) is one failed statement: the suite is run again
//! without it. The test passes when the matrix (statement × host) equals the
//! one checked in to `tests/spec/base/RESULTS.md`, not when every host
//! meets every statement; and the statements alone are the ones in
//! `tests/spec/base/STATEMENTS.md`. `CONFORMANCE_NN_BLESS=1` writes both
//! instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use wasi_nn_llm_tests::{MODEL, check_generated_block, guest, host_cli, model_path, workspace_root};

const BEGIN: &str = "<!-- matrix: written by tests/conformance_nn.rs (CONFORMANCE_NN_BLESS=1); do not edit by hand -->";
const STATEMENTS_BEGIN: &str = "<!-- statements: written by tests/conformance_nn.rs (CONFORMANCE_NN_BLESS=1) from the checks; do not edit by hand -->";
const END: &str = "<!-- end of generated table -->";
const BLESS: &str = "CONFORMANCE_NN_BLESS";
const RERUN: &str = "cargo test --release --test conformance_nn";

/// The onnxruntime library `make test` unpacks from the registry's wheel.
const ORT_LIBRARY: &str = "target/onnxruntime/libonnxruntime.so.1.22.1";

fn suite_dir() -> PathBuf {
    workspace_root().join("tests/spec/base")
}

/// One host under test: its name in the matrix, its command line before
/// the suite's arguments, and its fixture profile.
struct Host {
    name: &'static str,
    command: Vec<String>,
    env: Vec<(&'static str, String)>,
    profile: &'static str,
}

fn hosts() -> Vec<Host> {
    let root = workspace_root();
    let stock = root.join("target/release/wasi-nn-stock-host");
    assert!(stock.is_file(), "{} is missing: run the tests with `make test`", stock.display());
    let ort = root.join(ORT_LIBRARY);
    assert!(ort.is_file(), "{} is missing: `make test` installs it (scripts/bootstrap.sh)", ort.display());
    let fixtures = suite_dir().join("fixtures");
    let graph = |name: &str| ["--graph".to_owned(), fixtures.join(name).display().to_string()];
    let ours = |profile| Host {
        name: if profile == "ggml-text" { "wasi-nn-llm, text convention" } else { "wasi-nn-llm, tensor convention" },
        command: vec![
            host_cli().display().to_string(),
            "run".into(),
            "--threads".into(),
            "2".into(),
            "--model".into(),
            format!("conformance={}", model_path(MODEL).display()),
        ],
        env: Vec::new(),
        profile,
    };
    vec![
        Host {
            name: "wasmtime-wasi-nn 48 (ONNX)",
            command: [vec![stock.display().to_string()], graph("doubler").to_vec(), graph("int-doubler").to_vec()]
                .concat(),
            env: vec![("ORT_DYLIB_PATH", ort.display().to_string())],
            profile: "onnx",
        },
        ours("ggml-text"),
        ours("ggml-tensor"),
    ]
}

/// A check's line in the matrix.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    statement: Value,
    cells: BTreeMap<&'static str, String>,
}

/// Run the suite on `host` until every check has an outcome: a check that
/// began and never reported took the host down, and the rest run again.
fn run(host: &Host, rows: &mut Vec<Row>) {
    let component = guest("conformance-nn");
    let profile = std::fs::read_to_string(suite_dir().join("profiles").join(format!("{}.json", host.profile)))
        .expect("reading the profile");
    let mut skip: Vec<String> = Vec::new();
    loop {
        let out = Command::new(&host.command[0])
            .args(&host.command[1..])
            .arg(&component)
            .arg(&profile)
            .arg(skip.join(","))
            .envs(host.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("starting the host");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut begun: Option<Value> = None;
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
            if let Some(statement) = v.get("begin") {
                begun = Some(statement.clone());
                continue;
            }
            begun = None;
            let observed = v["observed"].as_str().unwrap_or_default();
            let cell = match v["result"].as_str() {
                Some("pass") => format!("pass: {observed}"),
                Some("fail") => format!("**fail**: {observed}"),
                _ => format!("n/a: {observed}"),
            };
            record(rows, &v, host.name, cell);
        }
        match begun {
            Some(statement) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                record(rows, &statement, host.name, format!("**fail**: {}", died(&stderr)));
                skip.push(statement["id"].as_str().expect("a check id").to_owned());
            }
            None => {
                assert!(
                    out.status.success() || stdout.contains("\"result\""),
                    "{}: the suite did not run:\n{stdout}\n{}",
                    host.name,
                    String::from_utf8_lossy(&out.stderr)
                );
                return;
            }
        }
    }
}

fn record(rows: &mut Vec<Row>, statement: &Value, host: &'static str, cell: String) {
    let id = &statement["id"];
    let statement = serde_json::json!({
        "id": id, "level": statement["level"], "statement": statement["statement"], "cite": statement["cite"]
    });
    match rows.iter_mut().find(|r| r.statement["id"] == *id) {
        Some(row) => {
            row.cells.insert(host, cell);
        }
        None => rows.push(Row { statement, cells: BTreeMap::from([(host, cell)]) }),
    }
}

/// How a host process died, from its stderr, without what differs between
/// machines (paths, thread ids).
fn died(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains(" panicked at ")) {
        let place = lines[i].split(" panicked at ").nth(1).unwrap_or_default().trim_end_matches(':');
        let place = place.rsplit_once("registry/src/").map_or(place, |(_, p)| p);
        let place = place.split_once('/').map_or(place, |(_, p)| p);
        return format!("the host panicked at {place}: {}", lines.get(i + 1).copied().unwrap_or_default().trim());
    }
    let last = lines.iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or("no message");
    format!("the host process ended: {}", last.trim())
}

fn matrix(hosts: &[Host], rows: &[Row]) -> String {
    let escape = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut text = String::from("| statement | level | spec |");
    for h in hosts {
        text.push_str(&format!(" {} |", h.name));
    }
    text.push_str("\n|---|---|---|");
    text.push_str(&"---|".repeat(hosts.len()));
    text.push('\n');
    for row in rows {
        let s = &row.statement;
        text.push_str(&format!(
            "| `{}`: {} | {} | {} |",
            s["id"].as_str().unwrap_or_default(),
            escape(s["statement"].as_str().unwrap_or_default()),
            s["level"].as_str().unwrap_or_default(),
            s["cite"].as_str().unwrap_or_default()
        ));
        for h in hosts {
            text.push_str(&format!(" {} |", escape(row.cells.get(h.name).map_or("not run", String::as_str))));
        }
        text.push('\n');
    }
    text
}

/// The statements alone, for `STATEMENTS.md`: what a host is held to,
/// whichever host answers.
fn statements(rows: &[Row]) -> String {
    let mut text = String::from("| id | level | spec (`wasi-nn.wit`) | statement |\n|---|---|---|---|\n");
    for row in rows {
        let s = &row.statement;
        text.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s["id"].as_str().unwrap_or_default(),
            s["level"].as_str().unwrap_or_default(),
            s["cite"].as_str().unwrap_or_default(),
            s["statement"].as_str().unwrap_or_default().replace('|', "\\|")
        ));
    }
    text
}

#[test]
fn the_suite_runs_on_both_hosts_and_its_matrix_is_the_checked_in_one() {
    let hosts = hosts();
    let mut rows = Vec::new();
    for host in &hosts {
        run(host, &mut rows);
    }
    assert!(rows.len() >= 15, "only {} statements were checked", rows.len());
    for (file, begin, table) in
        [("STATEMENTS.md", STATEMENTS_BEGIN, statements(&rows)), ("RESULTS.md", BEGIN, matrix(&hosts, &rows))]
    {
        check_generated_block(&suite_dir().join(file), begin, END, &table, BLESS, RERUN);
    }
}
