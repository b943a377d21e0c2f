//! Test guest: a hostile tenant. Each command sends the host inputs that
//! crash or wedge other LLM hosts, and prints one JSON line per case saying
//! how the host answered (`ok`, `llm-error`, `nn-error`), so the tests can
//! check every answer is a typed error and the host serves on.
//!
//! Commands:
//! - `bad-inputs MODEL`: the bad-input matrix, ending with a normal reply.
//! - `quota MODEL`: breaches the instance and generation limits of a policy.
//! - `slow MODEL`: one long generation (for `generate-seconds`).
//! - `hoard MODEL N`: opens up to N sessions and keeps them (the quota).
//! - `trap MODEL`: opens sessions, starts generations, then traps.
//! - `spin MODEL`: starts a generation, then loops forever (interrupted by
//!   `guest-seconds`).
//! - `grow`: allocates until the host's memory limit stops it.

use std::process::ExitCode;

use serde_json::{Value, json};
use wasi_nn_llm::raw::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use wasi_nn_llm::raw::wasi::nn::tensor::{Tensor, TensorType};
use wasi_nn_llm::{Error, Model, Params, Session, SessionOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["bad-inputs", model] => bad_inputs(model),
        ["quota", model] => quota(model),
        ["slow", model] => slow(model),
        ["hoard", model, n] => hoard(model, n.parse().unwrap_or(1000)),
        ["trap", model] => trap(model),
        ["spin", model] => spin(model),
        ["grow"] => grow(),
        _ => {
            eprintln!("hostile: unknown command {args:?}");
            return ExitCode::FAILURE;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostile: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One case's answer as a JSON line.
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

fn tensor(ty: TensorType, dims: &[u32], data: &[u8]) -> Tensor {
    Tensor::new(dims, ty, data)
}

/// Run a base wasi-nn compute on a fresh context.
fn compute(model: &str, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, Error> {
    let graph = graph::load_by_name(model)?;
    Ok(graph.init_execution_context()?.compute(inputs)?)
}

/// A greedy reply's text and finish, for cases that generate.
fn reply(session: &Session, params: &Params) -> Result<(String, Value), Error> {
    let (text, finish) = session.generate(params)?.collect_text()?;
    Ok((text, json!(format!("{:?}", finish.reason))))
}

/// Greedy with end-of-generation biased away: only a limit can stop it.
fn endless(model: &Model) -> Result<Params, Error> {
    let info = model.info()?;
    Ok([info.eos, info.eot].into_iter().flatten().fold(Params::greedy(), |p, t| p.logit_bias(t, -1e9)))
}

fn small(model: &Model, tokens: u32) -> Result<Session, Error> {
    Session::open_with(model, SessionOptions { context_length: Some(tokens), seed: None, overflow: None })
}

fn bad_inputs(name: &str) -> Result<(), Error> {
    let model = Model::load(name)?;
    let vocab = model.info()?.vocab_size;
    let endless = endless(&model)?;
    let session = Session::open(&model)?;

    // Token ids.
    report("token-out-of-range", session.append_tokens(&[vocab]));
    report("token-negative-as-u32", session.append_tokens(&[u32::MAX]));
    report("detokenize-out-of-range", model.detokenize(&[vocab + 7], false));
    let minus_one = (-1i32).to_le_bytes();
    report("tensor-negative-token", compute(name, vec![("tokens".into(), tensor(TensorType::I32, &[1], &minus_one))]));
    let big = (vocab as i32).to_le_bytes();
    report("tensor-token-out-of-range", compute(name, vec![("tokens".into(), tensor(TensorType::I32, &[1], &big))]));

    // Empty and overlong prompts.
    report("append-empty", session.append(""));
    report("generate-on-empty-session", session.generate(&Params::greedy()).map(|_| ()));
    report("compute-empty-prompt", compute(name, vec![("prompt".into(), tensor(TensorType::U8, &[0], &[]))]));
    let tiny = small(&model, 32)?;
    report("prompt-longer-than-context", tiny.append(&"many words in a row ".repeat(40)));
    drop(tiny);
    report("context-length-zero", small(&model, 0).map(|_| ()));
    report("context-length-huge", small(&model, u32::MAX).map(|_| ()));

    // Filling the context while generating ends the stream, not the host.
    let filling = small(&model, 48)?;
    filling.append("Count from one to one hundred:")?;
    report("context-filled-while-generating", reply(&filling, &endless.clone().max_tokens(1000)));
    report("generate-on-full-context", reply(&filling, &endless));
    drop(filling);

    // Malformed tensors for base wasi-nn.
    report(
        "compute-invalid-utf8",
        compute(name, vec![("prompt".into(), tensor(TensorType::U8, &[3], &[0xff, 0xfe, 0x80]))]),
    );
    report("compute-prompt-as-fp32", compute(name, vec![("prompt".into(), tensor(TensorType::Fp32, &[1], &[0; 4]))]));
    report("compute-dims-disagree", compute(name, vec![("prompt".into(), tensor(TensorType::U8, &[99], b"hi"))]));
    report("compute-tokens-as-u8", compute(name, vec![("tokens".into(), tensor(TensorType::U8, &[2], &[1, 2]))]));
    report("compute-tokens-ragged", compute(name, vec![("tokens".into(), tensor(TensorType::I32, &[1], &[1, 0, 0]))]));
    report("compute-tokens-empty", compute(name, vec![("tokens".into(), tensor(TensorType::I32, &[0], &[]))]));
    report("compute-unknown-input", compute(name, vec![("weights".into(), tensor(TensorType::U8, &[1], &[0]))]));
    report("compute-no-inputs", compute(name, vec![]));
    let bad_json = tensor(TensorType::U8, &[10], b"{\"tmp\": 1}");
    let prompt = tensor(TensorType::U8, &[5], b"Hello");
    report("compute-unknown-param", compute(name, vec![("prompt".into(), prompt), ("params".into(), bad_json)]));
    report(
        "raw-bytes-load",
        graph::load(&[b"GGUF".to_vec()], GraphEncoding::Ggml, ExecutionTarget::Cpu).map(|_| ()).map_err(Error::from),
    );
    report("unknown-model", graph::load_by_name("../../etc/passwd").map(|_| ()).map_err(Error::from));

    // Sampling parameters.
    session.append("The capital of France is")?;
    report("max-tokens-zero", reply(&session, &Params::greedy().max_tokens(0)));
    let short = small(&model, 40)?;
    short.append("Hi")?;
    report("max-tokens-huge", reply(&short, &endless.clone().max_tokens(u32::MAX)));
    drop(short);
    report("temperature-nan", reply(&session, &Params::new().temperature(f32::NAN)));
    report("temperature-negative", reply(&session, &Params::new().temperature(-1.0)));
    report("top-p-above-one", reply(&session, &Params::new().top_p(1.5)));
    // llama.cpp allocates the penalty window up front (a fuzzer find).
    report("penalty-window-huge", reply(&session, &Params::greedy().max_tokens(4).repeat_penalty(1.1, u32::MAX)));
    report("logit-bias-bad-token", reply(&session, &Params::greedy().logit_bias(vocab, 1.0)));
    report("invalid-grammar", reply(&session, &Params::greedy().grammar("root ::= (")));
    report("grammar-unknown-rule", reply(&session, &Params::greedy().grammar("root ::= missing")));
    report("invalid-json-schema", reply(&session, &Params::greedy().json_schema("{\"type\": 12}")));
    report("schema-not-json", reply(&session, &Params::greedy().json_schema("not json")));

    // Snapshots.
    let blob = session.save()?;
    report("restore-empty", Session::restore(&model, &[]).map(|_| ()));
    report("restore-truncated", Session::restore(&model, &blob[..blob.len() / 2]).map(|_| ()));
    let mut flipped = blob.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    report("restore-bit-flipped", Session::restore(&model, &flipped).map(|_| ()));
    let mut oversized = blob.clone();
    oversized.extend(std::iter::repeat_n(0u8, 1 << 20));
    report("restore-oversized", Session::restore(&model, &oversized).map(|_| ()));
    report("restore-garbage", Session::restore(&model, &[0x5a; 4096]).map(|_| ()));

    // Streams: busy sessions and cancel storms.
    let stream = session.generate(&Params::greedy().max_tokens(64))?;
    report("append-while-streaming", session.append(" more"));
    report("generate-while-streaming", session.generate(&Params::greedy()).map(|_| ()));
    drop(stream);
    for _ in 0..200 {
        let mut stream = session.generate(&Params::greedy().max_tokens(64))?;
        stream.cancel();
        stream.cancel();
    }
    for _ in 0..200 {
        drop(session.generate(&Params::greedy().max_tokens(64))?);
    }
    report("after-cancel-storm", reply(&session, &Params::greedy().max_tokens(4)));

    // A session outlives the graph handle it was opened from.
    drop(session);
    let orphan = Session::open(&model)?;
    drop(model);
    orphan.append("The capital of France is")?;
    report("session-after-graph-dropped", reply(&orphan, &Params::greedy().max_tokens(4)));
    drop(orphan);

    // And the host still serves a normal request.
    let model = Model::load(name)?;
    let fresh = Session::open(&model)?;
    fresh.append("The capital of France is")?;
    report("after-matrix", reply(&fresh, &Params::greedy().max_tokens(8)));
    Ok(())
}

fn quota(name: &str) -> Result<(), Error> {
    let model = Model::load(name)?;
    let a = Session::open(&model)?;
    let b = Session::open(&model)?;
    report("third-session", Session::open(&model).map(|_| ()));
    report("fork-past-quota", a.fork().map(|_| ()));
    drop(b);
    report("session-after-one-closed", Session::open(&model).map(|_| ()));
    a.append("Once upon a time")?;
    report("max-tokens-above-limit", reply(&a, &Params::greedy().max_tokens(1000)));
    report(
        "max-tokens-default",
        a.generate(&Params::greedy())?.collect_text().map(|(_, f)| (f.reason, f.usage.generated_tokens)),
    );
    let c = a.fork()?;
    let first = a.generate(&Params::greedy().max_tokens(8))?;
    report("second-concurrent-generation", c.generate(&Params::greedy().max_tokens(8)).map(|_| ()));
    drop(first);
    report("generation-after-first-ended", reply(&c, &Params::greedy().max_tokens(4)));
    Ok(())
}

fn slow(name: &str) -> Result<(), Error> {
    let model = Model::load(name)?;
    let session = Session::open(&model)?;
    session.append("Write a very long story about a dragon.")?;
    let mut stream = session.generate(&endless(&model)?.max_tokens(2000))?;
    let mut delivered = 0;
    let outcome = loop {
        match stream.next() {
            Some(Ok(chunk)) => delivered += chunk.tokens.len(),
            Some(Err(e)) => break Err::<(), _>(e),
            None => break Ok(()),
        }
    };
    drop(stream);
    println!("{}", json!({ "case": "delivered", "tokens": delivered, "session-len": session.len() }));
    report("slow-generation", outcome);
    Ok(())
}

fn hoard(name: &str, n: u32) -> Result<(), Error> {
    let model = Model::load(name)?;
    let mut kept = Vec::new();
    let mut refused = None;
    for _ in 0..n {
        match Session::open(&model) {
            Ok(s) => kept.push(s),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    println!("{}", json!({ "case": "hoard", "opened": kept.len() }));
    report("refused", refused.map_or(Ok(()), Err));
    // Never closed: the host must reclaim them when the instance ends.
    std::mem::forget(kept);
    Ok(())
}

/// Sessions with generations in flight, then a trap.
fn busy_sessions(name: &str) -> Result<Vec<(Session, wasi_nn_llm::TokenStream)>, Error> {
    let model = Model::load(name)?;
    let mut busy = Vec::new();
    for _ in 0..3 {
        let session = Session::open(&model)?;
        session.append("Tell me a long story.")?;
        let mut stream = session.generate(&Params::greedy().max_tokens(500))?;
        let _ = stream.next();
        busy.push((session, stream));
    }
    println!("{}", json!({ "case": "busy", "sessions": busy.len() }));
    Ok(busy)
}

fn trap(name: &str) -> Result<(), Error> {
    let busy = busy_sessions(name)?;
    let n = busy.len();
    std::mem::forget(busy);
    panic!("hostile: a panic with {n} generations in flight")
}

fn spin(name: &str) -> Result<(), Error> {
    let busy = busy_sessions(name)?;
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(busy.len() as u64));
    }
}

fn grow() -> Result<(), Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::new();
        if block.try_reserve_exact(16 << 20).is_err() {
            println!("{}", json!({ "case": "grow-refused", "mb": hoard.len() * 16 }));
            return Ok(());
        }
        block.resize(16 << 20, 1);
        hoard.push(block);
    }
}
