//! One completion request on the extension: the prompt goes into a session
//! from the host's prefix cache (only what an earlier request did not
//! leave there is evaluated), `n` choices fork it (one prefill for all),
//! and the streams are read either to one JSON answer or as SSE events.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::Stream;

use serde_json::{Value, json};
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::Error as LlmError;
use wasi_nn_llm::reasoning;
use wasi_nn_llm::tool_calls::Format;
use wasi_nn_llm::{Chunk, Error, Finish, FinishReason, Model, Params};

use crate::error::ApiError;
use crate::host::Host;
use crate::reply::{self, End, Reader};

/// Which endpoint's shapes to answer in.
#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    /// `/v1/chat/completions`: `message`/`delta` objects.
    Chat,
    /// `/v1/completions`: `text`.
    Text,
}

/// How a chat's replies are read: the tool format, whether the prompt
/// opened a reasoning block, and its budget.
pub struct Reading {
    pub tools: Option<Format>,
    pub open: bool,
    pub budget: Option<u32>,
}

/// A request's generations in flight, on front door `H`'s sessions.
pub struct Job<H: Host> {
    kind: Kind,
    id: String,
    created: u64,
    model_name: String,
    /// Fields drop in order: the choices (their streams) first, then the
    /// forks, then the prompt's session, which then has no stream and goes
    /// into the cache.
    choices: Vec<Choice<H>>,
    /// Each choice's session, the prompt's first.
    sessions: Vec<H::Session>,
    model: Model,
    logprobs: bool,
    /// Which tier of the host's cache gave the prompt's prefix, where the
    /// front door's session says.
    cached_from: Option<&'static str>,
}

/// One choice in flight.
struct Choice<H: Host> {
    /// Its generation; none once it has ended.
    stream: Option<H::Generation>,
    /// Its reader (chats only).
    reader: Option<Reader>,
    /// What it is generated with, again after a reasoning block is closed
    /// for it.
    params: Params,
    /// Tokens its finished generations report (so also what is left of
    /// `max_tokens` when it is restarted), its tokens of reasoning once it
    /// has ended, and its first generation's prompt usage.
    generated: u32,
    reasoning: u32,
    prompt: Option<(u32, u32)>,
}

