//! A streaming chat through the 0.1.x pull API, line for line the same
//! chat as `chat-p3` (the bench compares the two's size and code): each
//! stdin line is a user turn; only the new turn is appended; the reply
//! streams to stdout. Usage: `chat-pull MODEL MAX-TOKENS`.

use std::io::{BufRead, Write};

use wasi_nn_llm::{Error, Message, Model, Params, Session, turn_delta};

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let model = Model::load(&args[1])?;
    let params = Params::greedy().max_tokens(args[2].parse().unwrap_or(64));
    let session = Session::open(&model)?;
    let (mut messages, mut transcript) = (Vec::new(), String::new());
    for line in std::io::stdin().lock().lines() {
        messages.push(Message { role: "user".into(), content: line.unwrap_or_default() });
        let rendered = model.apply_chat_template(&messages, true)?;
        session.append(turn_delta(&transcript, &rendered).unwrap_or(&rendered))?;
        let mut reply = String::new();
        for chunk in session.generate(&params)? {
            let chunk = chunk?;
            print!("{}", chunk.text);
            let _ = std::io::stdout().flush();
            reply.push_str(&chunk.text);
        }
        println!();
        transcript = rendered + &reply;
        messages.push(Message { role: "assistant".into(), content: reply });
    }
    Ok(())
}
