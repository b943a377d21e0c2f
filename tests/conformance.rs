//! The conformance suite (`tests/conformance/`, a guest component) run
//! against a host, on each test model; and its statements on generation,
//! streams, finish, cancellation, usage, sessions and errors once more
//! through the WASI 0.3 session (`tests/conformance-p3/`, a second guest).
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

use std::process::Command;

use serde_json::Value;
use wasi_nn_llm_tests::{MODELS, guest, host_cli, model_path};

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
/// The matrix of both is `tests/conformance/RESULTS.md`.
#[test]
fn the_candle_backend_meets_every_statement_too() {
    for (name, checks) in [("conformance", 40), ("conformance_p3", 20)] {
        meets_every_statement(name, checks, &[wasi_nn_llm_tests::MODEL], Some("candle"));
    }
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
    }
}
