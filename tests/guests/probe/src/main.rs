//! Test guest: drives the extension and base wasi-nn from its arguments and
//! prints one JSON object per line for the integration tests to check.
//!
//! Commands (greedy decoding throughout):
//! - `generate MODEL MAX PROMPT`: stream; one line per chunk, then the finish.
//! - `chat MODEL MAX Q...`: one session, each question appended as a turn.
//! - `chat-reprefill MODEL MAX Q...`: a fresh session per turn, fed the whole
//!   templated history (what a stateless API does).
//! - `compute MODEL MAX PROMPT`: base wasi-nn `compute` with the text convention.
//! - `stop MODEL STOP PROMPT`: stream until STOP, then continue the session.
//! - `cancel MODEL TAKE PROMPT`: read TAKE chunks, drop the stream, continue.
//! - `errors MODEL`: the typed-error cases, then a normal generation.

use std::process::ExitCode;

use serde_json::{Value, json};
use wasi_nn_llm::raw::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use wasi_nn_llm::raw::wasi::nn::tensor::{Tensor, TensorType};
use wasi_nn_llm::{Chat, Error, Finish, Message, Model, Params, Session, SessionOptions, TokenStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["generate", model, max, prompt] => generate(model, max.parse().unwrap_or(32), prompt),
        ["chat", model, max, questions @ ..] => chat(model, max.parse().unwrap_or(32), questions),
        ["chat-reprefill", model, max, questions @ ..] => chat_reprefill(model, max.parse().unwrap_or(32), questions),
        ["compute", model, max, prompt] => compute(model, max.parse().unwrap_or(32), prompt),
        ["stop", model, stop_at, prompt] => stop(model, stop_at, prompt),
        ["cancel", model, take, prompt] => cancel(model, take.parse().unwrap_or(1), prompt),
        ["errors", model] => errors(model),
        _ => {
            eprintln!("usage: probe generate|chat|chat-reprefill|compute|stop|cancel|errors MODEL ...");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", json!({ "error": e.to_string() }));
            ExitCode::FAILURE
        }
    }
}

fn finish_json(f: &Finish) -> Value {
    json!({
        "reason": format!("{:?}", f.reason),
        "prompt": f.usage.prompt_tokens,
        "cached": f.usage.cached_tokens,
        "generated": f.usage.generated_tokens,
    })
}

/// Read a stream to the end, printing chunks; returns text, tokens and finish.
fn drain(stream: &mut TokenStream, print: bool) -> Result<(String, Vec<u32>, Value), Error> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    for chunk in &mut *stream {
        let chunk = chunk?;
        if print {
            println!("{}", json!({ "chunk": { "text": chunk.text, "tokens": chunk.tokens } }));
        }
        text.push_str(&chunk.text);
        tokens.extend(chunk.tokens);
    }
    let finish = stream.finish().map(finish_json).unwrap_or(Value::Null);
    Ok((text, tokens, finish))
}

fn generate(model: &str, max: u32, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let session = Session::open(&model)?;
    let added = session.append(prompt)?;
    let mut stream = session.generate(&Params::greedy().max_tokens(max))?;
    let (_, _, finish) = drain(&mut stream, true)?;
    println!("{}", json!({ "appended": added, "finish": finish }));
    Ok(())
}

fn chat(model: &str, max: u32, questions: &[&str]) -> Result<(), Error> {
    let model = Model::load(model)?;
    let mut chat = Chat::new(&model)?;
    for (turn, q) in questions.iter().enumerate() {
        let mut reply = chat.send(q, &Params::greedy().max_tokens(max))?;
        let mut tokens = Vec::new();
        for chunk in &mut reply {
            tokens.extend(chunk?.tokens);
        }
        let finish = reply.finish().map(finish_json).unwrap_or(Value::Null);
        println!("{}", json!({ "turn": turn, "text": reply.text(), "tokens": tokens, "finish": finish }));
    }
    Ok(())
}

