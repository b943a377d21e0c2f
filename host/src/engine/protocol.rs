//! The lane protocol: what session handles and streams send a lane's
//! scheduler thread, and how it answers. It is the only thing both sides of
//! the channel share.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use super::buffer::Shared;
use super::constraint::Guide;
use super::finish::Usage;
use super::params::Pooling;
use super::quota::Deadline;
use super::snapshot::Snapshot;
use crate::backend::GenerateParams;
use crate::error::LlmError;

/// A sequence of one lane's context: which KV cache a session owns there. Ids are per lane, from 0 to the lane's sequence count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeqId(u32);

impl SeqId {
    pub fn new(index: usize) -> Self {
        Self(index as u32)
    }

    /// The sequence's place in the lane's tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id the backend's context knows it by.
    pub fn id(self) -> u32 {
        self.0
    }
}

/// Where the scheduler sends one command's answer.
pub(crate) type Reply<T> = SyncSender<Result<T, LlmError>>;

/// A command's answer, not yet given: a blocking call waits for it at once;
/// the WASIp3 front door awaits it, so the guest's other tasks go on while
/// the scheduler works (a prefill can take seconds).
pub struct Pending<T>(pub(crate) Receiver<Result<T, LlmError>>);

impl<T: Send + 'static> Pending<T> {
    /// Block until the scheduler answers.
    pub fn wait(self) -> Result<T, LlmError> {
        self.0.recv().map_err(|_| super::scheduler_stopped())?
    }

    /// Wait without blocking the caller's async runtime: the answer arrives
    /// on a std channel, so one of tokio's blocking threads waits for it
    /// (tens of microseconds against a prefill's milliseconds).
    pub async fn answer(self) -> Result<T, LlmError> {
        tokio::task::spawn_blocking(move || self.wait()).await.unwrap_or_else(|_| Err(super::scheduler_stopped()))
    }
}

/// What session handles and streams ask of the scheduler.
pub(crate) enum Command {
    /// `shift`: keep this many first tokens and drop the oldest after them
    /// when the context fills (else refuse).
    Open {
        seq: SeqId,
        limit: u32,
        seed: Option<u64>,
        shift: Option<u32>,
    },
    Close {
        seq: SeqId,
    },
    Append {
        seq: SeqId,
        input: Input,
        reply: Reply<u32>,
    },
    /// The session's tokens.
    Tokens {
        seq: SeqId,
        reply: Reply<Vec<u32>>,
    },
    Rewind {
        seq: SeqId,
        n: u32,
        reply: Reply<u32>,
    },
    Reset {
        seq: SeqId,
        reply: Reply<()>,
    },
    /// A kept conversation continued by a new request: keep its first
    /// `keep` tokens (all, if it holds fewer); what it then holds counts as
    /// cached in the next turn's usage.
    Resume {
        seq: SeqId,
        keep: usize,
        reply: Reply<()>,
    },
    /// Copy `seq` into the free sequence `child`.
    Fork {
        seq: SeqId,
        child: SeqId,
        reply: Reply<()>,
    },
    /// The session as a snapshot of the model with this identity.
    Save {
        seq: SeqId,
        model: [u8; 32],
        reply: Reply<Snapshot>,
    },
    /// Load a checked snapshot into the freshly opened `seq`.
    Restore {
        seq: SeqId,
        snapshot: Snapshot,
        reply: Reply<()>,
    },
    /// `guide`: the Lark or JSON-schema constraint, compiled (the backend's
    /// sampler sees `params` without it).
    Generate {
        seq: SeqId,
        params: GenerateParams,
        guide: Option<Guide>,
        deadline: Option<Deadline>,
        reply: Reply<Arc<Shared>>,
    },
    /// The raw logits for the token after the session's last (base wasi-nn's
    /// tensor mode).
    Logits {
        seq: SeqId,
        reply: Reply<Vec<f32>>,
    },
    /// A reader dropped or cancelled its stream before the end; the reply,
    /// if asked for, is the usage of what was delivered.
    Cancel {
        seq: SeqId,
        stream: u64,
        reply: Option<Reply<Usage>>,
    },
    /// Evaluate checked inputs (each 1..=context tokens) for their
    /// embeddings; the reply is each input's pooled vector (not yet
    /// normalized) and token count.
    Embed {
        inputs: Vec<Vec<u32>>,
        pooling: Pooling,
        deadline: Option<Deadline>,
        reply: Reply<Vec<(Vec<f32>, u32)>>,
    },
    /// A reader made room in a full buffer.
    Wake,
    /// Answered once every command sent before it is handled.
    Barrier {
        reply: Reply<()>,
    },
}

/// What an append adds: guest text, or token ids already checked against the vocabulary.
pub(crate) enum Input {
    Text(String),
    Tokens(Vec<u32>),
}
