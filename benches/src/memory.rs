//! Resident memory with 1 and with 8 guest instances on one model: the
//! model is loaded once and the KV cache is allocated once, so instances
//! should add little.

use std::time::Duration;

use anyhow::{Context, Result};
use wasi_nn_llm_host::engine::Engine;

use crate::guest::Guest;
use crate::report::{Table, Target, num};

/// This process's resident set, in MB (Linux).
pub fn rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb / 1024.0)
}

/// RSS while `k` instances each hold a session with a prefilled prompt.
fn with_instances(guest: &Guest, model: &str, prompt: &str, k: usize) -> Result<f64> {
    let hold_ms = 2500 + 400 * k as u64;
    let hold = hold_ms.to_string();
    std::thread::scope(|scope| -> Result<f64> {
        let runs: Vec<_> = (0..k).map(|_| scope.spawn(|| guest.run(&["hold", model, &hold, prompt]))).collect();
        std::thread::sleep(Duration::from_millis(hold_ms - 800));
        let rss = rss_mb()?;
        for r in runs {
            r.join().map_err(|_| anyhow::anyhow!("a guest thread panicked"))??;
        }
        Ok(rss)
    })
}

pub fn run(guest: &Guest, engine: &Engine, loaded_mb: f64) -> Result<(String, Vec<Target>)> {
    let model = engine.name();
    eprintln!("  memory {model}");
    let prompt = engine.apply_chat_template(&[("user".into(), "Describe the sea.".into())], true)?;
    let idle = rss_mb()?;
    let one = with_instances(guest, model, &prompt, 1)?;
    let eight = with_instances(guest, model, &prompt, 8)?;
    let per_instance = (eight - one) / 7.0;
    let file_mb = engine.info().size_bytes as f64 / 1e6 / 1.048_576;
    let mut table = Table::new(&["state", "resident MB"]);
    table.row(vec!["all models loaded, no guest".into(), num(idle)]);
    table.row(vec![format!("1 instance of the guest on {model}"), num(one)]);
    table.row(vec![format!("8 instances on {model}"), num(eight)]);
    table.row(vec!["added per extra instance".into(), num(per_instance)]);
    let markdown = format!(
        "Resident memory of this process (both models loaded: {} MB after loading; the depth section loads a \
         second, one-thread copy of each, which the rows below include). Each instance opens a \
         session, prefills a short prompt, generates 16 tokens and holds it while memory is read. {model}'s weights \
         are {} MB; its KV cache for all sessions is allocated when the model loads, so instances add only their \
         wasm memory and host state.\n\n{}",
        num(loaded_mb),
        num(file_mb),
        table.markdown()
    );
    // Small per-instance overhead: under 20 MB each (a guest's linear memory and stacks).
    let target = Target::new(
        format!("{model}: 8 instances ≤ 1 model + 8 KV caches + small overhead"),
        "model shared; < 20 MB per extra instance",
        format!("{} MB per extra instance", num(per_instance)),
        per_instance < 20.0,
    );
    Ok((markdown, vec![target]))
}