fn chat_reprefill(model: &str, max: u32, questions: &[&str]) -> Result<(), Error> {
    let model = Model::load(model)?;
    let mut messages: Vec<Message> = Vec::new();
    for (turn, q) in questions.iter().enumerate() {
        messages.push(Message { role: "user".into(), content: q.to_string() });
        let session = Session::open(&model)?;
        session.append(&model.apply_chat_template(&messages, true)?)?;
        let mut stream = session.generate(&Params::greedy().max_tokens(max))?;
        let (text, tokens, finish) = drain(&mut stream, false)?;
        println!("{}", json!({ "turn": turn, "text": text, "tokens": tokens, "finish": finish }));
        messages.push(Message { role: "assistant".into(), content: text });
    }
    Ok(())
}

fn text_tensor(text: &str) -> Tensor {
    Tensor::new(&[text.len() as u32], TensorType::U8, text.as_bytes())
}

fn compute(model: &str, max: u32, prompt: &str) -> Result<(), Error> {
    let graph = graph::load_by_name(model)?;
    let exec = graph.init_execution_context()?;
    let params = json!({ "temperature": 0, "max-tokens": max }).to_string();
    let outputs = exec.compute(vec![("prompt".into(), text_tensor(prompt)), ("params".into(), text_tensor(&params))])?;
    let text = outputs
        .into_iter()
        .find(|(name, _)| name == "text")
        .map(|(_, t)| String::from_utf8_lossy(&t.data()).into_owned());
    println!("{}", json!({ "text": text }));
    Ok(())
}

/// Generate a few more tokens and report how big the session was.
fn continue_session(session: &Session) -> Result<(), Error> {
    let (_, _, finish) = drain(&mut session.generate(&Params::greedy().max_tokens(4))?, false)?;
    println!("{}", json!({ "continued": finish }));
    Ok(())
}

fn stop(model: &str, stop: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let session = Session::open(&model)?;
    let added = session.append(prompt)?;
    let (_, _, finish) = drain(&mut session.generate(&Params::greedy().max_tokens(64).stop(stop))?, true)?;
    println!("{}", json!({ "appended": added, "finish": finish }));
    continue_session(&session)
}

fn cancel(model: &str, take: usize, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let session = Session::open(&model)?;
    let added = session.append(prompt)?;
    let mut stream = session.generate(&Params::greedy().max_tokens(64))?;
    let mut delivered = 0;
    for chunk in stream.by_ref().take(take) {
        delivered += chunk?.tokens.len();
    }
    drop(stream);
    println!("{}", json!({ "appended": added, "delivered": delivered }));
    continue_session(&session)
}

fn report(case: &str, result: Result<impl std::fmt::Debug, Error>) {
    let line = match result {
        Ok(v) => json!({ "case": case, "ok": format!("{v:?}") }),
        Err(Error::Llm(e)) => json!({ "case": case, "llm-error": format!("{e:?}") }),
        Err(Error::Nn { code, message }) => json!({ "case": case, "nn-error": format!("{code:?}"), "message": message }),
        Err(e) => json!({ "case": case, "error": e.to_string() }),
    };
    println!("{line}");
}

fn errors(model_name: &str) -> Result<(), Error> {
    report("unknown-model", graph::load_by_name("no-such-model").map(|_| ()).map_err(Error::from));
    let raw = graph::load(&[b"GGUF not really".to_vec()], GraphEncoding::Ggml, ExecutionTarget::Cpu);
    report("raw-bytes-load", raw.map(|_| ()).map_err(Error::from));

    let model = Model::load(model_name)?;
    let small = SessionOptions { context_length: Some(64), seed: None, overflow: None };
    let session = Session::open_with(&model, small)?;
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    report("prompt-too-long", session.append(&long));
    let exec = model.graph().init_execution_context()?;
    let huge = "word ".repeat(20_000);
    report("base-prompt-too-long", exec.compute(vec![("prompt".into(), text_tensor(&huge))]).map(|_| ()).map_err(Error::from));

    // The same host still serves a normal request, on the same session too.
    session.append("The capital of France is")?;
    let (text, finish) = session.generate(&Params::greedy().max_tokens(8))?.collect_text()?;
    println!("{}", json!({ "case": "after-errors", "text": text, "finish": finish_json(&finish) }));
    Ok(())
}
