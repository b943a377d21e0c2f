//! The extension's embeddings on the engine: an input longer than one
//! prefill chunk pools to what llama.cpp's own pooling gives for it in one
//! batch, embedding while a generation runs leaves both as they are alone,
//! and every bad input is refused before llama.cpp sees it. (Through the
//! HTTP API, `tests/serve.rs`.)

use std::time::Duration;

use wasi_nn_llm_host::engine::{
    EmbedInput, Embedding, Engine, GenerateParams, Pooling, Quota, QuotaLimits, SessionOptions,
};
use wasi_nn_llm_host::error::LlmError;
use wasi_nn_llm_tests::{Llama, MODEL, MODELS, greedy_reply, host, llama_cpp_embedding, model_path, serial};

fn embed(engine: &Engine, texts: &[&str], pooling: Option<Pooling>) -> Vec<Embedding> {
    let inputs: Vec<_> = texts.iter().map(|t| EmbedInput::Text((*t).to_owned())).collect();
    engine.embed(&inputs, pooling, true, &Quota::unlimited()).expect("embed")
}

#[test]
fn an_input_of_several_chunks_pools_as_llama_cpp_does_in_one_batch() {
    let _serial = serial();
    let engine = host().engine();
    // About 1200 tokens: ten of the engine's 128-token embedding chunks.
    let text = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(90);
    let ours = &embed(engine, &[&text], Some(Pooling::Mean))[0];
    let tokens = engine.llama().vocab().tokenize(text.as_bytes(), true, true);
    assert!(tokens.len() > 1024, "{} tokens", tokens.len());
    assert_eq!(ours.tokens as usize, tokens.len());
    let backend = wasi_nn_llm_host::backend::llama_cpp::backend().expect("backend");
    let model = llama_cpp_2::model::LlamaModel::load_from_file(backend, model_path(MODEL), &Default::default())
        .expect("loading the model directly");
    let direct = llama_cpp_embedding(&model, &tokens, engine.attention().expect("llama.cpp chooses a kernel").flash);
    let worst = ours.vector.iter().zip(&direct).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "largest difference from llama.cpp {worst:e}");

    // The three poolings are three different vectors of the model's width.
    let pooled: Vec<_> = [Pooling::Mean, Pooling::Cls, Pooling::Last]
        .iter()
        .map(|&p| embed(engine, &["A short sentence to pool."], Some(p)).remove(0).vector)
        .collect();
    assert!(pooled.iter().all(|v| v.len() == engine.dimensions() as usize));
    assert!(pooled[0] != pooled[1] && pooled[1] != pooled[2] && pooled[0] != pooled[2]);
    // A decoder LLM names no pooling: the default is the mean.
    assert_eq!(embed(engine, &["A short sentence to pool."], None)[0].vector, pooled[0]);
}

#[test]
fn embedding_while_generating_changes_neither() {
    let _serial = serial();
    for model in MODELS {
        let engine = host().engine_of(model);
        let quota = Quota::unlimited();
        let prompt = engine.tokenize(&host().user_prompt(model, "Tell me about the moon."), true, true).unwrap();
        let alone_session = engine.open_session(&SessionOptions::default(), &quota).unwrap();
        alone_session.append_tokens(&prompt).unwrap();
        let (alone, _) = greedy_reply(&alone_session, 48);
        drop(alone_session);
        let texts = ["Embeddings map text to vectors.", "The moon orbits the earth."];
        let vectors_alone = embed(engine, &texts, None);

        let session = engine.open_session(&SessionOptions::default(), &quota).unwrap();
        session.append_tokens(&prompt).unwrap();
        let (together, vectors) = std::thread::scope(|s| {
            let generation = s.spawn(|| greedy_reply(&session, 48).0);
            let embedding = s.spawn(|| (0..4).map(|_| embed(engine, &texts, None)).collect::<Vec<_>>());
            (generation.join().unwrap(), embedding.join().unwrap())
        });
        assert_eq!(together, alone, "{model}: the generation changed");
        for v in vectors {
            assert_eq!(v, vectors_alone, "{model}: the embeddings changed");
        }
    }
}

#[test]
fn bad_inputs_are_refused_before_llama_cpp_sees_them() {
    let engine = host().engine();
    let quota = Quota::unlimited();
    let embed = |inputs: Vec<EmbedInput>| engine.embed(&inputs, None, true, &quota);
    assert!(matches!(embed(vec![]), Err(LlmError::InvalidArgument(_))));
    assert!(matches!(embed(vec![EmbedInput::Tokens(vec![])]), Err(LlmError::InvalidArgument(_))));
    let vocab = engine.model().n_vocab() as u32;
    assert_eq!(
        embed(vec![EmbedInput::Tokens(vec![1, vocab])]),
        Err(LlmError::InvalidToken { token: vocab, vocab_size: vocab })
    );
    let long = EmbedInput::Tokens(vec![1; engine.ctx_size() as usize + 1]);
    assert!(matches!(embed(vec![long]), Err(LlmError::PromptTooLong(o)) if o.limit == engine.ctx_size()));
    let many = vec![EmbedInput::Text("x".into()); 2049];
    assert!(matches!(embed(many), Err(LlmError::LimitExceeded { ref name, max: 2048 }) if name == "embedding-inputs"));
    // The engine carries on.
    assert_eq!(embed(vec![EmbedInput::Text("still here".into())]).unwrap().len(), 1);
}

#[test]
fn a_call_counts_as_one_generation_of_the_quota() {
    let engine = host().engine();
    let text = || vec![EmbedInput::Text("Quotas apply to embeddings too.".into())];
    // One generation at a time: a running stream leaves no room for a call.
    let one = Quota::new(QuotaLimits { generations: Some(1), ..QuotaLimits::default() });
    let session = engine.open_session(&SessionOptions::default(), &one).unwrap();
    session.append("Count to one hundred:").unwrap();
    let stream = session.generate(&GenerateParams::greedy(200)).unwrap();
    assert!(matches!(
        engine.embed(&text(), None, true, &one),
        Err(LlmError::LimitExceeded { ref name, max: 1 }) if name == "concurrent-generations"
    ));
    drop(stream);
    assert!(engine.embed(&text(), None, true, &one).is_ok(), "the permit came back with the stream");
    // A deadline already past stops the call before its first chunk.
    let hasty = Quota::new(QuotaLimits { generate_time: Some(Duration::ZERO), ..QuotaLimits::default() });
    assert!(matches!(
        engine.embed(&text(), None, true, &hasty),
        Err(LlmError::LimitExceeded { ref name, .. }) if name == "generate-seconds"
    ));
}
