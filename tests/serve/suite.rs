// The serve suite, shared by tests/serve.rs (the WASI 0.2 server) and
// tests/serve_p3.rs (the WASI 0.3 server): each names its `SERVER` and
// includes this file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasi_nn_llm_tests::{MODEL, guest, host, host_cli, llama_cpp_embedding, model_path, workspace_root};

/// A server process; stopped with SIGTERM when dropped, and in any case
/// when this test process ends (see [`WATCHDOG`]).
struct Server {
    /// The watchdog shell the server runs under.
    watchdog: Child,
    /// Its end of the pipe the watchdog waits on.
    lifeline: Option<ChildStdin>,
    /// The server's own process id.
    pid: u32,
    addr: String,
    log: Arc<Mutex<String>>,
}

/// The server runs under this shell, which prints the server's pid, then
/// waits for its stdin (a pipe from this test process) to close and stops
/// the server with SIGTERM; it exits with the server's status. The pipe
/// closes when the test drops the server, and also when this process ends
/// any other way (a panic in a static's initialiser, Ctrl-C, a kill): the
/// shared server lives in a static, which is never dropped, and used to
/// outlive every `cargo test` (issue 34).
const WATCHDOG: &str = r#""$@" </dev/null >/dev/null & server=$!
echo "$server"
read _ignored
kill -TERM "$server" 2>/dev/null
wait "$server""#;

