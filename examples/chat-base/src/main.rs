//! The same chat through base wasi-nn only, for comparison.
//!
//! What the tensor-only spec forces on a guest: it must know the model's chat
//! template itself (here ChatML, hard-coded for SmolLM2), keep the history,
//! and re-send and re-evaluate the whole templated history every turn, since
//! `compute` keeps no state. No streaming either: the reply arrives whole.
//!
//! Usage (inside the host): `chat-base [MODEL]` (default `smollm2`).

use std::io::{self, BufRead};
use std::process::ExitCode;
use std::time::Instant;

use wasi_nn_llm::raw::wasi::nn::errors::Error;
use wasi_nn_llm::raw::wasi::nn::graph;
use wasi_nn_llm::raw::wasi::nn::tensor::{Tensor, TensorType};

const SYSTEM: &str = "You are a helpful assistant. Answer briefly and accurately.";
const PARAMS: &str = r#"{"temperature": 0, "repeat-penalty": 1.1, "penalty-last-n": 64, "max-tokens": 512}"#;

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    match run(&name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-base: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(name: &str) -> Result<(), String> {
    let describe = |e: Error| format!("{:?}: {}", e.code(), e.data());
    let graph = graph::load_by_name(name).map_err(describe)?;
    let exec = graph.init_execution_context().map_err(describe)?;
    let mut history = vec![("system", SYSTEM.to_owned())];

    eprintln!("chatting with {name:?} through base wasi-nn; one message per line");
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        history.push(("user", line.to_owned()));
        let prompt = chatml(&history);
        let started = Instant::now();
        let inputs = vec![("prompt".to_owned(), text_tensor(&prompt)), ("params".to_owned(), text_tensor(PARAMS))];
        match exec.compute(inputs) {
            Ok(outputs) => {
                let reply = outputs
                    .into_iter()
                    .find(|(name, _)| name == "text")
                    .map(|(_, t)| String::from_utf8_lossy(&t.data()).into_owned())
                    .ok_or("no text output")?;
                println!("{reply}");
                eprintln!("[{} prompt bytes re-sent, reply after {} ms]", prompt.len(), started.elapsed().as_millis());
                history.push(("assistant", reply));
            }
            Err(e) => {
                history.pop();
                eprintln!("[{}]", describe(e));
            }
        }
    }
    Ok(())
}

/// ChatML, byte for byte as llama.cpp renders it.
fn chatml(history: &[(&str, String)]) -> String {
    let mut s = String::new();
    for (role, content) in history {
        s.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

fn text_tensor(text: &str) -> Tensor {
    Tensor::new(&[text.len() as u32], TensorType::U8, text.as_bytes())
}
