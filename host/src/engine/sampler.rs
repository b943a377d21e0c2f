//! Turns typed [`GenerateParams`] into a llama.cpp sampler chain, validating
//! every value first: llama.cpp asserts (and so aborts the process) on some
//! out-of-range inputs, and one guest must never take the host down.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::params::{Constraint, GenerateParams};
use crate::error::LlmError;

/// Most stop strings one request may give, and their longest length in bytes.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;
/// Largest `logprobs` top-n a request may ask for.
pub(crate) const MAX_LOGPROBS: u32 = 20;

/// Check the parameters that do not need the model.
pub(crate) fn validate(params: &GenerateParams) -> Result<(), LlmError> {
    let finite_in = |name: &str, v: Option<f32>, lo: f32, hi: f32| match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => {
            Err(LlmError::invalid(format!("{name} must be a number in [{lo}, {hi}], got {x}")))
        }
        _ => Ok(()),
    };
    if params.max_tokens == Some(0) {
        return Err(LlmError::invalid("max-tokens must be at least 1"));
    }
    finite_in("temperature", params.temperature, 0.0, 100.0)?;
    finite_in("top-p", params.top_p, 0.0, 1.0)?;
    finite_in("min-p", params.min_p, 0.0, 1.0)?;
    finite_in("repeat-penalty", params.repeat_penalty, 0.0, 100.0)?;
    finite_in("presence-penalty", params.presence_penalty, -100.0, 100.0)?;
    finite_in("frequency-penalty", params.frequency_penalty, -100.0, 100.0)?;
    if params.repeat_penalty == Some(0.0) {
        return Err(LlmError::invalid("repeat-penalty must be greater than 0 (1.0 disables it)"));
    }
    if params.stop.len() > MAX_STOPS {
        return Err(LlmError::invalid(format!("at most {MAX_STOPS} stop strings are accepted")));
    }
    if let Some(s) = params.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(LlmError::invalid(format!(
            "stop strings must be 1 to {MAX_STOP_BYTES} bytes long, got {} bytes",
            s.len()
        )));
    }
    if let Some(n) = params.logprobs.filter(|&n| n > MAX_LOGPROBS) {
        return Err(LlmError::invalid(format!("logprobs must be at most {MAX_LOGPROBS}, got {n}")));
    }
    if let Some((t, b)) = params.logit_bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY) {
        return Err(LlmError::invalid(format!("logit bias for token {t} must be finite or -inf, got {b}")));
    }
    Ok(())
}

/// A generation's sampler.
pub(crate) enum Sampler {
    /// llama.cpp's sampler chain.
    Chain(LlamaSampler),
    /// Greedy decoding with logit biases (token index, bias, sorted by token)
    /// and repetition penalties: the argmax of the adjusted logits, taken
    /// here. llama.cpp's chain first copies every logit into a candidate
    /// array, a few percent of a decode step on a large vocabulary (`perf`:
    /// about 5 % of the time with gemma3's 262k tokens at 8 sessions) while
    /// the lane's workers wait. Same result: the same f32 operations in the
    /// same order as llama.cpp's logit-bias, penalties and greedy samplers,
    /// and the first maximum wins.
    Greedy { biases: Vec<(usize, f32)>, penalties: Option<Penalties> },
}

/// llama.cpp's repetition penalties (`llama_sampler_init_penalties`), with
/// the window's counts kept densely so a step reads them alongside the logits.
pub(crate) struct Penalties {
    last_n: usize,
    repeat: f32,
    frequency: f32,
    presence: f32,
    recent: VecDeque<usize>,
    counts: Vec<u32>,
}

impl Penalties {
    fn new(n_vocab: usize, last_n: usize, repeat: f32, frequency: f32, presence: f32) -> Self {
        Self { last_n, repeat, frequency, presence, recent: VecDeque::new(), counts: vec![0; n_vocab] }
    }

    /// A token joins the window (the oldest leaves once it is full).
    fn accept(&mut self, token: usize) {
        if self.last_n == 0 || token >= self.counts.len() {
            return;
        }
        self.counts[token] += 1;
        if self.recent.len() >= self.last_n
            && let Some(old) = self.recent.pop_front()
        {
            self.counts[old] -= 1;
        }
        self.recent.push_back(token);
    }

    /// `logit` of a token seen `count` times in the window.
    fn apply(&self, logit: f32, count: u32) -> f32 {
        let logit = if logit <= 0.0 { logit * self.repeat } else { logit / self.repeat };
        logit - (count as f32 * self.frequency + f32::from(u8::from(count > 0)) * self.presence)
    }
}

