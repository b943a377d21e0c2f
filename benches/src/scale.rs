//! The scale-out section: two `serve` hosts of one thread each behind
//! haproxy (`deploy/haproxy.cfg`, round-robin), the same conversations
//! through the balancer with the shared tier on (Redis, `deploy/redis.conf`)
//! and off, against one host of two threads, with two llama-server
//! processes of one thread each behind the same balancer as the anchor.
//! Every configuration is started afresh and measured in turn, each run.
//!
//! The client interleaves 16 conversations of 4 turns, shuffling their
//! order each round (as independent clients arrive): with a fixed order and
//! an even count, round-robin would pin every conversation to one host and
//! nothing would cross hosts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process::{healthy, port, spawn};
use crate::report::{Table, Target, median, num, ratio, spread};

const CONVERSATIONS: u32 = 16;
const ROUNDS: u32 = 4;
const REPLY_TOKENS: u32 = 32;
/// The shuffle's seed: the same interleaving in every configuration.
const SEED: u32 = 7;

#[derive(Clone, Copy, PartialEq)]
enum Config {
    /// Two hosts sharing through Redis.
    Shared,
    /// Two hosts, each with its own cache only.
    Apart,
    /// One host with both threads.
    One,
    /// Two llama-server processes behind the balancer.
    LlamaServers,
}

impl Config {
    fn label(self) -> &'static str {
        match self {
            Config::Shared => "(a) 2 hosts × 1 thread, shared tier on",
            Config::Apart => "(b) 2 hosts × 1 thread, shared tier off",
            Config::One => "(c) 1 host × 2 threads",
            Config::LlamaServers => "anchor: 2 llama-server × 1 thread (-np 4)",
        }
    }
}

/// What one configuration's run measured.
struct Figures {
    ttft_ms: f64,
    /// Σ prompt − cached over the requests.
    evaluated: f64,
    /// Continued from the shared tier (its hits, from the hosts' /metrics).
    shared_hits: f64,
}

pub fn run(
    workspace: &Path,
    llama_server: &Path,
    model: &str,
    gguf: &Path,
    flash: bool,
    runs: usize,
) -> Result<(String, Vec<Target>)> {
    let configs = [Config::Shared, Config::Apart, Config::One, Config::LlamaServers];
    let mut seen: Vec<Vec<Figures>> = configs.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (i, &config) in configs.iter().enumerate() {
            eprintln!("  scale-out {model}: {}, run {}/{runs}", config.label(), run + 1);
            seen[i].push(measure(workspace, llama_server, model, gguf, flash, config)?);
        }
    }
    let med = |i: usize, f: &dyn Fn(&Figures) -> f64| median(&seen[i].iter().map(f).collect::<Vec<_>>());
    let per_run =
        |a: usize, b: usize| -> Vec<f64> { seen[a].iter().zip(&seen[b]).map(|(x, y)| x.ttft_ms / y.ttft_ms).collect() };
    let spread = |r: &[f64]| spread(r, ratio);
    let mut table =
        Table::new(&["configuration", "Σ time to first token (ms)", "tokens evaluated", "shared-tier hits", "vs (b)"]);
    for (i, config) in configs.iter().enumerate() {
        let hits = if matches!(config, Config::Shared | Config::Apart) {
            num(med(i, &|f| f.shared_hits))
        } else {
            "–".into()
        };
        table.row(vec![
            config.label().into(),
            num(med(i, &|f| f.ttft_ms)),
            num(med(i, &|f| f.evaluated)),
            hits,
            spread(&per_run(i, 1)),
        ]);
    }
    let a_vs_b = per_run(0, 1);
    let goal = median(&a_vs_b);
    let markdown = format!(
        "Model {model}, {CONVERSATIONS} conversations × {ROUNDS} rounds, greedy replies of up to {REPLY_TOKENS} tokens, \
         their order shuffled each round (seed {SEED}), through haproxy round-robin (`deploy/haproxy.cfg`) where \
         there are two servers; medians of {runs} runs, each configuration started afresh and measured in turn. \
         Hosts: `serve --threads 1 --ctx-size 2048 --flash-attn {fa}` with the WASI 0.3 server, one snapshot key; \
         (a) adds `--shared-cache` to a Redis run as `deploy/redis.conf`. (c): one host, `--threads 2`, no \
         balancer. Anchor: llama-server `-t 1 -tb 1 -c 8192 -np 4 -fa {fa} --jinja` twice, behind the same \
         haproxy (no sharing; its own llama.cpp build). \"vs (b)\": per run, median (range).\n\n{}",
        table.markdown(),
        fa = if flash { "on" } else { "off" },
    );
    let targets = vec![
        Target::new(
            format!(
                "{model}: 2 hosts, shared tier on vs off, {CONVERSATIONS}×{ROUNDS} round-robin Σ time to first token"
            ),
            "≤ 0.6×",
            spread(&a_vs_b),
            goal <= 0.6,
        )
        .why_if_missed(format!(
            "With the tier on the requests evaluated {} tokens against {} with it off, and {} turns were continued \
             from it; what is left of each turn's time is the new tokens' prefill, the restore and the request.",
            num(med(0, &|f| f.evaluated)),
            num(med(1, &|f| f.evaluated)),
            num(med(0, &|f| f.shared_hits))
        )),
    ];
    Ok((markdown, targets))
}

