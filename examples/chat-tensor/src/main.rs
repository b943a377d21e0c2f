//! The chat again, through base wasi-nn's tensor convention only: the guest
//! tokenizes (with a tokenizer built from the GGUF), applies the template,
//! samples (greedy) and calls `compute` once per token.
//!
//! Usage (inside the host, with the model's GGUF shared read-only):
//! `chat-tensor MODEL GGUF-PATH`, e.g.
//! `wasi-nn-llm run --model smollm2 --ro-dir ~/.cache/wasi-nn-llm/models::models chat-tensor.wasm smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf`.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use chat_tensor::Conversation;

const MAX_TOKENS: u32 = 384;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, gguf] = args.as_slice() else {
        eprintln!("usage: chat-tensor MODEL GGUF-PATH (the GGUF of MODEL, shared with the guest read-only)");
        return ExitCode::FAILURE;
    };
    match run(name, Path::new(gguf)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-tensor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(name: &str, gguf: &Path) -> Result<(), String> {
    let started = Instant::now();
    let mut chat = Conversation::open(name, gguf)?;
    eprintln!(
        "chatting with {name:?} through base wasi-nn tensors (tokenizer built in {} ms); one message per line",
        started.elapsed().as_millis()
    );
    let mut out = io::stdout();
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let started = Instant::now();
        let reply = chat.send(line, MAX_TOKENS, |piece| {
            print!("{piece}");
            let _ = out.flush();
        })?;
        println!();
        eprintln!(
            "[{} tokens, one compute each re-sending up to {} ids; {} ms]",
            reply.tokens.len(),
            chat.tokens().len(),
            started.elapsed().as_millis()
        );
    }
    Ok(())
}
