//! Interactive streaming chat through the LLM extension.
//!
//! Each line on stdin is one user turn, appended to one session as a
//! templated turn; the reply streams to stdout as it is generated. Only the
//! new turn is evaluated: the history stays in the host's KV cache.
//!
//! Commands: `/fork` (continue in a copy of this conversation), `/switch N`,
//! `/undo` (drop the last exchange), `/save FILE`, `/load FILE` (needs a
//! directory the host shares, `--dir`), `/help`.
//!
//! Usage (inside the host): `chat [MODEL]` (default `smollm2`). Exits at EOF.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::Instant;

use wasi_nn_llm::raw::wasi_nn_llm::llm::types::{Error as LlmError, SnapshotError};
use wasi_nn_llm::{Chat, Error, FinishReason, Model, Params};

const SYSTEM: &str = "You are a helpful assistant. Answer briefly and accurately.";
const HELP: &str = "commands: /fork, /switch N, /undo, /save FILE, /load FILE, /help";

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    match run(&name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::load(name)?;
    let mut first = Chat::new(&model)?;
    first.system(SYSTEM);
    let mut branches = vec![first];
    let mut current = 0;
    // Greedy with a repeat penalty over a long window: sampling makes this
    // 135M model ramble, and a short window lets it loop on long replies.
    let params = Params::greedy().repeat_penalty(1.1, 256).max_tokens(384);

    eprintln!("chatting with {name:?}; one message per line, end with Ctrl-D ({HELP})");
    let stdin = io::stdin();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        match line.split_once(' ').unwrap_or((line, "")) {
            ("", _) => {}
            ("/help", _) => eprintln!("{HELP}"),
            ("/fork", _) => match branches[current].fork() {
                Ok(chat) => {
                    branches.push(chat);
                    current = branches.len() - 1;
                    eprintln!("[now in branch {current}; {} branches]", branches.len());
                }
                Err(e) => eprintln!("[{e}]"),
            },
            ("/switch", n) => match n.trim().parse::<usize>() {
                Ok(n) if n < branches.len() => {
                    current = n;
                    eprintln!("[now in branch {n}]");
                }
                _ => eprintln!("[branches are numbered 0 to {}]", branches.len() - 1),
            },
            ("/undo", _) if !branches[current].can_undo() => eprintln!("[nothing to undo]"),
            ("/undo", _) => report(branches[current].undo()),
            ("/save", file) if !file.is_empty() => {
                let saved = branches[current].save().map(|bytes| std::fs::write(file, bytes));
                match saved {
                    Ok(Ok(())) => eprintln!("[saved to {file}]"),
                    Ok(Err(e)) => eprintln!("[{file}: {e}]"),
                    Err(e) => eprintln!("[{e}]"),
                }
            }
            ("/load", file) if !file.is_empty() => match std::fs::read(file) {
                Ok(bytes) => match Chat::restore(&model, &bytes) {
                    Ok(chat) => {
                        branches.push(chat);
                        current = branches.len() - 1;
                        eprintln!("[loaded {file} as branch {current}]");
                    }
                    Err(e) => eprintln!("[{file} {}]", load_failure(&e, name)),
                },
                Err(e) => eprintln!("[{file}: {e}]"),
            },
            (command, _) if command.starts_with('/') => eprintln!("[unknown command; {HELP}]"),
            _ => say(&mut branches[current], line, &params),
        }
    }
}

/// Why `/load FILE` failed, as the end of a sentence that starts with FILE.
fn load_failure(e: &Error, model: &str) -> String {
    match e {
        Error::NotSavedChat => "is not a saved conversation".into(),
        Error::Llm(LlmError::InvalidSnapshot(SnapshotError::WrongModel)) => {
            format!("was saved from another model (this chat runs {model:?})")
        }
        Error::Llm(LlmError::InvalidSnapshot(SnapshotError::Truncated)) => "is damaged".into(),
        // A snapshot is sealed with the host's key: a blob from a host with
        // another key fails the same check as a damaged one.
        Error::Llm(LlmError::InvalidSnapshot(SnapshotError::Corrupted)) => {
            "is damaged, or was saved by a host with another snapshot key".into()
        }
        Error::Llm(LlmError::InvalidSnapshot(SnapshotError::WrongVersion)) => {
            "was saved in an older (unkeyed) or newer snapshot format: save it again".into()
        }
        other => format!("cannot be loaded: {other}"),
    }
}

fn report(result: Result<(), Error>) {
    if let Err(e) = result {
        eprintln!("[{e}]");
    }
}

/// One turn: stream the reply, then a line of statistics on stderr.
fn say(chat: &mut Chat, line: &str, params: &Params) {
    let started = Instant::now();
    let mut first_token = None;
    let mut reply = match chat.send(line, params) {
        Ok(reply) => reply,
        Err(e) => return eprintln!("[{e}]"),
    };
    let mut stdout = io::stdout();
    for chunk in &mut reply {
        match chunk {
            Ok(chunk) => {
                first_token.get_or_insert_with(|| started.elapsed());
                print!("{}", chunk.text);
                let _ = stdout.flush();
            }
            Err(e) => {
                eprintln!("\n[{e}]");
                break;
            }
        }
    }
    println!();
    if let Some(finish) = reply.finish() {
        let u = &finish.usage;
        let total = started.elapsed();
        let ttft = first_token.unwrap_or(total);
        let decode = (total - ttft).as_secs_f64();
        let rate = if decode > 0.0 { f64::from(u.generated_tokens.saturating_sub(1)) / decode } else { 0.0 };
        eprintln!(
            "[{}: {} tokens, first after {} ms, {:.0} tok/s; prompt {} tokens, {} reused from the cache]",
            reason(&finish.reason),
            u.generated_tokens,
            ttft.as_millis(),
            rate,
            u.prompt_tokens,
            u.cached_tokens
        );
    }
}

fn reason(r: &FinishReason) -> String {
    match r {
        FinishReason::EndOfSequence => "end-of-sequence".into(),
        FinishReason::MaxTokens => "max-tokens".into(),
        FinishReason::Stop(s) => format!("stop {s:?}"),
        FinishReason::Cancelled => "cancelled".into(),
        FinishReason::ContextFull => "context-full".into(),
    }
}
