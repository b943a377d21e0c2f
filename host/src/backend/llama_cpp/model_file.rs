//! A model file checked before llama.cpp loads it, so that a wrong path or
//! a file that is not a model gets a sentence saying so. llama.cpp itself
//! only answers "null" (its reason goes to a log the host keeps quiet).

use std::io::Read;
use std::path::Path;

use anyhow::bail;
use llama_cpp_2::gguf::GgufContext;

/// The first bytes of every GGUF file.
const MAGIC: &[u8; 4] = b"GGUF";

/// What a model file said about itself before loading.
pub(crate) struct Checked {
    /// `general.architecture`, if the file names one.
    pub architecture: Option<String>,
}

/// Check that `path` is a readable, complete GGUF file.
pub(crate) fn check(path: &Path) -> anyhow::Result<Checked> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("no such file: {shown}"),
        Err(e) => bail!("{shown} cannot be read: {e}"),
    };
    if meta.is_dir() {
        bail!("{shown} is a directory, not a GGUF file");
    }
    let mut head = Vec::with_capacity(MAGIC.len());
    let read = std::fs::File::open(path).and_then(|f| f.take(MAGIC.len() as u64).read_to_end(&mut head));
    if let Err(e) = read {
        bail!("{shown} cannot be read: {e}");
    }
    if head.as_slice() != MAGIC {
        bail!(
            "{shown} is not a GGUF file (it starts with {:?}, a GGUF file with \"GGUF\")",
            String::from_utf8_lossy(&head)
        );
    }
    let Some(gguf) = GgufContext::from_file(path) else {
        bail!("{shown} is a damaged GGUF file: its header does not parse (cut short or corrupted)");
    };
    let (len, needed) = (meta.len(), gguf.data_end());
    if len < needed {
        bail!("{shown} is cut short: it holds {len} bytes, its tensors end at byte {needed}");
    }
    Ok(Checked { architecture: gguf.string("general.architecture").map(str::to_owned) })
}
