//! The extension's records in the engine's terms and back, and its errors.

use super::bindings::wasi_nn_llm::llm::types;
use crate::engine;
use crate::error::{LlmError, SnapshotError};

impl From<types::SessionOptions> for engine::SessionOptions {
    fn from(o: types::SessionOptions) -> Self {
        let shift_keep = match o.overflow {
            Some(types::OverflowPolicy::Shift(keep)) => Some(keep),
            Some(types::OverflowPolicy::Refuse) | None => None,
        };
        Self { context_length: o.context_length, seed: o.seed, shift_keep }
    }
}

impl From<engine::Feature> for types::Feature {
    fn from(f: engine::Feature) -> Self {
        match f {
            engine::Feature::Fork => Self::Fork,
            engine::Feature::SaveRestore => Self::SaveRestore,
            engine::Feature::Logprobs => Self::Logprobs,
            engine::Feature::Gbnf => Self::Gbnf,
            engine::Feature::Embeddings => Self::Embeddings,
            engine::Feature::PrefixCache => Self::PrefixCache,
            engine::Feature::ContextShift => Self::ContextShift,
        }
    }
}

impl From<types::GenerateParams> for engine::GenerateParams {
    fn from(p: types::GenerateParams) -> Self {
        Self {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            penalty_last_n: p.penalty_last_n,
            seed: p.seed,
            logit_bias: p.logit_bias,
            stop: p.stop,
            constraint: p.constraint.map(|c| match c {
                types::Constraint::Grammar(g) => engine::Constraint::Grammar(g),
                types::Constraint::JsonSchema(s) => engine::Constraint::JsonSchema(s),
            }),
            logprobs: p.logprobs,
        }
    }
}

/// `generate-constrained`'s parameters: `params` holding `constraint`,
/// which must be the only constraint given.
pub(crate) fn constrained(
    params: types::GenerateParams,
    constraint: types::PortableConstraint,
) -> Result<engine::GenerateParams, LlmError> {
    if params.constraint.is_some() {
        return Err(LlmError::InvalidArgument(
            "generate-constrained takes its constraint as an argument: params must give none".into(),
        ));
    }
    let mut params: engine::GenerateParams = params.into();
    params.constraint = Some(match constraint {
        types::PortableConstraint::Lark(grammar) => engine::Constraint::Lark(grammar),
        types::PortableConstraint::JsonSchema(schema) => engine::Constraint::JsonSchema(schema),
    });
    Ok(params)
}

impl From<engine::Chunk> for types::Chunk {
    fn from(c: engine::Chunk) -> Self {
        Self {
            text: c.text,
            tokens: c.tokens,
            logprobs: c
                .logprobs
                .into_iter()
                .map(|l| types::TokenLogprob { token: l.token, logprob: l.logprob, top: l.top })
                .collect(),
        }
    }
}

impl From<engine::Finish> for types::Finish {
    fn from(f: engine::Finish) -> Self {
        let reason = match f.reason {
            engine::FinishReason::EndOfSequence => types::FinishReason::EndOfSequence,
            engine::FinishReason::MaxTokens => types::FinishReason::MaxTokens,
            engine::FinishReason::Stop(s) => types::FinishReason::Stop(s),
            engine::FinishReason::Cancelled => types::FinishReason::Cancelled,
            engine::FinishReason::ContextFull => types::FinishReason::ContextFull,
        };
        let u = f.usage;
        Self {
            reason,
            usage: types::Usage {
                prompt_tokens: u.prompt_tokens,
                cached_tokens: u.cached_tokens,
                generated_tokens: u.generated_tokens,
            },
        }
    }
}

/// Every error a host call returns to the guest passes here, so this is
/// where they are logged (an engine failure is the host's fault, the rest
/// the guest's).
impl From<LlmError> for types::Error {
    fn from(e: LlmError) -> Self {
        match &e {
            LlmError::EngineFailure(_) => tracing::warn!(error = %e, "a host call fails"),
            _ => tracing::debug!(error = %e, "a host call returns an error to the guest"),
        }
        let overflow = |o: crate::error::ContextOverflow| types::ContextOverflow {
            requested: o.requested,
            used: o.used,
            limit: o.limit,
        };
        match e {
            LlmError::UnsupportedGraph(s) => Self::UnsupportedGraph(s),
            LlmError::NotPermitted(s) => Self::NotPermitted(s),
            LlmError::InvalidArgument(s) => Self::InvalidArgument(s),
            LlmError::InvalidToken { token, vocab_size } => {
                Self::InvalidToken(types::InvalidToken { token, vocab_size })
            }
            LlmError::PromptTooLong(o) => Self::PromptTooLong(overflow(o)),
            LlmError::ContextFull(o) => Self::ContextFull(overflow(o)),
            LlmError::InvalidGrammar(s) => Self::InvalidGrammar(s),
            LlmError::InvalidSnapshot(s) => Self::InvalidSnapshot(match s {
                SnapshotError::Truncated => types::SnapshotError::Truncated,
                SnapshotError::Corrupted | SnapshotError::WrongKey => types::SnapshotError::Corrupted,
                SnapshotError::WrongModel => types::SnapshotError::WrongModel,
                SnapshotError::WrongVersion | SnapshotError::Unsealed | SnapshotError::OtherBackend(_) => {
                    types::SnapshotError::WrongVersion
                }
                SnapshotError::TooLarge => types::SnapshotError::TooLarge,
            }),
            LlmError::LimitExceeded { name, max } => Self::LimitExceeded(types::Limit { name, max }),
            LlmError::SessionBusy => Self::SessionBusy,
            LlmError::Unsupported(s) => Self::Unsupported(s),
            LlmError::EngineFailure(s) => Self::EngineFailure(s),
        }
    }
}
