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
//! - `fork MODEL`: a 500-token chat forked three ways; the same branches
//!   replayed step by step in fresh sessions; and fed in one batch.
//! - `tokens MODEL TEXT`: tokenizer, model info and append-tokens.
//! - `rewind MODEL PROMPT`: generate, rewind, generate again.
//! - `sample MODEL PROMPT`: seeds, grammar, JSON schema, logprobs, biases.
//! - `chunks MODEL PROMPT`: next-chunk batching and an explicit cancel.
//! - `save MODEL FILE PROMPT`: generate, save to FILE, go on generating.
//! - `restore MODEL FILE`: restore from FILE and go on generating.
//! - `poll MODEL A B`: two streams read from one thread via wasi:io/poll.
//! - `overflow MODEL PROMPT`: a 64-token session under each overflow policy.
//! - `tensor MODEL N PROMPT`: N greedy tokens through base wasi-nn's tensor
//!   convention (tokens in, logits out, argmax in the guest).

use std::path::Path;
use std::process::ExitCode;

use serde_json::{Value, json};
use wasi_nn_llm::raw::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use wasi_nn_llm::raw::wasi::nn::tensor::{Tensor, TensorType};
use wasi_nn_llm::{Chat, Error, Finish, Message, Model, OverflowPolicy, Params, Session, SessionOptions, TokenStream};

/// A conversation of about 500 tokens to fork from.
fn history() -> Vec<Message> {
    const EXCHANGES: [(&str, &str); 13] = [
        (
            "What is the largest ocean?",
            "The Pacific Ocean is the largest, covering about a third of the surface of the Earth.",
        ),
        (
            "How high is Mount Everest?",
            "Mount Everest rises about 8,849 metres above sea level, on the border of Nepal and China.",
        ),
        (
            "Which river is the longest?",
            "The Nile and the Amazon are both about 6,600 to 7,000 kilometres long; sources disagree.",
        ),
        ("Where is the Sahara?", "The Sahara covers most of North Africa, from the Atlantic coast to the Red Sea."),
        (
            "What is a fjord?",
            "A fjord is a long, narrow inlet with steep sides, carved by a glacier and then flooded by the sea.",
        ),
        (
            "Why do volcanoes erupt?",
            "Magma rises because it is lighter than the rock around it, and gas pressure pushes it out.",
        ),
        (
            "What is the capital of Australia?",
            "Canberra is the capital of Australia, although Sydney and Melbourne are larger cities.",
        ),
        (
            "How many continents are there?",
            "Most people count seven: Africa, Antarctica, Asia, Australia, Europe, North and South America.",
        ),
        (
            "What causes the seasons?",
            "The tilt of the Earth's axis changes how directly sunlight reaches each hemisphere during the year.",
        ),
        (
            "Which desert is the driest?",
            "The Atacama Desert in Chile is the driest non-polar desert; some stations have never recorded rain.",
        ),
        (
            "What is the Ring of Fire?",
            "It is a horseshoe of volcanoes and earthquake zones around the Pacific, where tectonic plates meet.",
        ),
        (
            "Which country has the most islands?",
            "Sweden is often said to have the most, with over two hundred thousand, most of them small and uninhabited.",
        ),
        (
            "What is a delta?",
            "A delta is the fan of sediment a river drops where it meets slower water, like the Nile delta in Egypt.",
        ),
    ];
    let mut messages = vec![Message { role: "system".into(), content: "You are a concise geography tutor.".into() }];
    for (question, answer) in EXCHANGES {
        messages.push(Message { role: "user".into(), content: question.into() });
        messages.push(Message { role: "assistant".into(), content: answer.into() });
    }
    messages
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        // Base wasi-nn's tensor convention, with the guest-side tokenizer.
        ["guest-tokenize", gguf, texts @ ..] => guest_tokenize(gguf, texts),
        ["tensor-chat", model, gguf, max, questions @ ..] => {
            tensor_chat(model, gguf, max.parse().unwrap_or(32), questions)
        }
        other => match extension(other) {
            Some(result) => result.map_err(|e| e.to_string()),
            None => {
                eprintln!("usage: probe generate|chat|chat-reprefill|compute|stop|cancel|errors MODEL ...");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", json!({ "error": e }));
            ExitCode::FAILURE
        }
    }
}

