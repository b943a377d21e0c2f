//! The benchmark guest: each command times one way of running the model from
//! inside wasm and prints JSON lines for the harness (`benches/src`).
//!
//! Times are taken in the guest, so they include everything the guest pays
//! for: the component boundary, copies, and (tensor mode) its own tokenizing
//! and sampling. Every command starts from a cold cache (a new session, a new
//! execution context) unless the point is the cache.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_tensor::Conversation;
use chat_tensor::template::Template;
use chat_tensor::tensor::{self, TensorModel};
use gguf_vocab::GgufTokenizer;
use gguf_vocab::Metadata;
use serde_json::json;
use wasi_nn_llm::raw::wasi::nn::graph;
use wasi_nn_llm::raw::wasi::nn::tensor::{Tensor, TensorType};
use wasi_nn_llm::{Chat, Error, Model, Params, Session, TokenStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let num = |s: &str| s.parse::<u32>().map_err(|e| format!("{s:?} is not a count: {e}"));
    let result = match args.as_slice() {
        ["single-ext", model, n, prompt] => num(n).and_then(|n| single_ext(model, n, prompt)),
        ["depth", model, n, depth, text] => num(n).and_then(|n| num(depth).and_then(|d| depth_ext(model, n, d, text))),
        ["single-text", model, n, prompt] => num(n).and_then(|n| single_text(model, n, prompt)),
        ["single-tensor", model, gguf, n, prompt] => num(n).and_then(|n| single_tensor(model, gguf, n, prompt)),
        ["boundary", model, rounds] => num(rounds).and_then(|r| boundary(model, r)),
        ["chat-ext", model, max, questions @ ..] => num(max).and_then(|m| chat_ext(model, m, questions)),
        ["chat-text", model, gguf, max, questions @ ..] => num(max).and_then(|m| chat_text(model, gguf, m, questions)),
        ["chat-tensor", model, gguf, max, keep, questions @ ..] => {
            num(max).and_then(|m| chat_tensor(model, gguf, m, *keep == "keep", questions))
        }
        ["restore", model, rounds, text] => num(rounds).and_then(|r| restore(model, r, text)),
        ["concurrent", model, k, n, go, prompt] => {
            num(k).and_then(|k| num(n).and_then(|n| concurrent(model, k, n, go.parse().unwrap_or(0), prompt)))
        }
        ["hold", model, ms, prompt] => num(ms).and_then(|ms| hold(model, ms, prompt)),
        _ => Err(format!("unknown command {args:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn err(e: Error) -> String {
    e.to_string()
}

/// Greedy, exactly `n` tokens: end-of-generation tokens are biased away so
/// every way of running generates the same count.
fn exact(model: &Model, n: u32) -> Result<Params, String> {
    let info = model.info().map_err(err)?;
    let mut params = Params::greedy().max_tokens(n);
    for id in [info.eos, info.eot].into_iter().flatten() {
        params = params.logit_bias(id, -1e9);
    }
    Ok(params)
}

/// Read a stream to its end: (time of the first chunk, time of the last, tokens).
fn drain(stream: &mut TokenStream, from: Instant) -> Result<(Duration, Duration, u32), String> {
    let (mut first, mut last, mut tokens) = (None, Duration::ZERO, 0);
    for chunk in stream {
        let chunk = chunk.map_err(err)?;
        last = from.elapsed();
        first.get_or_insert(last);
        tokens += chunk.tokens.len() as u32;
    }
    Ok((first.unwrap_or(last), last, tokens))
}

/// The extension: append the prompt, stream `n` tokens.
fn single_ext(name: &str, n: u32, prompt: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, n)?;
    let session = Session::open(&model).map_err(err)?;
    let start = Instant::now();
    session.append(prompt).map_err(err)?;
    let mut stream = session.generate(&params).map_err(err)?;
    let (first, last, tokens) = drain(&mut stream, start)?;
    println!("{}", json!({ "ttft_ms": ms(first), "decode_ms": ms(last - first), "generated": tokens }));
    Ok(())
}

/// The extension at a given depth, as llama-bench measures: `depth` prompt
/// tokens (`text`'s, repeated as needed) appended as ids, then `n` tokens.
fn depth_ext(name: &str, n: u32, depth: u32, text: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, n)?;
    let words = model.tokenize(text, false, false).map_err(err)?;
    if words.is_empty() {
        return Err("the text has no tokens".into());
    }
    let prompt: Vec<u32> = words.iter().copied().cycle().take(depth as usize).collect();
    let session = Session::open(&model).map_err(err)?;
    let start = Instant::now();
    session.append_tokens(&prompt).map_err(err)?;
    let mut stream = session.generate(&params).map_err(err)?;
    let (first, last, tokens) = drain(&mut stream, start)?;
    println!("{}", json!({ "ttft_ms": ms(first), "decode_ms": ms(last - first), "generated": tokens }));
    Ok(())
}

fn text_tensor(text: &str) -> Tensor {
    Tensor::new(&[text.len() as u32], TensorType::U8, text.as_bytes())
}

/// Base wasi-nn, text convention: one stateless compute returns the reply.
/// Time to first token is a `max-tokens: 1` compute, since nothing streams.
fn text_compute(name: &str, prompt: &str, max: u32, bias: &[u32]) -> Result<(String, Duration), String> {
    let graph = graph::load_by_name(name).map_err(|e| e.data())?;
    let exec = graph.init_execution_context().map_err(|e| e.data())?;
    let bias: Vec<(u32, f32)> = bias.iter().map(|&id| (id, -1e9)).collect();
    let params = json!({ "temperature": 0, "max-tokens": max, "logit-bias": bias }).to_string();
    let start = Instant::now();
    let outputs = exec
        .compute(vec![("prompt".into(), text_tensor(prompt)), ("params".into(), text_tensor(&params))])
        .map_err(|e| format!("compute: {:?} {}", e.code(), e.data()))?;
    let took = start.elapsed();
    let text = outputs.into_iter().find(|(n, _)| n == "text").map(|(_, t)| t.data()).ok_or("no text output")?;
    Ok((String::from_utf8_lossy(&text).into_owned(), took))
}

fn single_text(name: &str, n: u32, prompt: &str) -> Result<(), String> {
    let info = Model::load(name).map_err(err)?.info().map_err(err)?;
    let bias: Vec<u32> = [info.eos, info.eot].into_iter().flatten().collect();
    let (_, first) = text_compute(name, prompt, 1, &bias)?;
    let (_, full) = text_compute(name, prompt, n, &bias)?;
    println!("{}", json!({ "first_ms": ms(first), "full_ms": ms(full) }));
    Ok(())
}

/// Base wasi-nn, tensor convention: tokenize in the guest, one compute per
/// token, argmax in the guest with end-of-generation masked.
fn single_tensor(name: &str, gguf: &str, n: u32, prompt: &str) -> Result<(), String> {
    let meta = Metadata::read(Path::new(gguf)).map_err(|e| e.to_string())?;
    let tokenizer = GgufTokenizer::from_gguf(&meta)?;
    let model = TensorModel::load(name)?;
    let start = Instant::now();
    let mut tokens = tokenizer.encode(prompt, true)?;
    let tokenized = start.elapsed();
    let mut first = None;
    for _ in 0..n {
        let mut logits = model.logits(&tokens)?;
        for &id in tokenizer.end_ids() {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        tokens.push(tensor::argmax(&logits));
        first.get_or_insert(start.elapsed());
    }
    let last = start.elapsed();
    let first = first.unwrap_or(last);
    println!(
        "{}",
        json!({ "ttft_ms": ms(first), "decode_ms": ms(last - first), "generated": n, "tokenize_ms": ms(tokenized) })
    );
    Ok(())
}

/// The boundary's cost per streamed chunk: generate a few tokens (fewer than
/// the host runs ahead), let the host finish them, then time each `next()`,
/// which then only crosses the boundary and copies a ready chunk.
fn boundary(name: &str, rounds: u32) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, 6)?;
    let session = Session::open(&model).map_err(err)?;
    session.append("Count slowly from one to one hundred, one number per line:").map_err(err)?;
    let samples: Vec<f64> =
        ready_reads(&session, &params, rounds, |s| s.next())?.into_iter().map(|(us, _)| us).collect();
    // The same with `next-chunk(8)`: one call takes every ready token; its
    // time per token.
    let per_token: Vec<f64> = ready_reads(&session, &params, rounds, |s| s.next_chunk(8))?
        .into_iter()
        .map(|(us, tokens)| us / tokens.max(1) as f64)
        .collect();
    println!("{}", json!({ "next_us": samples, "next_chunk_us_per_token": per_token }));
    Ok(())
}

