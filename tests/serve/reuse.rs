// Instance reuse, which only the WASI 0.3 server has (included by
// tests/serve_p3.rs after the shared suite, whose `Server` it uses).

/// A streamed chat over a raw socket: each `data:` event with when it came.
fn timed_stream(server: &Server, body: &Value) -> Vec<(Instant, Value)> {
    let body = body.to_string();
    let mut socket = TcpStream::connect(&server.addr).expect("connecting");
    write!(
        socket,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        server.addr,
        body.len()
    )
    .unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(socket).lines().map_while(Result::ok) {
        if let Some(data) = line.strip_prefix("data: ") {
            let value = if data == "[DONE]" { json!("[DONE]") } else { serde_json::from_str(data).expect("an event") };
            events.push((Instant::now(), value));
        }
    }
    assert_eq!(events.last().map(|(_, v)| v.clone()), Some(json!("[DONE]")), "the stream ended early: {events:?}");
    events
}

/// The text a streamed chat wrote.
fn streamed_text(events: &[(Instant, Value)]) -> String {
    events.iter().filter_map(|(_, e)| e["choices"][0]["delta"]["content"].as_str()).collect()
}

/// When the first token of content came.
fn first_token(events: &[(Instant, Value)]) -> Instant {
    events.iter().find(|(_, e)| e["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty())).expect("content").0
}

fn instances(server: &Server) -> usize {
    server.log().matches("a fresh instance of").count()
}

fn streamed(user: &str, max_tokens: u32) -> Value {
    let mut body = chat_body(user, max_tokens);
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    body
}

/// The prompt tokens a streamed chat's usage counts.
fn prompt_tokens(events: &[(Instant, Value)]) -> u64 {
    events.iter().find_map(|(_, e)| e["usage"]["prompt_tokens"].as_u64()).expect("usage")
}

const STORY: &str = "Tell me a long story about a dragon.";
const QUESTION: &str = "Is Paris the capital of France?";

/// Each reply is about its own prompt and nothing of the other's.
fn assert_apart(story: &[(Instant, Value)], answer: &[(Instant, Value)]) {
    let (story, answer) = (streamed_text(story).to_lowercase(), streamed_text(answer).to_lowercase());
    assert!(story.contains("dragon") && !story.contains("paris") && !story.contains("france"), "{story}");
    assert!((answer.contains("paris") || answer.contains("france")) && !answer.contains("dragon"), "{answer}");
}

/// The story streamed, and the question sent while it streams.
fn story_then_question(server: &Server) -> (Vec<(Instant, Value)>, Vec<(Instant, Value)>) {
    std::thread::scope(|s| {
        let first = s.spawn(|| timed_stream(server, &streamed(STORY, 48)));
        std::thread::sleep(Duration::from_millis(300));
        let second = s.spawn(|| timed_stream(server, &streamed(QUESTION, 24)));
        (first.join().unwrap(), second.join().unwrap())
    })
}

#[test]
fn one_instance_serves_requests_one_after_another_and_at_once() {
    let server = Server::start(&[], Some("wasi_nn_llm_host=debug"));
    for _ in 0..3 {
        server.assert_healthy();
    }
    assert_eq!(instances(&server), 1, "three requests in turn, one instance:\n{}", server.log());

    // Two at once: the second arrives while the first is generating.
    let (first, second) = story_then_question(&server);
    assert_eq!(instances(&server), 1, "both on the instance the earlier requests used:\n{}", server.log());
    // They ran side by side: the second's first token came before the first's end.
    assert!(first_token(&second) < first.last().unwrap().0, "the second request waited for the first");

    // Neither saw the other's session: each evaluated its own prompt (as
    // many tokens as alone) and wrote about it alone.
    assert_apart(&first, &second);
    let alone_first = timed_stream(&server, &streamed(STORY, 48));
    let alone_second = timed_stream(&server, &streamed(QUESTION, 24));
    assert_eq!(prompt_tokens(&first), prompt_tokens(&alone_first));
    assert_eq!(prompt_tokens(&second), prompt_tokens(&alone_second));
    assert_eq!(instances(&server), 1, "{}", server.log());
}

#[test]
fn requests_sharing_an_instance_share_its_quota_and_wait_their_turn() {
    let dir = std::env::temp_dir().join(format!("wasi-nn-llm-reuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[limits]\ninstance-sessions = 1\n").unwrap();
    let server = Server::start(&["--policy", policy.to_str().unwrap()], Some("wasi_nn_llm_host=debug"));

    // A request that needs more sessions than the quota is refused at once.
    let mut two = chat_body("Say hello.", 4);
    two["n"] = json!(2);
    let (status, reply) = server.post("/v1/chat/completions", &two);
    assert_eq!(status, 429, "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap().contains("instance-sessions"), "{reply}");

    // Two at once on the one instance: the quota holds one session, so the
    // second request waits for the first's to be given back, then runs.
    let (first, second) = story_then_question(&server);
    assert_eq!(instances(&server), 1, "both on one instance:\n{}", server.log());
    let first_done = first.last().unwrap().0;
    assert!(first_token(&second) >= first_done, "the second request held a session beside the first's");
    assert_apart(&first, &second);
    std::fs::remove_dir_all(&dir).ok();
}