impl Server {
    /// Start serving SmolLM2 (as `smollm2`) with `extra` flags; returns
    /// once the server listens.
    fn start(extra: &[&str], log_filter: Option<&str>) -> Server {
        let model = format!("{MODEL}={}", model_path(MODEL).display());
        let mut command = Command::new("sh");
        command
            .args(["-c", WATCHDOG, "watchdog"])
            .arg(host_cli())
            .args(["serve", "--addr", "127.0.0.1:0", "--threads", "2", "--ctx-size", "2048", "--model", &model])
            .args(extra)
            .arg(guest(SERVER))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(filter) = log_filter {
            command.env("WASI_NN_LLM_LOG", filter);
        }
        let mut watchdog = command.spawn().expect("starting the server");
        let lifeline = watchdog.stdin.take();
        let mut pid = String::new();
        BufReader::new(watchdog.stdout.take().expect("piped stdout")).read_line(&mut pid).expect("the server's pid");
        let pid = pid.trim().parse().expect("the watchdog prints the server's pid");
        let mut stderr = BufReader::new(watchdog.stderr.take().expect("piped stderr"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() {
            line.clear();
            let n = stderr.read_line(&mut line).expect("reading the server's stderr");
            assert!(n > 0, "the server exited before listening; it said:\n{}", log.lock().unwrap());
            log.lock().unwrap().push_str(&line);
            if let Some(rest) = line.split(" on http://").nth(1) {
                addr = Some(rest.split('/').next().expect("an address").to_owned());
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Server { watchdog, lifeline, pid, addr: addr.expect("an address"), log }
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// What the server printed so far.
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `METHOD path` with a JSON (or raw) body through curl: status and body.
    fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let url = format!("http://{}{path}", self.addr);
        let mut command = Command::new("curl");
        command.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H", "content-type: application/json"]);
        if body.is_some() {
            command.args(["--data-binary", "@-"]);
        }
        let mut child = command.arg(&url).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("curl");
        child.stdin.take().expect("stdin").write_all(body.unwrap_or("").as_bytes()).expect("writing to curl");
        let out = child.wait_with_output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("curl printed the status");
        (status.trim().parse().expect("a status"), body.to_owned())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.request("POST", path, Some(&body.to_string()));
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
    }

    /// A short greedy chat that must succeed: what follows every error.
    fn assert_healthy(&self) {
        let (status, reply) = self.post("/v1/chat/completions", &chat_body("Say hello.", 4));
        assert_eq!(status, 200, "a normal request after an error: {reply}");
        assert_eq!(reply["choices"][0]["message"]["role"], "assistant", "{reply}");
    }

    /// Run `tests/serve/client.py MODE ARGS` against this server.
    fn client(&self, mode: &str, args: &[&str]) -> Value {
        self.client_with_key(None, mode, args)
    }

    /// As [`client`](Self::client), the client given `key` as its API key.
    fn client_with_key(&self, key: Option<&str>, mode: &str, args: &[&str]) -> Value {
        let python = workspace_root().join("target/py/bin/python");
        assert!(python.is_file(), "{} is missing: `make test` installs the openai client", python.display());
        let script: PathBuf = workspace_root().join("tests/serve/client.py");
        let mut command = Command::new(python);
        if let Some(key) = key {
            command.env("OPENAI_API_KEY", key);
        }
        let out = command.arg(script).arg(self.base()).arg(mode).args(args).output().expect("python");
        assert!(out.status.success(), "client.py {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("client.py prints JSON")
    }

    /// Run `tests/serve/client.mjs` (the OpenAI Node SDK) against this
    /// server: its tool loop, `plain` or `stream`.
    fn node_client(&self, mode: &str) -> Value {
        let package = workspace_root().join("target/node");
        assert!(package.join("node_modules/openai").is_dir(), "{} is missing: `make test` fetches it", package.display());
        let out = Command::new("node")
            .arg(workspace_root().join("tests/serve/client.mjs"))
            .arg(&package)
            .arg(self.base())
            .args([MODEL, mode])
            .output()
            .expect("node");
        assert!(out.status.success(), "client.mjs {mode} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("client.mjs prints JSON")
    }
}

impl Server {
    /// Wait for the server to exit (after a signal): its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        // Closing the lifeline makes the watchdog stop the server (already
        // stopping here) and exit with its status.
        drop(self.lifeline.take());
        self.watchdog.wait().expect("waiting for the server")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.wait();
    }
}

fn chat_body(user: &str, max_tokens: u32) -> Value {
    json!({ "model": MODEL, "messages": [{ "role": "user", "content": user }], "temperature": 0, "max_tokens": max_tokens })
}

/// The server most tests share (default settings).
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(&[], Some("wasi_nn_llm_host=debug")))
}

#[test]
fn the_openai_client_streams_what_the_extensions_chat_says() {
    let question = "What is the capital of France? Answer in one sentence.";
    let streamed = shared().client("stream-chat", &[MODEL, question, "48"]);
    // The same greedy request through the SDK's Chat, in a host of its own.
    let model = format!("{MODEL}={}", model_path(MODEL).display());
    let out = Command::new(host_cli())
        .args(["run", "--threads", "2", "--ctx-size", "2048", "--model", &model])
        .arg(guest("probe"))
        .args(["chat", MODEL, "48", question])
        .output()
        .expect("running the probe");
    assert!(out.status.success(), "probe: {}", String::from_utf8_lossy(&out.stderr));
    let reference: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert!(!streamed["text"].as_str().unwrap().is_empty(), "{streamed}");
    assert_eq!(streamed["text"], reference["text"], "streamed {streamed} vs Chat {reference}");
    assert!(streamed["chunks"].as_u64().unwrap() > 3, "streamed in pieces: {streamed}");
    let usage = &streamed["usage"];
    assert_eq!(usage["completion_tokens"], reference["finish"]["generated"], "{usage} vs {reference}");
    assert_eq!(usage["prompt_tokens"], reference["finish"]["prompt"], "{usage} vs {reference}");
}

/// One run of the two-step tool loop (client.py's and client.mjs's): the
/// model was made to call (`tool_choice: required`), and called
/// `get_weather` for Paris with arguments that parse and fit the schema;
/// then, given the result, it answered in text. Returns the call's
/// arguments, parsed.
fn assert_tool_loop(client: &str, seen: &Value) -> Value {
    let steps = seen["steps"].as_array().unwrap_or_else(|| panic!("{client}: {seen}"));
    assert_eq!(steps.len(), 2, "{client}: {seen}");
    let (call, answer) = (&steps[0], &steps[1]);
    assert_eq!(call["finish"], "tool_calls", "{client}: {seen}");
    assert!(call["content"].is_null() || call["content"] == "", "{client}: no text beside the call: {seen}");
    let calls = call["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{client}: {seen}");
    assert_eq!(calls[0]["name"], "get_weather", "{client}: {seen}");
    assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{client}: {seen}");
    let arguments: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).expect("arguments are JSON");
    // The schema: `city` a string (required), `unit` one of its enum.
    assert!(arguments["city"].is_string(), "{client}: {arguments}");
    assert!(arguments.get("unit").is_none_or(|u| u == "celsius" || u == "fahrenheit"), "{client}: {arguments}");
    assert!(arguments.as_object().unwrap().keys().all(|k| k == "city" || k == "unit"), "{client}: {arguments}");
    assert_eq!(answer["finish"], "stop", "{client}: {seen}");
    assert_eq!(answer["calls"], json!([]), "{client}: {seen}");
    assert!(answer["content"].as_str().is_some_and(|c| !c.trim().is_empty()), "{client}: {seen}");
    arguments
}

#[test]
fn the_openai_clients_run_a_tool_loop_streamed_and_not() {
    let server = shared();
    let python = assert_tool_loop("python", &server.client("tool-loop", &[MODEL, "plain"]));
    let python_streamed = assert_tool_loop("python streamed", &server.client("tool-loop", &[MODEL, "stream"]));
    let node = assert_tool_loop("node", &server.node_client("plain"));
    let node_streamed = assert_tool_loop("node streamed", &server.node_client("stream"));
    // Greedy and held to its grammar, the call is the same every time.
    assert_eq!(python["city"], "Paris", "{python}");
    for other in [&python_streamed, &node, &node_streamed] {
        assert_eq!(&python, other);
    }
}

/// A streamed chat's SSE events, parsed (`[DONE]` left out).
fn sse_events(server: &Server, body: &Value) -> Vec<Value> {
    let (status, text) = server.request("POST", "/v1/chat/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("a JSON event"))
        .collect()
}

#[test]
fn a_template_with_a_native_tool_format_gets_its_calls_in_that_format() {
    // Qwen 2.5's template (tests/templates/corpus) writes and reads calls
    // as Hermes' <tool_call> blocks: the tools are rendered by the template,
    // the call is held by a grammar wrapped in its markers, and read back.
    let template = workspace_root().join("tests/templates/corpus/Qwen-Qwen2.5-7B-Instruct.jinja");
    let server = Server::start(&["--chat-template", &format!("{MODEL}={}", template.display())], None);
    let plain = assert_tool_loop("python, Qwen 2.5's template", &server.client("tool-loop", &[MODEL, "plain"]));
    let streamed = assert_tool_loop("python streamed, Qwen 2.5's template", &server.client("tool-loop", &[MODEL, "stream"]));
    assert_eq!(plain, streamed);
    // The template rendered the tools (its <tools> block) into the prompt.
    let body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 1,
        "tools": [{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object" } } }] });
    let (_, with_tools) = server.post("/v1/chat/completions", &body);
    let (_, without) = server.post("/v1/chat/completions", &chat_body("hi", 1));
    let prompt = |r: &Value| r["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt(&with_tools) > prompt(&without) + 20, "{with_tools} vs {without}");
}

#[test]
fn reasoning_comes_apart_from_the_answer_and_keeps_to_its_budget() {
    // SmolLM2's own template with its generation prompt opening a <think>
    // block (tests/serve/think.jinja): a reasoning model's template for a
    // catalog that has none.
    let template = workspace_root().join("tests/serve/think.jinja");
    let server = Server::start(&["--chat-template", &format!("{MODEL}={}", template.display())], None);
    let tokens = |text: &str| host().engine_of(MODEL).tokenize(text, false, true).unwrap().len() as u64;
    let ask = |extra: Value| {
        let mut body = chat_body("Is Paris the capital of France?", 48);
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };

    // A budget of 8 tokens: the host closes the block for the model, which answers.
    let (status, reply) = server.post("/v1/chat/completions", &ask(json!({ "reasoning_budget": 8 })));
    assert_eq!(status, 200, "{reply}");
    let message = &reply["choices"][0]["message"];
    let (reasoning, content) = (message["reasoning_content"].as_str().unwrap(), message["content"].as_str().unwrap());
    assert!(!reasoning.is_empty() && !content.trim().is_empty(), "{reply}");
    assert!(tokens(reasoning) <= 8, "{} tokens of reasoning: {reply}", tokens(reasoning));
    let used = reply["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&used), "{reply}");
    assert!(!content.contains("<think>") && !content.contains("</think>"), "{reply}");

    // Streamed: reasoning deltas, then content deltas, never mixed.
    let events = sse_events(&server, &ask(json!({ "reasoning_budget": 8, "stream": true })));
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| {
            let delta = &e["choices"][0]["delta"];
            if delta["reasoning_content"].is_string() {
                Some("reasoning")
            } else {
                delta["content"].as_str().filter(|c| !c.is_empty()).map(|_| "content")
            }
        })
        .collect();
    let first_content = kinds.iter().position(|k| *k == "content").expect("content was streamed");
    assert!(first_content > 0 && kinds[first_content..].iter().all(|k| *k == "content"), "{kinds:?}");
    let streamed: String = events.iter().filter_map(|e| e["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
    assert!(tokens(&streamed) <= 8, "{streamed:?}");

    // No budget: the 135M model never closes the block by itself.
    let (_, reply) = server.post("/v1/chat/completions", &ask(json!({})));
    let message = &reply["choices"][0]["message"];
    assert!(message["reasoning_content"].as_str().is_some_and(|r| !r.is_empty()), "{reply}");
    assert_eq!(message["content"], "", "{reply}");

    // The template's own switch, through chat_template_kwargs: no block.
    let (_, reply) = server.post("/v1/chat/completions", &ask(json!({ "chat_template_kwargs": { "enable_thinking": false } })));
    let message = &reply["choices"][0]["message"];
    assert!(message.get("reasoning_content").is_none(), "{reply}");
    assert!(message["content"].as_str().is_some_and(|c| !c.is_empty()), "{reply}");

    // A block the reply opens itself (a grammar makes the model write one).
    let grammar = r#"root ::= "<think>" [a-z ]{1,40} "</think>" [A-Z] [a-z ,]{1,40} ".""#;
    let (_, reply) = server.post(
        "/v1/chat/completions",
        &ask(json!({ "chat_template_kwargs": { "enable_thinking": false }, "grammar": grammar, "max_tokens": 64 })),
    );
    let message = &reply["choices"][0]["message"];
    let reasoning = message["reasoning_content"].as_str().unwrap_or_else(|| panic!("{reply}"));
    let content = message["content"].as_str().unwrap();
    assert!(!reasoning.is_empty() && reasoning.chars().all(|c| c.is_ascii_lowercase() || c == ' '), "{reply}");
    assert!(content.starts_with(|c: char| c.is_ascii_uppercase()) && content.ends_with('.'), "{reply}");
}

#[test]
fn the_responses_api_answers_text_messages_streams_and_continues_through_the_cache() {
    let seen = shared().client("responses", &[MODEL]);
    let text = &seen["text"];
    assert_eq!(text["status"], "completed", "{seen}");
    assert!(text["output_text"].as_str().unwrap().contains("Paris"), "{seen}");
    assert!(text["id"].as_str().unwrap().starts_with("resp_"), "{seen}");
    // Each continued response prefills only its new input: everything the
    // one before held (its input and answer) came from the prefix cache.
    for (before, now) in [("text", "messages"), ("messages", "streamed")] {
        let (b, n) = (&seen[before]["usage"], &seen[now]["usage"]);
        let held = b["input_tokens"].as_u64().unwrap() + b["output_tokens"].as_u64().unwrap();
        let cached = n["input_tokens_details"]["cached_tokens"].as_u64().unwrap();
        assert!(cached + 1 >= held, "{now} cached {cached} of the {held} tokens {before} held: {seen}");
        assert!(n["input_tokens"].as_u64().unwrap() - cached <= 40, "{now} prefilled more than its input: {seen}");
    }
    assert!(seen["messages"]["output_text"].as_str().unwrap().contains("Rome"), "{seen}");
    let streamed = &seen["streamed"];
    let events = streamed["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    for kind in ["response.output_item.added", "response.content_part.added", "response.output_text.done", "response.output_item.done"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
    let sequence: Vec<u64> = events.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert!(sequence.windows(2).all(|w| w[1] == w[0] + 1), "{sequence:?}");
    let deltas: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert!(kinds.iter().filter(|k| **k == "response.output_text.delta").count() > 2, "streamed in pieces: {kinds:?}");
    assert_eq!(streamed["output_text"].as_str().unwrap(), deltas, "{streamed}");
    assert!(!deltas.trim().is_empty(), "{streamed}");
    let calls = seen["call"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{seen}");
    assert_eq!(calls[0]["name"], "get_weather", "{seen}");
    let arguments: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({ "city": "Paris" }), "{seen}");
    let answer = &seen["answer"];
    assert_eq!((&answer["status"], &answer["types"]), (&json!("completed"), &json!(["message"])), "{seen}");
    assert!(!answer["output_text"].as_str().unwrap().trim().is_empty(), "{seen}");
}

#[test]
fn a_response_lives_only_as_long_as_the_cache_keeps_its_conversation() {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-responses-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[limits]\nprefix-cache-entries = 1\n").unwrap();
    let server = Server::start(&["--policy", policy.to_str().unwrap()], None);
    let ask = |input: &str, previous: Option<&str>| {
        let body = json!({ "model": MODEL, "input": input, "temperature": 0, "max_output_tokens": 8,
                           "previous_response_id": previous });
        server.post("/v1/responses", &body)
    };
    let (status, first) = ask("Name a colour.", None);
    assert_eq!(status, 200, "{first}");
    let id = first["id"].as_str().unwrap();
    // While its conversation is cached, it continues.
    let (status, next) = ask("Another one.", Some(id));
    assert_eq!(status, 200, "{next}");
    // A conversation of its own takes the cache's one entry...
    let (status, _) = ask("Count to three.", None);
    assert_eq!(status, 200);
    // ...and the first response is gone with its conversation.
    let (status, gone) = ask("And one more.", Some(id));
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["param"], "previous_response_id", "{gone}");
    server.assert_healthy();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn curl_reads_the_sse_stream() {
    let server = shared();
    let mut body = chat_body("Count from one to five.", 24);
    body["stream"] = json!(true);
    let out = Command::new("curl")
        .args(["-sN", "-H", "content-type: application/json", "-d", &body.to_string()])
        .arg(format!("http://{}/v1/chat/completions", server.addr))
        .output()
        .expect("curl");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "every event is a data line: {text}");
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e["data: ".len()..]).expect("a JSON chunk"))
        .collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert!(content.contains('1') || content.to_lowercase().contains("one"), "{content:?}");
    let last = chunks.last().expect("chunks");
    assert!(matches!(last["choices"][0]["finish_reason"].as_str(), Some("stop" | "length")), "{last}");
}

/// The OpenAI server's generations run on the same engine as every other
/// front door's, so a reply that copies its prompt is decoded
/// speculatively: the engine says so in its log and its `/metrics`.
#[test]
fn a_reply_that_copies_its_prompt_is_decoded_speculatively() {
    let server = &Server::start(&["--speculation", "ngram"], Some("wasi_nn_llm_host=debug"));
    let paragraph = "The old lighthouse stood at the edge of the cliff. Every night its keeper climbed the spiral \
        stairs, lit the lamp, and watched the ships pass safely through the narrow channel below.";
    let accepted = || {
        let (status, text) = server.request("GET", "/metrics", None);
        assert_eq!(status, 200, "{text}");
        let line = text.lines().find(|l| l.starts_with("wasi_nn_llm_accepted_draft_tokens_total ")).expect("the counter");
        line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number")
    };
    let before = accepted();
    let body = chat_body(&format!("Copy the following text word for word:\n\n{paragraph}"), 64);
    let (status, reply) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["message"]["content"].as_str().expect("content");
    assert!(text.contains("climbed the spiral stairs, lit the lamp"), "the model copies: {text}");
    assert!(accepted() > before, "drafted tokens were accepted");
    assert!(server.log().contains("speculative decoding: drafted tokens checked and accepted"), "{}", server.log());
}

#[test]
fn a_conversation_through_the_api_prefills_only_each_new_turn() {
    let seen = shared().client("conversation", &[MODEL, "5"]);
    let turns = seen["turns"].as_array().expect("turns");
    assert_eq!(turns.len(), 5);
    for pair in turns.windows(2) {
        let (before, now) = (&pair[0], &pair[1]);
        let (prompt_before, prompt, cached) =
            (before["prompt"].as_u64().unwrap(), now["prompt"].as_u64().unwrap(), now["cached"].as_u64().unwrap());
        // The whole earlier prompt came from the prefix cache, though the
        // request ran in a fresh instance...
        assert!(
            cached >= prompt_before,
            "turn cached {cached} of the earlier prompt's {prompt_before}: {seen}\nserver:\n{}",
            shared().log()
        );
        // ...and what was evaluated is the earlier reply and the new turn.
        let new = prompt - cached;
        let bound = before["completion"].as_u64().unwrap() + 32;
        assert!(new <= bound, "evaluated {new} tokens, more than the last reply and a user turn ({bound}): {seen}");
    }
}

#[test]
fn eight_clients_of_ten_requests_each_get_every_answer() {
    let seen = shared().client("concurrent", &[MODEL, "8", "10"]);
    assert_eq!(seen["errors"], json!([]), "{seen}");
    assert_eq!(seen["replies"], 80, "{seen}");
}

#[test]
fn three_choices_come_from_one_prefill() {
    let server = Server::start(&[], Some("wasi_nn_llm_host=trace"));
    let seen = server.client("choices", &[MODEL, "3"]);
    assert_eq!(seen["indices"], json!([0, 1, 2]), "{seen}");
    let texts: Vec<&str> = seen["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(texts.iter().all(|t| !t.is_empty()), "{seen}");
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "sampled choices differ: {seen}");
    let log = server.log();
    assert_eq!(log.matches("session.open-cached").count(), 1, "one prompt session:\n{log}");
    assert_eq!(log.matches("session.fork").count(), 2, "two forks of it:\n{log}");
    assert_eq!(log.matches("session.append").count(), 0, "nothing else evaluated:\n{log}");
    assert!(seen["usage"]["completion_tokens"].as_u64().unwrap() >= 3, "{seen}");
}

const PARAPHRASES: [&str; 3] =
    ["The cat sat on the mat.", "A cat was sitting on the rug.", "Quarterly revenue grew by eight percent."];

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn embeddings_of_paraphrases_are_closer_and_equal_llama_cpp_driven_directly() {
    // Flash attention off on both sides, so both run the same kernels.
    let server = Server::start(&["--flash-attn", "off"], None);
    let seen = server.client("embed", &[MODEL, PARAPHRASES[0], PARAPHRASES[1], PARAPHRASES[2]]);
    let vectors: Vec<Vec<f64>> = seen["vectors"]
        .as_array()
        .expect("vectors")
        .iter()
        .map(|v| v.as_array().expect("a vector").iter().map(|x| x.as_f64().expect("a number")).collect())
        .collect();
    assert_eq!(vectors.len(), 3, "{seen}");
    let (same, other1, other2) =
        (cosine(&vectors[0], &vectors[1]), cosine(&vectors[0], &vectors[2]), cosine(&vectors[1], &vectors[2]));
    assert!(same > other1 && same > other2, "paraphrases {same:.4}, unrelated {other1:.4} / {other2:.4}");
    for v in &vectors {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length, not {norm}");
    }

    // The same vectors as llama.cpp's own pooling computes them.
    let backend = wasi_nn_llm_host::backend::llama_cpp::backend().expect("llama.cpp backend");
    let model = llama_cpp_2::model::LlamaModel::load_from_file(backend, model_path(MODEL), &Default::default())
        .expect("loading SmolLM2 directly");
    assert!(vectors.iter().all(|v| v.len() == model.n_embd() as usize), "the model's hidden size");
    let mut tokens = 0;
    for (text, ours) in PARAPHRASES.iter().zip(&vectors) {
        tokens += model.vocab().tokenize(text.as_bytes(), true, true).len();
        let direct = llama_cpp_embedding(&model, &model.vocab().tokenize(text.as_bytes(), true, true), false);
        let worst = ours.iter().zip(&direct).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{text:?}: largest difference from llama.cpp {worst:e}");
    }
    assert_eq!(seen["usage"]["prompt_tokens"], tokens, "{seen}");

    // JSON numbers (curl's default) carry the same floats as base64 (the client's).
    let body = json!({ "model": MODEL, "input": PARAPHRASES[0], "encoding_format": "float" }).to_string();
    let (status, text) = server.request("POST", "/v1/embeddings", Some(&body));
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let floats: Vec<f64> =
        answer["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(floats, vectors[0]);

    // Token ids in, the same vector out.
    let ids = model.vocab().tokenize(PARAPHRASES[0].as_bytes(), true, true);
    let ids: Vec<i32> = ids.iter().map(|t| t.0).collect();
    let body = json!({ "model": MODEL, "input": ids, "encoding_format": "float" }).to_string();
    let (status, text) = server.request("POST", "/v1/embeddings", Some(&body));
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["data"][0]["embedding"], json!(floats));
}

#[test]
fn every_error_answers_in_openais_shape_and_the_server_carries_on() {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    let gguf = model_path(MODEL);
    std::fs::write(
        &policy,
        format!(
            "[models.denied]\npath = {:?}\n\n[[grants]]\ncomponent = \"{SERVER}\"\nmodels = [\"{MODEL}\"]\n\n\
             [limits]\ngenerate-tokens = 64\n",
            gguf.display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start(&["--policy", policy.to_str().unwrap()], None);

    let long = "word ".repeat(3000);
    let cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        ("malformed JSON", Some("{\"model\": ".into()), 400, None),
        ("not an object", Some("[1, 2]".into()), 400, None),
        ("messages missing", Some(json!({ "model": MODEL }).to_string()), 400, None),
        ("temperature ill-typed", Some(json!({ "model": MODEL, "messages": [], "temperature": "hot" }).to_string()), 400, None),
        ("temperature out of range", Some(json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }], "temperature": 5 }).to_string()), 400, None),
        ("unknown role", Some(json!({ "model": MODEL, "messages": [{ "role": "wizard", "content": "hi" }] }).to_string()), 400, None),
        ("prompt longer than the context", Some(chat_body(&long, 8).to_string()), 400, Some("context_length_exceeded")),
        ("invalid schema", Some(json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }],
            "response_format": { "type": "json_schema", "json_schema": { "name": "x", "schema": { "type": "no-such-type" } } } }).to_string()), 400, Some("invalid_schema")),
        ("unknown model", Some(json!({ "model": "nope", "messages": [{ "role": "user", "content": "hi" }] }).to_string()), 404, Some("model_not_found")),
        ("model the policy denies", Some(json!({ "model": "denied", "messages": [{ "role": "user", "content": "hi" }] }).to_string()), 403, None),
        ("over the token quota", Some(chat_body("hi", 100).to_string()), 429, Some("rate_limit_exceeded")),
    ];
    let with_tools = |tools: Value, extra: Value| {
        let mut body = json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }], "tools": tools });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Some(body.to_string())
    };
    let function = |name: &str, parameters: Value| json!({ "type": "function", "function": { "name": name, "parameters": parameters } });
    let object = json!({ "type": "object", "properties": { "city": { "type": "string" } } });
    let call = json!({ "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function",
        "function": { "name": "f", "arguments": "{\"city\": \"Paris\"}" } }] });
    let tool_cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        ("tools: a bad JSON schema", with_tools(json!([function("f", json!({ "type": "objekt" }))]), json!({})), 400, None),
        ("tools: parameters not an object", with_tools(json!([function("f", json!("city"))]), json!({})), 400, None),
        ("tools: two functions of one name", with_tools(json!([function("f", object.clone()), function("f", object.clone())]), json!({})), 400, None),
        ("tools: a name OpenAI refuses", with_tools(json!([function("get weather!", object.clone())]), json!({})), 400, None),
        ("tools: not a function", with_tools(json!([{ "type": "retrieval" }]), json!({})), 400, None),
        ("tools: tool_choice names a missing function", with_tools(json!([function("f", object.clone())]),
            json!({ "tool_choice": { "type": "function", "function": { "name": "g" } } })), 400, None),
        ("tools: tool_choice unknown", with_tools(json!([function("f", object.clone())]), json!({ "tool_choice": "always" })), 400, None),
        ("tools: tool_choice without tools", Some(json!({ "model": MODEL, "messages": [{ "role": "user", "content": "hi" }],
            "tool_choice": "required" }).to_string()), 400, None),
        ("tools: a tool message answering an unknown id", with_tools(json!([function("f", object.clone())]),
            json!({ "messages": [{ "role": "user", "content": "hi" }, call.clone(),
                { "role": "tool", "tool_call_id": "call_2", "content": "18" }] })), 400, None),
        ("tools: a tool message with no id", with_tools(json!([function("f", object.clone())]),
            json!({ "messages": [{ "role": "user", "content": "hi" }, call.clone(), { "role": "tool", "content": "18" }] })), 400, None),
        ("tools: call arguments that are not JSON", with_tools(json!([function("f", object.clone())]),
            json!({ "messages": [{ "role": "user", "content": "hi" }, { "role": "assistant", "tool_calls": [{ "id": "c",
                "type": "function", "function": { "name": "f", "arguments": "{city: Paris" } }] }] })), 400, None),
        ("tools: with response_format", with_tools(json!([function("f", object.clone())]),
            json!({ "response_format": { "type": "json_object" } })), 400, None),
    ];
    let responses = |extra: Value| {
        let mut body = json!({ "model": MODEL, "input": "hi" });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Some(body.to_string())
    };
    let response_cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        ("responses: a field it does not serve", responses(json!({ "prompt_cache_key": "k" })), 400, None),
        ("responses: background", responses(json!({ "background": true })), 400, None),
        ("responses: an image input", responses(json!({ "input": [{ "role": "user", "content": [{ "type": "input_image", "image_url": "x" }] }] })), 400, None),
        ("responses: a web search tool", responses(json!({ "tools": [{ "type": "web_search" }] })), 400, None),
        ("responses: an output for no call", responses(json!({ "input": [{ "type": "function_call_output", "call_id": "c", "output": "1" }] })), 400, None),
        ("responses: an unknown previous response", responses(json!({ "previous_response_id": "resp_nope" })), 404, None),
        ("responses: input missing", Some(json!({ "model": MODEL }).to_string()), 400, None),
    ];
    let cases: Vec<_> = cases.into_iter().chain(tool_cases).collect();
    let cases = cases.into_iter().map(|c| ("/v1/chat/completions", c));
    let cases = cases.chain(response_cases.into_iter().map(|c| ("/v1/responses", c)));
    let embeddings = |input: Value, extra: Value| {
        let mut body = json!({ "model": MODEL, "input": input });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        Some(body.to_string())
    };
    let embedding_cases: Vec<(&str, Option<String>, u16, Option<&str>)> = vec![
        ("embeddings: input missing", Some(json!({ "model": MODEL }).to_string()), 400, None),
        ("embeddings: empty input", embeddings(json!([]), json!({})), 400, None),
        ("embeddings: an empty string", embeddings(json!(["a", ""]), json!({})), 400, None),
        ("embeddings: input ill-typed", embeddings(json!({ "text": "hi" }), json!({})), 400, None),
        (
            "embeddings: longer than the context",
            embeddings(json!(long), json!({})),
            400,
            Some("context_length_exceeded"),
        ),
        (
            "embeddings: a token id outside the vocabulary",
            embeddings(json!([1, 99_999_999]), json!({})),
            400,
            Some("invalid_token"),
        ),
        ("embeddings: unknown encoding", embeddings(json!("hi"), json!({ "encoding_format": "hex" })), 400, None),
        ("embeddings: dimensions it cannot give", embeddings(json!("hi"), json!({ "dimensions": 7 })), 400, None),
        (
            "embeddings: unknown model",
            Some(json!({ "model": "nope", "input": "hi" }).to_string()),
            404,
            Some("model_not_found"),
        ),
        (
            "embeddings: model the policy denies",
            Some(json!({ "model": "denied", "input": "hi" }).to_string()),
            403,
            None,
        ),
    ];
    let cases = cases.chain(embedding_cases.into_iter().map(|c| ("/v1/embeddings", c)));
    for (path, (case, body, status, code)) in cases {
        let (got, text) = server.request("POST", path, body.as_deref());
        let error: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{case}: not JSON ({e}): {text}"));
        assert_eq!(got, status, "{case}: {text}");
        let e = &error["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {text}");
        assert!(e["type"].is_string() && e.get("param").is_some() && e.get("code").is_some(), "{case}: {text}");
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{case}: {text}");
        }
        server.assert_healthy();
    }
    let (status, text) = server.request("GET", "/v1/nowhere", None);
    assert_eq!(status, 404, "{text}");
    server.assert_healthy();

    // The models the policy lets this component use, and no other.
    assert_eq!(server.client("models", &[]), json!({ "models": [MODEL] }));
    let (status, text) = server.request("GET", "/health", None);
    assert_eq!((status, text.as_str()), (200, "{\"status\":\"ok\"}"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_client_that_goes_away_cancels_its_generation() {
    // One sequence only: a generation still running would hold it, and the
    // next request would be refused.
    let server = Server::start(&["--max-sessions", "1"], Some("wasi_nn_llm_host=debug"));
    let mut body = chat_body("Tell me a very long story about a dragon.", 1500);
    body["stream"] = json!(true);
    let body = body.to_string();
    let mut socket = TcpStream::connect(&server.addr).expect("connecting");
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"content\":\"") || seen.len() < 1200 {
        let n = socket.read(&mut buf).expect("reading the stream");
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(socket);
    // The engine says so when the generation stops (both servers: the
    // WASI 0.2 guest returns and its instance goes; the WASI 0.3 guest's
    // request task drops its body and generation, the instance stays).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.log().contains("a generation was cancelled before its end") {
        assert!(Instant::now() < deadline, "the generation never stopped:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // It ended quietly: no panic, no trap.
    let log = server.log();
    assert!(!log.contains("panicked") && !log.contains("trapped"), "{log}");
    // Its sequence is free again at once.
    server.assert_healthy();
}

/// `GET /` is the chat page (its browser test is tests/serve/browser.rs):
/// HTML that loads only the page's own files, each served with a policy
/// that runs no inline or foreign script.
#[test]
fn the_chat_page_and_its_files_are_served_with_a_content_security_policy() {
    let server = shared();
    let url = format!("http://{}/", server.addr);
    let out = Command::new("curl").args(["-s", "-i", &url]).output().expect("curl");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html"), "{page}");
    assert!(lower.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{page}");
    let scripts: Vec<&str> = page.split("<script src=\"").skip(1).filter_map(|s| s.split('"').next()).collect();
    assert_eq!(scripts, ["/ui/vendor/marked.umd.js", "/ui/vendor/purify.min.js", "/ui/chat.js"], "{page}");
    let mut total = page.len();
    for file in scripts.iter().copied().chain(["/ui/chat.css"]) {
        let (status, body) = server.request("GET", file, None);
        assert_eq!(status, 200, "{file}");
        assert!(body.len() > 1000, "{file}: {} bytes", body.len());
        total += body.len();
    }
    // Small enough to embed in the component and load at once.
    assert!(total < 300 * 1024, "the page's files are {total} bytes in all");
    for missing in ["/ui/missing.js", "/index.html", "/ui"] {
        let (status, body) = server.request("GET", missing, None);
        assert_eq!(status, 404, "{missing}: {body}");
    }
}

#[test]
fn with_api_keys_only_a_client_naming_one_gets_in() {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-api-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "# the operator's clients\nsk-team-a-0123456789\nsk-team-b-9876543210\n").unwrap();
    let server = Server::start(&["--api-key-file", keys.to_str().unwrap()], Some("debug"));

    // No key: 401 in OpenAI's shape, before any guest runs.
    let (status, body) = server.request("GET", "/v1/models", None);
    assert_eq!(status, 401, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("didn't provide an API key"), "{body}");
    // Health checks need none, nor does a browser loading the chat page,
    // which asks for the key itself; posting to it does.
    assert_eq!(server.request("GET", "/health", None).0, 200);
    assert_eq!(server.request("GET", "/", None).0, 200);
    assert_eq!(server.request("GET", "/ui/chat.js", None).0, 200);
    assert_eq!(server.request("POST", "/", Some("{}")).0, 401);

    // The stock client: a wrong key is refused, either listed key answers.
    let wrong = server.client_with_key(Some("sk-team-a-0123456788"), "authenticated-chat", &[MODEL]);
    assert_eq!(wrong["status"], 401, "{wrong}");
    assert_eq!(wrong["error"], "AuthenticationError", "{wrong}");
    assert_eq!(wrong["body"]["code"], "invalid_api_key", "{wrong}");
    for key in ["sk-team-a-0123456789", "sk-team-b-9876543210"] {
        let right = server.client_with_key(Some(key), "authenticated-chat", &[MODEL]);
        assert_eq!(right["status"], 200, "{right}");
        assert!(!right["text"].as_str().unwrap().is_empty(), "{right}");
    }
    // Even at debug level the log names no key.
    let log = server.log();
    assert!(log.contains("2 API key(s) admit clients"), "{log}");
    for secret in ["sk-team-a-0123456789", "sk-team-a-0123456788", "sk-team-b"] {
        assert!(!log.contains(secret), "the log shows a key:\n{log}");
    }
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start(&[], None);
    server.assert_healthy();
    let id = server.pid.to_string();
    assert!(Command::new("kill").args(["-TERM", &id]).status().unwrap().success());
    let status = server.wait();
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    std::thread::sleep(Duration::from_millis(100));
    let log = server.log();
    assert!(log.contains("stopping"), "{log}");
    // An instance kept for reuse goes with the server, quietly.
    assert!(!log.contains("trapped") && !log.contains("WARN"), "a clean stop warned:\n{log}");
}

/// The OpenAI server guest, unchanged, on the candle backend: an answer,
/// and the next turn of the conversation continued from the prefix cache.
#[test]
fn the_server_runs_unchanged_on_the_candle_backend() {
    let server = Server::start(&["--backend", "candle"], None);
    let question = "What is the capital of France? Answer in one sentence.";
    let (status, body) = server.request("POST", "/v1/chat/completions", Some(&chat_body(question, 32).to_string()));
    assert_eq!(status, 200, "{body}\n{}", server.log());
    let first: Value = serde_json::from_str(&body).expect("JSON");
    let answer = first["choices"][0]["message"]["content"].as_str().expect("an answer").to_owned();
    assert!(answer.contains("Paris"), "{answer}");
    let next = json!({
        "model": MODEL,
        "messages": [
            { "role": "user", "content": question },
            { "role": "assistant", "content": answer },
            { "role": "user", "content": "And of Germany?" },
        ],
        "temperature": 0,
        "max_tokens": 32,
    });
    let (status, body) = server.request("POST", "/v1/chat/completions", Some(&next.to_string()));
    assert_eq!(status, 200, "{body}");
    let second: Value = serde_json::from_str(&body).expect("JSON");
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached tokens");
    assert!(cached > 20, "the first turn came from the prefix cache: {second}");
    assert!(server.log().contains("candle"), "{}", server.log());
}

/// Tools on the candle backend, which has no GBNF: the server guest asks
/// the host's `features`, and holds the call with the same grammar in
/// Lark, in the template's own format (Qwen 2.5's Hermes blocks) and in the
/// generic JSON one (SmolLM2's template).
#[test]
fn tool_calls_are_held_by_lark_on_the_candle_backend() {
    let template = workspace_root().join("tests/templates/corpus/Qwen-Qwen2.5-7B-Instruct.jinja");
    let hermes = Server::start(&["--backend", "candle", "--chat-template", &format!("{MODEL}={}", template.display())], None);
    assert_tool_loop("python on candle, Qwen 2.5's template", &hermes.client("tool-loop", &[MODEL, "plain"]));
    let generic = Server::start(&["--backend", "candle"], None);
    assert_tool_loop("python on candle, generic format", &generic.client("tool-loop", &[MODEL, "plain"]));
}
