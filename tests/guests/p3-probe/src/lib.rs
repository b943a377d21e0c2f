//! Test guest of the WASI 0.3 session (`wasi-nn-llm:llm@0.2.0-rc-2026-12-06`, a `wasi:cli/run@0.3.0` command): each
//! command drives async sessions and their `stream<chunk>`s and prints JSON
//! lines in the 0.1.x probe's format, so the tests compare the two directly.

use futures::StreamExt;
use futures::future::join_all;
use serde_json::{Value, json};
use wasi_nn_llm::p3::{Generation, Session};
use wasi_nn_llm::{Error, Finish, Model, Params};

struct Probe;

impl wasi_nn_llm::p3::Run for Probe {
    async fn run() -> Result<(), ()> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let num = |s: &str| s.parse::<u32>().unwrap_or(16);
        let result = match args.as_slice() {
            ["generate", model, max, prompt] => generate(model, num(max), prompt).await,
            ["parallel", model, max, prompts @ ..] => parallel(model, num(max), prompts).await,
            ["read-one", model, prompt] => read_one(model, prompt).await,
            ["open", model] => open(model),
            _ => Err(format!("unknown command {args:?}")),
        };
        result.map_err(|e| eprintln!("p3-probe: {e}"))
    }
}

wasi_nn_llm::p3::export!(Probe);

fn finish_json(f: &Finish) -> Value {
    json!({
        "reason": format!("{:?}", f.reason),
        "prompt": f.usage.prompt_tokens,
        "cached": f.usage.cached_tokens,
        "generated": f.usage.generated_tokens,
    })
}

async fn session(model: &Model, prompt: &str) -> Result<Session, Error> {
    let session = Session::open(model)?;
    session.append(prompt).await?;
    Ok(session)
}

/// Read a generation to the end: its chunks as JSON lines, and its finish.
async fn drain(mut generation: Generation) -> Result<(Vec<Value>, Value), Error> {
    let mut chunks = Vec::new();
    while let Some(chunk) = generation.next().await {
        chunks.push(json!({ "chunk": { "text": chunk.text, "tokens": chunk.tokens } }));
    }
    Ok((chunks, finish_json(&generation.finish().await?)))
}

/// One greedy generation, printed as the 0.1.x probe's `generate` prints it.
async fn generate(model: &str, max: u32, prompt: &str) -> Result<(), String> {
    let model = Model::load(model).map_err(|e| e.to_string())?;
    let session = session(&model, prompt).await.map_err(|e| e.to_string())?;
    let generation = session.generate(&Params::greedy().max_tokens(max)).map_err(|e| e.to_string())?;
    let (chunks, finish) = drain(generation).await.map_err(|e| e.to_string())?;
    for chunk in chunks {
        println!("{chunk}");
    }
    println!("{}", json!({ "finish": finish, "len": session.len() }));
    Ok(())
}

/// One greedy generation per prompt, all at once in this one instance: each
/// prompt's appends and stream are awaited together (no pollables, no
/// polling loop). One line per prompt, in order, then the order in which
/// chunks arrived (the prompt's index per chunk).
async fn parallel(model: &str, max: u32, prompts: &[&str]) -> Result<(), String> {
    let model = Model::load(model).map_err(|e| e.to_string())?;
    let order = std::cell::RefCell::new(Vec::new());
    let runs = prompts.iter().enumerate().map(|(i, prompt)| {
        let (model, order) = (&model, &order);
        async move {
            let session = session(model, prompt).await?;
            let mut generation = session.generate(&Params::greedy().max_tokens(max))?;
            let mut tokens = Vec::new();
            while let Some(chunk) = generation.next().await {
                order.borrow_mut().push(i);
                tokens.extend(chunk.tokens);
            }
            let finish = finish_json(&generation.finish().await?);
            Ok::<_, Error>(json!({ "tokens": tokens, "finish": finish, "len": session.len() }))
        }
    });
    for line in join_all(runs).await {
        println!("{}", line.map_err(|e| e.to_string())?);
    }
    println!("{}", json!({ "order": order.take() }));
    Ok(())
}

/// Read one chunk, through a read buffer with room for exactly one, then
/// drop the stream: what the session keeps and what the finish says.
async fn read_one(model: &str, prompt: &str) -> Result<(), String> {
    let model = Model::load(model).map_err(|e| e.to_string())?;
    let session = session(&model, prompt).await.map_err(|e| e.to_string())?;
    let before = session.len();
    let mut generation = session.generate(&Params::greedy().max_tokens(64)).map_err(|e| e.to_string())?;
    let first = generation.next().await.ok_or("no first chunk")?;
    let finish = generation.finish().await.map_err(|e| e.to_string())?;
    println!(
        "{}",
        json!({ "before": before, "read": first.tokens, "finish": finish_json(&finish), "len": session.len(), "tokens": session.tokens() })
    );
    Ok(())
}

/// Open a session (for quota checks): the error, if it is refused.
fn open(model: &str) -> Result<(), String> {
    let model = Model::load(model).map_err(|e| e.to_string())?;
    let sessions: Vec<Result<Session, Error>> = (0..3).map(|_| Session::open(&model)).collect();
    for s in &sessions {
        let refused = s.as_ref().err().map(Error::to_string);
        println!("{}", json!({ "open": s.is_ok(), "error": refused }));
    }
    Ok(())
}
