//! Where the host keeps what outlives a run: the catalog's models (fetched
//! and verified once) and the engine's attention measurements (`attention.json`).

use std::path::PathBuf;

use anyhow::Context;

/// `$WASI_NN_LLM_CACHE`, else `<user cache dir>/wasi-nn-llm/models`.
pub fn dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WASI_NN_LLM_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = dirs::cache_dir().context("no user cache directory (set WASI_NN_LLM_CACHE)")?;
    Ok(base.join("wasi-nn-llm").join("models"))
}
