//! The prefix cache's shared tier: conversations kept in a Redis (or
//! Valkey) that several hosts use, so that a conversation whose next turn a
//! balancer sends to another host is restored there, not evaluated again.
//!
//! A host that keeps a conversation (a session from `open-cached` dropped)
//! also writes its sealed snapshot here; a host whose own cache holds less
//! of a prompt looks here for a longer prefix and restores it.
//!
//! Keys (every one with the operator's TTL; nothing is kept without one):
//! - `wnl1:{base}:e:{hash of the tokens}`: an entry, the snapshot sealed as
//!   `session.save` seals it, after a tag;
//! - `wnl1:{base}:p:{hash of the first k·16 tokens}`: for each whole block
//!   of 16 tokens the entry holds, the key of the entry, so the longest
//!   stored prefix of a prompt is found with one `MGET` of its blocks (at
//!   most 128 keys for a 2048-token prompt). 16, not more: a conversation's
//!   next turn adds a user message and a reply, and a block boundary must
//!   fall between what the host already holds and what the store does.
//!
//! `base` hashes what an entry must share with a session to continue it:
//! the namespace (the component's digest: one tenant never finds
//! another's), the model file's SHA-256, the backend, and the session's
//! shape (context limit, shift, seed).
//!
//! What comes back is authenticated, not just checksummed: the tag is a
//! keyed BLAKE3 under the snapshot key (which the hosts of one cluster
//! share) of the entry's own key and the blob, so an entry copied under
//! another namespace's key, or written by anyone without the key, is
//! refused (and counted); the blob inside is then checked in full as any
//! restored snapshot is.
//!
//! Faults are survivable: the store down at start-up or lost mid-run costs
//! only the sharing. Every call has the operator's timeout; a failed call
//! drops the connection, warns once, and the next call after a second
//! reconnects, so requests go on with each host's own cache meanwhile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::super::snapshot::SnapshotKey;
use crate::metrics;

/// Tokens per block: the granularity at which prefixes are found (see the
/// module's doc).
const BLOCK: usize = 16;
/// Key prefix, with the layout's version.
const PREFIX: &str = "wnl1";
/// How long a lost store is left alone before the next try.
const RETRY: Duration = Duration::from_secs(1);
/// Domain of the entry tag's MAC (the snapshot's own MAC uses the bare key).
const TAG_DOMAIN: &[u8] = b"wasi-nn-llm shared prefix cache entry v1\0";
const TAG_BYTES: usize = 32;

/// The operator's settings of the shared tier.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `redis://host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// How long an entry lives after it is written.
    pub ttl: Duration,
    /// Largest snapshot written (a longer conversation stays local).
    pub max_entry_bytes: u64,
    /// Longest one call to the store may take; past it the request goes on
    /// without the store.
    pub timeout: Duration,
}

impl SharedSettings {
    /// An hour's TTL, 64 MiB entries, 500 ms calls.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ttl: Duration::from_secs(3600),
            max_entry_bytes: 64 << 20,
            timeout: Duration::from_millis(500),
        }
    }
}

/// A connection to the store, shared by the host's engines.
pub struct SharedTier {
    settings: SharedSettings,
    client: redis::Client,
    link: Mutex<Link>,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedTier({})", self.settings.url)
    }
}

#[derive(Default)]
struct Link {
    connection: Option<redis::Connection>,
    /// When the last call failed; the store is left alone for [`RETRY`].
    failed_at: Option<Instant>,
    /// Whether the loss was reported (once per outage).
    warned: bool,
}

