//! Turns typed [`GenerateParams`] (validated by the engine) into a
//! llama.cpp sampler chain, or llama.cpp's greedy path taken in Rust.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use crate::backend::sampling::{self, Constraint, GenerateParams, Greedy};
use crate::error::LlmError;

/// A generation's sampler.
pub(crate) enum Sampler {
    /// llama.cpp's sampler chain, and the candidate array it works on
    /// (kept between steps, as llama.cpp's own chain keeps its buffer).
    Chain(LlamaSampler, Vec<LlamaTokenData>),
    /// Greedy decoding taken in Rust (see [`Greedy`]): llama.cpp's chain
    /// first copies every logit into a candidate array, a few percent of a
    /// decode step on a large vocabulary (`perf`: about 5 % of the time
    /// with gemma3's 262k tokens at 8 sessions) while the lane's workers
    /// wait. Same result: the same f32 operations in the same order as
    /// llama.cpp's logit-bias, penalties and greedy samplers.
    Greedy(Greedy),
}

impl crate::backend::Sampler for Sampler {
    fn sample(&mut self, logits: &[f32]) -> u32 {
        match self {
            // What `llama_sampler_sample` does with a context's logits:
            // every token a candidate, the chain applied, the pick accepted.
            Self::Chain(chain, buffer) => {
                let mut data = std::mem::take(buffer);
                data.clear();
                data.extend(logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken(i as i32), l, 0.0)));
                let mut candidates = LlamaTokenDataArray::new(data, false);
                candidates.apply_sampler(chain);
                let token = candidates.selected_token().unwrap_or(LlamaToken(0));
                chain.accept(token);
                *buffer = candidates.data;
                token.0 as u32
            }
            Self::Greedy(greedy) => greedy.sample(logits),
        }
    }
}

/// The GBNF grammar (rule `root`) llama.cpp makes of a JSON schema.
pub fn schema_grammar(schema: &str) -> Result<String, LlmError> {
    serde_json::from_str::<serde_json::Value>(schema)
        .map_err(|e| LlmError::InvalidGrammar(format!("json-schema is not valid JSON: {e}")))?;
    llama_cpp_2::json_schema_to_grammar(schema)
        .map_err(|e| LlmError::InvalidGrammar(format!("json-schema not supported: {e}")))
}

/// Build the sampler, in llama.cpp's usual order: logit bias, grammar,
/// penalties, then either greedy or top-k → top-p → min-p → temperature → dist.
///
/// `history` (the session's tokens) primes the repetition penalties, as
/// llama-server does with the prompt; `context` is the session's limit.
pub(super) fn build(
    model: &LlamaModel,
    params: &GenerateParams,
    default_seed: Option<u64>,
    history: &[u32],
    context: usize,
) -> Result<Sampler, LlmError> {
    let n_vocab = model.n_vocab();
    let vocab_size = n_vocab.max(0) as u32;
    let temperature = params.temperature.unwrap_or(sampling::DEFAULT_TEMPERATURE);
    if temperature == 0.0 && params.constraint.is_none() {
        return Ok(Sampler::Greedy(Greedy::new(params, vocab_size, history, context)?));
    }
    let mut chain = Vec::new();

    if !params.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = sampling::checked_biases(params, vocab_size)?
            .into_iter()
            .map(|(token, bias)| LlamaLogitBias::new(LlamaToken(token as i32), bias))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }

    if let Some(constraint) = &params.constraint {
        let Constraint::Grammar(gbnf) = constraint else {
            return Err(LlmError::EngineFailure("the engine applies Lark and JSON-schema constraints itself".into()));
        };
        let grammar = LlamaSampler::grammar(model, &gbnf, "root")
            .map_err(|e| LlmError::InvalidGrammar(format!("grammar rejected by llama.cpp: {e}")))?;
        chain.push(grammar);
    }

    if let Some((repeat, frequency, presence)) = sampling::penalty_values(params) {
        let last_n = sampling::penalty_window(params, context);
        let mut penalties = LlamaSampler::penalties(n_vocab, last_n as i32, repeat, frequency, presence);
        let start = history.len().saturating_sub(last_n);
        penalties.accept_many(history[start..].iter().map(|&t| LlamaToken(t as i32)));
        chain.push(penalties);
    }

    if temperature == 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        let top_k = params.top_k.unwrap_or(sampling::DEFAULT_TOP_K);
        if top_k > 0 {
            chain.push(LlamaSampler::top_k(top_k.min(i32::MAX as u32) as i32));
        }
        chain.push(LlamaSampler::top_p(params.top_p.unwrap_or(sampling::DEFAULT_TOP_P), 1));
        chain.push(LlamaSampler::min_p(params.min_p.unwrap_or(sampling::DEFAULT_MIN_P), 1));
        chain.push(LlamaSampler::temp(temperature));
        let seed = sampling::seed(params, default_seed);
        chain.push(LlamaSampler::dist(fold_seed(seed)));
    }
    Ok(Sampler::Chain(LlamaSampler::chain_simple(chain), Vec::new()))
}

/// llama.cpp seeds are 32-bit; fold the WIT's 64-bit seed so every bit counts.
fn fold_seed(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}
