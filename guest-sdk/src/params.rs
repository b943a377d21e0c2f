//! A builder for the typed sampling parameters.

use crate::raw::wasi_nn_llm::llm::types::{Constraint, GenerateParams, PortableConstraint};

/// Sampling parameters for one generation; unset fields take the host's
/// defaults (llama.cpp's: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05).
///
/// ```
/// let p = wasi_nn_llm::Params::greedy().max_tokens(64).stop("\n\n");
/// assert_eq!(p.as_raw().max_tokens, Some(64));
/// ```
#[derive(Clone, Debug)]
pub struct Params(GenerateParams, Option<PortableConstraint>);

impl Default for Params {
    fn default() -> Self {
        Self(
            GenerateParams {
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
            },
            None,
        )
    }
}

impl Params {
    /// The host's defaults.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::new();
    /// assert_eq!(p.as_raw().temperature, None);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Greedy (argmax) decoding: deterministic.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::greedy().as_raw().temperature, Some(0.0));
    /// ```
    pub fn greedy() -> Self {
        Self::default().temperature(0.0)
    }

    /// Stop after `n` tokens (finish reason `max-tokens`).
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().max_tokens(64).as_raw().max_tokens, Some(64));
    /// ```
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.0.max_tokens = Some(n);
        self
    }

    /// Sampling temperature; 0 selects greedy decoding.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().temperature(0.7).as_raw().temperature, Some(0.7));
    /// ```
    pub fn temperature(mut self, t: f32) -> Self {
        self.0.temperature = Some(t);
        self
    }

    /// Sample only among the `k` most likely tokens (0 disables it).
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().top_k(40).as_raw().top_k, Some(40));
    /// ```
    pub fn top_k(mut self, k: u32) -> Self {
        self.0.top_k = Some(k);
        self
    }

    /// Nucleus sampling: the smallest set of tokens whose probability reaches `p`.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().top_p(0.9).as_raw().top_p, Some(0.9));
    /// ```
    pub fn top_p(mut self, p: f32) -> Self {
        self.0.top_p = Some(p);
        self
    }

    /// Drop tokens less likely than `p` times the most likely one.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().min_p(0.05).as_raw().min_p, Some(0.05));
    /// ```
    pub fn min_p(mut self, p: f32) -> Self {
        self.0.min_p = Some(p);
        self
    }

    /// Repetition penalty over the last `last_n` tokens (1.0 disables it).
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::new().repeat_penalty(1.1, 256);
    /// assert_eq!((p.as_raw().repeat_penalty, p.as_raw().penalty_last_n), (Some(1.1), Some(256)));
    /// ```
    pub fn repeat_penalty(mut self, penalty: f32, last_n: u32) -> Self {
        self.0.repeat_penalty = Some(penalty);
        self.0.penalty_last_n = Some(last_n);
        self
    }

    /// Subtract `p` from the logit of every token already present.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().presence_penalty(0.5).as_raw().presence_penalty, Some(0.5));
    /// ```
    pub fn presence_penalty(mut self, p: f32) -> Self {
        self.0.presence_penalty = Some(p);
        self
    }

    /// Subtract `p` times its count from the logit of every token already present.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().frequency_penalty(0.5).as_raw().frequency_penalty, Some(0.5));
    /// ```
    pub fn frequency_penalty(mut self, p: f32) -> Self {
        self.0.frequency_penalty = Some(p);
        self
    }

    /// Seed for sampling: the same seed and parameters give the same tokens.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::new().seed(42).as_raw().seed, Some(42));
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = Some(seed);
        self
    }

    /// Add `bias` to a token's logit (`f32::NEG_INFINITY` bans it).
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::new().logit_bias(13, f32::NEG_INFINITY);
    /// assert_eq!(p.as_raw().logit_bias, vec![(13, f32::NEG_INFINITY)]);
    /// ```
    pub fn logit_bias(mut self, token: u32, bias: f32) -> Self {
        self.0.logit_bias.push((token, bias));
        self
    }

    /// End generation before this string; the stop text is not emitted (repeatable).
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::new().stop("\n\n").stop("User:");
    /// assert_eq!(p.as_raw().stop.len(), 2);
    /// ```
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.0.stop.push(s.into());
        self
    }

    /// Constrain output to a GBNF grammar (llama.cpp syntax) with a `root` rule.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::greedy().grammar(r#"root ::= "yes" | "no""#);
    /// assert!(p.as_raw().constraint.is_some());
    /// ```
    ///
    /// GBNF is an optional feature of a host (`Feature::Gbnf`): a host
    /// without it refuses it as `unsupported`. [`lark`](Self::lark) is
    /// served by every host of extension 0.1.6.
    pub fn grammar(mut self, gbnf: impl Into<String>) -> Self {
        self.0.constraint = Some(Constraint::Grammar(gbnf.into()));
        self.1 = None;
        self
    }

    /// Constrain output to a Lark grammar (llguidance's dialect: start rule
    /// `start`, `/regex/` terminals, `%json {...}` for a JSON value): the
    /// constraint every host of extension 0.1.6 serves, whatever its
    /// backend. Generation ends with end-of-sequence once the grammar is
    /// complete.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::greedy().lark(r#"start: "yes" | "no""#);
    /// assert!(p.portable().is_some() && p.as_raw().constraint.is_none());
    /// ```
    pub fn lark(mut self, grammar: impl Into<String>) -> Self {
        self.0.constraint = None;
        self.1 = Some(PortableConstraint::Lark(grammar.into()));
        self
    }

    /// Constrain output to JSON matching a JSON schema.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// let p = Params::greedy().json_schema(r#"{"type":"object","properties":{"city":{"type":"string"}}}"#);
    /// assert!(p.as_raw().constraint.is_some());
    /// ```
    pub fn json_schema(mut self, schema: impl Into<String>) -> Self {
        self.0.constraint = Some(Constraint::JsonSchema(schema.into()));
        self.1 = None;
        self
    }

    /// Report each token's log-probability and its `n` best alternatives (at most 20).
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert_eq!(Params::greedy().logprobs(3).as_raw().logprobs, Some(3));
    /// ```
    pub fn logprobs(mut self, n: u32) -> Self {
        self.0.logprobs = Some(n);
        self
    }

    /// The same parameters with no grammar or JSON schema.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert!(Params::new().json_schema("{}").unconstrained().as_raw().constraint.is_none());
    /// ```
    pub fn unconstrained(mut self) -> Self {
        self.0.constraint = None;
        self.1 = None;
        self
    }

    /// The raw WIT record.
    ///
    /// ```
    /// # use wasi_nn_llm::Params;
    /// assert!(Params::new().as_raw().stop.is_empty());
    /// ```
    pub fn as_raw(&self) -> &GenerateParams {
        &self.0
    }

    /// The Lark constraint, which `generate` sends through 0.1.6's
    /// `generate-constrained`.
    pub fn portable(&self) -> Option<&PortableConstraint> {
        self.1.as_ref()
    }
}
