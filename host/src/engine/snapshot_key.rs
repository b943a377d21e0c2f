//! The host secret that seals saved sessions (see `snapshot.rs`).
//!
//! A guest holds its own saved blobs and can rewrite any byte of them, so
//! a checksum anyone can recompute proves nothing: only a MAC under a key
//! the guest never sees keeps forged llama.cpp state out of llama.cpp's
//! state reader. Hosts given the same key accept each other's blobs (what
//! moving a conversation between hosts needs); a host with another key
//! refuses them.
//!
//! Where the CLI's key comes from, first found: `--snapshot-key FILE`, the
//! policy's `snapshot-key-file`, else [`SnapshotKey::for_this_machine`], a
//! random key created once in the cache directory (mode 0600) so that a
//! `/save` in one run and a `/load` in a later one agree. A library user
//! who gives none gets [`SnapshotKey::ephemeral`]: blobs that only this
//! process accepts.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// BLAKE3 `derive_key` context for the key's public fingerprint: a
/// different function of the key than the MAC, so the fingerprint tells
/// nothing about MAC values.
const FINGERPRINT_CONTEXT: &str = "wasi-nn-llm 2026-12 snapshot key fingerprint";

/// File name of the machine's own key, in the cache directory.
const MACHINE_KEY_FILE: &str = "snapshot.key";

/// A 32-byte secret that seals snapshots, and its public fingerprint.
#[derive(Clone)]
pub struct SnapshotKey {
    secret: [u8; 32],
    fingerprint: [u8; 8],
    /// Where it came from, for messages (never the key itself).
    source: String,
}

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotKey({}, {})", self.fingerprint_hex(), self.source)
    }
}

impl SnapshotKey {
    fn new(secret: [u8; 32], source: String) -> Self {
        let derived = blake3::derive_key(FINGERPRINT_CONTEXT, &secret);
        let mut fingerprint = [0; 8];
        fingerprint.copy_from_slice(&derived[..8]);
        Self { secret, fingerprint, source }
    }

    /// A fresh random key that lives as long as this process.
    pub fn ephemeral() -> Self {
        Self::new(random_secret().expect("the OS random source"), "a random key of this process".into())
    }

    /// The key in `path`: 32 raw bytes, or 64 hex digits (a trailing
    /// newline allowed), as `head -c 32 /dev/urandom` or `openssl rand -hex
    /// 32` write them.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading the snapshot key {}", path.display()))?;
        let secret = parse(&bytes).with_context(|| format!("snapshot key {}", path.display()))?;
        warn_if_readable_by_others(path);
        Ok(Self::new(secret, path.display().to_string()))
    }

    /// This machine's own key, `snapshot.key` in `cache_dir`: read if it
    /// exists, else created (mode 0600). Two hosts starting at once agree
    /// on one key: each writes a candidate and links it into place, and
    /// the one that loses the race reads the winner's.
    pub fn for_this_machine(cache_dir: &Path) -> anyhow::Result<Self> {
        let path = machine_key_path(cache_dir);
        if path.exists() {
            return Self::from_file(&path);
        }
        std::fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
        let candidate = cache_dir.join(format!(".{MACHINE_KEY_FILE}.{}", std::process::id()));
        let secret = random_secret()?;
        write_private(&candidate, &secret)?;
        let linked = std::fs::hard_link(&candidate, &path);
        std::fs::remove_file(&candidate).ok();
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating the snapshot key {}", path.display())),
        }
        Self::from_file(&path)
    }

    /// Write a new random key to `path` (mode 0600), refusing to replace
    /// one: for tests and operators who want a key to share.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        if path.exists() {
            bail!("{} exists; a snapshot key is never overwritten", path.display());
        }
        write_private(path, &random_secret()?)?;
        Self::from_file(path)
    }

    /// Where the key came from (a path, or that it is this process's own).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The public fingerprint (hex): equal on two hosts exactly when they
    /// share the key, so operators can compare keys without showing them.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn fingerprint(&self) -> &[u8; 8] {
        &self.fingerprint
    }

    /// A keyed BLAKE3 hasher: the MAC over a snapshot's envelope.
    pub(crate) fn mac(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.secret)
    }
}

fn parse(bytes: &[u8]) -> anyhow::Result<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Ok(raw);
    }
    let text = std::str::from_utf8(bytes).ok().map(str::trim_end).filter(|t| t.len() == 64);
    let hex = text.context("must be 32 bytes, or 64 hex digits (e.g. from `openssl rand -hex 32`)")?;
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("not hex")?;
    }
    Ok(out)
}

fn random_secret() -> anyhow::Result<[u8; 32]> {
    let mut secret = [0; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    Ok(secret)
}

fn write_private(path: &Path, secret: &[u8; 32]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))
}

/// A key others may read is no secret; say so, once, at start-up.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: the snapshot key {} is readable by other users (mode {:o}); `chmod 600` it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

/// Where this machine's own key lives under `cache_dir`.
fn machine_key_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(MACHINE_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_hex_files_give_the_same_key() {
        let raw: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse(&raw).unwrap(), raw);
        assert_eq!(parse(format!("{hex}\n").as_bytes()).unwrap(), raw);
        assert!(parse(b"short").is_err());
        assert!(parse(&[b'z'; 64]).is_err());
    }

    #[test]
    fn the_machine_key_is_created_once_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wasi-nn-llm-key-test-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let first = SnapshotKey::for_this_machine(&dir).unwrap();
        let second = SnapshotKey::for_this_machine(&dir).unwrap();
        assert_eq!(first.secret, second.secret);
        assert_eq!(first.fingerprint_hex(), second.fingerprint_hex());
        let mode = std::fs::metadata(machine_key_path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(SnapshotKey::create(&machine_key_path(&dir)).is_err(), "a key is never overwritten");
        assert_ne!(SnapshotKey::ephemeral().secret, first.secret);
        std::fs::remove_dir_all(dir).ok();
    }
}