/// The commands that drive the extension (and base wasi-nn through the SDK).
fn extension(args: &[&str]) -> Option<Result<(), Error>> {
    Some(match args {
        ["generate", model, max, prompt] => generate(model, max.parse().unwrap_or(32), prompt),
        ["chat", model, max, questions @ ..] => chat(model, max.parse().unwrap_or(32), questions),
        ["chat-reprefill", model, max, questions @ ..] => chat_reprefill(model, max.parse().unwrap_or(32), questions),
        ["compute", model, max, prompt] => compute(model, max.parse().unwrap_or(32), prompt),
        ["stop", model, stop_at, prompt] => stop(model, stop_at, prompt),
        ["cancel", model, take, prompt] => cancel(model, take.parse().unwrap_or(1), prompt),
        ["errors", model] => errors(model),
        ["fork", model] => fork(model),
        ["tokens", model, text] => tokens(model, text),
        ["rewind", model, prompt] => rewind(model, prompt),
        ["sample", model, prompt] => sample(model, prompt),
        ["chunks", model, prompt] => chunks(model, prompt),
        ["save", model, file, prompt] => save(model, file, prompt),
        ["restore", model, file] => restore(model, file),
        ["restore-each", model, files @ ..] => restore_each(model, files),
        ["poll", model, a, b] => poll_two(model, a, b),
        ["overflow", model, prompt] => overflow(model, prompt),
        ["tensor", model, n, prompt] => tensor(model, n.parse().unwrap_or(8), prompt),
        ["identity", model] => identity(model),
        ["verified", model, digest, prompt] => verified(model, digest, prompt),
        _ => return None,
    })
}

/// The guest-side tokenizer's ids for each text (BOS as at a sequence's start).
fn guest_tokenize(gguf: &str, texts: &[&str]) -> Result<(), String> {
    let meta = gguf_vocab::Metadata::read(Path::new(gguf)).map_err(|e| e.to_string())?;
    let tokenizer = gguf_vocab::GgufTokenizer::from_gguf(&meta)?;
    for text in texts {
        println!("{}", json!({ "text": text, "ids": tokenizer.encode(text, true)? }));
    }
    Ok(())
}

/// The chat through tensor mode, reported as `chat` reports the extension's.
fn tensor_chat(model: &str, gguf: &str, max: u32, questions: &[&str]) -> Result<(), String> {
    let mut chat = chat_tensor::Conversation::open(model, Path::new(gguf))?;
    for (turn, q) in questions.iter().enumerate() {
        let reply = chat.send(q, max, |_| {})?;
        println!("{}", json!({ "turn": turn, "text": reply.text, "tokens": reply.tokens, "ended": reply.ended }));
    }
    Ok(())
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
        session.append(&model.render(&messages, true)?)?;
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
    let outputs =
        exec.compute(vec![("prompt".into(), text_tensor(prompt)), ("params".into(), text_tensor(&params))])?;
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
        Err(Error::Nn { code, message }) => {
            json!({ "case": case, "nn-error": format!("{code:?}"), "message": message })
        }
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
    report(
        "base-prompt-too-long",
        exec.compute(vec![("prompt".into(), text_tensor(&huge))]).map(|_| ()).map_err(Error::from),
    );

    // The same host still serves a normal request, on the same session too.
    session.append("The capital of France is")?;
    let (text, finish) = session.generate(&Params::greedy().max_tokens(8))?.collect_text()?;
    println!("{}", json!({ "case": "after-errors", "text": text, "finish": finish_json(&finish) }));
    Ok(())
}

/// Greedy reply to `question` in `chat`, as one JSON value.
fn turn(chat: &mut Chat, question: &str) -> Result<Value, Error> {
    let mut reply = chat.send(question, &Params::greedy().max_tokens(64))?;
    let mut tokens = Vec::new();
    for chunk in &mut reply {
        tokens.extend(chunk?.tokens);
    }
    let finish = reply.finish().map(finish_json).unwrap_or(Value::Null);
    Ok(json!({ "text": reply.text(), "tokens": tokens, "appended": reply.appended(), "finish": finish }))
}

