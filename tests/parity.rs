//! The extension and base wasi-nn run the same engine as llama.cpp itself:
//! same prompt, same greedy tokens.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use wasi_nn_llm_host::backend::llama_cpp::backend;
use wasi_nn_llm_tests::{CTX_SIZE, MODEL, MODELS, Streamed, THREADS, chatml, host, model_path, serial};

const MAX_TOKENS: u32 = 40;

/// Greedy generation with llama-cpp-2 driven directly, with the engine's
/// attention kernel and batch shapes (the prompt in one batch with logits
/// for its last token, then one token per decode), so bit-identical results
/// are expected.
fn llama_greedy(name: &str, prompt: &str, max: u32) -> Vec<u32> {
    let backend = backend().unwrap();
    let model =
        LlamaModel::load_from_file(backend, model_path(name), &LlamaModelParams::default().with_n_gpu_layers(0))
            .expect("loading the model");
    let flash = host().engine_of(name).attention().expect("llama.cpp chooses a kernel").flash;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CTX_SIZE))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(THREADS as i32)
        .with_n_threads_batch(THREADS as i32)
        .with_flash_attention_policy(i32::from(flash));
    let mut ctx = model.new_context(backend, params).expect("context");
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, true);

    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(t, i as i32, &[0], i + 1 == tokens.len()).unwrap();
    }
    ctx.decode(&mut batch).expect("prefill");
    let mut sampler = LlamaSampler::greedy();
    let (mut index, mut pos, mut out) = (batch.n_tokens() - 1, tokens.len(), Vec::new());
    while out.len() < max as usize {
        let token = sampler.sample(&ctx, index);
        if vocab.is_eog(token) {
            break;
        }
        out.push(token.0 as u32);
        batch.clear();
        batch.add(token, pos as i32, &[0], true).unwrap();
        ctx.decode(&mut batch).expect("decode");
        (index, pos) = (0, pos + 1);
    }
    out
}

#[test]
fn extension_greedy_tokens_equal_llama_cpp_driven_directly() {
    let _serial = serial();
    for model in MODELS {
        let prompt = host().user_prompt(model, "Give me three tips for staying focused while studying.");
        let lines = host().probe(&["generate", model, &MAX_TOKENS.to_string(), &prompt]);
        let streamed = Streamed::parse(&lines);
        let expected = llama_greedy(model, &prompt, MAX_TOKENS);
        assert_eq!(expected.len(), MAX_TOKENS as usize, "{model}: the reference should run to max-tokens");
        assert_eq!(streamed.tokens(), expected, "{model}");
        assert_eq!(streamed.finish["reason"], "FinishReason::MaxTokens");
        assert_eq!(streamed.finish["generated"], MAX_TOKENS);
    }
}

#[test]
fn base_wasi_nn_compute_gives_the_extensions_greedy_text() {
    let _serial = serial();
    let prompt = chatml("What is the capital of France?");
    let streamed = Streamed::parse(&host().probe(&["generate", MODEL, "48", &prompt]));
    let computed = host().probe(&["compute", MODEL, "48", &prompt]);
    let text = streamed.text();
    assert!(text.contains("Paris"), "a sensible answer was expected, got {text:?}");
    assert_eq!(computed[0]["text"], text);

    let gemma_prompt = host().user_prompt(wasi_nn_llm_tests::GEMMA, "What is the capital of France?");
    let streamed = Streamed::parse(&host().probe(&["generate", wasi_nn_llm_tests::GEMMA, "32", &gemma_prompt]));
    let computed = host().probe(&["compute", wasi_nn_llm_tests::GEMMA, "32", &gemma_prompt]);
    assert!(!streamed.text().is_empty());
    assert_eq!(computed[0]["text"], streamed.text(), "gemma3");
}

#[test]
fn base_wasi_nn_tensor_mode_argmax_gives_the_extensions_greedy_tokens() {
    let _serial = serial();
    for model in MODELS {
        let prompt = host().user_prompt(model, "Write a long essay about the history of Rome.");
        let streamed = Streamed::parse(&host().probe(&["generate", model, "24", &prompt]));
        assert_eq!(streamed.finish["reason"], "FinishReason::MaxTokens", "{model}: need 24 tokens to compare");
        let tensor = &host().probe(&["tensor", model, "24", &prompt])[0];
        let tokens: Vec<u32> = tensor["tokens"].as_array().unwrap().iter().map(wasi_nn_llm_tests::as_u32).collect();
        assert_eq!(tokens, streamed.tokens(), "{model}: one compute per token, argmax in the guest");
        let vocab = host().engine_of(model).model().n_vocab() as u64;
        assert_eq!(tensor["vocab"], vocab, "one logit per vocabulary entry");
        assert!(tensor["negative-id"].as_str().unwrap().starts_with("Err(Nn"), "{}", tensor["negative-id"]);
    }
}
