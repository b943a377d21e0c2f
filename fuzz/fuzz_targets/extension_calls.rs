//! Arbitrary sequences of the extension's calls, with arbitrary arguments,
//! against the real engine and SmolLM2, through the very host functions a
//! guest reaches (`wit.rs`): nothing may panic or abort, every answer must
//! be well formed, and once the instance's handles are gone its quota and
//! every session slot must be free again.
//!
//! Run: `make fuzz` (see the README). The model comes from the cache that
//! `scripts/bootstrap.sh` fills (or `WASI_NN_LLM_FUZZ_MODEL`).

#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi_nn::Graph;
use wasi_nn_llm_host::engine::{EngineConfig, Quota, Session, SessionOptions, TokenStream};
use wasi_nn_llm_host::policy::{Identity, Policy};
use wasi_nn_llm_host::catalog::ModelSpec;
use wasi_nn_llm_host::registry::{Access, Models};
use wasi_nn_llm_host::wit::bindings::wasi_nn_llm::llm::model::Host as _;
use wasi_nn_llm_host::wit::bindings::wasi_nn_llm::llm::session::{HostSession, HostTokenStream};
use wasi_nn_llm_host::wit::bindings::wasi_nn_llm::llm::types;
use wasi_nn_llm_host::wit::{LlmCtx, LlmView};

const MODEL: &str = "smollm2";
const POLICY: &str = "[limits]\ninstance-sessions = 6\ngenerate-tokens = 48\nconcurrent-generations = 3\ngenerate-seconds = 5\n";

struct Fixture {
    models: Arc<Models>,
    policy: Policy,
    n_vocab: u32,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = std::env::var_os("WASI_NN_LLM_FUZZ_MODEL").map(Into::into).unwrap_or_else(|| {
            wasi_nn_llm_host::catalog::named(MODEL).expect("the cached model")
        });
        // Small contexts keep each input fast; two lanes exercise cross-lane forks.
        let config = EngineConfig { threads: 2, ctx_size: 256, max_sessions: 4, gpu_layers: Some(0), lanes: Some(2), ..EngineConfig::default() };
        let models = Models::load(&[ModelSpec::new(MODEL, path)], &config).expect("loading the model");
        let n_vocab = models.engine(MODEL).expect("loaded").model().n_vocab() as u32;
        Fixture { models, policy: Policy::parse(POLICY).expect("policy"), n_vocab }
    })
}

/// Text, capped so one input stays fast.
#[derive(Debug)]
struct Text(String);

impl<'a> Arbitrary<'a> for Text {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let s: String = u.arbitrary()?;
        Ok(Self(s.chars().take(160).collect()))
    }
}

/// Token ids: mostly plausible, sometimes anything.
#[derive(Debug)]
struct Tokens(Vec<u32>);

impl<'a> Arbitrary<'a> for Tokens {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = u.int_in_range(0..=48)?;
        let ids = (0..n)
            .map(|_| Ok(if u.ratio(7, 8)? { u.int_in_range(0..=50_000)? } else { u.arbitrary()? }))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Self(ids))
    }
}

#[derive(Arbitrary, Debug)]
enum Constraint {
    Grammar(Text),
    JsonSchema(Text),
    /// Well-formed ones, so the constrained sampling path runs too.
    Digits,
    Object,
}

#[derive(Arbitrary, Debug)]
struct Params {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_k: Option<u32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    penalty_last_n: Option<u32>,
    seed: Option<u64>,
    logit_bias: Vec<(u32, f32)>,
    stop: Vec<Text>,
    constraint: Option<Constraint>,
    logprobs: Option<u32>,
}

