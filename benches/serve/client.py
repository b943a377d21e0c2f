"""One client for both servers of `make bench`'s serve section: it speaks
OpenAI's API (the stock `openai` package) to `wasi-nn-llm serve` and to
llama-server alike, and prints one JSON line of what it timed.

Usage: client.py BASE_URL MODEL MODE ARGS...
  chat TURNS MAX_TOKENS            one conversation, the whole history sent each turn
  round-robin CONVS TURNS MAX_TOKENS [SEED]  CONVS conversations, one turn of each in turn (shuffled each round with SEED)
  concurrent STREAMS MAX_TOKENS     STREAMS chats at once
  cold TOKENS                       a prompt of about TOKENS tokens sharing nothing cached
  tool-loop STEPS MAX_TOKENS        an agent's loop: STEPS - 1 required tool calls, each answered, then the answer
  overhead N                        per-request cost: N × GET /v1/models, N × a 1-token completion

Every request is greedy and streamed; time to first token is from sending the
request to the first chunk that carries text.
"""

import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

TOPICS = ["the sea", "volcanoes", "bees", "the moon", "glass", "rivers", "owls", "copper",
          "deserts", "tea", "comets", "maple trees", "salt", "whales", "bridges", "clocks"]


def turn(client, model, messages, max_tokens):
    """Stream one reply: time to first text, the text, and the usage."""
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True})
    ttft, text, usage, chunks = None, "", None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            piece = choice.delta.content or ""
            if piece:
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - started
                text += piece
    elapsed = time.perf_counter() - started
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    return {
        "ttft_ms": (ttft if ttft is not None else elapsed) * 1e3,
        "total_ms": elapsed * 1e3,
        "text": text,
        "prompt": usage.prompt_tokens if usage else None,
        "cached": getattr(details, "cached_tokens", None) if details else None,
        "completion": usage.completion_tokens if usage else chunks,
    }


def user(topic, t):
    return {"role": "user", "content": f"Tell me one more fact about {topic}, in two sentences (turn {t + 1})."}


def chat(client, model, turns, max_tokens):
    messages, seen = [], []
    for t in range(int(turns)):
        messages.append(user(TOPICS[0], t))
        r = turn(client, model, messages, int(max_tokens))
        messages.append({"role": "assistant", "content": r["text"]})
        seen.append({k: r[k] for k in ("ttft_ms", "prompt", "cached", "completion")})
    return {"turns": seen}


def round_robin(client, model, convs, turns, max_tokens, shuffle=None):
    """One turn of each conversation in turn; with `shuffle` (a seed), in
    an order shuffled afresh each round, as independent clients arrive (a
    balancer's round-robin then sends a conversation's turns to different
    hosts, where a fixed order would pin each to one)."""
    import random
    order = random.Random(int(shuffle)) if shuffle is not None else None
    histories = [[] for _ in range(int(convs))]
    seen = []
    for t in range(int(turns)):
        convs_now = list(enumerate(histories))
        if order is not None:
            order.shuffle(convs_now)
        for c, messages in convs_now:
            messages.append(user(TOPICS[c % len(TOPICS)], t))
            r = turn(client, model, messages, int(max_tokens))
            messages.append({"role": "assistant", "content": r["text"]})
            seen.append({"conversation": c, "turn": t, **{k: r[k] for k in ("ttft_ms", "prompt", "cached")}})
    return {"requests": seen}


def concurrent(client, model, streams, max_tokens):
    def one(i):
        return turn(client, model, [{"role": "user", "content":
                    f"Write a long story about {TOPICS[i % len(TOPICS)]}, with many details."}], int(max_tokens))

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=int(streams)) as pool:
        results = list(pool.map(one, range(int(streams))))
    wall = time.perf_counter() - started
    tokens = sum(r["completion"] for r in results)
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
            "per_stream": [r["completion"] for r in results]}


def cold(client, model, tokens):
    """A prompt that shares no prefix with anything sent before (a fresh
    nonce first), of about `tokens` tokens; max_tokens 1."""
    words = " ".join(f"w{i % 97}" for i in range(int(tokens) // 2))
    content = f"{uuid.uuid4().hex} {words}"
    r = turn(client, model, [{"role": "user", "content": content}], 1)
    return {"ttft_ms": r["ttft_ms"], "prompt": r["prompt"]}


def overhead(client, model, n):
    """What a request costs beyond the model: `GET /v1/models` and a
    1-token completion of a short prompt (not streamed, the same prompt each
    time, so its prefix is cached after the first), each `n` times after a
    warm-up of each. Medians and the 10th-90th percentile spread."""
    def timed(call):
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1e3

    def spread(xs):
        xs = sorted(xs)
        return {"median": xs[len(xs) // 2], "p10": xs[len(xs) // 10], "p90": xs[(len(xs) * 9) // 10]}

    one = lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], temperature=0, max_tokens=1)
    timed(client.models.list)
    timed(one)
    models = [timed(client.models.list) for _ in range(int(n))]
    ones = [timed(one) for _ in range(int(n))]
    return {"models_ms": spread(models), "one_token_ms": spread(ones)}


CITIES = ["Paris", "Rome", "Madrid", "Berlin", "Vienna", "Oslo", "Lisbon", "Prague"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tool_loop(client, model, steps, max_tokens):
    """An agent's loop, not streamed: a call is required at each of the
    first STEPS - 1 requests (its result goes back as a tool message), and
    the last asks for the answer (`none`). Total and per-request time."""
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Compare the weather in " + ", ".join(CITIES[:int(steps) - 1]) + "."}]
    seen = []
    started = time.perf_counter()
    for step in range(int(steps)):
        last = step == int(steps) - 1
        t0 = time.perf_counter()
        reply = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0,
                                               tool_choice="none" if last else "required", max_tokens=int(max_tokens))
        message = reply.choices[0].message
        calls = message.tool_calls or []
        seen.append({"ms": (time.perf_counter() - t0) * 1e3, "calls": len(calls),
                     "prompt": reply.usage.prompt_tokens,
                     "cached": getattr(reply.usage.prompt_tokens_details, "cached_tokens", None)})
        if not calls and not last:
            # A required call that did not come (cut short by max_tokens):
            # the loop cannot go on as an agent's would; the figures say so.
            break
        messages.append({"role": "assistant", "content": message.content,
                         "tool_calls": [c.model_dump() for c in calls] or None})
        for c in calls:
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": json.dumps({"temperature": 15 + step, "sky": "clear"})})
    return {"total_ms": (time.perf_counter() - started) * 1e3, "requests": seen,
            "calls": sum(r["calls"] for r in seen)}


def main():
    base, model, mode, *args = sys.argv[1:]
    client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=600)
    modes = {"chat": chat, "round-robin": round_robin, "concurrent": concurrent, "cold": cold, "tool-loop": tool_loop,
             "overhead": overhead}
    print(json.dumps(modes[mode](client, model, *args)))


if __name__ == "__main__":
    main()
