//! A builder for the typed sampling parameters.

use crate::raw::wasi_nn_llm::llm::types::{Constraint, GenerateParams};

/// Sampling parameters for one generation; unset fields take the host's
/// defaults (llama.cpp's: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
///
/// ```
/// let p = wasi_nn_llm::Params::greedy().max_tokens(64).stop("\n\n");
/// assert_eq!(p.as_raw().max_tokens, Some(64));
/// ```
#[derive(Clone, Debug)]
pub struct Params(GenerateParams);

impl Default for Params {
    fn default() -> Self {
        Self(GenerateParams {
            max_tokens: None,
            temperature: None,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: None,
            presence_penalty: None,
            frequency_penalty: None,
            penalty_last_n: None,
            seed: None,
            logit_bias: Vec::new(),
            stop: Vec::new(),
            constraint: None,
            logprobs: None,
        })
    }
}

impl Params {
    /// The host's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Greedy (argmax) decoding: deterministic.
    pub fn greedy() -> Self {
        Self::default().temperature(0.0)
    }

    pub fn max_tokens(mut self, n: u32) -> Self {
        self.0.max_tokens = Some(n);
        self
    }

    /// 0 selects greedy decoding.
    pub fn temperature(mut self, t: f32) -> Self {
        self.0.temperature = Some(t);
        self
    }

    pub fn top_k(mut self, k: u32) -> Self {
        self.0.top_k = Some(k);
        self
    }

    pub fn top_p(mut self, p: f32) -> Self {
        self.0.top_p = Some(p);
        self
    }

    pub fn min_p(mut self, p: f32) -> Self {
        self.0.min_p = Some(p);
        self
    }

    /// Repetition penalty over the last `last_n` tokens (1.0 disables it).
    pub fn repeat_penalty(mut self, penalty: f32, last_n: u32) -> Self {
        self.0.repeat_penalty = Some(penalty);
        self.0.penalty_last_n = Some(last_n);
        self
    }

    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.0.presence_penalty = Some(p);
        self
    }

    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.0.frequency_penalty = Some(p);
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = Some(seed);
        self
    }

    /// Add `bias` to a token's logit (`f32::NEG_INFINITY` bans it).
    pub fn logit_bias(mut self, token: u32, bias: f32) -> Self {
        self.0.logit_bias.push((token, bias));
        self
    }

    /// End generation before this string; the stop text is not emitted.
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.0.stop.push(s.into());
        self
    }

    /// Constrain output to a GBNF grammar with a `root` rule.
    pub fn grammar(mut self, gbnf: impl Into<String>) -> Self {
        self.0.constraint = Some(Constraint::Grammar(gbnf.into()));
        self
    }

    /// Constrain output to JSON matching a schema.
    pub fn json_schema(mut self, schema: impl Into<String>) -> Self {
        self.0.constraint = Some(Constraint::JsonSchema(schema.into()));
        self
    }

    /// Report each token's log-probability and its `n` best alternatives.
    pub fn logprobs(mut self, n: u32) -> Self {
        self.0.logprobs = Some(n);
        self
    }

    /// The raw WIT record.
    pub fn as_raw(&self) -> &GenerateParams {
        &self.0
    }
}
