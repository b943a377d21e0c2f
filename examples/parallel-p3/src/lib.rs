//! Four questions answered at once by one guest instance, through the
//! WASI 0.3 form of the extension (`wasi-nn-llm:llm@0.2.0-rc-2026-12-06`, a `wasi:cli/run@0.3.0` command). Each answer is an async
//! task: append the question, then read its `stream<chunk>`. The tasks are
//! awaited together, so the host decodes the four sessions in the same
//! batches; there is no pollable, no `try-next` and no loop over streams.
//!
//! Usage (inside the host): `parallel-p3 [MODEL [QUESTION ...]]` (default
//! `smollm2` and four built-in questions). Each answer prints when it is
//! complete, with its speed; the last line is the four together.

use std::time::Instant;

use futures::StreamExt;
use futures::future::join_all;
use wasi_nn_llm::p3::Session;
use wasi_nn_llm::{Error, Message, Model, Params};

const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Name the planets of the solar system.",
    "Write a haiku about the sea.",
    "Why is the sky blue? One sentence.",
];

struct Parallel;

impl wasi_nn_llm::p3::Run for Parallel {
    async fn run() -> Result<(), ()> {
        let mut args = std::env::args().skip(1);
        let name = args.next().unwrap_or_else(|| "smollm2".into());
        let mut questions: Vec<String> = args.collect();
        if questions.is_empty() {
            questions = QUESTIONS.map(String::from).to_vec();
        }
        answer_all(&name, &questions).await.map_err(|e| eprintln!("parallel-p3: {e}"))
    }
}

wasi_nn_llm::p3::export!(Parallel);

async fn answer_all(name: &str, questions: &[String]) -> Result<(), Error> {
    let model = Model::load(name)?;
    let params = Params::greedy().repeat_penalty(1.1, 256).max_tokens(128);
    let start = Instant::now();
    let answers = questions.iter().enumerate().map(|(i, q)| answer(&model, &params, i, q, start));
    let mut tokens = 0;
    for answered in join_all(answers).await {
        tokens += answered?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "[{} answers, {tokens} tokens in {secs:.1} s: {:.0} tok/s together]",
        questions.len(),
        tokens as f64 / secs
    );
    Ok(())
}

/// One question in a session of its own; prints the whole answer when it is
/// complete (the four would interleave otherwise). Returns its tokens.
async fn answer(model: &Model, params: &Params, i: usize, question: &str, start: Instant) -> Result<u32, Error> {
    let session = Session::open(model)?;
    let turn = [Message { role: "user".into(), content: question.into() }];
    session.append(&model.apply_chat_template(&turn, true)?).await?;
    let mut generation = session.generate(params)?;
    let mut text = String::new();
    while let Some(chunk) = generation.next().await {
        text.push_str(&chunk.text);
    }
    let finish = generation.finish().await?;
    let tokens = finish.usage.generated_tokens;
    let secs = start.elapsed().as_secs_f64();
    println!("[{i}] {question}\n{}\n", text.trim());
    eprintln!("[{i}: {tokens} tokens, done after {secs:.1} s]");
    Ok(tokens)
}
