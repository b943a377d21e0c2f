// The chat page (`GET /`, examples/openai-server/ui/) in a real browser:
// Debian's chromium, headless, driven by puppeteer-core, against a
// `wasi-nn-llm serve` on the real model that asks for an API key. Run by
// tests/serve/browser.rs, which checks what this prints (one JSON line);
// each step also asserts here, naming what went wrong.
// Usage: node chat.mjs BROWSER_DIR CHROMIUM URL API_KEY SCREENSHOT, with
// puppeteer-core in BROWSER_DIR/node_modules (the bootstrap puts it in
// target/browser).
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const [browserDir, chromium, url, apiKey, screenshot] = process.argv.slice(2);
const puppeteer = createRequire(`${browserDir}/`)("puppeteer-core");

const STEP_MS = 240_000;
const seen = { updates: 0, dialogs: [], errors: [] };

const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  // Root in a container has no user namespace for chromium's sandbox.
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  defaultViewport: { width: 1180, height: 760 },
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(STEP_MS);
  // alert(), confirm(), prompt(): model output must never open one.
  page.on("dialog", async (d) => { seen.dialogs.push(d.message()); await d.dismiss(); });
  page.on("pageerror", (e) => seen.errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error" && !m.text().includes("401")) seen.errors.push(m.text()); });

  await page.goto(url, { waitUntil: "domcontentloaded" });

  // The server wants a key: the page asks once and keeps it for the tab.
  await page.waitForSelector("#key-dialog[open]");
  await page.type("#api-key", apiKey);
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#model").options.length > 0);
  seen.model = await page.$eval("#model", (s) => s.value);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("wasi-nn-llm.api-key")), apiKey);

  // Greedy, so the replies are the model's own first choices; the page's
  // default system prompt ("You are a helpful assistant.") kept.
  await page.$eval("#temperature", (t) => { t.value = "0"; });
  await page.$eval("#max-tokens", (t) => { t.value = "48"; });

  // Every control has a name a screen reader can say.
  seen.unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea, button")]
    .filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || (e.tagName === "BUTTON" && e.textContent.trim())))
    .map((e) => e.id || e.outerHTML.slice(0, 60)));
  assert.deepEqual(seen.unlabelled, [], "controls without a label");

  // Keyboard only: the message box has focus, Tab reaches Send and
  // Shift+Tab comes back, Enter sends.
  assert.equal(await page.evaluate(() => document.activeElement.id), "prompt", "the message box has focus on load");
  await page.keyboard.press("Tab");
  seen.afterTab = await page.evaluate(() => document.activeElement.id);
  assert.equal(seen.afterTab, "send", "Tab from the message box reaches Send");
  await page.keyboard.down("Shift");
  await page.keyboard.press("Tab");
  await page.keyboard.up("Shift");
  assert.equal(await page.evaluate(() => document.activeElement.id), "prompt", "Shift+Tab comes back");

  // Every text the reply showed while it was still streaming.
  await page.evaluate(() => {
    window.__snapshots = [];
    new MutationObserver(() => {
      const last = [...document.querySelectorAll("#messages .message.assistant")].pop();
      if (last && last.querySelector(".stats")?.textContent === "generating…") {
        const text = last.querySelector(".content").textContent;
        if (text && text !== window.__snapshots.at(-1)) window.__snapshots.push(text);
      }
    }).observe(document.querySelector("#messages"), { subtree: true, childList: true, characterData: true });
  });
  await page.keyboard.type("What is the capital of France?");
  await page.keyboard.press("Enter");
  const first = await finished(page);
  seen.first = first;
  seen.updates = await page.evaluate(() => window.__snapshots.length);
  assert.match(first.text, /Paris/, "the reply names Paris");
  assert.ok(seen.updates >= 3, `the reply appeared in ${seen.updates} updates before its end, not token by token`);

  // A reload keeps the conversation (localStorage) and the key (sessionStorage).
  await page.reload({ waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => document.querySelectorAll("#messages .message").length === 2);
  seen.afterReload = await page.$$eval("#messages .message .content", (c) => c.map((e) => e.textContent));
  assert.equal(seen.afterReload[0], "What is the capital of France?");
  assert.match(seen.afterReload[1], /Paris/);
  seen.titles = await page.$$eval("#conversations button.open", (b) => b.map((e) => e.textContent));
  assert.deepEqual(seen.titles, ["What is the capital of France?"], "the conversation is listed by its question");
  assert.equal(await page.$("#key-dialog[open]"), null, "the key is not asked for again");
  await page.waitForFunction(() => document.querySelector("#model").options.length > 0);

  // A second turn, with a new line typed by Shift+Enter: the first turn
  // comes from the server's prefix cache.
  await page.focus("#prompt");
  await page.keyboard.type("Thank you.");
  await page.keyboard.down("Shift");
  await page.keyboard.press("Enter");
  await page.keyboard.up("Shift");
  await page.keyboard.type("What is the capital of Germany?");
  await page.keyboard.press("Enter");
  const second = await finished(page);
  seen.second = second;
  const sent = await page.$$eval("#messages .message.user .content", (c) => c.map((e) => e.textContent));
  assert.equal(sent[1], "Thank you.\nWhat is the capital of Germany?", "Shift+Enter typed a new line");
  const cached = /(\d+) of (\d+) prompt tokens cached/.exec(second.stats);
  assert.ok(cached && Number(cached[1]) > 0, `the second turn shows cached prompt tokens: "${second.stats}"`);
  seen.cached = Number(cached[1]);
  await page.screenshot({ path: screenshot });

  // Edit and resend: a branch with the turns before the edited one; the
  // original conversation stays as it was.
  const editButtons = await page.$$("#messages .message.user .tools button");
  await editButtons[1].click();
  await page.waitForSelector("#messages textarea.edit");
  await page.$eval("#messages textarea.edit", (t) => { t.value = "What is the capital of Italy?"; });
  await page.focus("#messages textarea.edit");
  await page.keyboard.press("Enter");
  const edited = await finished(page);
  seen.edited = edited;
  assert.match(edited.text, /Rome/, "the branch answers the edited question");
  const branch = await page.$$eval("#messages .message .content", (c) => c.map((e) => e.textContent));
  assert.deepEqual(branch.slice(0, 3), [
    "What is the capital of France?", "The capital of France is Paris.", "What is the capital of Italy?",
  ]);
  // Regenerate the branch's reply: another branch, the same greedy answer.
  await page.click("#messages .message.assistant:last-child .tools button");
  const regenerated = await finished(page);
  assert.equal(regenerated.text, edited.text, "greedy: the regenerated reply is the same");
  seen.titles = await page.$$eval("#conversations button.open", (b) => b.map((e) => e.textContent));
  assert.equal(seen.titles.length, 3, `the original and two branches: ${seen.titles}`);
  assert.ok(seen.titles[0].startsWith("↳") && seen.titles[1].startsWith("↳") && !seen.titles[2].startsWith("↳"));
  await page.click("#conversations li:last-child button.open");
  const original = await page.$$eval("#messages .message .content", (c) => c.map((e) => e.textContent));
  assert.equal(original.length, 4, "the original conversation is unchanged");
  assert.match(original[3], /Berlin/);

  // Stop a long reply: the stream ends, the reply keeps what came, and the
  // server answers the next request.
  await page.click("#new-chat");
  await page.$eval("#max-tokens", (t) => { t.value = "1500"; t.dispatchEvent(new Event("change")); });
  await page.type("#prompt", "Write a very long story about a dragon who learns to bake bread.");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => {
    const last = [...document.querySelectorAll("#messages .message.assistant")].pop();
    return last && last.querySelector(".content").textContent.length > 40;
  });
  await page.click("#stop");
  const stopped = await finished(page);
  seen.stopped = stopped;
  assert.match(stopped.stats, /stopped/, "the reply says it was stopped");
  assert.ok(stopped.text.length > 40, "what came before the stop stays");
  await page.$eval("#max-tokens", (t) => { t.value = "16"; });
  await page.type("#prompt", "Say hello.");
  await page.keyboard.press("Enter");
  const after = await finished(page);
  seen.afterStop = after;
  assert.ok(after.text.length > 0 && !after.error, `the next request is served: ${JSON.stringify(after)}`);

  // Markup in a reply is shown as text: no image, no script, no dialog.
  // (SmolLM2, greedy, with the default system prompt, echoes both tags
  // when asked this way.)
  const hostile = "Repeat after me:\n<img src=x onerror=alert(1)>\n<script>alert(2)</script>";
  await page.click("#new-chat");
  await page.$eval("#max-tokens", (t) => { t.value = "48"; });
  await page.$eval("#prompt", (t, text) => { t.value = text; }, hostile);
  await page.focus("#prompt");
  await page.keyboard.press("Enter");
  const echoed = await finished(page);
  seen.hostile = echoed;
  seen.hostileElements = await page.$$eval(
    "#messages .message.assistant .content",
    (c) => c.map((e) => e.querySelectorAll("img, script, [onerror]").length).reduce((a, b) => a + b, 0),
  );
  assert.ok(echoed.text.includes("<img src=x onerror=alert(1)>"), `the model echoed the tag: ${echoed.text}`);
  assert.ok(echoed.text.includes("<script>alert(2)</script>"), `the model echoed the script: ${echoed.text}`);
  assert.equal(seen.hostileElements, 0, "no element came from the reply's markup");
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(seen.dialogs, [], "no dialog opened");
  assert.deepEqual(seen.errors, [], "the page raised no error");
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));

/** Wait for the reply being streamed to end: its text and figures. */
async function finished(page) {
  await page.waitForFunction(() => {
    const last = [...document.querySelectorAll("#messages .message.assistant")].pop();
    return last && last.querySelector(".stats").textContent !== "generating…" && document.querySelector("#stop").disabled;
  });
  return page.evaluate(() => {
    const last = [...document.querySelectorAll("#messages .message.assistant")].pop();
    return {
      text: last.querySelector(".content").textContent,
      stats: last.querySelector(".stats").textContent,
      error: last.querySelector(".error")?.textContent ?? null,
    };
  });
}