fn fork(model: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let branches =
        ["What is the capital of France?", "Name a famous waterfall.", "What is the coldest place on Earth?"];
    let mut parent = Chat::new(&model)?;
    for m in history() {
        parent.push(m);
    }
    let first = turn(&mut parent, "What is the deepest lake?")?;
    println!("{}", json!({ "parent": first, "len": parent.session().len() }));
    let mut forks = Vec::new();
    for _ in branches {
        forks.push(parent.fork()?);
    }
    for (i, (chat, q)) in forks.iter_mut().zip(branches).enumerate() {
        println!("{}", json!({ "branch": i, "reply": turn(chat, q)? }));
    }
    for (i, q) in branches.iter().enumerate() {
        // The parent's steps again, without a fork: what the branch must equal.
        let mut replay = Chat::new(&model)?;
        for m in history() {
            replay.push(m);
        }
        turn(&mut replay, "What is the deepest lake?")?;
        println!("{}", json!({ "replay": i, "reply": turn(&mut replay, q)? }));
        // The whole history in one batch: equal only where llama.cpp's
        // arithmetic does not depend on the batch shape.
        let mut fresh = Chat::new(&model)?;
        for m in parent.messages() {
            fresh.push(m.clone());
        }
        println!("{}", json!({ "fresh": i, "reply": turn(&mut fresh, q)? }));
    }
    Ok(())
}

fn tokens(model_name: &str, text: &str) -> Result<(), Error> {
    let model = Model::load(model_name)?;
    let ids = model.tokenize(text, false, false)?;
    let info = model.info()?;
    println!(
        "{}",
        json!({
            "ids": ids,
            "detokenized": model.detokenize(&ids, false)?,
            "count": model.count_tokens(text)?,
            "special": model.tokenize("<|im_start|>", false, true)?,
            "info": {
                "name": info.name, "architecture": info.architecture, "trained-context": info.trained_context,
                "max-session-context": info.max_session_context, "vocab-size": info.vocab_size,
                "bos": info.bos, "eos": info.eos, "eot": info.eot, "parameters": info.parameters,
                "size-bytes": info.size_bytes, "has-template": info.chat_template.is_some(),
                "quantization": info.quantization,
            },
        })
    );
    let session = Session::open(&model)?;
    let added = session.append_tokens(&ids)?;
    println!("{}", json!({ "appended": added, "session-tokens": session.tokens(), "remaining": session.remaining() }));
    report("invalid-token", session.append_tokens(&[ids[0], info.vocab_size]));
    report("detokenize-invalid", model.detokenize(&[u32::MAX], false));
    println!("{}", json!({ "after-invalid": session.tokens() }));
    Ok(())
}

fn rewind(model: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let session = Session::open(&model)?;
    session.append(prompt)?;
    let before = session.len();
    let (first, finish) = session.generate(&Params::greedy().max_tokens(16))?.collect_text()?;
    let after = session.len();
    let rewound = session.rewind(finish.usage.generated_tokens)?;
    let (second, _) = session.generate(&Params::greedy().max_tokens(16))?.collect_text()?;
    report("rewind-too-far", session.rewind(session.len() + 1));
    session.reset()?;
    println!(
        "{}",
        json!({ "before": before, "after": after, "rewound": rewound, "first": first, "second": second, "reset": session.len() })
    );
    Ok(())
}

fn sample(model: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let run = |params: Params| -> Result<(String, Vec<Value>), Error> {
        let session = Session::open(&model)?;
        session.append(prompt)?;
        let mut stream = session.generate(&params)?;
        let (mut text, mut logprobs) = (String::new(), Vec::new());
        for chunk in &mut stream {
            let chunk = chunk?;
            text.push_str(&chunk.text);
            for l in chunk.logprobs {
                logprobs.push(json!({ "token": l.token, "logprob": l.logprob, "top": l.top }));
            }
        }
        Ok((text, logprobs))
    };
    let sampled = |seed| Params::new().temperature(0.9).seed(seed).max_tokens(24);
    let (greedy, logprobs) = run(Params::greedy().max_tokens(12).logprobs(3))?;
    let first = model.tokenize(&greedy, false, false)?[0];
    let schema = r#"{"type":"object","properties":{"city":{"type":"string"},"population":{"type":"integer"}},"required":["city","population"]}"#;
    let grammar = r#"root ::= "yes" | "no""#;
    println!(
        "{}",
        json!({
            "greedy": greedy,
            "logprobs": logprobs,
            "seed-1": run(sampled(1))?.0,
            "seed-1-again": run(sampled(1))?.0,
            "seed-2": run(sampled(2))?.0,
            "json": run(Params::greedy().json_schema(schema).max_tokens(48))?.0,
            "grammar": run(Params::greedy().grammar(grammar).max_tokens(8))?.0,
            "banned-first": run(Params::greedy().logit_bias(first, f32::NEG_INFINITY).max_tokens(12))?.0,
            "penalised": run(Params::greedy().repeat_penalty(1.3, 64).presence_penalty(0.5).frequency_penalty(0.5).min_p(0.1).top_k(20).top_p(0.9).max_tokens(12))?.0,
        })
    );
    report("invalid-grammar", run(Params::greedy().grammar("root ::= (")).map(|_| ()));
    report("invalid-schema", run(Params::greedy().json_schema("{not json")).map(|_| ()));
    report("nan-temperature", run(Params::new().temperature(f32::NAN)).map(|_| ()));
    Ok(())
}

