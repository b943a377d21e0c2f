//! The saved-session format: a versioned envelope, bound to the model it
//! came from, around llama.cpp's own per-sequence state.
//!
//! Everything is checked before llama.cpp sees a byte: a truncated,
//! corrupted, foreign or oversized blob is refused with a typed error.
//!
//! Layout (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `WNLLMSNP` |
//! | 4 | format version (2) |
//! | 32 | model identity: SHA-256 of the GGUF file |
//! | 4 | the session's context limit |
//! | 1 + 8 | default seed: present flag, value |
//! | 4 | number of tokens n |
//! | 4 × n | the tokens |
//! | 4 | tokens in the KV cache (`n_past`) |
//! | 8 | length m of the llama.cpp state |
//! | m | llama.cpp's sequence state file |
//! | 16 | XXH3-128 of everything above |
//!
//! The checksum catches damage, not forgery (a guest holding the blob could
//! recompute any unkeyed hash), so a fast one serves: SHA-256 over a 30 MB
//! state took 30 ms, most of a restore; XXH3 takes about 2. Version 1 used
//! SHA-256.

use xxhash_rust::xxh3::xxh3_128;

use crate::error::{LlmError, SnapshotError};

const MAGIC: &[u8; 8] = b"WNLLMSNP";
/// The format this host writes and reads (2: XXH3-128 checksum).
pub const FORMAT_VERSION: u32 = 2;
/// Largest blob accepted; a session's state is far smaller (about 23 KB per
/// token for SmolLM2, so its 4096-token context is under 100 MB).
pub const MAX_BYTES: usize = 1 << 30;

/// A session as saved.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// SHA-256 of the model file it was saved from.
    pub model: [u8; 32],
    /// The session's context limit.
    pub limit: u32,
    /// The session's default seed.
    pub seed: Option<u64>,
    /// Every token the session held.
    pub tokens: Vec<u32>,
    /// How many of them the state holds evaluated.
    pub n_past: u32,
    /// llama.cpp's sequence state, as its state file holds it.
    pub state: Vec<u8>,
}

impl Snapshot {
    /// The blob `session.save` returns.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.state.len() + 4 * self.tokens.len() + 128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.model);
        out.extend_from_slice(&self.limit.to_le_bytes());
        out.push(u8::from(self.seed.is_some()));
        out.extend_from_slice(&self.seed.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&(self.tokens.len() as u32).to_le_bytes());
        for t in &self.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&self.n_past.to_le_bytes());
        out.extend_from_slice(&(self.state.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.state);
        let digest = xxh3_128(&out);
        out.extend_from_slice(&digest.to_le_bytes());
        out
    }

    /// Parse and check a blob against the model it must belong to.
    pub fn decode(blob: &[u8], model: &[u8; 32]) -> Result<Self, LlmError> {
        Self::decode_limited(blob, model, MAX_BYTES)
    }

    fn decode_limited(blob: &[u8], model: &[u8; 32], max_bytes: usize) -> Result<Self, LlmError> {
        let refuse = |e| LlmError::InvalidSnapshot(e);
        if blob.len() > max_bytes {
            return Err(refuse(SnapshotError::TooLarge));
        }
        let mut r = Reader { blob, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(refuse(SnapshotError::Corrupted));
        }
        if r.u32()? != FORMAT_VERSION {
            return Err(refuse(SnapshotError::WrongVersion));
        }
        let saved_model: [u8; 32] = r.array()?;
        let limit = r.u32()?;
        let has_seed = r.take(1)?[0];
        let seed = u64::from_le_bytes(r.array()?);
        let n = r.u32()? as usize;
        let tokens = r.take(n.checked_mul(4).ok_or(refuse(SnapshotError::Corrupted))?)?;
        let tokens = tokens.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let n_past = r.u32()?;
        let m = u64::from_le_bytes(r.array()?);
        let state = r.take(usize::try_from(m).map_err(|_| refuse(SnapshotError::TooLarge))?)?.to_vec();
        let body = r.at;
        let checksum = r.take(16)?;
        if r.at != blob.len() || xxh3_128(&blob[..body]).to_le_bytes() != checksum {
            return Err(refuse(SnapshotError::Corrupted));
        }
        if &saved_model != model {
            return Err(refuse(SnapshotError::WrongModel));
        }
        if has_seed > 1 || n_past as usize > n || n > limit as usize {
            return Err(refuse(SnapshotError::Corrupted));
        }
        Ok(Self { model: saved_model, limit, seed: (has_seed == 1).then_some(seed), tokens, n_past, state })
    }
}

struct Reader<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LlmError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.blob.len());
        let end = end.ok_or(LlmError::InvalidSnapshot(SnapshotError::Truncated))?;
        let bytes = &self.blob[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, LlmError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LlmError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot { model: [7; 32], limit: 64, seed: Some(42), tokens: vec![1, 2, 3], n_past: 2, state: vec![9; 100] }
    }

    fn refused(blob: &[u8], model: &[u8; 32]) -> SnapshotError {
        match Snapshot::decode(blob, model) {
            Err(LlmError::InvalidSnapshot(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(Snapshot::decode(&s.encode(), &[7; 32]).unwrap(), s);
    }

    #[test]
    fn every_truncation_is_refused() {
        let blob = sample().encode();
        for len in 0..blob.len() {
            let e = refused(&blob[..len], &[7; 32]);
            assert!(matches!(e, SnapshotError::Truncated | SnapshotError::Corrupted), "length {len}: {e:?}");
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let blob = sample().encode();
        for byte in 0..blob.len() {
            let mut bad = blob.clone();
            bad[byte] ^= 0x10;
            assert!(Snapshot::decode(&bad, &[7; 32]).is_err(), "flip in byte {byte} went unnoticed");
        }
    }

    #[test]
    fn an_oversized_blob_is_refused_before_parsing() {
        let blob = sample().encode();
        let e = Snapshot::decode_limited(&blob, &[7; 32], blob.len() - 1);
        assert_eq!(e, Err(LlmError::InvalidSnapshot(SnapshotError::TooLarge)));
    }

    #[test]
    fn another_model_or_version_is_named() {
        let blob = sample().encode();
        assert_eq!(refused(&blob, &[8; 32]), SnapshotError::WrongModel);
        let mut other = blob.clone();
        other[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(refused(&other, &[7; 32]), SnapshotError::WrongVersion);
    }
}
