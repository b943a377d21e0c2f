// The chat page's behaviour (index.html). Conversations live in this
// browser's localStorage; each reply streams from this server's own
// /v1/chat/completions (server-sent events) and is shown as markdown that
// can never carry HTML of the model's: raw tags are escaped before marked
// renders, DOMPurify cleans what it made, and the server's
// Content-Security-Policy runs no script but this page's own.
"use strict";

/** localStorage: { conversations: [...], current: id | null, settings: {...} }. */
const STORE = "wasi-nn-llm.chat.v1";
/** sessionStorage: the API key, for a server run with --api-key. */
const KEY = "wasi-nn-llm.api-key";

const $ = (id) => document.getElementById(id);
const ui = {
  messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  model: $("model"), temperature: $("temperature"), maxTokens: $("max-tokens"), system: $("system"),
  list: $("conversations"), status: $("status"), newChat: $("new-chat"), composer: $("composer"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("api-key"),
};

let state = loadState();
/** The reply being streamed: { controller, message }. */
let running = null;

function loadState() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE));
    if (saved && Array.isArray(saved.conversations)) {
      // A reply still pending was cut off by a reload or a closed tab.
      for (const c of saved.conversations) {
        for (const m of c.messages) {
          if (m.pending) { m.pending = false; m.finish = "interrupted"; }
        }
      }
      saved.settings ??= {};
      return saved;
    }
  } catch { /* a damaged store starts afresh */ }
  return { conversations: [], current: null, settings: {} };
}

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch (e) {
    setStatus(`The conversations could not be saved in this browser: ${e.message}`);
  }
}

function setStatus(text) { ui.status.textContent = text; }

function newId() { return Date.now().toString(36) + Math.random().toString(36).slice(2, 8); }

function current() { return state.conversations.find((c) => c.id === state.current) ?? null; }

// ---- Markdown, safely --------------------------------------------------

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const markdown = typeof marked === "object" && typeof DOMPurify === "object";
if (markdown) {
  // Raw HTML in a reply (block or inline) is text to show, not markup.
  marked.use({ gfm: true, renderer: { html: ({ text }) => escapeHtml(text) } });
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") { node.setAttribute("target", "_blank"); node.setAttribute("rel", "noopener noreferrer"); }
  });
}

/** Show `text` (a reply's markdown) in `element`. */
function renderMarkdown(element, text) {
  if (markdown) {
    element.innerHTML = DOMPurify.sanitize(marked.parse(text));
  } else {
    element.textContent = text;
  }
}

// ---- The server --------------------------------------------------------

/** fetch `path` on this server, with the API key where one was given; a
 * 401 asks for a key (once, then kept for this tab) and tries again. */
async function api(path, init = {}) {
  for (;;) {
    const headers = { ...(init.headers ?? {}) };
    const key = sessionStorage.getItem(KEY);
    if (key) headers.authorization = `Bearer ${key}`;
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401 || !(await askForKey(Boolean(key)))) return response;
  }
}

/** Ask for an API key in the dialog: whether one was given. */
function askForKey(wrong) {
  return new Promise((resolve) => {
    ui.keyDialog.querySelector("p").textContent = wrong
      ? "That key was refused. Enter another; it is kept in this tab only (sessionStorage)."
      : "This server asks for an API key. It is kept in this tab only (sessionStorage) and sent with each request.";
    ui.keyInput.value = "";
    const done = (given) => {
      ui.keyForm.removeEventListener("submit", submit);
      ui.keyDialog.removeEventListener("cancel", cancel);
      ui.keyDialog.close();
      resolve(given);
    };
    const submit = (e) => {
      e.preventDefault();
      const key = ui.keyInput.value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      done(true);
    };
    const cancel = (e) => { e.preventDefault(); done(false); };
    ui.keyForm.addEventListener("submit", submit);
    ui.keyDialog.addEventListener("cancel", cancel);
    ui.keyDialog.showModal();
    ui.keyInput.focus();
  });
}

/** The error message of a failed response (OpenAI's shape, or its status). */
async function errorOf(response) {
  const text = await response.text();
  try { return JSON.parse(text).error.message; } catch { return `${response.status} ${response.statusText}: ${text.slice(0, 200)}`; }
}

/** The `data:` payloads of a server-sent event stream. */
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

async function loadModels() {
  try {
    const response = await api("/v1/models");
    if (!response.ok) throw new Error(await errorOf(response));
    const { data } = await response.json();
    ui.model.replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    if (data.some((m) => m.id === state.settings.model)) ui.model.value = state.settings.model;
    if (!data.length) setStatus("The server serves no model.");
  } catch (e) {
    setStatus(`The models could not be listed: ${e.message}`);
  }
}

// ---- Conversations -----------------------------------------------------