fn chunks(model: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let session = Session::open(&model)?;
    session.append(prompt)?;
    let mut stream = session.generate(&Params::greedy().max_tokens(32))?;
    // Let the host run ahead of this reader, so there is something to batch.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut sizes = Vec::new();
    while let Some(chunk) = stream.next_chunk(8) {
        sizes.push(chunk?.tokens.len());
    }
    let total = stream.finish().map(finish_json).unwrap_or(Value::Null);
    let generated = stream.finish().map_or(0, |f| f.usage.generated_tokens);
    drop(stream);
    // Regenerate the same reply, this time cancelling after its first chunk.
    session.rewind(generated)?;
    let len_before = session.len();
    let mut stream = session.generate(&Params::greedy().max_tokens(32))?;
    let first = stream.next().expect("a first chunk")?.tokens.len();
    stream.cancel();
    let cancelled = stream.finish().map(finish_json).unwrap_or(Value::Null);
    drop(stream);
    println!(
        "{}",
        json!({ "sizes": sizes, "finish": total, "first": first, "cancelled": cancelled,
                "len-before": len_before, "len-after": session.len() })
    );
    Ok(())
}

fn save(model: &str, file: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let session = Session::open(&model)?;
    session.append(prompt)?;
    let (first, _) = session.generate(&Params::greedy().max_tokens(8))?.collect_text()?;
    let blob = session.save()?;
    std::fs::write(file, &blob).map_err(io)?;
    // A fork saved at once (its KV copy still pending in llama.cpp), restored
    // in this process, must continue like the original.
    let forked = Session::restore(&model, &session.fork()?.save()?)?;
    let (_, from_fork, _) = drain(&mut forked.generate(&Params::greedy().max_tokens(24))?, false)?;
    let (_, tokens, finish) = drain(&mut session.generate(&Params::greedy().max_tokens(24))?, false)?;
    println!(
        "{}",
        json!({ "first": first, "saved-bytes": blob.len(), "len": session.len(), "continued": tokens,
                "finish": finish, "fork-restored": from_fork })
    );
    Ok(())
}

fn restore(model: &str, file: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let blob = std::fs::read(file).map_err(io)?;
    match Session::restore(&model, &blob) {
        Ok(session) => {
            let len = session.len();
            let (_, tokens, finish) = drain(&mut session.generate(&Params::greedy().max_tokens(24))?, false)?;
            println!("{}", json!({ "len": len, "continued": tokens, "finish": finish }));
        }
        Err(e) => report("restore", Err::<(), _>(e)),
    }
    Ok(())
}

/// Restore each file in turn and, where the host accepts it, generate from
/// it: one line per file, written before the next is tried (a test reads
/// how far a host process got if one of them takes it down).
fn restore_each(model: &str, files: &[&str]) -> Result<(), Error> {
    let model = Model::load(model)?;
    for file in files {
        let blob = std::fs::read(file).map_err(io)?;
        let outcome = Session::restore(&model, &blob).and_then(|session| {
            let (_, tokens, finish) = drain(&mut session.generate(&Params::greedy().max_tokens(8))?, false)?;
            Ok(json!({ "file": file, "restored": session.len(), "tokens": tokens.len(), "finish": finish }))
        });
        let line = match outcome {
            Ok(line) => line,
            Err(Error::Llm(e)) => json!({ "file": file, "llm-error": format!("{e:?}") }),
            Err(e) => json!({ "file": file, "error": e.to_string() }),
        };
        println!("{line}");
    }
    Ok(())
}

/// A file error, reported like the others.
fn io(e: std::io::Error) -> Error {
    Error::Nn { code: wasi_nn_llm::raw::wasi::nn::errors::ErrorCode::RuntimeError, message: e.to_string() }
}