fn measure(
    workspace: &Path,
    llama_server: &Path,
    model: &str,
    gguf: &Path,
    flash: bool,
    config: Config,
) -> Result<Figures> {
    let fa = if flash { "on" } else { "off" };
    let dir = workspace.join("target/scale-out");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("snapshot.key");
    if !key.exists() {
        let mut secret = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
        std::fs::write(&key, secret)?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    let mut procs = Vec::new();
    let redis_port = port()?;
    if config == Config::Shared {
        let mut c = Command::new("redis-server");
        c.arg(workspace.join("deploy/redis.conf")).args(["--port", &redis_port.to_string()]);
        procs.push(spawn(c)?);
    }
    let ours = |threads: &str, port: u16| {
        let mut c = Command::new(workspace.join("target/release/wasi-nn-llm"));
        c.args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--threads", threads, "--ctx-size", "2048"])
            .args(["--flash-attn", fa, "--model"])
            .arg(format!("{model}={}", gguf.display()))
            .arg("--snapshot-key")
            .arg(&key);
        if config == Config::Shared {
            c.args(["--shared-cache", &format!("redis://127.0.0.1:{redis_port}/")]);
        }
        c.arg(workspace.join("target/wasm32-wasip2/release/openai_server_p3.wasm"));
        c
    };
    let theirs = |port: u16| {
        let mut c = Command::new(llama_server);
        c.arg("-m").arg(gguf).args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        c.args(["-t", "1", "-tb", "1", "-c", "8192", "-np", "4", "-fa", fa, "--alias", model, "--no-webui", "--jinja"]);
        c
    };
    let (base, hosts) = if config == Config::One {
        let p = port()?;
        procs.push(spawn(ours("2", p))?);
        (p, vec![p])
    } else {
        let hosts = [port()?, port()?];
        for &p in &hosts {
            procs.push(spawn(if config == Config::LlamaServers { theirs(p) } else { ours("1", p) })?);
        }
        for &p in &hosts {
            healthy(p)?;
        }
        let lb = port()?;
        let mut c = Command::new("haproxy");
        c.arg("-f").arg(workspace.join("deploy/haproxy.cfg"));
        c.env("BALANCER_ADDR", format!("127.0.0.1:{lb}"));
        c.env("HOST1_ADDR", format!("127.0.0.1:{}", hosts[0])).env("HOST2_ADDR", format!("127.0.0.1:{}", hosts[1]));
        procs.push(spawn(c)?);
        // Both servers up in the balancer's eyes (its checks run every second).
        std::thread::sleep(Duration::from_millis(2500));
        (lb, hosts.to_vec())
    };
    healthy(base)?;
    let args = [CONVERSATIONS, ROUNDS, REPLY_TOKENS, SEED].map(|n| n.to_string());
    let round = crate::serve::client(workspace, &format!("http://127.0.0.1:{base}/v1"), model, "round-robin", &args)?;
    let requests = round["requests"].as_array().context("requests")?;
    let float = |v: &serde_json::Value, k: &str| v[k].as_f64().with_context(|| format!("{k} missing in {v}"));
    let ttft_ms = requests.iter().map(|r| float(r, "ttft_ms")).sum::<Result<f64>>()?;
    let evaluated = requests.iter().map(|r| Ok(float(r, "prompt")? - float(r, "cached")?)).sum::<Result<f64>>()?;
    let shared_hits = if config == Config::LlamaServers {
        0.0
    } else {
        hosts.iter().map(|&p| shared_hits(p)).sum::<Result<f64>>()?
    };
    drop(procs);
    Ok(Figures { ttft_ms, evaluated, shared_hits })
}

/// The shared tier's hits a host's `/metrics` counts.
fn shared_hits(port: u16) -> Result<f64> {
    let out = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/metrics")]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("wasi_nn_llm_prefix_cache_hits_total{tier=\"shared\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}
