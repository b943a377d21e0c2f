// The `openai` npm package (the OpenAI Node SDK, written by others) against
// `wasi-nn-llm serve`: the same two-step tool loop as client.py's, streamed
// or not, run by tests/serve.rs. Prints one JSON line.
// Usage: node client.mjs NODE_DIR BASE_URL MODEL plain|stream, with the
// package in NODE_DIR/node_modules (the bootstrap puts it in target/node).
import { createRequire } from "node:module";

const [nodeDir, base, model, mode] = process.argv.slice(2);
const { OpenAI } = createRequire(`${nodeDir}/`)("openai");
const client = new OpenAI({ baseURL: base, apiKey: "unused", maxRetries: 0 });

const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city",
    parameters: {
      type: "object",
      properties: { city: { type: "string" }, unit: { type: "string", enum: ["celsius", "fahrenheit"] } },
      required: ["city"],
    },
  },
}];

const messages = [
  { role: "system", content: "You are a helpful assistant." },
  { role: "user", content: "What is the weather in Paris?" },
];
const steps = [];
for (const choice of ["required", "none"]) {
  const request = { model, messages, tools, tool_choice: choice, temperature: 0, max_tokens: 64 };
  // Streamed: the SDK's own accumulation of the deltas into a completion.
  const completion = mode === "stream"
    ? await client.chat.completions.stream(request).finalChatCompletion()
    : await client.chat.completions.create(request);
  const message = completion.choices[0].message;
  const calls = (message.tool_calls ?? []).map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments }));
  steps.push({ finish: completion.choices[0].finish_reason, content: message.content ?? null, calls });
  messages.push({
    role: "assistant",
    content: message.content ?? null,
    ...(calls.length ? { tool_calls: calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })) } : {}),
  });
  for (const c of calls) {
    const args = JSON.parse(c.arguments);
    const result = { city: args.city, temperature: 18, unit: args.unit ?? "celsius" };
    messages.push({ role: "tool", tool_call_id: c.id, content: JSON.stringify(result) });
  }
}
console.log(JSON.stringify({ steps }));