fn poll_two(model: &str, a: &str, b: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    let sessions = [Session::open(&model)?, Session::open(&model)?];
    sessions[0].append(a)?;
    sessions[1].append(b)?;
    let params = Params::greedy().max_tokens(32);
    let mut streams = [sessions[0].generate(&params)?, sessions[1].generate(&params)?];
    let pollables: Vec<_> = streams.iter().map(|s| s.subscribe()).collect();
    let mut tokens: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    // The order in which chunks arrived: both streams progress together.
    let mut order = Vec::new();
    let mut polls = 0;
    loop {
        // Wait only on streams still running: a finished stream stays ready.
        let running: Vec<usize> = (0..2).filter(|&i| streams[i].finish().is_none()).collect();
        if running.is_empty() {
            break;
        }
        polls += 1;
        let waiting: Vec<&wasi_nn_llm::Pollable> = running.iter().map(|&i| &pollables[i]).collect();
        for ready in wasi_nn_llm::poll(&waiting) {
            let i = running[ready as usize];
            while let Some(chunk) = streams[i].try_next()? {
                tokens[i].extend(chunk.tokens);
                order.push(i);
            }
        }
    }
    drop(pollables);
    let finishes: Vec<Value> = streams.iter().map(|s| s.finish().map(finish_json).unwrap_or(Value::Null)).collect();
    println!("{}", json!({ "tokens": tokens, "order": order, "polls": polls, "finish": finishes }));
    Ok(())
}

fn overflow(model: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load(model)?;
    for (name, policy) in [("refuse", OverflowPolicy::Refuse), ("shift", OverflowPolicy::Shift(8))] {
        let options = SessionOptions { context_length: Some(64), seed: None, overflow: Some(policy) };
        let session = Session::open_with(&model, options)?;
        session.append(prompt)?;
        let mut stream = session.generate(&Params::greedy().max_tokens(100))?;
        let (text, tokens, finish) = drain(&mut stream, false)?;
        drop(stream);
        let len_after_generate = session.len();
        let long = session.append(&"The quick brown fox jumps over the lazy dog. ".repeat(4));
        println!(
            "{}",
            json!({ "policy": name, "generated": tokens.len(), "text": text, "finish": finish,
                    "len": len_after_generate, "long-append": format!("{long:?}"), "len-after-append": session.len() })
        );
    }
    let bad = SessionOptions { context_length: Some(64), seed: None, overflow: Some(OverflowPolicy::Shift(64)) };
    report("keep-everything", Session::open_with(&model, bad).map(|_| ()));
    Ok(())
}

fn tensor(model_name: &str, n: usize, prompt: &str) -> Result<(), Error> {
    // Tokenized as `append` would on an empty session (BOS, special markers).
    let mut tokens = Model::load(model_name)?.tokenize(prompt, true, true)?;
    let graph = graph::load_by_name(model_name)?;
    let exec = graph.init_execution_context()?;
    let (mut generated, mut vocab) = (Vec::new(), 0);
    for _ in 0..n {
        let bytes: Vec<u8> = tokens.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
        let input = Tensor::new(&[tokens.len() as u32], TensorType::I32, &bytes);
        let outputs = exec.compute(vec![("tokens".into(), input)])?;
        let (_, logits) = outputs.into_iter().find(|(name, _)| name == "logits").expect("a logits output");
        let logits: Vec<f32> =
            logits.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        vocab = logits.len();
        let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap_or(0) as u32;
        generated.push(best);
        tokens.push(best);
    }
    let bad = Tensor::new(&[1], TensorType::I32, &(-5i32).to_le_bytes());
    let refused = exec.compute(vec![("tokens".into(), bad)]).map(|_| ()).map_err(Error::from);
    println!("{}", json!({ "tokens": generated, "vocab": vocab, "negative-id": format!("{refused:?}") }));
    Ok(())
}

/// What the host says serves `model`.
fn identity(model: &str) -> Result<(), Error> {
    let id = Model::load(model)?.identity()?;
    println!(
        "{}",
        json!({
            "digest": id.digest, "size": id.size_bytes, "format": id.format, "backend": id.backend,
            "backend-version": id.backend_version, "host": id.host, "device": id.device,
        })
    );
    Ok(())
}

/// A guest pinned to one model file: it generates only on the model whose
/// SHA-256 is `digest`, and refuses to run on any other.
fn verified(model: &str, digest: &str, prompt: &str) -> Result<(), Error> {
    let model = Model::load_verified(model, digest)?;
    let session = Session::open(&model)?;
    session.append(prompt)?;
    let mut stream = session.generate(&Params::greedy().max_tokens(8))?;
    drain(&mut stream, true)?;
    Ok(())
}
