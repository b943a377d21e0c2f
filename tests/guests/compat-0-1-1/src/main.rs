//! A guest of `wasi-nn-llm:llm@0.1.1`, built against a frozen copy of that
//! WIT (`wit/` beside this file), using what 0.1.1 added: fork a session
//! holding the prompt, read the fork's greedy reply with `next-chunk`, and
//! print it. Later hosts must keep running it unchanged.

wit_bindgen::generate!({ path: "wit", world: "wasi-nn-llm:llm/llm", generate_all });

use wasi::nn::graph;
use wasi_nn_llm::llm::session::Session;
use wasi_nn_llm::llm::types::{GenerateParams, SessionOptions};

fn main() {
    let model = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    let prompt = std::env::args().nth(2).unwrap_or_default();
    let graph = graph::load_by_name(&model).expect("load-by-name");
    let session =
        Session::open(&graph, SessionOptions { context_length: None, seed: None, overflow: None }).expect("open");
    session.append(&prompt).expect("append");
    let fork = session.fork().expect("fork");
    let params = GenerateParams {
        max_tokens: Some(16),
        temperature: Some(0.0),
        top_k: None,
        top_p: None,
        min_p: None,
        repeat_penalty: None,
        presence_penalty: None,
        frequency_penalty: None,
        penalty_last_n: None,
        seed: None,
        logit_bias: Vec::new(),
        stop: Vec::new(),
        constraint: None,
        logprobs: None,
    };
    let stream = fork.generate(&params).expect("generate");
    let mut text = String::new();
    while let Some(chunk) = stream.next_chunk(4).expect("next-chunk") {
        text.push_str(&chunk.text);
    }
    println!("{text}");
}