/// What a choice produced next.
pub enum Out {
    /// Text as it came; `logprobs` per token where asked.
    Piece { reasoning: String, content: String, logprobs: Vec<Value> },
    /// Its end: what was held back, its calls, and the finish reason.
    End { end: Option<End>, finish: &'static str },
}

impl<H: Host> Job<H> {
    /// Prefill `prompt` once (from the prefix cache where it can), fork it
    /// for the other `n - 1` choices, and start every generation. A chat
    /// is read as `reading` says; a prompt that opened a reasoning block
    /// while a grammar holds the answer generates the block free, to
    /// `</think>`, and the answer under the grammar after it.
    pub async fn start(
        kind: Kind,
        model_name: String,
        model: Model,
        prompt: &[u32],
        params: &Params,
        n: u32,
        reading: Option<Reading>,
    ) -> Result<Self, ApiError> {
        let first = queued::<H, _, _>(n, || H::open_cached(&model, prompt)).await?;
        let cached_from = H::cached_from(&first);
        let mut sessions = vec![first];
        for _ in 1..n {
            let prompt_session = &sessions[0];
            let fork = queued::<H, _, _>(n, || H::fork(prompt_session)).await?;
            sessions.push(fork);
        }
        let split_block = reading.as_ref().is_some_and(|r| r.open && params.as_raw().constraint.is_some());
        let choices = sessions
            .iter()
            .enumerate()
            .map(|(i, session)| {
                let params = match params.as_raw().seed {
                    // With a seed, each choice still samples differently.
                    Some(seed) if i > 0 => params.clone().seed(seed.wrapping_add(i as u64)),
                    _ => params.clone(),
                };
                let first =
                    if split_block { params.clone().unconstrained().stop(reasoning::CLOSE) } else { params.clone() };
                Ok(Choice {
                    stream: Some(H::generate(session, &first)?),
                    reader: reading.as_ref().map(|r| Reader::new(r.open, r.tools, r.budget)),
                    params,
                    generated: 0,
                    reasoning: 0,
                    prompt: None,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        Ok(Self {
            kind,
            id: format!("{prefix}-{:x}", now.as_nanos()),
            created: now.as_secs(),
            model_name,
            choices,
            sessions,
            model,
            logprobs: params.as_raw().logprobs.is_some(),
            cached_from,
        })
    }

    /// Choice `i`'s next output: a piece of text, its end once, then none.
    pub async fn advance(&mut self, i: usize) -> Result<Option<Out>, ApiError> {
        loop {
            let Some(stream) = &mut self.choices[i].stream else { return Ok(None) };
            match H::next(stream).await {
                Some(Ok(chunk)) => {
                    let logprobs = if self.logprobs { self.token_logprobs(&chunk) } else { Vec::new() };
                    let read = match &mut self.choices[i].reader {
                        Some(reader) => reader.read(&chunk.text, chunk.tokens.len() as u32),
                        None => reply::Read { content: chunk.text.clone(), ..Default::default() },
                    };
                    if read.close && !self.restart(i, true).await? {
                        return Ok(Some(Out::End { end: self.end_reading(i), finish: "length" }));
                    }
                    if read.reasoning.is_empty() && read.content.is_empty() {
                        continue;
                    }
                    return Ok(Some(Out::Piece { reasoning: read.reasoning, content: read.content, logprobs }));
                }
                Some(Err(e)) => {
                    self.choices[i].stream = None;
                    return Err(e.into());
                }
                None => {
                    let stream = self.choices[i].stream.take().expect("a stream was just read");
                    let finish = H::end(stream).await?;
                    self.account(i, finish.as_ref());
                    let stopped_at_close = matches!(
                        finish.as_ref().map(|f| &f.reason),
                        Some(FinishReason::Stop(s)) if s == reasoning::CLOSE
                    );
                    let thinking = self.choices[i].reader.as_ref().is_some_and(Reader::thinking);
                    if thinking && stopped_at_close && self.restart(i, false).await? {
                        continue;
                    }
                    let finish = finish_reason(finish.as_ref());
                    return Ok(Some(Out::End { end: self.end_reading(i), finish }));
                }
            }
        }
    }

    /// Close choice `i`'s reasoning block for the model (its budget spent,
    /// or its stop string hit) and start the answer's generation with what
    /// is left of `max_tokens`. False if nothing is left.
    async fn restart(&mut self, i: usize, budget_spent: bool) -> Result<bool, ApiError> {
        if let Some(stream) = self.choices[i].stream.take() {
            let finish = H::cancel(stream).await;
            self.account(i, finish.as_ref());
        }
        let choice = &mut self.choices[i];
        if let Some(reader) = &mut choice.reader {
            reader.close();
        }
        let mut params = choice.params.clone();
        if let Some(max) = params.as_raw().max_tokens {
            let left = max.saturating_sub(choice.generated);
            if left == 0 {
                return Ok(false);
            }
            params = params.max_tokens(left);
        }
        H::append(&self.sessions[i], &reply::closing(budget_spent)).await?;
        choice.stream = Some(H::generate(&self.sessions[i], &params)?);
        Ok(true)
    }

    /// Choice `i`'s reply read to its end.
    fn end_reading(&mut self, i: usize) -> Option<End> {
        let end = self.choices[i].reader.take().map(Reader::end)?;
        self.choices[i].reasoning = end.reasoning_tokens;
        Some(end)
    }

    /// Let the sessions go (into the host's prefix cache, and from there to
    /// a shared tier other hosts read) once every choice has ended: before
    /// the answer's last event, so a client that sends its next turn the
    /// moment this one ends finds the conversation kept, wherever the next
    /// turn lands. The usage stays.
    pub fn release(&mut self) {
        for choice in &mut self.choices {
            choice.stream = None;
        }
        self.sessions.clear();
    }

    /// Keep `note` under `key` with the first choice's conversation, for a
    /// later request to continue it (`previous_response_id`); whether the
    /// host keeps it.
    pub fn keep_note(&self, key: &str, note: &[u8]) -> bool {
        H::keep_note(&self.sessions[0], key, note).is_ok()
    }

    /// Note a finished generation's usage: its tokens, and the prompt's
    /// from a choice's first.
    fn account(&mut self, i: usize, finish: Option<&Finish>) {
        if let Some(f) = finish {
            let choice = &mut self.choices[i];
            choice.generated += f.usage.generated_tokens;
            choice.prompt.get_or_insert((f.usage.prompt_tokens, f.usage.cached_tokens));
        }
    }

    /// Read every choice to its end: the non-streamed answer.
    pub async fn collect(&mut self) -> Result<Value, ApiError> {
        let mut choices = Vec::new();
        for index in 0..self.choices.len() {
            let (mut reasoning, mut content, mut logprobs) = (String::new(), String::new(), Vec::new());
            let (mut calls, mut finish) = (Vec::new(), "stop");
            while let Some(out) = self.advance(index).await? {
                match out {
                    Out::Piece { reasoning: r, content: c, logprobs: l } => {
                        reasoning.push_str(&r);
                        content.push_str(&c);
                        logprobs.extend(l);
                    }
                    Out::End { end, finish: f } => {
                        finish = f;
                        if let Some(end) = end {
                            reasoning.push_str(&end.reasoning);
                            content.push_str(end.content.as_deref().unwrap_or_default());
                            calls = end.calls;
                        }
                    }
                }
            }
            let logprobs = self.logprobs.then(|| self.logprobs_object(logprobs));
            choices.push(match self.kind {
                Kind::Chat => {
                    let content = if content.is_empty() && !calls.is_empty() { None } else { Some(content) };
                    let mut message = json!({ "role": "assistant", "content": content, "refusal": null });
                    if !reasoning.is_empty() {
                        message["reasoning_content"] = json!(reasoning);
                    }
                    if !calls.is_empty() {
                        message["tool_calls"] = calls.iter().map(|c| c.to_json()).collect();
                        finish = "tool_calls";
                    }
                    json!({ "index": index, "message": message, "logprobs": logprobs, "finish_reason": finish })
                }
                Kind::Text => json!({ "index": index, "text": content, "logprobs": logprobs, "finish_reason": finish }),
            });
        }
        let mut answer = self.envelope(if self.kind == Kind::Chat { "chat.completion" } else { "text_completion" });
        answer["choices"] = Value::Array(choices);
        answer["usage"] = self.usage();
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
    /// reasoning goes out as `reasoning_content` deltas, text as `content`;
    /// a tool call whole when written (id, type and name, then its
    /// arguments); each choice's last event gives its finish reason; with
    /// `include_usage` an event with no choices carries the usage; the
    /// stream ends with `data: [DONE]`.
    pub fn events(self, include_usage: bool) -> impl Stream<Item = String> + 'static {
        let n = self.choices.len();
        let events = Events {
            job: self,
            include_usage,
            step: Step::Open,
            next: 0,
            done: vec![false; n],
            queued: VecDeque::new(),
        };
        futures_lite::stream::unfold(events, |mut events| async move { events.next().await.map(|e| (e, events)) })
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

    /// A choice's events for one output.
    fn out_events(&self, index: usize, out: Out) -> Vec<String> {
        let mut events = Vec::new();
        let mut text = |reasoning: &str, content: &str, logprobs: Option<Value>| {
            for (key, text) in [("reasoning_content", reasoning), ("content", content)] {
                if text.is_empty() {
                    continue;
                }
                let choice = match self.kind {
                    Kind::Chat => {
                        json!({ "index": index, "delta": { key: text }, "logprobs": logprobs, "finish_reason": null })
                    }
                    Kind::Text => json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": null }),
                };
                events.push(self.chunk_event(vec![choice], None));
            }
        };
        match out {
            Out::Piece { reasoning, content, logprobs } => {
                let logprobs = self.logprobs.then(|| self.logprobs_object(logprobs));
                text(&reasoning, &content, logprobs);
            }
            Out::End { end, finish } => {
                let mut finish = finish;
                if let Some(end) = end {
                    text(&end.reasoning, end.content.as_deref().unwrap_or_default(), None);
                    for (k, call) in end.calls.iter().enumerate() {
                        let opening = json!({ "index": k, "id": call.id, "type": "function", "function": { "name": call.name, "arguments": "" } });
                        let arguments = json!({ "index": k, "function": { "arguments": call.arguments } });
                        for delta in [opening, arguments] {
                            let choice = json!({ "index": index, "delta": { "tool_calls": [delta] }, "logprobs": null, "finish_reason": null });
                            events.push(self.chunk_event(vec![choice], None));
                        }
                    }
                    if !end.calls.is_empty() {
                        finish = "tool_calls";
                    }
                }
                let choice = match self.kind {
                    Kind::Chat => json!({ "index": index, "delta": {}, "logprobs": null, "finish_reason": finish }),
                    Kind::Text => json!({ "index": index, "text": "", "logprobs": null, "finish_reason": finish }),
                };
                events.push(self.chunk_event(vec![choice], None));
            }
        }
        events
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

/// The SSE body of a streamed answer, event by event (each `next` may wait
/// for the host to generate the next token).
struct Events<H: Host> {
    job: Job<H>,
    include_usage: bool,
    step: Step,
    /// The choice whose stream is read next (round-robin, so `n` choices
    /// stream side by side as the engine batches them).
    next: usize,
    done: Vec<bool>,
    /// Events made and not yet sent (one output can make several).
    queued: VecDeque<String>,
}

enum Step {
    Open,
    Tokens,
    Usage,
    Done,
    Ended,
}

impl<H: Host> Events<H> {
    async fn next(&mut self) -> Option<String> {
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
                    match self.job.advance(i).await {
                        Ok(Some(out)) => {
                            if matches!(out, Out::End { .. }) {
                                self.done[i] = true;
                            }
                            let events = self.job.out_events(i, out);
                            self.queued.extend(events);
                        }
                        Ok(None) => self.done[i] = true,
                        Err(e) => {
                            // The status went out with the headers: the error becomes an event.
                            self.step = Step::Done;
                            return Some(sse(&e.body()));
                        }
                    }
                }
                Step::Usage => {
                    self.step = Step::Done;
                    return Some(self.job.chunk_event(Vec::new(), Some(self.job.usage())));
                }
                Step::Done => {
                    self.step = Step::Ended;
                    self.job.release();
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
/// host's sessions queue, as llama-server's beyond its slots do. So does a
/// request on a reused instance whose other requests hold its quota
/// (`instance-sessions`), if the `needed` sessions fit the quota at all.
/// The wait is the front door's: a reused instance goes on serving its
/// other requests meanwhile.
async fn queued<H: Host, T, F: Future<Output = Result<T, Error>>>(
    needed: u32,
    open: impl Fn() -> F,
) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        match open().await {
            Err(Error::Llm(LlmError::LimitExceeded(limit)))
                if (limit.name == "sessions"
                    || (limit.name == "instance-sessions" && u64::from(needed) <= limit.max))
                    && start.elapsed() < QUEUE_WAIT =>
            {
                H::sleep(Duration::from_millis(10)).await;
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

impl<H: Host> Job<H> {
    /// The request's usage: the prompt counted once (the choices share its
    /// prefill), with the tokens the prefix cache supplied; every choice's
    /// generated tokens, over all its generations.
    pub fn usage(&self) -> Value {
        let (prompt, cached) = self.choices.iter().find_map(|c| c.prompt).unwrap_or((0, 0));
        let completion: u32 = self.choices.iter().map(|c| c.generated).sum();
        let mut usage = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": { "cached_tokens": cached },
            "completion_tokens_details": { "reasoning_tokens": self.choices.iter().map(|c| c.reasoning).sum::<u32>() },
        });
        // Beside OpenAI's fields: which cache tier gave the cached tokens
        // (`local`, or `shared` when another host kept the conversation).
        if let Some(tier) = self.cached_from.filter(|_| cached > 0) {
            usage["prompt_tokens_details"]["cached_from"] = json!(tier);
        }
        usage
    }
}
