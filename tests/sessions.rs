//! Sessions keep the conversation in the KV cache: appending only the new
//! turn gives what re-evaluating everything gives, and streamed text is
//! exactly the generated tokens' text.

use serde_json::Value;
use wasi_nn_llm_tests::{Llama, MODEL, Streamed, as_u32, assert_starts_as_alone, chatml, host, serial};

// SmolLM2's own template gives a conversation without a system prompt
// its default one, under which the 135M model answers the bare question
// with a list of French words; asked for one sentence, it names Paris.
const QUESTIONS: [&str; 3] = [
    "What is the capital of France? Answer in one sentence.",
    "Name three famous museums in that city.",
    "Which of those museums is the oldest?",
];

fn as_tokens(v: &Value) -> Vec<u32> {
    v.as_array().expect("a token list").iter().map(as_u32).collect()
}

fn turns(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l.get("turn").is_some()).collect()
}

#[test]
fn three_turn_chat_appending_only_new_turns_matches_reprefilling_history() {
    let _serial = serial();
    let mut args = vec!["chat", MODEL, "64"];
    args.extend(QUESTIONS);
    let incremental = host().probe(&args);
    args[0] = "chat-reprefill";
    let reprefilled = host().probe(&args);
    let (inc, full) = (turns(&incremental), turns(&reprefilled));
    assert_eq!((inc.len(), full.len()), (3, 3));

    for (i, (a, b)) in inc.iter().zip(&full).enumerate() {
        assert!(!a["tokens"].as_array().unwrap().is_empty(), "turn {i} generated nothing");
        // The same prompt either way; only where its KV came from differs.
        assert_eq!(a["finish"]["prompt"], b["finish"]["prompt"], "turn {i}: prompt sizes differ");
        assert_eq!(b["finish"]["cached"], 0, "a fresh session reuses nothing");
        // The reply starts the same. Appended turn by turn, the prompt was
        // evaluated in other batches than in one re-prefill, so the last
        // bits of the logits differ and a near-tie can flip later on (on
        // an AMD EPYC of family 26: 22 equal tokens of a turn, then one
        // different); the whole reply is compared while it can be.
        assert_starts_as_alone(&a["tokens"], &as_tokens(&b["tokens"]), &format!("turn {i}"));
        if a["tokens"] != b["tokens"] {
            eprintln!("turn {i} parted after its start; later turns hold different histories and are not compared");
            break;
        }
        assert_eq!(a["text"], b["text"]);
    }
    assert!(inc[0]["text"].as_str().unwrap().contains("Paris"), "turn 1: {}", inc[0]["text"]);
    assert_eq!(inc[0]["finish"]["cached"], 0);
    for i in 1..3 {
        let (prev, cur) = (&inc[i - 1]["finish"], &inc[i]["finish"]);
        // Everything before this turn was reused: the previous prompt and
        // reply, less the reply's last token when it was never evaluated
        // (a reply cut by max-tokens ends on a token not yet decoded).
        let pending = u32::from(prev["reason"] == "FinishReason::MaxTokens");
        let reused = as_u32(&prev["prompt"]) + as_u32(&prev["generated"]) - pending;
        assert_eq!(as_u32(&cur["cached"]), reused, "turn {}: {cur}", i + 1);
        assert!(as_u32(&cur["prompt"]) > reused);
    }
}

#[test]
fn streamed_text_is_the_detokenized_output_even_when_characters_span_tokens() {
    let _serial = serial();
    let prompt = chatml("Translate 'thank you very much' into Japanese.");
    let streamed = Streamed::parse(&host().probe(&["generate", MODEL, "40", &prompt]));
    let text = streamed.text();
    assert!(text.chars().any(|c| c.len_utf8() > 1), "expected multi-byte text, got {text:?}");

    let vocab = host().engine().llama().vocab();
    let pieces: Vec<Vec<u8>> = streamed
        .tokens()
        .iter()
        .map(|&t| vocab.token_to_piece(llama_cpp_2::token::LlamaToken(t as i32), false, None))
        .collect();
    assert_eq!(text, String::from_utf8_lossy(&pieces.concat()));
    assert!(
        pieces.iter().any(|p| std::str::from_utf8(p).is_err()),
        "no token split a character, so the test would not exercise the hold-back"
    );
    // Every chunk is whole characters on its own (it is a `string`), and a
    // chunk holding a split character carries all the tokens that made it.
    assert!(streamed.chunks.iter().any(|(_, tokens)| tokens.len() > 1));
}