impl SharedTier {
    /// A tier on `settings.url`; nothing is connected until first used, so a
    /// store that is down at start-up only delays the sharing.
    pub fn new(settings: SharedSettings) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("--shared-cache {}: {e}", settings.url))?;
        Ok(Self { settings, client, link: Mutex::default() })
    }

    /// The operator's settings.
    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Run `call` on the connection (made first if there is none and the
    /// store is not being left alone); `None` if the store is unreachable or
    /// the call failed.
    fn with<R>(&self, call: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<R>) -> Option<R> {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if link.connection.is_none() {
            if link.failed_at.is_some_and(|t| t.elapsed() < RETRY) {
                return None;
            }
            match self.connect() {
                Ok(connection) => link.connection = Some(connection),
                Err(e) => {
                    self.lost(&mut link, &e);
                    return None;
                }
            }
        }
        let connection = link.connection.as_mut()?;
        match call(connection) {
            Ok(value) => {
                if link.warned {
                    tracing::warn!("the shared cache at {} is reachable again; sharing resumes", self.settings.url);
                }
                (link.failed_at, link.warned) = (None, false);
                Some(value)
            }
            Err(e) => {
                link.connection = None;
                self.lost(&mut link, &e);
                None
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(self.settings.timeout)?;
        connection.set_read_timeout(Some(self.settings.timeout))?;
        connection.set_write_timeout(Some(self.settings.timeout))?;
        Ok(connection)
    }

    fn lost(&self, link: &mut Link, error: &redis::RedisError) {
        metrics::get().shared_errors.inc();
        link.failed_at = Some(Instant::now());
        if !link.warned {
            link.warned = true;
            tracing::warn!(
                "the shared cache at {} failed ({error}); requests go on with each host's own cache, and it is \
                 tried again every {RETRY:?}",
                self.settings.url
            );
        } else {
            tracing::debug!("the shared cache is still unreachable: {error}");
        }
    }

    /// Write `blob` (a sealed snapshot of `tokens`) under `base`, with an
    /// index key for each whole block of its tokens.
    pub fn put(&self, base: &str, tokens: &[u32], blob: &[u8], key: &SnapshotKey) {
        if blob.len() as u64 > self.settings.max_entry_bytes {
            tracing::debug!(bytes = blob.len(), "a conversation larger than shared-cache-entry-bytes stays local");
            return;
        }
        let entry = format!("{PREFIX}:{base}:e:{}", hex(&blake3::hash(&le_bytes(tokens)).as_bytes()[..16]));
        let mut value = Vec::with_capacity(TAG_BYTES + blob.len());
        value.extend_from_slice(tag(key, &entry, blob).as_bytes());
        value.extend_from_slice(blob);
        let ttl = self.settings.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&entry).arg(&value).arg("EX").arg(ttl).ignore();
        for block in block_keys(base, tokens, tokens.len()) {
            pipe.cmd("SET").arg(block).arg(&entry).arg("EX").arg(ttl).ignore();
        }
        let written = self.with(|c| pipe.query::<()>(c));
        if written.is_some() {
            metrics::get().shared_writes.inc();
            metrics::get().shared_written_bytes.inc_by(value.len() as u64);
        }
    }

    /// The sealed snapshot of the entry under `base` that holds the
    /// longest whole-block prefix of `prompt` longer than `than` tokens
    /// (what the host's own cache gives), its tag checked; none if there is
    /// none, or the store is unreachable.
    pub fn find(&self, base: &str, prompt: &[u32], than: usize, key: &SnapshotKey) -> Option<Vec<u8>> {
        // At least one token is always left to evaluate.
        let usable = prompt.len().saturating_sub(1);
        let blocks = block_keys(base, prompt, usable);
        let first = than / BLOCK; // blocks that would give no more than `than`
        if blocks.len() <= first {
            return None;
        }
        let wanted = &blocks[first..];
        let found: Vec<Option<String>> = self.with(|c| redis::cmd("MGET").arg(wanted).query(c))?;
        let entry = found.into_iter().rev().flatten().next()?;
        // An index value that names another base's entry is refused outright.
        if !entry.starts_with(&format!("{PREFIX}:{base}:e:")) {
            metrics::get().shared_refused.inc();
            return None;
        }
        let value: Option<Vec<u8>> = self.with(|c| redis::cmd("GET").arg(&entry).query(c))?;
        // None: evicted between the two calls.
        let value = value?;
        // blake3::Hash compares in constant time, as the snapshot's own MAC check does.
        let checked = value
            .split_first_chunk::<TAG_BYTES>()
            .filter(|(tagged, blob)| blake3::Hash::from_bytes(**tagged) == tag(key, &entry, blob));
        let Some((_, blob)) = checked else {
            metrics::get().shared_refused.inc();
            tracing::warn!("a shared-cache entry failed its check (another key, or tampered); ignored");
            return None;
        };
        Some(blob.to_vec())
    }
}

/// The index keys of `tokens`' whole blocks within its first `usable`
/// tokens: block k's key hashes the first (k+1)·[`BLOCK`] tokens, chained
/// so the whole prompt is hashed once.
fn block_keys(base: &str, tokens: &[u32], usable: usize) -> Vec<String> {
    let mut chain = [0u8; 32];
    tokens[..usable.min(tokens.len())]
        .chunks_exact(BLOCK)
        .map(|block| {
            let mut h = blake3::Hasher::new();
            h.update(&chain).update(&le_bytes(block));
            chain = *h.finalize().as_bytes();
            format!("{PREFIX}:{base}:p:{}", hex(&chain[..16]))
        })
        .collect()
}

/// The namespace-binding tag of an entry: keyed BLAKE3 of its key and blob.
fn tag(key: &SnapshotKey, entry: &str, blob: &[u8]) -> blake3::Hash {
    let mut mac = key.mac();
    mac.update(TAG_DOMAIN).update(entry.as_bytes()).update(&[0]).update(blob);
    mac.finalize()
}

/// Token ids as little-endian bytes (what is hashed).
fn le_bytes(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().flat_map(|t| t.to_le_bytes()).collect()
}

pub(in crate::engine) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_finds_the_blocks_a_longer_conversation_wrote() {
        let conversation: Vec<u32> = (0..300).collect();
        let written = block_keys("b", &conversation, conversation.len());
        assert_eq!(written.len(), 300 / BLOCK);
        let prompt: Vec<u32> = (0..200).chain(1000..1010).collect();
        let looked = block_keys("b", &prompt, prompt.len() - 1);
        assert_eq!(looked.len(), 209 / BLOCK);
        assert_eq!(looked[..200 / BLOCK], written[..200 / BLOCK]);
        assert!(looked[200 / BLOCK..].iter().all(|k| !written.contains(k)));
        // Another base, or a different token in the first block, finds nothing.
        assert!(block_keys("c", &prompt, prompt.len() - 1).iter().all(|k| !written.contains(k)));
        let mut changed = prompt.clone();
        changed[5] = 7;
        assert!(block_keys("b", &changed, changed.len() - 1).iter().all(|k| !written.contains(k)));
    }

    #[test]
    fn a_tag_binds_the_entry_key() {
        let key = SnapshotKey::ephemeral();
        let t = tag(&key, "wnl1:a:e:00", b"blob");
        assert_eq!(t, tag(&key, "wnl1:a:e:00", b"blob"));
        assert_ne!(t, tag(&key, "wnl1:b:e:00", b"blob"));
        assert_ne!(t, tag(&key, "wnl1:a:e:00", b"blob!"));
        assert_ne!(t, tag(&SnapshotKey::ephemeral(), "wnl1:a:e:00", b"blob"));
    }
}
