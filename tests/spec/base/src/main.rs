//! The base wasi-nn conformance suite: a guest component built from the
//! spec's WIT alone (`wit/deps/wasi-nn`, `wasi:nn@0.2.0-rc-2024-10-28`, world
//! `ml`), so that it tests only the API and runs on any host of it.
//!
//! `conformance-nn PROFILE [SKIP]`: PROFILE is the host's fixture (JSON:
//! the graph to load by name, its inputs and expected output, an encoding
//! the host lacks; see `profiles/`), SKIP a comma-separated list of check
//! ids not to run (the harness skips a check that took its host down, and
//! runs the rest again). Each check prints `{"begin": …}` with its
//! statement, its level (RFC 2119) and the spec lines it rests on, then one
//! line with the same and its result: `pass`, `fail` or `n/a`, with what
//! was observed.

mod checks;
mod profile;

use serde_json::json;

wit_bindgen::generate!({
    path: "../../../wit/deps/wasi-nn",
    world: "ml",
});

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(profile) = args.get(1) else {
        eprintln!("usage: conformance-nn PROFILE-JSON [SKIP-IDS]");
        std::process::exit(2);
    };
    let profile = match profile::Profile::parse(profile) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("conformance-nn: the profile: {e}");
            std::process::exit(2);
        }
    };
    let skip: Vec<&str> = args.get(2).map(|s| s.split(',').collect()).unwrap_or_default();
    for check in checks::CHECKS {
        if skip.contains(&check.id) {
            continue;
        }
        let statement = json!({ "id": check.id, "level": check.level, "statement": check.text, "cite": check.cite });
        println!("{}", json!({ "begin": statement }));
        let outcome = (check.run)(&profile);
        println!(
            "{}",
            json!({
                "id": check.id,
                "level": check.level,
                "statement": check.text,
                "cite": check.cite,
                "result": outcome.result(),
                "observed": outcome.observed(),
            })
        );
    }
}