/// `rounds` generations of `params` on `session`, each given 150 ms to fill
/// its buffer, then read to the end with `read`: each call's time (µs) and
/// tokens. The session is rewound after each.
fn ready_reads(
    session: &Session,
    params: &Params,
    rounds: u32,
    mut read: impl FnMut(&mut TokenStream) -> Option<Result<wasi_nn_llm::Chunk, Error>>,
) -> Result<Vec<(f64, usize)>, String> {
    let mut calls = Vec::new();
    for _ in 0..rounds {
        let mut stream = session.generate(params).map_err(err)?;
        std::thread::sleep(Duration::from_millis(150));
        loop {
            let start = Instant::now();
            let chunk = read(&mut stream);
            let took = start.elapsed();
            match chunk {
                Some(c) => calls.push((took.as_secs_f64() * 1e6, c.map_err(err)?.tokens.len())),
                None => break,
            }
        }
        drop(stream);
        session.rewind(params.as_raw().max_tokens.unwrap_or(0)).map_err(err)?;
    }
    Ok(calls)
}

/// Multi-turn chat with the extension: one session, each turn appends only
/// the new user turn.
fn chat_ext(name: &str, max: u32, questions: &[&str]) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = Params::greedy().max_tokens(max);
    let mut chat = Chat::new(&model).map_err(err)?;
    for (turn, q) in questions.iter().enumerate() {
        let start = Instant::now();
        let mut reply = chat.send(q, &params).map_err(err)?;
        let mut first = None;
        for chunk in &mut reply {
            chunk.map_err(err)?;
            first.get_or_insert(start.elapsed());
        }
        let usage = reply.finish().map(|f| f.usage).ok_or("no finish")?;
        let prefilled = usage.prompt_tokens - usage.cached_tokens;
        let total = start.elapsed();
        println!(
            "{}",
            json!({ "turn": turn, "ttft_ms": ms(first.unwrap_or(total)), "reply_ms": ms(total), "prefilled": prefilled })
        );
    }
    Ok(())
}

