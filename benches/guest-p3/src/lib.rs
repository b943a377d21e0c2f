//! The benchmark guest's commands through the WASI 0.3 session: the same
//! measurements, in the same JSON, as `benches/guest`'s `single-ext`,
//! `boundary` and `concurrent`, with a `stream<chunk>` read where that one
//! calls `token-stream.next`, so the harness compares the two directly.
//! Times are taken in the guest.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::future::join_all;
use serde_json::json;
use wasi_nn_llm::p3::{Generation, Session};
use wasi_nn_llm::{Error, Model, Params};

struct Bench;

impl wasi_nn_llm::p3::Run for Bench {
    async fn run() -> Result<(), ()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let num = |s: &str| s.parse::<u32>().map_err(|e| format!("{s:?} is not a count: {e}"));
        let result = match args.as_slice() {
            ["single-ext", model, n, prompt] => match num(n) {
                Ok(n) => single(model, n, prompt).await,
                Err(e) => Err(e),
            },
            ["boundary", model, rounds] => match num(rounds) {
                Ok(rounds) => boundary(model, rounds).await,
                Err(e) => Err(e),
            },
            ["concurrent", model, k, n, prompt] => match (num(k), num(n)) {
                (Ok(k), Ok(n)) => concurrent(model, k, n, prompt).await,
                (Err(e), _) | (_, Err(e)) => Err(e),
            },
            _ => Err(format!("unknown command {args:?}")),
        };
        result.map_err(|e| eprintln!("bench-guest-p3: {e}"))
    }
}

wasi_nn_llm::p3::export!(Bench);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn err(e: Error) -> String {
    e.to_string()
}

fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// Greedy, `n` tokens exactly: end-of-generation is biased away.
fn exact(model: &Model, n: u32) -> Result<Params, String> {
    let info = model.info().map_err(err)?;
    let mut params = Params::greedy().max_tokens(n);
    for id in [info.eos, info.eot].into_iter().flatten() {
        params = params.logit_bias(id, -1e9);
    }
    Ok(params)
}

/// Read a generation to its end: (time of the first chunk, time of the last, tokens).
async fn drain(mut generation: Generation, from: Instant) -> Result<(Duration, Duration, u32), String> {
    let (mut first, mut last, mut tokens) = (None, Duration::ZERO, 0);
    while let Some(chunk) = generation.next().await {
        last = from.elapsed();
        first.get_or_insert(last);
        tokens += chunk.tokens.len() as u32;
    }
    generation.finish().await.map_err(err)?;
    Ok((first.unwrap_or(last), last, tokens))
}

/// One session: time to first token (prompt text handed over to the first
/// chunk) and the decode after it.
async fn single(name: &str, n: u32, prompt: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, n)?;
    let session = Session::open(&model).map_err(err)?;
    let start = Instant::now();
    session.append(prompt).await.map_err(err)?;
    let (first, last, tokens) = drain(session.generate(&params).map_err(err)?, start).await?;
    println!("{}", json!({ "ttft_ms": ms(first), "decode_ms": ms(last - first), "generated": tokens }));
    Ok(())
}

/// The boundary: one stream read of a chunk that is already generated
/// (the generation had 150 ms to fill its buffer), timed in the guest.
async fn boundary(name: &str, rounds: u32) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, 6)?;
    let session = Session::open(&model).map_err(err)?;
    session.append("Count slowly from one to one hundred, one number per line:").await.map_err(err)?;
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let mut generation = session.generate(&params).map_err(err)?;
        std::thread::sleep(Duration::from_millis(150));
        loop {
            let start = Instant::now();
            let chunk = generation.next().await;
            let took = start.elapsed();
            match chunk {
                Some(_) => samples.push(took.as_secs_f64() * 1e6),
                None => break,
            }
        }
        generation.finish().await.map_err(err)?;
        session.rewind(6).map_err(err)?;
    }
    // The same with reads of room 8 on the raw stream: one read takes every
    // ready chunk; its time per token.
    let mut per_token = Vec::new();
    for _ in 0..rounds {
        let (mut chunks, finish) = session.as_raw().generate(params.as_raw()).map_err(Error::from).map_err(err)?;
        std::thread::sleep(Duration::from_millis(150));
        loop {
            let start = Instant::now();
            let (_, read) = chunks.read(Vec::with_capacity(8)).await;
            let took = start.elapsed();
            let tokens: usize = read.iter().map(|c| c.tokens.len()).sum();
            if tokens == 0 {
                break;
            }
            per_token.push(took.as_secs_f64() * 1e6 / tokens as f64);
        }
        drop(chunks);
        finish.await.map_err(Error::from).map_err(err)?;
        session.rewind(6).map_err(err)?;
    }
    println!("{}", json!({ "read_us": samples, "read8_us_per_token": per_token }));
    Ok(())
}

/// `k` sessions of this one instance, each `n` tokens after `prompt`, all
/// awaited at once.
async fn concurrent(name: &str, k: u32, n: u32, prompt: &str) -> Result<(), String> {
    let model = Model::load(name).map_err(err)?;
    let params = exact(&model, n)?;
    let sessions: Vec<Session> = (0..k).map(|_| Session::open(&model)).collect::<Result<_, _>>().map_err(err)?;
    for result in join_all(sessions.iter().map(|s| s.append(prompt))).await {
        result.map_err(err)?;
    }
    let (start, start_epoch) = (Instant::now(), epoch_ms());
    let generations: Vec<Generation> =
        sessions.iter().map(|s| s.generate(&params)).collect::<Result<_, _>>().map_err(err)?;
    let mut generated = 0;
    let mut done = Vec::new();
    for result in join_all(generations.into_iter().map(|g| drain(g, start))).await {
        let (_, last, tokens) = result?;
        generated += tokens;
        done.push(ms(last));
    }
    println!(
        "{}",
        json!({ "generated": generated, "session_ms": done, "start_epoch_ms": start_epoch, "end_epoch_ms": epoch_ms() })
    );
    Ok(())
}
