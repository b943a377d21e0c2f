//! Several hosts behind a balancer, sharing one prefix cache (issue 30):
//! Debian's redis-server (`deploy/redis.conf`), two `serve` hosts of one
//! thread each with `--shared-cache`, and haproxy (`deploy/haproxy.cfg`,
//! round-robin), all on loopback, all real processes, driven over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasi_nn_llm_tests::{MODEL, guest, host_cli, model_path, workspace_root};

/// A process stopped (SIGKILL) when dropped.
struct Process {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Process {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `command` with its stderr (and stdout) kept.
fn spawn(mut command: Command) -> Process {
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning");
    let log = Arc::new(Mutex::new(String::new()));
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    Process { child, log }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, process: &Process, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn redis(port: u16) -> Process {
    let mut command = Command::new("redis-server");
    command.arg(workspace_root().join("deploy/redis.conf")).args(["--port", &port.to_string()]);
    let redis = spawn(command);
    wait_for("redis-server", &redis, || {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = s.write_all(b"PING\r\n");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    });
    redis
}

/// A host of one thread serving `component`, sharing through redis at `redis_port`.
fn host(port: u16, redis_port: u16, key: &Path, component: &Path) -> Process {
    let mut command = Command::new(host_cli());
    command
        .env("WASI_NN_LLM_LOG", "wasi_nn_llm_host=debug")
        .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--threads", "1", "--ctx-size", "2048"])
        .arg("--model")
        .arg(format!("{MODEL}={}", model_path(MODEL).display()))
        .arg("--snapshot-key")
        .arg(key)
        .args(["--shared-cache", &format!("redis://127.0.0.1:{redis_port}/")])
        .arg(component);
    let host = spawn(command);
    wait_for("a host", &host, || host.log().contains(" on http://"));
    host
}

fn balancer(port: u16, hosts: [u16; 2]) -> Process {
    let mut command = Command::new("haproxy");
    command
        .arg("-f")
        .arg(workspace_root().join("deploy/haproxy.cfg"))
        .env("BALANCER_ADDR", format!("127.0.0.1:{port}"))
        .env("HOST1_ADDR", format!("127.0.0.1:{}", hosts[0]))
        .env("HOST2_ADDR", format!("127.0.0.1:{}", hosts[1]));
    let haproxy = spawn(command);
    // Up once both hosts pass their health checks.
    wait_for("haproxy", &haproxy, || haproxy.log().matches("is UP").count() >= 2 || health(port) && health(port));
    haproxy
}

fn health(port: u16) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", &format!("http://127.0.0.1:{port}/health")])
        .status()
        .is_ok_and(|s| s.success())
}

/// One chat turn (greedy, 32 tokens) to `port`: who answered (the
/// balancer's `X-Served-By`), the usage, the reply.
fn turn(port: u16, messages: &[Value]) -> (String, Value, String) {
    let body = json!({ "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 32 }).to_string();
    let mut curl = Command::new("curl")
        .args(["-s", "-i", "-H", "content-type: application/json", "--data-binary", "@-"])
        .arg(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    curl.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = String::from_utf8(curl.wait_with_output().unwrap().stdout).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response: {out:?}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{out}");
    let served = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-served-by: ").map(str::to_owned))
        .unwrap_or_default();
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let reply = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
    (served, answer["usage"].clone(), reply)
}

fn user(topic: &str, t: usize) -> Value {
    json!({ "role": "user", "content": format!("Tell me one more fact about {topic}, in two sentences (turn {}).", t + 1) })
}

fn prompt(usage: &Value) -> u64 {
    usage["prompt_tokens"].as_u64().unwrap()
}

fn cached(usage: &Value) -> u64 {
    usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

/// A host's `/metrics`, parsed by the Prometheus project's own parser.
fn metrics(port: u16) -> Value {
    let text = Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}/metrics")]).output().unwrap().stdout;
    let mut python = Command::new(workspace_root().join("target/py/bin/python"))
        .arg(workspace_root().join("tests/cluster/metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python (make test's bootstrap installs prometheus_client into target/py)");
    python.stdin.take().unwrap().write_all(&text).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success(), "the exposition did not parse:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The sum of a metric's samples whose labels include `labels`.
fn sample(metrics: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics[name]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| labels.iter().all(|(k, v)| s[0][k] == *v))
        .map(|s| s[1].as_f64().unwrap())
        .sum()
}

/// The same component with a custom section appended: the same code under
/// another digest, so another tenant's namespace.
fn other_tenant(dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(guest("openai_server_p3")).unwrap();
    let name = b"another-tenant";
    bytes.extend_from_slice(&[0, (1 + name.len() + 1) as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.push(1);
    let path = dir.join("other_tenant.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn hosts_behind_a_balancer_continue_each_others_conversations() {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The cluster's snapshot key, private to its owner as the host asks.
    let key = dir.join("snapshot.key");
    let secret = blake3::hash(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes());
    std::fs::write(&key, secret.as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let redis_port = free_port();
    let mut store = Some(redis(redis_port));
    let ports = [free_port(), free_port()];
    let component = guest("openai_server_p3");
    let mut hosts = ports.map(|p| host(p, redis_port, &key, &component));
    let lb = free_port();
    let _balancer = balancer(lb, ports);
    let logs = || hosts.iter().map(Process::log).collect::<Vec<_>>().join("\n---\n");

    // A 10-turn conversation through the balancer: it alternates hosts, and
    // from turn 2 on each turn finds the whole earlier prompt cached, on the
    // host that did not serve it.
    let mut messages = Vec::new();
    let mut last: Option<(String, u64)> = None;
    for t in 0..10 {
        messages.push(user("bees", t));
        let (served, usage, reply) = turn(lb, &messages);
        if let Some((before, previous)) = &last {
            assert_ne!(&served, before, "turn {} went to the host of the turn before", t + 1);
            assert!(
                cached(&usage) >= *previous,
                "turn {}: cached {} of the previous prompt's {previous}: {usage}\n{}",
                t + 1,
                cached(&usage),
                logs()
            );
            // ...and says the other host's conversation came from the shared tier.
            assert_eq!(usage["prompt_tokens_details"]["cached_from"], "shared", "turn {}: {usage}", t + 1);
        }
        last = Some((served, prompt(&usage)));
        messages.push(json!({ "role": "assistant", "content": reply }));
    }

    // Another tenant's component, on the same store and key, finds nothing of it.
    let other = host(free_port(), redis_port, &key, &other_tenant(&dir));
    let other_port =
        other.log().split(" on http://127.0.0.1:").nth(1).and_then(|r| r[..r.find('/')?].parse().ok()).unwrap();
    messages.push(user("bees", 10));
    let (_, usage, _) = turn(other_port, &messages);
    assert_eq!(cached(&usage), 0, "another tenant's component was given this tenant's conversation: {usage}");
    drop(other);
    messages.pop();

    // The store lost at turn 5 and back at turn 7: every turn is answered;
    // once it is back, sharing resumes.
    let mut messages = Vec::new();
    let mut last: Option<u64> = None;
    for t in 0..10 {
        if t == 4 {
            store = None;
        }
        if t == 6 {
            store = Some(redis(redis_port));
            // Past the hosts' one-second pause after a failed call.
            std::thread::sleep(Duration::from_millis(1100));
        }
        messages.push(user("owls", t));
        let (_, usage, reply) = turn(lb, &messages);
        if let Some(previous) = last
            && t >= 7
        {
            assert!(cached(&usage) >= previous, "turn {}: sharing did not resume: {usage}\n{}", t + 1, logs());
        }
        last = Some(prompt(&usage));
        messages.push(json!({ "role": "assistant", "content": reply }));
    }
    for (i, host) in hosts.iter().enumerate() {
        let log = host.log();
        assert_eq!(log.matches("/ failed (").count(), 1, "host {i} warns once per outage:\n{log}");
        assert!(log.contains("reachable again"), "host {i} never saw the store come back:\n{log}");
    }

    // An entry damaged in the store is refused by its tag, counted, and the
    // request goes on without it.
    let keys = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "--scan", "--pattern", "wnl1:*:e:*"])
        .output()
        .unwrap();
    for entry in String::from_utf8(keys.stdout).unwrap().lines() {
        Command::new("redis-cli").args(["-p", &redis_port.to_string(), "SET", entry, "forged"]).output().unwrap();
    }
    messages.push(user("owls", 10));
    let before: f64 = ports.iter().map(|&p| sample(&metrics(p), "wasi_nn_llm_shared_cache_refused_total", &[])).sum();
    turn(lb, &messages);
    turn(lb, &messages);
    let seen: Vec<Value> = ports.iter().map(|&p| metrics(p)).collect();
    let total = |name: &str, labels: &[(&str, &str)]| seen.iter().map(|m| sample(m, name, labels)).sum::<f64>();
    assert!(total("wasi_nn_llm_shared_cache_refused_total", &[]) > before, "no forged entry was refused");

    // /metrics parses, and its counters say what happened: 22 chats through
    // the balancer, shared hits on host switches, writes, the outage.
    assert_eq!(total("wasi_nn_llm_http_requests_total", &[("route", "/v1/chat/completions"), ("status", "200")]), 22.0);
    assert!(total("wasi_nn_llm_prefix_cache_hits_total", &[("tier", "shared")]) >= 12.0);
    assert!(total("wasi_nn_llm_prefix_cache_tokens_total", &[("tier", "shared")]) > 1000.0);
    assert!(total("wasi_nn_llm_shared_cache_writes_total", &[]) >= 20.0);
    for m in &seen {
        assert!(sample(m, "wasi_nn_llm_shared_cache_errors_total", &[]) >= 1.0, "each host saw the outage: {m}");
        assert!(sample(m, "wasi_nn_llm_generated_tokens_total", &[]) > 0.0);
        assert!(sample(m, "wasi_nn_llm_time_to_first_token_seconds_count", &[]) >= 10.0);
    }

    // A host killed mid-stream loses only that stream: the balancer sends
    // the turn, asked again, to the other host, which continues the
    // conversation from the shared tier.
    let mut messages = Vec::new();
    let mut previous = 0;
    for t in 0..2 {
        messages.push(user("comets", t));
        let (_, usage, reply) = turn(lb, &messages);
        previous = prompt(&usage);
        messages.push(json!({ "role": "assistant", "content": reply }));
    }
    messages.push(user("comets", 2));
    let body = json!({ "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 400, "stream": true })
        .to_string();
    let mut socket = TcpStream::connect(("127.0.0.1", lb)).unwrap();
    write!(socket, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(socket);
    let (mut served, mut line) = (String::new(), String::new());
    while reader.read_line(&mut line).unwrap() > 0 && !line.contains("\"content\":\"") {
        if let Some(name) = line.to_ascii_lowercase().strip_prefix("x-served-by: ") {
            served = name.trim().to_owned();
        }
        line.clear();
    }
    let victim = if served == "host1" { 0 } else { 1 };
    hosts[victim].child.kill().unwrap();
    let _ = hosts[victim].child.wait();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    assert!(!rest.contains("[DONE]"), "the stream of a killed host ran to its end");
    let (served_again, usage, _) = turn(lb, &messages);
    assert_ne!(served_again, served, "the balancer sent the turn to the dead host");
    assert!(cached(&usage) >= previous, "the surviving host restored nothing: {usage}");
    drop(store);
    std::fs::remove_dir_all(&dir).ok();
}