/// Multi-turn chat with base wasi-nn's text convention: every turn re-sends
/// the whole templated history (rendered in the guest) to a stateless compute.
fn chat_text(name: &str, gguf: &str, max: u32, questions: &[&str]) -> Result<(), String> {
    let meta = Metadata::read(Path::new(gguf)).map_err(|e| e.to_string())?;
    let template = Template::for_model(&meta)?;
    let tokenizer = GgufTokenizer::from_gguf(&meta)?;
    let mut messages = Vec::new();
    for (turn, q) in questions.iter().enumerate() {
        messages.push(("user".to_owned(), q.to_string()));
        let prompt = template.render(&messages, true);
        let prefilled = tokenizer.encode(&prompt, true)?.len();
        let (_, first) = text_compute(name, &prompt, 1, &[])?;
        let (reply, total) = text_compute(name, &prompt, max, &[])?;
        println!("{}", json!({ "turn": turn, "ttft_ms": ms(first), "reply_ms": ms(total), "prefilled": prefilled }));
        messages.push(("assistant".to_owned(), reply));
    }
    Ok(())
}

/// Multi-turn chat with base wasi-nn's tensor convention; `keep` keeps one
/// execution context (the host reuses the prefix it evaluated last), else
/// each turn gets a new one, as on a host that keeps nothing.
fn chat_tensor(name: &str, gguf: &str, max: u32, keep: bool, questions: &[&str]) -> Result<(), String> {
    let mut chat = Conversation::open(name, Path::new(gguf))?;
    for (turn, q) in questions.iter().enumerate() {
        if !keep {
            chat.forget_context()?;
        }
        let start = Instant::now();
        let reply = chat.send(q, max, |_| {})?;
        let total = start.elapsed();
        println!(
            "{}",
            json!({ "turn": turn, "ttft_ms": ms(reply.first_token), "reply_ms": ms(total), "prefilled": reply.prefilled })
        );
    }
    Ok(())
}