impl From<Params> for types::GenerateParams {
    fn from(p: Params) -> Self {
        let constraint = p.constraint.map(|c| match c {
            Constraint::Grammar(g) => types::Constraint::Grammar(g.0),
            Constraint::JsonSchema(s) => types::Constraint::JsonSchema(s.0),
            Constraint::Digits => types::Constraint::Grammar("root ::= [0-9]+".into()),
            Constraint::Object => types::Constraint::JsonSchema(r#"{"type":"object","properties":{"a":{"type":"integer"}}}"#.into()),
        });
        Self {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            presence_penalty: p.presence_penalty,
            frequency_penalty: p.frequency_penalty,
            penalty_last_n: p.penalty_last_n,
            seed: p.seed,
            logit_bias: p.logit_bias.into_iter().take(16).collect(),
            stop: p.stop.into_iter().take(4).map(|s| s.0).collect(),
            constraint,
            logprobs: p.logprobs,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Blob {
    /// A blob this input saved, optionally damaged at one byte, or cut.
    Saved { which: u8, flip: Option<(u32, u8)>, cut: Option<u32> },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open { context: Option<u16>, seed: Option<u64>, shift: Option<u16> },
    Append { s: u8, text: Text },
    AppendTokens { s: u8, tokens: Tokens },
    Generate { s: u8, params: Params },
    Next { t: u8 },
    NextChunk { t: u8, max: u32 },
    TryNext { t: u8 },
    Finish { t: u8 },
    Cancel { t: u8 },
    DropStream { t: u8 },
    Rewind { s: u8, n: u32 },
    Reset { s: u8 },
    Fork { s: u8 },
    Save { s: u8 },
    Restore { blob: Blob },
    DropSession { s: u8 },
    Inspect { s: u8 },
    Tokenize { text: Text, add_special: bool, parse_special: bool },
    Detokenize { tokens: Tokens, render_special: bool },
    CountTokens { text: Text },
    Template { messages: Vec<(Text, Text)>, add_assistant: bool },
    Info,
}

/// What one fuzz input holds, as a guest would: handles in a resource table.
struct Instance {
    table: ResourceTable,
    ctx: LlmCtx,
    quota: Arc<Quota>,
    graph: u32,
    sessions: Vec<u32>,
    streams: Vec<u32>,
    blobs: Vec<Vec<u8>>,
}

fn pick(handles: &[u32], i: u8) -> Option<u32> {
    (!handles.is_empty()).then(|| handles[i as usize % handles.len()])
}

fn session(rep: u32) -> Resource<Session> {
    Resource::new_borrow(rep)
}

fn stream(rep: u32) -> Resource<TokenStream> {
    Resource::new_borrow(rep)
}

impl Instance {
    fn new(f: &Fixture) -> Self {
        let who = Identity { name: "fuzz".into(), digest: String::new() };
        let quota = Quota::new(f.policy.limits.quota());
        let access = Access::new(&f.models, &f.policy, &who, quota.clone());
        let graph: Graph = access.nn_registry().get(MODEL).cloned().expect("the model is registered");
        let mut table = ResourceTable::new();
        let graph = table.push(graph).expect("table").rep();
        Self { table, ctx: LlmCtx::new(access), quota, graph, sessions: Vec::new(), streams: Vec::new(), blobs: Vec::new() }
    }

    fn view(&mut self) -> LlmView<'_> {
        LlmView::new(&mut self.table, &mut self.ctx)
    }

    fn graph(&self) -> Resource<Graph> {
        Resource::new_borrow(self.graph)
    }

    /// A chunk must hold valid ids; the text is a String by type.
    fn check_chunk(chunk: &Option<types::Chunk>, n_vocab: u32) {
        if let Some(c) = chunk {
            assert!(c.tokens.iter().all(|&t| t < n_vocab), "a chunk carries a token outside the vocabulary: {c:?}");
            assert!(!c.tokens.is_empty() || c.text.is_empty(), "text without tokens: {c:?}");
        }
    }

    fn apply(&mut self, op: Op, n_vocab: u32) {
        let graph = self.graph();
        match op {
            Op::Open { context, seed, shift } => {
                let options = types::SessionOptions {
                    context_length: context.map(u32::from),
                    seed,
                    overflow: shift.map(|k| types::OverflowPolicy::Shift(k.into())),
                };
                if let Ok(Ok(s)) = self.view().open(graph, options) {
                    self.sessions.push(s.rep());
                }
            }
            Op::Append { s, text } => {
                if let Some(s) = pick(&self.sessions, s) {
                    let _ = self.view().append(session(s), text.0);
                }
            }
            Op::AppendTokens { s, tokens } => {
                if let Some(s) = pick(&self.sessions, s) {
                    let _ = self.view().append_tokens(session(s), tokens.0);
                }
            }
            Op::Generate { s, params } => {
                if let Some(s) = pick(&self.sessions, s)
                    && let Ok(Ok(t)) = self.view().generate(session(s), params.into())
                {
                    self.streams.push(t.rep());
                }
            }
            Op::Next { t } => {
                if let Some(t) = pick(&self.streams, t)
                    && let Ok(Ok(chunk)) = self.view().next(stream(t))
                {
                    Self::check_chunk(&chunk, n_vocab);
                }
            }
            Op::NextChunk { t, max } => {
                if let Some(t) = pick(&self.streams, t)
                    && let Ok(Ok(chunk)) = self.view().next_chunk(stream(t), max)
                {
                    if let Some(c) = &chunk {
                        assert!(c.tokens.len() <= max as usize, "next-chunk gave more than {max} tokens");
                    }
                    Self::check_chunk(&chunk, n_vocab);
                }
            }
            Op::TryNext { t } => {
                if let Some(t) = pick(&self.streams, t)
                    && let Ok(Ok(chunk)) = self.view().try_next(stream(t))
                {
                    Self::check_chunk(&chunk, n_vocab);
                }
            }
            Op::Finish { t } => {
                if let Some(t) = pick(&self.streams, t) {
                    let _ = HostTokenStream::finish(&mut self.view(), stream(t));
                }
            }
            Op::Cancel { t } => {
                if let Some(t) = pick(&self.streams, t) {
                    let _ = HostTokenStream::cancel(&mut self.view(), stream(t));
                }
            }
            Op::DropStream { t } => {
                if let Some(t) = pick(&self.streams, t) {
                    self.streams.retain(|&x| x != t);
                    HostTokenStream::drop(&mut self.view(), Resource::new_own(t)).expect("dropping a live stream");
                }
            }
            Op::Rewind { s, n } => {
                if let Some(s) = pick(&self.sessions, s) {
                    let _ = self.view().rewind(session(s), n);
                }
            }
            Op::Reset { s } => {
                if let Some(s) = pick(&self.sessions, s) {
                    let _ = self.view().reset(session(s));
                }
            }
            Op::Fork { s } => {
                if let Some(s) = pick(&self.sessions, s)
                    && let Ok(Ok(child)) = self.view().fork(session(s))
                {
                    self.sessions.push(child.rep());
                }
            }
            Op::Save { s } => {
                if let Some(s) = pick(&self.sessions, s)
                    && let Ok(Ok(blob)) = self.view().save(session(s))
                    && self.blobs.len() < 4
                {
                    self.blobs.push(blob);
                }
            }
            Op::Restore { blob } => {
                let bytes = match blob {
                    Blob::Raw(b) => b,
                    Blob::Saved { which, flip, cut } => {
                        let Some(mut b) = (!self.blobs.is_empty()).then(|| self.blobs[which as usize % self.blobs.len()].clone())
                        else {
                            return;
                        };
                        if let Some((at, bits)) = flip
                            && !b.is_empty()
                        {
                            let i = at as usize % b.len();
                            b[i] ^= bits;
                        }
                        if let Some(cut) = cut {
                            b.truncate(cut as usize % (b.len() + 1));
                        }
                        b
                    }
                };
                if let Ok(Ok(s)) = self.view().restore(graph, bytes) {
                    self.sessions.push(s.rep());
                }
            }
            Op::DropSession { s } => {
                if let Some(s) = pick(&self.sessions, s) {
                    self.sessions.retain(|&x| x != s);
                    HostSession::drop(&mut self.view(), Resource::new_own(s)).expect("dropping a live session");
                }
            }
            Op::Inspect { s } => {
                if let Some(s) = pick(&self.sessions, s) {
                    let mut view = self.view();
                    let len = view.len(session(s)).expect("len");
                    let limit = view.context_limit(session(s)).expect("context-limit");
                    let tokens = view.tokens(session(s)).expect("tokens");
                    // A running generation may add tokens between the calls
                    // (or a context shift drop some), so the two need not agree.
                    assert!(len <= limit, "a session holds {len} tokens over its {limit}-token limit");
                    assert!(tokens.len() as u32 <= limit, "tokens() holds {} over {limit}", tokens.len());
                    assert!(tokens.iter().all(|&t| t < n_vocab));
                }
            }
            Op::Tokenize { text, add_special, parse_special } => {
                if let Ok(Ok(ids)) = self.view().tokenize(graph, text.0, add_special, parse_special) {
                    assert!(ids.iter().all(|&t| t < n_vocab));
                }
            }
            Op::Detokenize { tokens, render_special } => {
                let _ = self.view().detokenize(graph, tokens.0, render_special);
            }
            Op::CountTokens { text } => {
                let _ = self.view().count_tokens(graph, text.0);
            }
            Op::Template { messages, add_assistant } => {
                let messages = messages
                    .into_iter()
                    .take(8)
                    .map(|(role, content)| types::Message { role: role.0, content: content.0 })
                    .collect();
                let _ = self.view().apply_chat_template(graph, messages, add_assistant);
            }
            Op::Info => {
                let info = self.view().model_info(graph).expect("model-info").expect("model-info");
                assert_eq!(info.vocab_size, n_vocab);
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let f = fixture();
    let mut instance = Instance::new(f);
    for op in ops.into_iter().take(48) {
        instance.apply(op, f.n_vocab);
    }
    // The instance ends: its handles go, and with them everything it held.
    let quota = instance.quota.clone();
    drop(instance);
    assert_eq!(quota.held(), (0, 0), "sessions or KV bytes outlived the instance");
    let engine = f.models.engine(MODEL).expect("loaded");
    let unlimited = Quota::unlimited();
    let all: Vec<_> = (0..engine.max_sessions())
        .map(|i| engine.open_session(&SessionOptions::default(), &unlimited).unwrap_or_else(|e| panic!("slot {i} leaked: {e}")))
        .collect();
    drop(all);
    // Every close handled before the next input (or the process exit).
    f.models.quiesce();
});
