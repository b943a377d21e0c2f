//! Request parameters in host terms, shared by the extension (converted from
//! the WIT records) and base wasi-nn (parsed from the `params` JSON tensor).

use serde::Deserialize;

/// Options fixed when a session is opened.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SessionOptions {
    /// Context wanted, in tokens; the engine's per-session maximum if absent.
    pub context_length: Option<u32>,
    /// Default seed for generations that give none.
    pub seed: Option<u64>,
    /// When the context fills, keep this many first tokens and drop the
    /// oldest after them (llama-server's context shift); refuse if absent.
    pub shift_keep: Option<u32>,
}

/// What constrains sampling to a language.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Constraint {
    /// A GBNF grammar (root rule `root`).
    Grammar(String),
    /// A JSON schema, turned into a grammar by llama.cpp.
    JsonSchema(String),
}

/// Sampling parameters for one generation; absent fields take llama.cpp's defaults.
///
/// Unknown JSON keys are refused: a misspelt option must fail loudly, not be
/// ignored (WasmEdge's `n-gpu-layers` vs `n_gpu_layers` is the cautionary tale).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GenerateParams {
    /// Most tokens to generate (else until end of generation or a full context).
    pub max_tokens: Option<u32>,
    /// 0 samples greedily.
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens.
    pub top_k: Option<u32>,
    /// Keep the most likely tokens up to this probability mass.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the most likely one.
    pub min_p: Option<f32>,
    /// Divide the logits of recently seen tokens by this.
    pub repeat_penalty: Option<f32>,
    /// Subtract this from the logits of tokens seen at all.
    pub presence_penalty: Option<f32>,
    /// Subtract this times the count of each seen token.
    pub frequency_penalty: Option<f32>,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: Option<u32>,
    /// Seed of the sampler's random numbers (else the session's, else fixed).
    pub seed: Option<u64>,
    /// Added to the logits of these token ids.
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Strings that end the generation (not delivered).
    #[serde(default)]
    pub stop: Vec<String>,
    /// A grammar or JSON schema the output must follow.
    pub constraint: Option<Constraint>,
    /// Report the log-probability of each token and of this many alternatives.
    pub logprobs: Option<u32>,
}

impl GenerateParams {
    /// Greedy decoding limited to `max_tokens`: the deterministic setting the tests use.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { max_tokens: Some(max_tokens), temperature: Some(0.0), ..Self::default() }
    }
}

/// How an input's per-token vectors become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the input's tokens.
    Mean,
    /// The first token's.
    Cls,
    /// The last token's.
    Last,
}
