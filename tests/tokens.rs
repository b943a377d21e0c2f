//! Tokenizer, model info and token-level appends, on a model and on a session.

use serde_json::Value;
use wasi_nn_llm_tests::{Llama, MODEL, as_u32, host};

#[test]
fn tokenize_detokenize_count_and_model_info() {
    let text = "Hello world, ünïcödé and 日本語!";
    let lines = host().probe(&["tokens", MODEL, text]);
    let first = &lines[0];
    let ids: Vec<u32> = first["ids"].as_array().unwrap().iter().map(as_u32).collect();

    let vocab = host().engine().llama().vocab();
    let expected: Vec<u32> = vocab.tokenize(text.as_bytes(), false, false).iter().map(|t| t.0 as u32).collect();
    assert_eq!(ids, expected, "the same ids as llama.cpp's tokenizer");
    assert_eq!(first["detokenized"], text);
    assert_eq!(as_u32(&first["count"]), ids.len() as u32, "SmolLM2 adds no BOS");
    assert_eq!(first["special"], serde_json::json!([1]), "<|im_start|> is one special token");

    let info = &first["info"];
    assert_eq!(info["name"], MODEL);
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["quantization"], "Q4_1");
    assert_eq!((as_u32(&info["trained-context"]), as_u32(&info["vocab-size"])), (8192, 49152));
    assert_eq!(as_u32(&info["max-session-context"]), wasi_nn_llm_tests::CTX_SIZE);
    assert_eq!(info["eos"], 2);
    assert_eq!(info["has-template"], true);
    assert!(info["parameters"].as_u64().unwrap() > 100_000_000);

    // append-tokens adds exactly the ids; an id outside the vocabulary is
    // refused (typed) and leaves the session as it was.
    assert_eq!(as_u32(&lines[1]["appended"]), ids.len() as u32);
    let session: Vec<u32> = lines[1]["session-tokens"].as_array().unwrap().iter().map(as_u32).collect();
    assert_eq!(session, ids);
    assert_eq!(as_u32(&lines[1]["remaining"]), wasi_nn_llm_tests::CTX_SIZE - ids.len() as u32);
    let case = |name: &str| lines.iter().find(|l| l["case"] == name).cloned().unwrap_or(Value::Null);
    let invalid = case("invalid-token")["llm-error"].as_str().unwrap().to_owned();
    assert!(invalid.contains("token: 49152, vocab-size: 49152"), "{invalid}");
    assert!(case("detokenize-invalid")["llm-error"].as_str().unwrap().contains("InvalidToken"));
    assert_eq!(lines.last().unwrap()["after-invalid"], lines[1]["session-tokens"]);
}

#[test]
fn gemma_reports_its_own_architecture_bos_and_lack_of_template() {
    let text = "Hello world, ünïcödé and 日本語!";
    let lines = host().probe(&["tokens", wasi_nn_llm_tests::GEMMA, text]);
    let first = &lines[0];
    let ids: Vec<u32> = first["ids"].as_array().unwrap().iter().map(as_u32).collect();
    let vocab = host().engine_of(wasi_nn_llm_tests::GEMMA).llama().vocab();
    let expected: Vec<u32> = vocab.tokenize(text.as_bytes(), false, false).iter().map(|t| t.0 as u32).collect();
    assert_eq!(ids, expected);
    assert_eq!(first["detokenized"], text);
    assert_eq!(as_u32(&first["count"]), ids.len() as u32 + 1, "count-tokens includes the BOS a session opens with");
    let info = &first["info"];
    assert_eq!(info["architecture"], "gemma3");
    assert_eq!(info["quantization"], "Q4_K_M");
    assert_eq!((as_u32(&info["trained-context"]), as_u32(&info["vocab-size"])), (32768, 262144));
    assert_eq!((&info["bos"], &info["eos"]), (&Value::from(2), &Value::from(1)));
    assert_eq!(info["has-template"], false, "a base model: the GGUF has no chat template");
}
