//! Speculative decoding by n-gram lookup: each decode step, a generation
//! may add to the batch the tokens that followed the latest earlier
//! occurrence of its own last few tokens (`lookup.rs`), the model checks
//! them all in that one decode, and the scheduler keeps the longest prefix
//! the model agrees with (`scheduler/generation.rs`). Whether, and how many,
//! is decided each step from what drafting has been worth (`budget.rs`).
//!
//! Why the output is the model's own, greedy or sampled: the scheduler
//! samples every position with the generation's own sampler, in order, and
//! stops at the first sampled token that is not the draft's. The sampler
//! is called exactly as often, on logits of exactly the same tokens, as
//! without drafts; its random draws, penalties, grammar and logit biases
//! see the same sequence. This is the standard speculative sampling rule
//! (accept a draft token `d` with probability `min(1, p(d)/q(d))`, else
//! sample from `p` without `d`) for a draft distribution `q` that puts all
//! its mass on `d`, which a lookup's is: the first sampled token is `d`
//! with probability `p(d)`, another token from the rest of `p` otherwise.
//! What can differ is the arithmetic: llama.cpp's kernels depend on the
//! batch's shape, so a logit may move in its last bits and a near-tie may
//! break the other way (`tests/speculation.rs` bounds this).
//!
//! Rejected drafts leave KV cells past the sequence's tokens; the scheduler
//! removes them at once, so the invariant (the KV cache holds
//! `tokens[..n_past]`) holds between steps.

mod budget;
mod lookup;

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

pub(crate) use budget::{Acceptance, DecodeCost, MatchPriors, Plan};
pub(crate) use lookup::{MAX_MATCH, draft};

/// The most tokens the operator may let a step draft for one generation.
pub const MAX_DRAFT: u32 = 32;

/// Whether and how a model's generations speculate (the operator's
/// `--speculation` and `--draft-max`, the policy's `speculation` and
/// `draft-max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Speculation {
    /// How drafts are made.
    pub mode: SpeculationMode,
    /// Most tokens drafted per step for one generation, 1 to [`MAX_DRAFT`].
    pub draft_max: u32,
}

impl Default for Speculation {
    /// Off, drafting up to 16 tokens once turned on. It gained up to 1.95×
    /// and lost nothing beyond the runs' spread on the AMD kind
    /// (`benches/speculation/RESULTS.md`), but the Intel kind, whose AMX
    /// kernels batch differently, is not measured yet; the default turns on
    /// only when both are.
    fn default() -> Self {
        Self { mode: SpeculationMode::Off, draft_max: 16 }
    }
}

impl Speculation {
    /// Whether generations draft at all.
    pub fn on(&self) -> bool {
        self.mode != SpeculationMode::Off
    }
}

/// How drafts are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpeculationMode {
    /// No speculation: one token per generation per decode.
    Off,
    /// The continuation of the longest recent match of the generation's last
    /// tokens in its own session.
    Ngram,
}

impl SpeculationMode {
    /// The name the operator writes and a guest reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Ngram => "ngram",
        }
    }
}

impl fmt::Display for SpeculationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SpeculationMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "ngram" => Ok(Self::Ngram),
            other => Err(format!("{other:?} is not a speculation mode (ngram, off)")),
        }
    }
}
