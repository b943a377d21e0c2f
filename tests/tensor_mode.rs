//! Base wasi-nn's tensor convention done the spec's way: the guest builds its
//! tokenizer from the GGUF (with the `tokenizers` crate), applies the chat
//! template, samples, and calls `compute` once per token.

use wasi_nn_llm_tests::{MODELS, as_u32, guest_model_path, host, serial};

/// Varied text: prose, code, numbers, whitespace runs, markup, several
/// scripts, emoji, contractions and the models' own special markers.
const CORPUS: &[&str] = &[
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "  two leading spaces",
    "multiple   spaces    between     words",
    "tabs\tand\tmore\t\ttabs",
    "line one\nline two\n\nline four",
    "\n\n\nthree newlines first",
    "Windows\r\nline\r\nendings",
    "1234567890",
    "Pi is 3.14159265358979, e is 2.71828.",
    "Prices: $5.99, €12,50, £3 and ¥1000.",
    "Phone: +1 (555) 123-4567",
    "2024-11-24T21:30:00Z",
    "I'm sure you'll see they've done what we'd said it's worth.",
    "DON'T SHOUT, it's RUDE",
    "camelCaseIdentifier and snake_case_identifier and SCREAMING_CASE",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<div class=\"note\"><p>Hello</p></div>",
    "{\"name\": \"Ada\", \"age\": 36, \"langs\": [\"en\", \"fr\"]}",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.org/path?query=1&other=two#frag",
    "user@example.com wrote: > quoted text",
    "Ünïcödé àccents: café, naïve, façade, Ångström",
    "Größe, Straße, Fußgänger",
    "Ελληνικά: Γειά σου Κόσμε",
    "Русский текст: Привет, мир!",
    "日本語のテキスト：こんにちは、世界。",
    "中文：你好，世界！今天天气很好。",
    "한국어: 안녕하세요 세계",
    "العربية: مرحبا بالعالم",
    "עברית: שלום עולם",
    "हिन्दी: नमस्ते दुनिया",
    "ไทย: สวัสดีชาวโลก",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷",
    "Math: ∑ᵢ xᵢ² ≤ ∞, ∀x ∈ ℝ, √2 ≈ 1.414",
    "Box drawing: ┌─┐│└─┘ and arrows → ← ↑ ↓",
    "Zero\u{200b}width\u{200b}space and non\u{a0}breaking",
    "a",
    " ",
    "...",
    "!!!???",
    "--- *** ___ ===",
    "ALLCAPSWORDWITHOUTSPACES",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "A sentence with numbers 1, 22, 333, 4444, 55555 and 666666.",
    "Mixed123Alpha456Numeric789",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "Text with <|im_end|> in the middle",
    "The year 1999 and the year 2000.",
    "Ends with a newline\n",
    "    indented code block\n        more indented",
    "A very long word: pneumonoultramicroscopicsilicovolcanoconiosis.",
    "Quotes: “curly” ‘single’ «guillemets» „low“",
];

#[test]
fn guest_tokenizer_built_from_the_gguf_matches_llama_cpp() {
    assert!(CORPUS.len() >= 50, "the corpus must hold at least 50 strings");
    for model in MODELS {
        let gguf = guest_model_path(model);
        let mut args = vec!["guest-tokenize", gguf.as_str()];
        args.extend(CORPUS);
        let lines = host().probe_with_models(&args);
        assert_eq!(lines.len(), CORPUS.len(), "{model}: one line per text");
        let mut mismatches = Vec::new();
        for (text, line) in CORPUS.iter().zip(&lines) {
            let guest: Vec<u32> = line["ids"].as_array().expect("ids").iter().map(as_u32).collect();
            let llama = host().engine_of(model).tokenize(text, true, true).expect("host tokenize");
            if guest != llama {
                mismatches.push(format!("{text:?}:\n  guest {guest:?}\n  llama {llama:?}"));
            }
        }
        assert!(mismatches.is_empty(), "{model}: {} of {} differ:\n{}", mismatches.len(), CORPUS.len(), {
            mismatches.join("\n")
        });
    }
}

#[test]
fn tensor_mode_greedy_chat_equals_the_extensions() {
    let _serial = serial();
    let questions = ["What is the capital of France?", "Name two rivers in Europe.", "Which one is longer?"];
    for model in MODELS {
        let gguf = guest_model_path(model);
        let mut args = vec!["tensor-chat", model, gguf.as_str(), "40"];
        args.extend(questions);
        let tensor = host().probe_with_models(&args);
        let mut args = vec!["chat", model, "40"];
        args.extend(questions);
        let extension = host().probe(&args);
        assert_eq!(tensor.len(), questions.len(), "{model}: {tensor:?}");
        for (t, e) in tensor.iter().zip(&extension) {
            assert_eq!(t["tokens"], e["tokens"], "{model} turn {}: token ids", e["turn"]);
            assert_eq!(t["text"], e["text"], "{model} turn {}: text", e["turn"]);
            let ended = e["finish"]["reason"] == "FinishReason::EndOfSequence";
            assert_eq!(t["ended"], ended, "{model} turn {}: both end the same way", e["turn"]);
        }
        assert!(tensor[0]["text"].as_str().unwrap().len() > 5, "{model}: a real reply: {}", tensor[0]["text"]);
    }
}

/// gemma's template trims replies: one that ends in a newline re-renders
/// without it, and the next turn must still append (after the newline).
#[test]
fn a_reply_ending_in_whitespace_does_not_stop_the_chat() {
    let _serial = serial();
    let model = wasi_nn_llm_tests::GEMMA;
    let gguf = guest_model_path(model);
    let tensor = host().probe_with_models(&["tensor-chat", model, &gguf, "20", "Hi", "Why?"]);
    let extension = host().probe(&["chat", model, "20", "Hi", "Why?"]);
    assert!(tensor[0]["text"].as_str().unwrap().ends_with('\n'), "the case needs a reply ending in a newline");
    assert_eq!(tensor.len(), 2, "{tensor:?}");
    assert_eq!(extension.len(), 2, "{extension:?}");
    for (t, e) in tensor.iter().zip(&extension) {
        assert_eq!(t["tokens"], e["tokens"]);
    }
}
