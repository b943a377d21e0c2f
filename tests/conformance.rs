//! The conformance suite (`tests/spec/llm/`, a guest component) run
//! against a host, on each test model; and its statements on generation,
//! streams, finish, cancellation, usage, sessions and errors once more
//! through the WASI 0.3 session (`tests/spec/llm-p3/`, a second guest).
//!
//! By default the host is this project's CLI. To check another host, set
//! `CONFORMANCE_HOST` to its command line, with `{model}` for the GGUF path
//! and `{component}` for the suite's component; the host must register the
//! model under the name `conformance` and pass `conformance` as the
//! component's argument:
//!
//! ```sh
//! CONFORMANCE_HOST='my-host run --model conformance={model} {component} conformance' \
//!     cargo test --release --test conformance
//! ```

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use wasi_nn_llm_tests::{MODELS, check_generated_block, generated_block, guest, host_cli, model_path, workspace_root};

/// The suite's statements, the very file the guests compile.
#[path = "spec/llm/src/statements.rs"]
mod statements;

const BEGIN: &str = "<!-- statements: written by tests/conformance.rs (WASI_NN_LLM_BLESS=1) from src/statements.rs; do not edit by hand except the WASI 0.3 column -->";
const END: &str = "<!-- end of statements -->";

/// `tests/spec/llm/STATEMENTS.md`, where the statements are listed for a
/// reader of the spec's `test/` layout.
fn statements_file() -> std::path::PathBuf {
    workspace_root().join("tests/spec/llm/STATEMENTS.md")
}

/// The checked-in table's rows: id, level, words, and whether the WASI 0.3
/// suite checks it.
fn checked_in_statements() -> Vec<[String; 4]> {
    generated_block(&statements_file(), BEGIN, END)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l.trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect();
            [cells[0].trim_matches('`').to_owned(), cells[1].clone(), cells[2].replace("\\|", "|"), cells[3].clone()]
        })
        .collect()
}

/// `STATEMENTS.md` lists exactly the statements the guests compile, in
/// their words; the WASI 0.3 column is checked by that suite's own run.
#[test]
fn the_statement_list_is_the_checked_in_one() {
    let rows = checked_in_statements();
    let p3 = |id: &str| rows.iter().find(|r| r[0] == id).map_or("no", |r| r[3].as_str()).to_owned();
    let mut table = String::from("| id | level | statement | WASI 0.3 suite |\n|---|---|---|---|\n");
    for s in statements::ALL {
        let text = s.text.replace('|', "\\|");
        table.push_str(&format!("| `{}` | {} | {text} | {} |\n", s.id, s.level.as_str(), p3(s.id)));
    }
    check_generated_block(
        &statements_file(),
        BEGIN,
        END,
        &table,
        "WASI_NN_LLM_BLESS",
        "cargo test --release --test conformance the_statement_list",
    );
}

fn host_command(model: &str, component: &str) -> Command {
    let template = std::env::var("CONFORMANCE_HOST").unwrap_or_else(|_| {
        format!("{} run --threads 2 --model conformance={{model}} {{component}} conformance", host_cli().display())
    });
    let mut words = template.split_whitespace().map(|w| w.replace("{model}", model).replace("{component}", component));
    let mut command = Command::new(words.next().expect("CONFORMANCE_HOST is empty"));
    command.args(words);
    command
}

#[test]
fn the_host_meets_every_normative_statement_on_each_model() {
    meets_every_statement("conformance", 40, &MODELS, None);
}

#[test]
fn the_host_meets_them_through_the_wasi_0_3_session_too() {
    meets_every_statement("conformance_p3", 20, &MODELS, None);
}

/// The same suites on the second backend, candle, which shares no kernel
/// with llama.cpp (SmolLM2: it implements the Llama architecture only).
/// The matrix of both is `tests/spec/llm/RESULTS.md`.
#[test]
fn the_candle_backend_meets_every_statement_too() {
    for (name, checks) in [("conformance", 40), ("conformance_p3", 20)] {
        meets_every_statement(name, checks, &[wasi_nn_llm_tests::MODEL], Some("candle"));
    }
}

/// Every check the suite `name` reported is a row of `STATEMENTS.md` in the
/// same words, and the suite checked every row it claims: all of them for
/// the 0.1.x suite, those marked in the WASI 0.3 column for the p3 suite.
fn assert_listed(name: &str, checks: &[&Value]) {
    let rows = checked_in_statements();
    for c in checks {
        let id = c["id"].as_str().unwrap_or_default();
        let row = rows.iter().find(|r| r[0] == id);
        assert!(
            row.is_some_and(|r| c["level"] == r[1].as_str() && c["statement"] == r[2].as_str()),
            "{name}: statement `{id}` is not listed in those words in {}",
            statements_file().display()
        );
    }
    let reported: BTreeSet<&str> = checks.iter().filter_map(|c| c["id"].as_str()).collect();
    let claimed: BTreeSet<&str> =
        rows.iter().filter(|r| name != "conformance_p3" || r[3] == "yes").map(|r| r[0].as_str()).collect();
    assert_eq!(
        reported,
        claimed,
        "{name}: the statements it checked are not those {} gives it",
        statements_file().display()
    );
}

/// Run the suite `name` (at least `checks` checks) on each of `models`,
/// with this project's host on `backend` if one is named; fail on any MUST
/// not met.
fn meets_every_statement(name: &str, min_checks: usize, models: &[&str], backend: Option<&str>) {
    let component = guest(name);
    for &model in models {
        let path = model_path(model);
        let mut command = match backend {
            None => host_command(&path.display().to_string(), &component.display().to_string()),
            Some(backend) => {
                let mut command = Command::new(host_cli());
                command.args(["run", "--threads", "2", "--backend", backend]);
                command.arg(format!("--model=conformance={}", path.display())).arg(&component).arg("conformance");
                command
            }
        };
        let out = command.output().expect("running the host under test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let results: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let checks: Vec<&Value> = results.iter().filter(|r| r.get("id").is_some()).collect();
        assert!(
            checks.len() >= min_checks,
            "{model}: only {} checks ran\n{stdout}\n{}",
            checks.len(),
            String::from_utf8_lossy(&out.stderr)
        );

        let failed = |level: &str| -> Vec<String> {
            checks
                .iter()
                .filter(|c| c["level"] == level && c["pass"] == false)
                .map(|c| format!("{}: {} ({})", c["id"], c["statement"], c["detail"]))
                .collect()
        };
        // model-identity's digest is the SHA-256 of the file the host was given.
        if let Some(digest) = results.iter().find_map(|r| r["identity-digest"].as_str()) {
            let file = wasi_nn_llm_tests::sha256_hex(&path);
            assert_eq!(digest, file, "{model}: model-identity's digest is not the file's");
        }
        for should in failed("SHOULD") {
            eprintln!("{model}: SHOULD not met: {should}");
        }
        let musts = failed("MUST");
        assert!(musts.is_empty(), "{model}: MUST not met:\n{}", musts.join("\n"));
        assert!(out.status.success(), "{model}: the suite exited with {}", out.status);
        assert_listed(name, &checks);
    }
}
