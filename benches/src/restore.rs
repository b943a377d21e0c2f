//! First-token latency after `restore` of a saved 1k-token conversation
//! against prefilling the same conversation.

use std::time::Instant;

use anyhow::{Result, anyhow};
use wasi_nn_llm_host::engine::snapshot::Snapshot;
use wasi_nn_llm_host::engine::{Engine, Quota, SessionOptions};

use crate::Settings;
use crate::guest::{Guest, f64_of, f64s_of};
use crate::report::{Table, Target, median, num, ratio};
use crate::single::PASSAGE;

pub fn run(guest: &Guest, engine: &Engine, settings: &Settings) -> Result<(String, Vec<Target>)> {
    let model = engine.name();
    // About a thousand tokens of conversation.
    let mut messages = Vec::new();
    while engine.count_tokens(&engine.apply_chat_template(&messages, false)?)? < 1000 {
        messages.push(("user".to_string(), format!("Tell me about Rome. {PASSAGE}")));
        messages.push(("assistant".to_string(), "Rome's history runs from the Republic to Constantine.".to_string()));
    }
    let text = engine.apply_chat_template(&messages, false)?;
    eprintln!("  restore {model}");
    let r = &guest.run(&["restore", model, &settings.runs.to_string(), &text])?[0];
    let (reprefill, restored, saved) = (f64s_of(r, "reprefill_ms")?, f64s_of(r, "restore_ms")?, f64s_of(r, "save_ms")?);
    let ratios: Vec<f64> = reprefill.iter().zip(&restored).map(|(a, b)| a / b).collect();
    let speedup = median(&ratios);
    let checks = seal_checks(engine, &text, settings.runs)?;
    let mut table = Table::new(&[
        "conversation tokens",
        "snapshot MB",
        "prefill → first token ms",
        "restore → first token ms",
        "save ms",
        "seal check ms",
        "speed-up",
    ]);
    table.row(vec![
        num(f64_of(r, "tokens")?),
        num(f64_of(r, "snapshot_bytes")? / 1e6),
        num(median(&reprefill)),
        num(median(&restored)),
        num(median(&saved)),
        num(median(&checks)),
        ratio(speedup),
    ]);
    let markdown = format!(
        "A conversation of about 1k tokens is saved with `session.save` (the blob crosses into the guest), then \
         `session.restore` in a new session and generating one token is timed against opening a session, \
         appending the conversation and generating one token. Medians of {} runs; per-run speed-ups {}. \
         The seal check is the part of a restore that authenticates the blob before llama.cpp reads it \
         (`Snapshot::decode`: keyed BLAKE3 over the whole blob, then the envelope's fields), timed in this \
         process on a blob of the same conversation; per run (ms) {}.\n\n{}",
        settings.runs,
        crate::single::list(&ratios),
        crate::single::list(&checks),
        table.markdown()
    );
    let target = Target::new(
        format!("{model}: first token after restore vs re-prefill of 1k tokens"),
        "≥ 50×",
        ratio(speedup),
        speedup >= 50.0,
    );
    Ok((markdown, vec![target]))
}

/// Milliseconds `Snapshot::decode` takes to check a saved session of
/// `text`, `runs` times: the cost the snapshot's seal adds to a restore.
fn seal_checks(engine: &Engine, text: &str, runs: usize) -> Result<Vec<f64>> {
    let session = engine.open_session(&SessionOptions::default(), &Quota::unlimited())?;
    session.append(text)?;
    let blob = session.save()?;
    drop(session);
    let identity = engine.identity()?;
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            Snapshot::decode(&blob, engine.snapshot_key(), &identity).map_err(|e| anyhow!("{e}"))?;
            Ok(start.elapsed().as_secs_f64() * 1e3)
        })
        .collect()
}