impl Sampler {
    /// The next token from the logits at batch `index` of the last decode.
    pub fn sample(&mut self, ctx: &LlamaContext<'_>, index: i32) -> LlamaToken {
        match self {
            Self::Chain(chain) => chain.sample(ctx, index),
            Self::Greedy { biases, penalties } => {
                // `biases` is sorted by token: walk it alongside the logits.
                let mut pending = biases.iter().peekable();
                let (mut best, mut best_logit) = (0, f32::NEG_INFINITY);
                for (i, &raw) in ctx.get_logits_ith(index).iter().enumerate() {
                    let mut logit = raw;
                    while let Some((_, bias)) = pending.next_if(|&&(t, _)| t == i) {
                        logit += bias;
                    }
                    if let Some(p) = penalties.as_ref()
                        && let Some(&count) = p.counts.get(i).filter(|&&c| c > 0)
                    {
                        logit = p.apply(logit, count);
                    }
                    if i == 0 || logit > best_logit {
                        (best, best_logit) = (i, logit);
                    }
                }
                if let Some(p) = penalties.as_mut() {
                    p.accept(best);
                }
                LlamaToken(best as i32)
            }
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
pub(crate) fn build(
    model: &LlamaModel,
    params: &GenerateParams,
    default_seed: Option<u64>,
    history: &[LlamaToken],
    context: usize,
) -> Result<Sampler, LlmError> {
    validate(params)?;
    let n_vocab = model.n_vocab();
    let repeat = params.repeat_penalty.unwrap_or(1.0);
    let presence = params.presence_penalty.unwrap_or(0.0);
    let frequency = params.frequency_penalty.unwrap_or(0.0);
    let penalties = repeat != 1.0 || presence != 0.0 || frequency != 0.0;
    // A window past the session's context sees nothing more, and llama.cpp
    // allocates the whole window up front: an unclamped u32::MAX-ish guest
    // value was a 13 GB allocation (found by fuzzing).
    let last_n = (params.penalty_last_n.unwrap_or(64) as usize).min(context);
    let temperature = params.temperature.unwrap_or(0.8);
    if temperature == 0.0 && params.constraint.is_none() {
        let mut biases = params
            .logit_bias
            .iter()
            .map(|&(token, bias)| Ok((checked_token(token, n_vocab)?.0 as usize, bias)))
            .collect::<Result<Vec<_>, LlmError>>()?;
        // Stable: a token's biases are added in the order given, as llama.cpp does.
        biases.sort_by_key(|&(token, _)| token);
        let penalties = penalties.then(|| {
            let mut p = Penalties::new(n_vocab.max(0) as usize, last_n, repeat, frequency, presence);
            for t in &history[history.len().saturating_sub(last_n)..] {
                p.accept(t.0.max(0) as usize);
            }
            p
        });
        return Ok(Sampler::Greedy { biases, penalties });
    }
    let mut chain = Vec::new();

    if !params.logit_bias.is_empty() {
        let mut biases = Vec::with_capacity(params.logit_bias.len());
        for &(token, bias) in &params.logit_bias {
            biases.push(LlamaLogitBias::new(checked_token(token, n_vocab)?, bias));
        }
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }

    if let Some(constraint) = &params.constraint {
        let gbnf = match constraint {
            Constraint::Grammar(g) => g.clone(),
            Constraint::JsonSchema(schema) => schema_grammar(schema)?,
        };
        let grammar = LlamaSampler::grammar(model, &gbnf, "root")
            .map_err(|e| LlmError::InvalidGrammar(format!("grammar rejected by llama.cpp: {e}")))?;
        chain.push(grammar);
    }

    if penalties {
        let mut penalties = LlamaSampler::penalties(n_vocab, last_n as i32, repeat, frequency, presence);
        let start = history.len().saturating_sub(last_n);
        penalties.accept_many(&history[start..]);
        chain.push(penalties);
    }

    if temperature == 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        let top_k = params.top_k.unwrap_or(40);
        if top_k > 0 {
            chain.push(LlamaSampler::top_k(top_k.min(i32::MAX as u32) as i32));
        }
        chain.push(LlamaSampler::top_p(params.top_p.unwrap_or(0.95), 1));
        chain.push(LlamaSampler::min_p(params.min_p.unwrap_or(0.05), 1));
        chain.push(LlamaSampler::temp(temperature));
        let seed = params.seed.or(default_seed).unwrap_or_else(random_seed);
        chain.push(LlamaSampler::dist(fold_seed(seed)));
    }
    Ok(Sampler::Chain(LlamaSampler::chain_simple(chain)))
}

/// A guest token id as a llama.cpp token, refused unless it is in the vocabulary.
pub(crate) fn checked_token(token: u32, n_vocab: i32) -> Result<LlamaToken, LlmError> {
    match i32::try_from(token) {
        Ok(id) if id < n_vocab => Ok(LlamaToken(id)),
        _ => Err(LlmError::InvalidToken { token, vocab_size: n_vocab.max(0) as u32 }),
    }
}

/// llama.cpp seeds are 32-bit; fold the WIT's 64-bit seed so every bit counts.
fn fold_seed(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}

/// A fresh seed for requests that give none (std's per-process random keys, so
/// no RNG crate is needed for this one use).
fn random_seed() -> u64 {
    RandomState::new().hash_one(std::time::SystemTime::now())
}
