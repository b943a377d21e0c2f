//! A guest of `wasi-nn-llm:llm@0.1.4`, built against a frozen copy of that
//! WIT (`wit/` beside this file), the last before 0.1.5 added chat
//! templates: it reads `model-identity` (0.1.4), holds a greedy reply to a
//! JSON schema with the 0.1.0 `constraint` field, and prints both as one
//! JSON line. Later hosts must keep running it unchanged, on every backend.

wit_bindgen::generate!({ path: "wit", world: "wasi-nn-llm:llm/llm", generate_all });

use wasi::nn::graph;
use wasi_nn_llm::llm::model::model_identity;
use wasi_nn_llm::llm::session::Session;
use wasi_nn_llm::llm::types::{Constraint, GenerateParams, SessionOptions};

fn main() {
    let model = std::env::args().nth(1).unwrap_or_else(|| "smollm2".into());
    let prompt = std::env::args().nth(2).unwrap_or_default();
    let graph = graph::load_by_name(&model).expect("load-by-name");
    let identity = model_identity(&graph).expect("model-identity");
    let session =
        Session::open(&graph, SessionOptions { context_length: None, seed: None, overflow: None }).expect("open");
    session.append(&prompt).expect("append");
    let schema = r#"{"type":"object","properties":{"answer":{"type":"string","enum":["yes","no"]}},"required":["answer"],"additionalProperties":false}"#;
    let params = GenerateParams {
        max_tokens: Some(64),
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
        constraint: Some(Constraint::JsonSchema(schema.into())),
        logprobs: None,
    };
    let stream = session.generate(&params).expect("generate");
    let mut text = String::new();
    while let Some(chunk) = stream.next_chunk(8).expect("next-chunk") {
        text.push_str(&chunk.text);
    }
    let reason = format!("{:?}", stream.finish().expect("finish").reason);
    // Hand-written JSON: this guest keeps to wit-bindgen alone.
    let quote = |s: &str| format!("{s:?}");
    println!(
        "{{\"backend\":{},\"digest\":{},\"reply\":{},\"finish\":{}}}",
        quote(&identity.backend),
        quote(&identity.digest),
        quote(&text),
        quote(&reason)
    );
}
