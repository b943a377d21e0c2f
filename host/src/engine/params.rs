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
    Grammar(String),
    JsonSchema(String),
}

/// Sampling parameters for one generation; absent fields take llama.cpp's defaults.
///
/// Unknown JSON keys are refused: a misspelt option must fail loudly, not be
/// ignored (WasmEdge's `n-gpu-layers` vs `n_gpu_layers` is the cautionary tale).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GenerateParams {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub penalty_last_n: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    #[serde(default)]
    pub stop: Vec<String>,
    pub constraint: Option<Constraint>,
    pub logprobs: Option<u32>,
}

impl GenerateParams {
    /// Greedy decoding limited to `max_tokens`: the deterministic setting the tests use.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { max_tokens: Some(max_tokens), temperature: Some(0.0), ..Self::default() }
    }
}
