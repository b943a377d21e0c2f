//! One completion request on the extension: the prompt goes into a session
//! from the host's prefix cache (only what an earlier request did not
//! leave there is evaluated), `n` choices fork it (one prefill for all),
//! and the streams are read either to one JSON answer or as SSE events.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wasi_nn_llm::tool_calls::{self, Format, Parsed, Streamer};
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::Error as LlmError;
use wasi_nn_llm::{Chunk, Error, Finish, FinishReason, Model, Params, Session, SessionOptions, TokenStream};

use crate::error::ApiError;

/// Which endpoint's shapes to answer in.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    /// `/v1/chat/completions`: `message`/`delta` objects.
    Chat,
    /// `/v1/completions`: `text`.
    Text,
}

/// A request's generations in flight.
pub struct Job {
    kind: Kind,
    id: String,
    created: u64,
    model_name: String,
    // Fields drop in order: the streams first, then the forks, then the
    // prompt's session, which then has no stream and goes into the cache.
    streams: Vec<TokenStream>,
    _sessions: Vec<Session>,
    model: Model,
    logprobs: bool,
    /// The tool format replies are read in, when the request lets the
    /// model call tools.
    tools: Option<Format>,
}

/// What one choice produced, for the non-streamed answer.
struct Choice {
    text: String,
    logprobs: Vec<Value>,
    finish: Option<Finish>,
}

