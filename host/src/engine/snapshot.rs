//! The saved-session format: a versioned envelope, bound to the model it
//! came from and sealed with the host's key, around llama.cpp's own
//! per-sequence state.
//!
//! A blob is opaque, host-bound and authenticated. Its MAC is checked
//! before anything else is read, so nothing a guest (or a peer host
//! without the key) forged reaches llama.cpp's state reader, which was
//! never written for adversarial input. A truncated, damaged, forged,
//! foreign-key, foreign-model or oversized blob is refused with a typed
//! error.
//!
//! Layout (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `WNLLMSNP` |
//! | 4 | format version (3) |
//! | 8 | the sealing key's public fingerprint ([`SnapshotKey`]) |
//! | 8 | length of the whole blob, MAC included |
//! | 32 | model identity: SHA-256 of the GGUF file |
//! | 4 | the session's context limit |
//! | 1 + 8 | default seed: present flag, value |
//! | 4 | number of tokens n |
//! | 4 × n | the tokens |
//! | 4 | tokens in the KV cache (`n_past`) |
//! | 8 | length m of the llama.cpp state |
//! | m | llama.cpp's sequence state file |
//! | 32 | keyed BLAKE3 of everything above, under the host's key |
//!
//! Keyed BLAKE3 rather than HMAC-SHA256: it is a MAC by construction and
//! runs several times faster (SHA-256 over a 30 MB state took 30 ms, most
//! of a restore). Version 1 carried an unkeyed SHA-256 and version 2 an
//! unkeyed XXH3-128: both caught damage but not forgery, and neither is
//! read any more. The fingerprint lets a refusal say "another host's key"
//! instead of "damaged", and the length "cut short"; neither is trusted
//! for anything else (the MAC is checked either way).

use crate::error::{LlmError, SnapshotError};

pub use super::snapshot_key::SnapshotKey;

