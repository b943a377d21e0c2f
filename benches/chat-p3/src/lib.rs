//! A streaming chat through the WASI 0.3 session, line for line the same chat
//! as `chat-pull` (the bench compares the two's size and code): each stdin
//! line is a user turn; only the new turn is appended; the reply streams to
//! stdout. Usage: `chat-p3 MODEL MAX-TOKENS`.

use std::io::{BufRead, Write};

use futures::StreamExt;
use wasi_nn_llm::p3::Session;
use wasi_nn_llm::{Error, Message, Model, Params, turn_delta};

struct Chat;

impl wasi_nn_llm::p3::Run for Chat {
    async fn run() -> Result<(), ()> {
        chat().await.map_err(|e| eprintln!("chat-p3: {e}"))
    }
}

wasi_nn_llm::p3::export!(Chat);

async fn chat() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let model = Model::load(&args[1])?;
    let params = Params::greedy().max_tokens(args[2].parse().unwrap_or(64));
    let session = Session::open(&model)?;
    let (mut messages, mut transcript) = (Vec::new(), String::new());
    for line in std::io::stdin().lock().lines() {
        messages.push(Message { role: "user".into(), content: line.unwrap_or_default() });
        let rendered = model.apply_chat_template(&messages, true)?;
        session.append(turn_delta(&transcript, &rendered).unwrap_or(&rendered)).await?;
        let mut reply = String::new();
        let mut generation = session.generate(&params)?;
        while let Some(chunk) = generation.next().await {
            print!("{}", chunk.text);
            let _ = std::io::stdout().flush();
            reply.push_str(&chunk.text);
        }
        generation.finish().await?;
        println!();
        transcript = rendered + &reply;
        messages.push(Message { role: "assistant".into(), content: reply });
    }
    Ok(())
}
