// The chat page in a real browser, included by tests/serve_p3.rs (the
// server `make serve` starts): tests/browser/chat.mjs drives Debian's
// chromium through the page against a server of its own that asks for an
// API key, and saves the screenshot the README shows (docs/chat.png is a
// copy of one).

/// The chat page (`GET /`) in headless chromium: a streamed answer, a
/// reload that keeps it, a second turn from the prefix cache, an edit and
/// a regeneration that branch, stop, markup in a reply shown as text,
/// keyboard-only use and the API key asked once.
#[test]
fn the_chat_page_chats_in_a_real_browser() {
    let browser = workspace_root().join("target/browser");
    assert!(
        browser.join("node_modules/puppeteer-core").is_dir(),
        "{} is missing: `make test` installs puppeteer-core there",
        browser.display()
    );
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("Debian's chromium: `make test` installs it");
    const KEY: &str = "sk-browser-test";
    let server = Server::start(&["--api-key", KEY], None);
    let screenshot = browser.join("chat.png");
    let out = Command::new("node")
        .arg(workspace_root().join("tests/browser/chat.mjs"))
        .arg(&browser)
        .arg(chromium)
        .arg(format!("http://{}/", server.addr))
        .arg(KEY)
        .arg(&screenshot)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "chat.mjs failed:\n{}\n{}\nthe server said:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("chat.mjs prints JSON");
    assert!(seen["first"]["text"].as_str().unwrap().contains("Paris"), "{seen}");
    assert!(seen["updates"].as_u64().unwrap() >= 3, "streamed token by token: {seen}");
    assert!(seen["cached"].as_u64().unwrap() > 0, "the second turn came from the cache: {seen}");
    assert!(seen["edited"]["text"].as_str().unwrap().contains("Rome"), "an edit's branch: {seen}");
    assert!(seen["stopped"]["stats"].as_str().unwrap().contains("stopped"), "{seen}");
    assert_eq!(seen["hostileElements"], 0, "{seen}");
    assert_eq!(seen["dialogs"], json!([]), "{seen}");
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000), "a screenshot at {}", screenshot.display());
    // The server answers as before.
    let (status, _) = server.request("GET", "/health", None);
    assert_eq!(status, 200);
}