const MAGIC: &[u8; 8] = b"WNLLMSNP";
/// The format this host writes and reads (3: keyed BLAKE3).
pub const FORMAT_VERSION: u32 = 3;
/// Formats earlier hosts wrote with an unkeyed checksum (refused, by name).
const UNSEALED_VERSIONS: [u32; 2] = [1, 2];
/// Bytes before the model identity: magic, version, fingerprint, length.
const HEADER: usize = 28;
/// Bytes of the MAC that ends a blob.
const MAC_BYTES: usize = 32;
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
    /// The blob `session.save` returns, sealed with `key`.
    pub fn encode(&self, key: &SnapshotKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.state.len() + 4 * self.tokens.len() + 128);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(key.fingerprint());
        out.extend_from_slice(&0u64.to_le_bytes()); // the length, once known
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
        let total = (out.len() + MAC_BYTES) as u64;
        out[20..HEADER].copy_from_slice(&total.to_le_bytes());
        let mac = key.mac().update(&out).finalize();
        out.extend_from_slice(mac.as_bytes());
        out
    }

    /// Check a blob's seal under `key`, then parse it and check it against
    /// the model it must belong to.
    pub fn decode(blob: &[u8], key: &SnapshotKey, model: &[u8; 32]) -> Result<Self, LlmError> {
        Self::decode_limited(blob, key, model, MAX_BYTES)
    }

    fn decode_limited(blob: &[u8], key: &SnapshotKey, model: &[u8; 32], max_bytes: usize) -> Result<Self, LlmError> {
        let refuse = |e| LlmError::InvalidSnapshot(e);
        if blob.len() > max_bytes {
            return Err(refuse(SnapshotError::TooLarge));
        }
        let mut r = Reader { blob, at: 0 };
        if r.take(8)? != MAGIC {
            return Err(refuse(SnapshotError::Corrupted));
        }
        match r.u32()? {
            FORMAT_VERSION => {}
            v if UNSEALED_VERSIONS.contains(&v) => return Err(refuse(SnapshotError::Unsealed)),
            _ => return Err(refuse(SnapshotError::WrongVersion)),
        }
        let fingerprint: [u8; 8] = r.array()?;
        let total = u64::from_le_bytes(r.array()?);
        if (blob.len() as u64) < total {
            return Err(refuse(SnapshotError::Truncated));
        }
        if blob.len() as u64 > total || blob.len() < HEADER + MAC_BYTES {
            return Err(refuse(SnapshotError::Corrupted));
        }
        let sealed = blob.len() - MAC_BYTES;
        let mac = key.mac().update(&blob[..sealed]).finalize();
        // blake3::Hash compares in constant time.
        if mac != blake3::Hash::from_bytes(blob[sealed..].try_into().expect("32 bytes")) {
            return Err(refuse(if &fingerprint != key.fingerprint() {
                SnapshotError::WrongKey
            } else {
                SnapshotError::Corrupted
            }));
        }
        // Sealed by this key: what follows was written by a host holding it.
        let mut r = Reader { blob: &blob[..sealed], at: r.at };
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
        if r.at != sealed {
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

    fn key() -> SnapshotKey {
        static KEY: std::sync::OnceLock<SnapshotKey> = std::sync::OnceLock::new();
        KEY.get_or_init(SnapshotKey::ephemeral).clone()
    }

    fn sample() -> Snapshot {
        Snapshot { model: [7; 32], limit: 64, seed: Some(42), tokens: vec![1, 2, 3], n_past: 2, state: vec![9; 100] }
    }

    fn refused(blob: &[u8], model: &[u8; 32]) -> SnapshotError {
        match Snapshot::decode(blob, &key(), model) {
            Err(LlmError::InvalidSnapshot(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(Snapshot::decode(&s.encode(&key()), &key(), &[7; 32]).unwrap(), s);
    }

    #[test]
    fn every_truncation_is_refused() {
        let blob = sample().encode(&key());
        for len in 0..blob.len() {
            let e = refused(&blob[..len], &[7; 32]);
            assert!(
                matches!(e, SnapshotError::Truncated | SnapshotError::Corrupted | SnapshotError::WrongKey),
                "length {len}: {e:?}"
            );
        }
    }

    #[test]
    fn every_bit_flip_is_refused() {
        let blob = sample().encode(&key());
        for byte in 0..blob.len() {
            let mut bad = blob.clone();
            bad[byte] ^= 0x10;
            assert!(Snapshot::decode(&bad, &key(), &[7; 32]).is_err(), "flip in byte {byte} went unnoticed");
        }
    }

    #[test]
    fn an_oversized_blob_is_refused_before_parsing() {
        let blob = sample().encode(&key());
        let e = Snapshot::decode_limited(&blob, &key(), &[7; 32], blob.len() - 1);
        assert_eq!(e, Err(LlmError::InvalidSnapshot(SnapshotError::TooLarge)));
    }

    #[test]
    fn another_model_or_version_is_named() {
        let blob = sample().encode(&key());
        assert_eq!(refused(&blob, &[8; 32]), SnapshotError::WrongModel);
        let mut other = blob.clone();
        other[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(refused(&other, &[7; 32]), SnapshotError::WrongVersion);
    }

    #[test]
    fn another_hosts_key_is_named_and_a_resealed_forgery_is_damage() {
        let theirs = SnapshotKey::ephemeral();
        assert_eq!(refused(&sample().encode(&theirs), &[7; 32]), SnapshotError::WrongKey);
        // A forger who keeps our fingerprint but cannot compute our MAC.
        let ours = sample().encode(&key());
        let body = &ours[..ours.len() - MAC_BYTES];
        let forged = [body, theirs.mac().update(body).finalize().as_bytes()].concat();
        assert_eq!(refused(&forged, &[7; 32]), SnapshotError::Corrupted);
    }

    #[test]
    fn the_unkeyed_formats_are_refused_by_name() {
        for version in UNSEALED_VERSIONS {
            let mut old = sample().encode(&key());
            old[8..12].copy_from_slice(&version.to_le_bytes());
            assert_eq!(refused(&old, &[7; 32]), SnapshotError::Unsealed);
        }
    }
}