impl Job {
    /// Prefill `prompt` once (from the prefix cache where it can), fork it
    /// for the other `n - 1` choices, and start every generation.
    pub fn start(
        kind: Kind,
        model_name: String,
        model: Model,
        prompt: &[u32],
        params: &Params,
        n: u32,
        tools: Option<Format>,
    ) -> Result<Self, ApiError> {
        let options = SessionOptions { context_length: None, seed: None, overflow: None };
        let first = queued(|| Session::open_cached(&model, options, prompt))?;
        let mut sessions = vec![first];
        for _ in 1..n {
            let fork = queued(|| sessions[0].fork())?;
            sessions.push(fork);
        }
        let streams = sessions
            .iter()
            .enumerate()
            .map(|(i, session)| {
                // With a seed, each choice still samples differently.
                let params = match params.as_raw().seed {
                    Some(seed) if i > 0 => params.clone().seed(seed.wrapping_add(i as u64)),
                    _ => params.clone(),
                };
                session.generate(&params)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Ok(Self {
            kind,
            id: format!("{prefix}-{:x}", now.as_nanos()),
            created: now.as_secs(),
            model_name,
            streams,
            _sessions: sessions,
            model,
            logprobs: params.as_raw().logprobs.is_some(),
            tools,
        })
    }

    /// Read every choice to its end: the non-streamed answer.
    pub fn collect(mut self) -> Result<Value, ApiError> {
        let mut choices = Vec::new();
        for i in 0..self.streams.len() {
            let mut choice = Choice { text: String::new(), logprobs: Vec::new(), finish: None };
            while let Some(chunk) = self.streams[i].next() {
                let chunk = chunk?;
                choice.text.push_str(&chunk.text);
                if self.logprobs {
                    choice.logprobs.extend(self.token_logprobs(&chunk));
                }
            }
            choice.finish = self.streams[i].finish().cloned();
            choices.push(choice);
        }
        let usage = usage(choices.iter().map(|c| c.finish.as_ref()));
        let choices: Vec<Value> = choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let logprobs = self.logprobs.then(|| self.logprobs_object(c.logprobs));
                match self.kind {
                    Kind::Chat => {
                        let parsed = match self.tools {
                            Some(format) => tool_calls::parse(format, &c.text),
                            None => Parsed { content: Some(c.text), calls: Vec::new() },
                        };
                        let mut message = json!({ "role": "assistant", "content": parsed.content, "refusal": null });
                        let finish = if parsed.calls.is_empty() {
                            finish_reason(c.finish.as_ref())
                        } else {
                            message["tool_calls"] = parsed.calls.iter().map(|c| c.to_json()).collect();
                            "tool_calls"
                        };
                        json!({ "index": index, "message": message, "logprobs": logprobs, "finish_reason": finish })
                    }
                    Kind::Text => {
                        let finish = finish_reason(c.finish.as_ref());
                        json!({ "index": index, "text": c.text, "logprobs": logprobs, "finish_reason": finish })
                    }
                }
            })
            .collect();
        let mut answer = self.envelope(if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" });
        answer["choices"] = Value::Array(choices);
        answer["usage"] = usage;
        Ok(answer)
    }

    /// What every answer and stream event starts with.
    fn envelope(&self, object: &str) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": null,
        })
    }

    /// The SSE events of the answer, one `data:` line each, generated as
    /// the body is sent: a chat's first event opens the assistant's turn;
    /// each choice's last one gives its finish reason; with
    /// `include_usage` an event with no choices carries the usage; the
    /// stream ends with `data: [DONE]`.
    pub fn events(self, include_usage: bool) -> Events {
        let n = self.streams.len();
        let readers = (0..n).map(|_| self.tools.map(Streamer::new)).collect();
        Events { job: self, include_usage, step: Step::Open, next: 0, done: vec![false; n], readers, queued: VecDeque::new() }
    }

    fn chunk_event(&self, choices: Vec<Value>, usage: Option<Value>) -> String {
        let mut event =
            self.envelope(if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" });
        event["choices"] = Value::Array(choices);
        if let Some(usage) = usage {
            event["usage"] = usage;
        }
        sse(&event)
    }

    /// The events that end a choice whose reply was read for tool calls:
    /// content not yet sent, then each call (its id, type and name first,
    /// then its arguments), then the finish reason.
    fn closing_events(&self, index: usize, parsed: Parsed, finish: &'static str) -> Vec<String> {
        let mut events = Vec::new();
        if let Some(content) = parsed.content {
            events.push(self.chunk_event(vec![self.choice_delta(index, Some(&content), None, None)], None));
        }
        for (k, call) in parsed.calls.iter().enumerate() {
            let opening = json!({ "index": k, "id": call.id, "type": "function", "function": { "name": call.name, "arguments": "" } });
            let arguments = json!({ "index": k, "function": { "arguments": call.arguments } });
            for delta in [opening, arguments] {
                let choice = json!({ "index": index, "delta": { "tool_calls": [delta] }, "logprobs": null, "finish_reason": null });
                events.push(self.chunk_event(vec![choice], None));
            }
        }
        let finish = if parsed.calls.is_empty() { finish } else { "tool_calls" };
        events.push(self.chunk_event(vec![self.choice_delta(index, None, None, Some(finish))], None));
        events
    }

    fn choice_delta(&self, index: usize, text: Option<&str>, logprobs: Option<Value>, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(text) => json!({ "content": text }),
                    None => json!({}),
                };
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
            Kind::Text => {
                json!({ "index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish })
            }
        }
    }

    /// Each token of `chunk` with its log-probability and alternatives, in
    /// the chat API's shape (`token`, `logprob`, `bytes`, `top_logprobs`).
    fn token_logprobs(&self, chunk: &Chunk) -> Vec<Value> {
        let piece = |token: u32| self.model.detokenize(&[token], false).unwrap_or_default();
        chunk
            .logprobs
            .iter()
            .map(|l| {
                let text = piece(l.token);
                let top: Vec<Value> = l
                    .top
                    .iter()
                    .map(|&(t, lp)| {
                        let text = piece(t);
                        json!({ "token": text, "logprob": lp, "bytes": text.as_bytes() })
                    })
                    .collect();
                json!({ "token": text, "logprob": l.logprob, "bytes": text.as_bytes(), "top_logprobs": top })
            })
            .collect()
    }

    /// The `logprobs` object of a choice: chat's `{"content": [...]}`, or
    /// the completions API's parallel lists.
    fn logprobs_object(&self, tokens: Vec<Value>) -> Value {
        match self.kind {
            Kind::Chat => json!({ "content": tokens, "refusal": null }),
            Kind::Text => {
                let mut offset = 0;
                let (mut texts, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
                for t in tokens {
                    let text = t["token"].as_str().unwrap_or_default().to_owned();
                    offsets.push(offset);
                    offset += text.len();
                    lps.push(t["logprob"].clone());
                    let top: serde_json::Map<String, Value> = t["top_logprobs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| (a["token"].as_str().unwrap_or_default().to_owned(), a["logprob"].clone()))
                        .collect();
                    tops.push(Value::Object(top));
                    texts.push(text);
                }
                json!({ "tokens": texts, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets })
            }
        }
    }
}

/// The SSE body of a streamed answer, as an iterator of events (each
/// `next` may wait for the host to generate the next token).
pub struct Events {
    job: Job,
    include_usage: bool,
    step: Step,
    /// The choice whose stream is read next (round-robin, so `n` choices
    /// stream side by side as the engine batches them).
    next: usize,
    done: Vec<bool>,
    /// Each choice's reply, read for tool calls as it streams (none
    /// without tools).
    readers: Vec<Option<Streamer>>,
    /// Events made and not yet sent (a choice's end can be several).
    queued: VecDeque<String>,
}

enum Step {
    Open,
    Tokens,
    Usage,
    Done,
    Ended,
}

impl Iterator for Events {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            match self.step {
                Step::Open => {
                    self.step = Step::Tokens;
                    if self.job.kind == Kind::Chat {
                        let choices = (0..self.done.len())
                            .map(|i| json!({ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }))
                            .collect();
                        return Some(self.job.chunk_event(choices, None));
                    }
                }
                Step::Tokens => {
                    let Some(i) =
                        (0..self.done.len()).map(|k| (self.next + k) % self.done.len()).find(|&i| !self.done[i])
                    else {
                        self.step = if self.include_usage { Step::Usage } else { Step::Done };
                        continue;
                    };
                    self.next = (i + 1) % self.done.len();
                    match self.job.streams[i].next() {
                        Some(Ok(chunk)) => {
                            let text = match &mut self.readers[i] {
                                Some(reader) => match reader.push(&chunk.text) {
                                    Some(text) => text,
                                    None => continue,
                                },
                                None => chunk.text.clone(),
                            };
                            let logprobs =
                                self.job.logprobs.then(|| self.job.logprobs_object(self.job.token_logprobs(&chunk)));
                            let choice = self.job.choice_delta(i, Some(&text), logprobs, None);
                            return Some(self.job.chunk_event(vec![choice], None));
                        }
                        Some(Err(e)) => {
                            // The status went out with the headers: the error becomes an event.
                            self.step = Step::Done;
                            return Some(sse(&ApiError::from(e).body()));
                        }
                        None => {
                            self.done[i] = true;
                            let finish = finish_reason(self.job.streams[i].finish());
                            if let Some(reader) = self.readers[i].take() {
                                self.queued.extend(self.job.closing_events(i, reader.finish(), finish));
                                continue;
                            }
                            let choice = self.job.choice_delta(i, None, None, Some(finish));
                            return Some(self.job.chunk_event(vec![choice], None));
                        }
                    }
                }
                Step::Usage => {
                    self.step = Step::Done;
                    let usage = usage(self.job.streams.iter().map(TokenStream::finish));
                    return Some(self.job.chunk_event(Vec::new(), Some(usage)));
                }
                Step::Done => {
                    self.step = Step::Ended;
                    return Some("data: [DONE]\n\n".to_owned());
                }
                Step::Ended => return None,
            }
        }
    }
}