/// First token after restoring a saved conversation vs after prefilling it.
fn restore(name: &str, rounds: u32, text: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, 1)?;
    let first_token = |session: &Session| -> Result<(), String> {
        let mut stream = session.generate(&params).map_err(err)?;
        stream.next().ok_or("no token")?.map_err(err)?;
        Ok(())
    };
    let (mut reprefill, mut restored, mut saved) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tokens, mut bytes) = (0, 0);
    for _ in 0..rounds {
        let start = Instant::now();
        let session = Session::open(&model).map_err(err)?;
        session.append(text).map_err(err)?;
        first_token(&session)?;
        reprefill.push(ms(start.elapsed()));
        session.rewind(1).map_err(err)?;
        tokens = session.len();

        let start = Instant::now();
        let snapshot = session.save().map_err(err)?;
        saved.push(ms(start.elapsed()));
        bytes = snapshot.len();
        drop(session);

        let start = Instant::now();
        let session = Session::restore(&model, &snapshot).map_err(err)?;
        first_token(&session)?;
        restored.push(ms(start.elapsed()));
    }
    println!(
        "{}",
        json!({ "tokens": tokens, "snapshot_bytes": bytes, "reprefill_ms": reprefill, "restore_ms": restored, "save_ms": saved })
    );
    Ok(())
}

fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
}

/// `k` sessions decoding `n` tokens each at once, read round-robin. All are
/// prefilled first; with `go` (milliseconds since the epoch) the decoding
/// starts then, so that several instances start together.
fn concurrent(name: &str, k: u32, n: u32, go: u64, prompt: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, n)?;
    let sessions: Vec<Session> = (0..k).map(|_| Session::open(&model)).collect::<Result<_, _>>().map_err(err)?;
    for s in &sessions {
        s.append(prompt).map_err(err)?;
    }
    let wait = go as f64 - epoch_ms();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait / 1e3));
    }
    let (start, start_epoch) = (Instant::now(), epoch_ms());
    let mut streams: Vec<Option<TokenStream>> =
        sessions.iter().map(|s| s.generate(&params).map(Some)).collect::<Result<_, _>>().map_err(err)?;
    let mut done = vec![0.0; k as usize];
    let mut generated = 0;
    while streams.iter().any(Option::is_some) {
        for (i, slot) in streams.iter_mut().enumerate() {
            let Some(stream) = slot else { continue };
            match stream.next() {
                Some(chunk) => generated += chunk.map_err(err)?.tokens.len() as u32,
                None => {
                    done[i] = ms(start.elapsed());
                    *slot = None;
                }
            }
        }
    }
    println!(
        "{}",
        json!({ "generated": generated, "session_ms": done, "start_epoch_ms": start_epoch, "end_epoch_ms": epoch_ms() })
    );
    Ok(())
}

/// Keep one session with a prefilled prompt open for `ms` milliseconds (the
/// harness reads the process's resident memory meanwhile).
fn hold(name: &str, hold_ms: u32, prompt: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let session = Session::open(&model).map_err(err)?;
    session.append(prompt).map_err(err)?;
    let (_, finish) = session.generate(&Params::greedy().max_tokens(16)).map_err(err)?.collect_text().map_err(err)?;
    std::thread::sleep(Duration::from_millis(hold_ms as u64));
    println!("{}", json!({ "held": session.len(), "generated": finish.usage.generated_tokens }));
    Ok(())
}
