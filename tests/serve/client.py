"""The stock OpenAI client against `wasi-nn-llm serve` (tests/serve.rs runs it).

Each mode prints one JSON line with what it saw; the Rust test asserts on it.
Usage: client.py BASE_URL MODE ARGS...
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI


def stream_chat(client, model, question, max_tokens):
    """A greedy chat streamed through the client: the text and the usage."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=int(max_tokens),
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return {"text": text, "finish": finish, "usage": usage, "chunks": chunks}


def conversation(client, model, turns):
    """A multi-turn chat, the whole history sent each turn (the API is
    stateless): each turn's usage."""
    messages, seen = [], []
    for turn in range(int(turns)):
        messages.append({"role": "user", "content": f"Name one fruit, please (turn {turn + 1})."})
        reply = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        usage = reply.usage
        seen.append({
            "prompt": usage.prompt_tokens,
            "cached": usage.prompt_tokens_details.cached_tokens,
            "completion": usage.completion_tokens,
        })
    return {"turns": seen}


def choices(client, model, n):
    """`n` sampled completions of one prompt."""
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Write a short poem about the sea."}],
        temperature=1.0,
        seed=7,
        max_tokens=24,
        n=int(n),
    )
    return {
        "texts": [c.message.content for c in reply.choices],
        "indices": [c.index for c in reply.choices],
        "usage": reply.usage.model_dump(),
    }


def concurrent(client, model, clients, requests):
    """`clients` threads, each sending `requests` short chats: every
    failure, by message."""
    def one(worker):
        errors, replies = [], 0
        for r in range(int(requests)):
            try:
                reply = client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"Say a number (client {worker}, request {r})."}],
                    temperature=0,
                    max_tokens=8,
                )
                if reply.choices[0].message.content is not None:
                    replies += 1
            except Exception as e:  # every error is counted, none raised
                errors.append(repr(e))
        return replies, errors

    with ThreadPoolExecutor(max_workers=int(clients)) as pool:
        results = list(pool.map(one, range(int(clients))))
    return {"replies": sum(r for r, _ in results), "errors": [e for _, es in results for e in es]}


def embed(client, model, *texts):
    """Embeddings of `texts` (the client asks for base64 and decodes it)."""
    reply = client.embeddings.create(model=model, input=list(texts))
    return {
        "vectors": [d.embedding for d in sorted(reply.data, key=lambda d: d.index)],
        "usage": reply.usage.model_dump(),
    }


def models(client):
    return {"models": [m.id for m in client.models.list()]}


def authenticated_chat(client, model):
    """A short greedy chat with the client's key (OPENAI_API_KEY): its text,
    or the error the client raised, with the status and OpenAI's error body."""
    import openai
    try:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=8)
        return {"status": 200, "text": reply.choices[0].message.content}
    except openai.APIStatusError as e:
        return {"status": e.status_code, "error": type(e).__name__, "body": e.body}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}


def get_weather(city, unit="celsius"):
    return {"city": city, "temperature": 18, "unit": unit}


def tool_loop(client, model, stream):
    """A two-step tool loop: the model must call a tool (`required`), the
    client runs it and sends the result, and the model answers from it
    (`none`: a 135M model does not decide by itself to stop calling).
    Streamed, each step is the client's own accumulation of the deltas
    (`chat.completions.stream`'s final completion)."""
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    steps = []
    for choice in ["required", "none"]:
        request = dict(model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice=choice,
                       temperature=0, max_tokens=64)
        if stream == "stream":
            with client.chat.completions.stream(**request) as events:
                completion = events.get_final_completion()
        else:
            completion = client.chat.completions.create(**request)
        message = completion.choices[0].message
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in message.tool_calls or []]
        steps.append({"finish": completion.choices[0].finish_reason, "content": message.content, "calls": calls})
        messages.append({"role": "assistant", "content": message.content,
                         "tool_calls": [{"id": c["id"], "type": "function",
                                         "function": {"name": c["name"], "arguments": c["arguments"]}}
                                        for c in calls] or None})
        for c in calls:
            result = get_weather(**json.loads(c["arguments"]))
            messages.append({"role": "tool", "tool_call_id": c["id"], "content": json.dumps(result)})
    return {"steps": steps}


def responses(client, model):
    """`/v1/responses` through the client: text input, message input with
    instructions, a streamed turn continuing the last (`previous_response_id`,
    the client's own stream accumulation), and a function call answered by
    its output in the next response."""
    instructions = "You are a helpful assistant. Answer in one sentence."
    seen = {}
    first = client.responses.create(model=model, instructions=instructions, input="What is the capital of France?",
                                    temperature=0, max_output_tokens=40)
    seen["text"] = {"id": first.id, "status": first.status, "output_text": first.output_text,
                    "usage": first.usage.model_dump()}
    second = client.responses.create(
        model=model, instructions=instructions, previous_response_id=first.id, temperature=0, max_output_tokens=40,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "And the capital of Italy?"}]}])
    seen["messages"] = {"status": second.status, "output_text": second.output_text, "usage": second.usage.model_dump()}
    events = []
    with client.responses.stream(model=model, instructions=instructions, previous_response_id=second.id,
                                 input="And of Spain?", temperature=0, max_output_tokens=40) as stream:
        for event in stream:
            events.append({"type": event.type, "sequence": event.sequence_number,
                           "delta": getattr(event, "delta", None) if event.type == "response.output_text.delta" else None})
        final = stream.get_final_response()
    seen["streamed"] = {"events": events, "output_text": final.output_text, "status": final.status,
                        "usage": final.usage.model_dump()}
    tools = [{"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
    called = client.responses.create(model=model, instructions=instructions, input="What is the weather in Paris?",
                                     tools=tools, tool_choice="required", temperature=0, max_output_tokens=40)
    calls = [o for o in called.output if o.type == "function_call"]
    seen["call"] = [{"name": c.name, "arguments": c.arguments, "call_id": c.call_id} for c in calls]
    answered = client.responses.create(
        model=model, instructions=instructions, previous_response_id=called.id, tools=tools, tool_choice="none",
        temperature=0, max_output_tokens=40,
        input=[{"type": "function_call_output", "call_id": c.call_id, "output": json.dumps(get_weather(**json.loads(c.arguments)))}
               for c in calls])
    seen["answer"] = {"status": answered.status, "output_text": answered.output_text,
                      "types": [o.type for o in answered.output]}
    return seen


def main():
    base, mode, *args = sys.argv[1:]
    client = OpenAI(base_url=base, api_key=os.environ.get("OPENAI_API_KEY", "unused"), max_retries=0, timeout=300)
    modes = {"stream-chat": stream_chat, "conversation": conversation, "choices": choices,
             "concurrent": concurrent, "embed": embed, "models": models, "authenticated-chat": authenticated_chat,
             "tool-loop": tool_loop, "responses": responses}
    print(json.dumps(modes[mode](client, *args)))


if __name__ == "__main__":
    main()