function renderList() {
  ui.list.replaceChildren(...state.conversations.map((c) => {
    const item = document.createElement("li");
    if (c.id === state.current) item.setAttribute("aria-current", "true");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = (c.branchOf ? "↳ " : "") + c.title;
    open.title = c.branchOf ? `${c.title} (a branch)` : c.title;
    open.addEventListener("click", () => { if (!running) { state.current = c.id; save(); render(); ui.prompt.focus(); } });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Delete the conversation “${c.title}”`);
    remove.addEventListener("click", () => {
      if (running) return;
      state.conversations = state.conversations.filter((x) => x !== c);
      if (state.current === c.id) state.current = null;
      save();
      render();
    });
    item.append(open, remove);
    return item;
  }));
}

function renderMessages() {
  const conversation = current();
  if (!conversation) {
    const hint = document.createElement("p");
    hint.className = "message";
    hint.textContent = "Start a conversation: type a message below.";
    ui.messages.replaceChildren(hint);
    return;
  }
  ui.messages.replaceChildren(...conversation.messages.map((m, i) => messageView(conversation, i)));
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function render() {
  renderList();
  renderMessages();
}

/** A row of a message's actions. */
function toolbar(...buttons) {
  const tools = document.createElement("div");
  tools.className = "tools";
  tools.append(...buttons);
  return tools;
}

function button(label, onClick, accessibleName) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (accessibleName) b.setAttribute("aria-label", accessibleName);
  b.addEventListener("click", onClick);
  return b;
}

/** One message: its role, its text, and for a reply its reasoning, tool
 * calls, error, figures and actions. */
function messageView(conversation, index) {
  const m = conversation.messages[index];
  const view = document.createElement("article");
  view.className = `message ${m.role}`;
  const role = document.createElement("div");
  role.className = "role";
  role.textContent = m.role === "user" ? "You" : "Model";
  const content = document.createElement("div");
  content.className = "content";
  view.append(role);
  if (m.role === "user") {
    content.textContent = m.content;
    view.append(content, toolbar(button("Edit", () => edit(conversation, index, view), "Edit this message and send it as a new branch")));
    return view;
  }
  if (m.reasoning) {
    const details = document.createElement("details");
    details.className = "reasoning";
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const text = document.createElement("p");
    text.textContent = m.reasoning;
    details.append(summary, text);
    view.append(details);
  }
  renderMarkdown(content, m.content);
  view.append(content);
  for (const call of m.toolCalls ?? []) {
    const c = document.createElement("div");
    c.className = "tool-call";
    c.textContent = `tool call: ${call.name}(${call.arguments})`;
    view.append(c);
  }
  if (m.error) {
    const e = document.createElement("p");
    e.className = "error";
    e.setAttribute("role", "alert");
    e.textContent = m.error;
    view.append(e);
  }
  const stats = document.createElement("div");
  stats.className = "stats";
  stats.textContent = statsText(m);
  view.append(stats);
  if (!m.pending && index === conversation.messages.length - 1) {
    view.append(toolbar(button("Regenerate", () => regenerate(conversation, index), "Regenerate this reply as a new branch")));
  }
  return view;
}

/** "12 tokens · 34.5 tok/s · first token 210 ms · 57 of 80 prompt tokens cached". */
function statsText(m) {
  if (m.pending) return "generating…";
  const s = m.stats ?? {};
  const parts = [];
  if (s.tokens != null) parts.push(`${s.tokens} tokens`);
  if (s.tokensPerSecond != null) parts.push(`${s.tokensPerSecond.toFixed(1)} tok/s`);
  if (s.firstTokenMs != null) parts.push(`first token ${Math.round(s.firstTokenMs)} ms`);
  if (s.promptTokens != null) parts.push(`${s.cachedTokens ?? 0} of ${s.promptTokens} prompt tokens cached`);
  if (m.finish && m.finish !== "stop") parts.push(m.finish);
  return parts.join(" · ");
}

/** A conversation's title: the start of its first message. */
function titleOf(messages) {
  const first = messages.find((m) => m.role === "user")?.content ?? "";
  return first.replace(/\s+/g, " ").slice(0, 60) || "New chat";
}

/** A new conversation holding `messages`; `branchOf` the one it came from. */
function startConversation(messages, branchOf) {
  const conversation = { id: newId(), title: titleOf(messages), messages, branchOf };
  state.conversations.unshift(conversation);
  state.current = conversation.id;
  return conversation;
}

function copyMessages(messages) {
  return messages.map((m) => ({ ...m, toolCalls: m.toolCalls ? [...m.toolCalls] : undefined }));
}

function edit(conversation, index, view) {
  if (running) return;
  const area = document.createElement("textarea");
  area.className = "edit";
  area.value = conversation.messages[index].content;
  area.rows = 3;
  area.setAttribute("aria-label", "Edited message");
  const send = () => {
    const text = area.value.trim();
    if (!text) return;
    // The original stays as it was; the edit starts a branch with the
    // turns before it (the server's prefix cache already holds them).
    const branch = startConversation([...copyMessages(conversation.messages.slice(0, index)), { role: "user", content: text }], conversation.id);
    save();
    render();
    reply(branch);
  };
  area.addEventListener("keydown", (e) => {
    if (sendsOnEnter(e)) { e.preventDefault(); send(); }
    if (e.key === "Escape") { e.preventDefault(); renderMessages(); }
  });
  view.replaceChildren(view.firstChild, area, toolbar(button("Send as a new branch", send), button("Cancel", () => renderMessages())));
  area.focus();
}

function regenerate(conversation, index) {
  if (running) return;
  const branch = startConversation(copyMessages(conversation.messages.slice(0, index)), conversation.id);
  save();
  render();
  reply(branch);
}

// ---- Sending and streaming ---------------------------------------------

function settings() {
  const s = {
    model: ui.model.value,
    temperature: ui.temperature.value,
    maxTokens: ui.maxTokens.value,
    system: ui.system.value,
  };
  state.settings = s;
  return s;
}

function restoreSettings() {
  const s = state.settings;
  if (s.temperature != null) ui.temperature.value = s.temperature;
  if (s.maxTokens) ui.maxTokens.value = s.maxTokens;
  if (s.system != null) ui.system.value = s.system;
}

function setRunning(on) {
  ui.send.disabled = on;
  ui.stop.disabled = !on;
  setStatus(on ? "Generating… (Stop, or Escape in the message box, ends it)" : "");
}

function send() {
  const text = ui.prompt.value.trim();
  if (!text || running) return;
  if (!ui.model.value) { setStatus("No model to send to: the model list is empty or could not be read."); return; }
  const conversation = current() ?? startConversation([], undefined);
  conversation.messages.push({ role: "user", content: text });
  conversation.title = titleOf(conversation.messages);
  ui.prompt.value = "";
  save();
  render();
  reply(conversation);
}

/** Stream a reply to `conversation`'s last message, showing it as it comes. */
async function reply(conversation) {
  const s = settings();
  const history = conversation.messages.map(({ role, content }) => ({ role, content }));
  const messages = s.system.trim() ? [{ role: "system", content: s.system.trim() }, ...history] : history;
  const message = { role: "assistant", content: "", pending: true };
  conversation.messages.push(message);
  save();
  renderMessages();
  const view = ui.messages.lastElementChild;
  const content = view.querySelector(".content");
  const controller = new AbortController();
  running = { controller, message };
  setRunning(true);

  const body = { model: s.model, messages, stream: true, stream_options: { include_usage: true } };
  if (s.temperature !== "") body.temperature = Number(s.temperature);
  if (s.maxTokens !== "") body.max_tokens = Number(s.maxTokens);
  const started = performance.now();
  let first = null, last = null, usage = null;
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorOf(response));
    for await (const data of events(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      for (const choice of chunk.choices ?? []) {
        const delta = choice.delta ?? {};
        let changed = false;
        if (delta.content) { message.content += delta.content; changed = true; }
        if (delta.reasoning_content) { message.reasoning = (message.reasoning ?? "") + delta.reasoning_content; changed = true; }
        for (const call of delta.tool_calls ?? []) {
          message.toolCalls ??= [];
          const at = (message.toolCalls[call.index ?? 0] ??= { name: "", arguments: "" });
          at.name += call.function?.name ?? "";
          at.arguments += call.function?.arguments ?? "";
          changed = true;
        }
        if (choice.finish_reason) message.finish = choice.finish_reason;
        if (changed) {
          first ??= performance.now();
          last = performance.now();
          renderMarkdown(content, message.content);
          ui.messages.scrollTop = ui.messages.scrollHeight;
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") message.finish = "stopped";
    else message.error = e.message;
  } finally {
    message.pending = false;
    message.stats = {
      firstTokenMs: first != null ? first - started : undefined,
      tokens: usage?.completion_tokens,
      tokensPerSecond: usage && first != null && last > first && usage.completion_tokens > 1
        ? (usage.completion_tokens - 1) / ((last - first) / 1000) : undefined,
      promptTokens: usage?.prompt_tokens,
      cachedTokens: usage?.prompt_tokens_details?.cached_tokens,
    };
    running = null;
    setRunning(false);
    save();
    if (current() === conversation) renderMessages();
    renderList();
  }
}

function stop() {
  running?.controller.abort();
}

// ---- Wiring ------------------------------------------------------------

ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
/** Enter sends; Shift+Enter (or Enter while an IME composes) types a new line. */
function sendsOnEnter(e) { return e.key === "Enter" && !e.shiftKey && !e.isComposing; }

ui.prompt.addEventListener("keydown", (e) => {
  if (sendsOnEnter(e)) { e.preventDefault(); send(); }
  if (e.key === "Escape" && running) { e.preventDefault(); stop(); }
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", () => {
  if (running) return;
  state.current = null;
  save();
  render();
  ui.prompt.focus();
});
for (const input of [ui.model, ui.temperature, ui.maxTokens, ui.system]) {
  input.addEventListener("change", () => { settings(); save(); });
}

restoreSettings();
render();
loadModels();
ui.prompt.focus();
