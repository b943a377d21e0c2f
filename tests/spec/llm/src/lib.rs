//! What the conformance guests share: the normative statements (one list,
//! so the 0.1.x suite and the WASIp3 suite check the very same words), the
//! way a check is reported, and the fixtures that make outcomes independent
//! of the model.

use serde_json::json;
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::Error as LlmError;
use wasi_nn_llm::{Error, Params};

pub mod statements;
pub use statements::{Level, Statement};

/// Why a check failed; `?` turns any extension error into one.
pub struct Fail(pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self(e.to_string())
    }
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// The checks run so far.
#[derive(Default)]
pub struct Suite {
    failed_musts: usize,
}

impl Suite {
    /// Report one check of `statement` as a JSON line.
    pub fn check(&mut self, statement: &Statement, outcome: Result<(), Fail>) {
        let level = statement.level.as_str();
        if outcome.is_err() && statement.level == Level::Must {
            self.failed_musts += 1;
        }
        let detail = outcome.as_ref().err().map(|f| f.0.clone()).unwrap_or_default();
        println!(
            "{}",
            json!({ "id": statement.id, "level": level, "statement": statement.text, "pass": outcome.is_ok(), "detail": detail })
        );
    }

    /// Print the summary line; the exit status (1 if a MUST failed).
    pub fn finish(self) -> i32 {
        println!("{}", json!({ "summary": true, "failed-musts": self.failed_musts }));
        i32::from(self.failed_musts > 0)
    }
}

/// Report that the model named on the command line could not be loaded.
pub fn setup_failed(e: &Error) {
    println!(
        "{}",
        json!({ "id": "setup", "level": "MUST", "statement": "load-by-name finds the model", "pass": false, "detail": e.to_string() })
    );
}

pub fn expect(cond: bool, detail: impl FnOnce() -> String) -> Result<(), Fail> {
    if cond { Ok(()) } else { Err(Fail(detail())) }
}

pub fn greedy(max: u32) -> Params {
    Params::greedy().max_tokens(max)
}

/// The prompt every generation check starts from.
pub const PROMPT: &str = "The quick brown fox";
/// A grammar with exactly one output, `abcd`: exact checks on any model,
/// in the constraint every host serves (Lark, extension 0.1.6).
pub const ABCD: &str = r#"start: "ab" "cd""#;
/// Lowercase letters, as many as the generation allows.
pub const LETTERS: &str = r#"start: /[a-z]+/"#;
/// Lowercase letters and spaces, as many as the generation allows.
pub const WORDS: &str = r#"start: /[a-z ]+/"#;

/// Ok if `result` failed with the extension error `matches` accepts.
pub fn llm_error(result: Result<impl std::fmt::Debug, Error>, matches: impl Fn(&LlmError) -> bool) -> Result<(), Fail> {
    match result {
        Err(Error::Llm(e)) if matches(&e) => Ok(()),
        other => Err(Fail(format!("got {other:?}"))),
    }
}
