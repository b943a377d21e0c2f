//! Per-guest-instance quotas: what one guest may hold in the engines
//! (sessions, KV-cache bytes, generations running at once) and ask of them
//! per generation (tokens, seconds). Every instance gets its own [`Quota`], so one guest cannot
//! take the sessions or memory the others need; the operator's policy
//! (`crate::policy`) sets the numbers.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::GenerateParams;
use crate::error::LlmError;

/// The numbers; `None` is unlimited.
#[derive(Debug, Clone, Default)]
pub struct QuotaLimits {
    /// Sessions (and base wasi-nn contexts) held at once (`instance-sessions`).
    pub sessions: Option<u32>,
    /// KV-cache bytes the sessions reserve (`instance-kv-bytes`).
    pub kv_bytes: Option<u64>,
    /// Tokens per generation, also the default `max-tokens` (`generate-tokens`).
    pub generate_tokens: Option<u32>,
    /// Wall time per generation (`generate-seconds`).
    pub generate_time: Option<Duration>,
    /// Generations running at once (`concurrent-generations`).
    pub generations: Option<u32>,
}

/// One guest instance's limits and what it holds now.
#[derive(Debug, Default)]
pub struct Quota {
    limits: QuotaLimits,
    held: Mutex<Held>,
    generating: AtomicU32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    sessions: u32,
    kv_bytes: u64,
}

impl Quota {
    /// A fresh quota (nothing held) under `limits`.
    pub fn new(limits: QuotaLimits) -> Arc<Self> {
        Arc::new(Self { limits, held: Mutex::default(), generating: AtomicU32::new(0) })
    }

    /// No limits (tools, tests and benchmarks that drive the engine directly).
    pub fn unlimited() -> Arc<Self> {
        Self::new(QuotaLimits::default())
    }

    /// Sessions and KV bytes held now.
    pub fn held(&self) -> (u32, u64) {
        let held = *self.lock();
        (held.sessions, held.kv_bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserve one session reserving `kv_bytes`; released when the lease drops.
    pub(super) fn lease(self: &Arc<Self>, kv_bytes: u64) -> Result<Lease, LlmError> {
        let mut held = self.lock();
        if let Some(max) = self.limits.sessions
            && held.sessions >= max
        {
            return Err(LlmError::LimitExceeded { name: "instance-sessions".into(), max: max.into() });
        }
        if let Some(max) = self.limits.kv_bytes
            && held.kv_bytes.saturating_add(kv_bytes) > max
        {
            return Err(LlmError::LimitExceeded { name: "instance-kv-bytes".into(), max });
        }
        held.sessions += 1;
        held.kv_bytes += kv_bytes;
        Ok(Lease { quota: self.clone(), kv_bytes })
    }

    /// Count one more running generation, or refuse at the limit. The
    /// stream holds the permit until its generation ends.
    pub(super) fn start_generation(self: &Arc<Self>) -> Result<Option<GenerationPermit>, LlmError> {
        let Some(max) = self.limits.generations else { return Ok(None) };
        self.generating
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| LlmError::LimitExceeded { name: "concurrent-generations".into(), max: max.into() })?;
        Ok(Some(GenerationPermit(self.clone())))
    }

    /// `params` within the per-generation limits: a `max-tokens` above the
    /// limit is refused, an absent one becomes the limit. Returns the
    /// generation's deadline, if the quota sets one.
    pub(super) fn admit(&self, params: &mut GenerateParams) -> Result<Option<Deadline>, LlmError> {
        if let Some(max) = self.limits.generate_tokens {
            match params.max_tokens {
                Some(n) if n > max => {
                    return Err(LlmError::LimitExceeded { name: "generate-tokens".into(), max: max.into() });
                }
                Some(_) => {}
                None => params.max_tokens = Some(max),
            }
        }
        Ok(self.deadline())
    }

    /// When a generation (or a call that counts as one) starting now must
    /// stop, if the quota sets a time.
    pub(super) fn deadline(&self) -> Option<Deadline> {
        self.limits.generate_time.map(|t| Deadline { at: Instant::now() + t, limit: t })
    }
}

/// When a generation must stop, and the limit that set it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub limit: Duration,
}

impl Deadline {
    pub fn error(&self) -> LlmError {
        LlmError::LimitExceeded { name: "generate-seconds".into(), max: self.limit.as_secs_f64().ceil() as u64 }
    }
}

/// One session's share of a quota.
#[derive(Debug)]
pub(super) struct Lease {
    quota: Arc<Quota>,
    kv_bytes: u64,
}

impl Lease {
    pub(super) fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    /// Another lease of the same size from the same quota (a fork).
    pub(super) fn renew(&self) -> Result<Lease, LlmError> {
        self.quota.lease(self.kv_bytes)
    }

    /// A lease of the same size from `quota`, to replace this one (a
    /// session passing from its instance to the prefix cache).
    pub(super) fn move_to(&self, quota: &Arc<Quota>) -> Result<Lease, LlmError> {
        quota.lease(self.kv_bytes)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.quota.lock();
        held.sessions = held.sessions.saturating_sub(1);
        held.kv_bytes = held.kv_bytes.saturating_sub(self.kv_bytes);
    }
}

/// One running generation of a quota's instance; the count drops with it.
#[derive(Debug)]
pub(crate) struct GenerationPermit(Arc<Quota>);

impl Drop for GenerationPermit {
    fn drop(&mut self) {
        self.0.generating.fetch_sub(1, Ordering::AcqRel);
    }
}