/// How long a request waits for one of the model's sessions to come free
/// before it is answered 429.
const QUEUE_WAIT: Duration = Duration::from_secs(120);

/// Run `open`, waiting while every session of the model is in use (the
/// host answers `limit-exceeded` "sessions" at once): requests beyond the
/// host's sessions queue, as llama-server's beyond its slots do.
fn queued<T>(open: impl Fn() -> Result<T, Error>) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        match open() {
            Err(Error::Llm(LlmError::LimitExceeded(limit)))
                if limit.name == "sessions" && start.elapsed() < QUEUE_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// One SSE event.
fn sse(value: &Value) -> String {
    format!("data: {value}\n\n")
}

/// OpenAI's two finish reasons: `stop` (end of turn, a stop string, a
/// cancel) and `length` (the token budget or the context ran out).
fn finish_reason(finish: Option<&Finish>) -> &'static str {
    match finish.map(|f| &f.reason) {
        Some(FinishReason::MaxTokens | FinishReason::ContextFull) => "length",
        _ => "stop",
    }
}

/// The request's usage: the prompt counted once (the choices share its
/// prefill), with the tokens the prefix cache supplied; every choice's
/// generated tokens.
fn usage<'a>(finishes: impl Iterator<Item = Option<&'a Finish>>) -> Value {
    let finishes: Vec<_> = finishes.flatten().collect();
    let prompt = finishes.first().map_or(0, |f| f.usage.prompt_tokens);
    let cached = finishes.first().map_or(0, |f| f.usage.cached_tokens);
    let completion: u32 = finishes.iter().map(|f| f.usage.generated_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}
