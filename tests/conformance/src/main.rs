//! Conformance suite for hosts of the `wasi-nn-llm:llm` world.
//!
//! Run inside the host under test with one model registered (any LLM):
//! `conformance MODEL`. Every check prints one JSON line: its id, the
//! normative statement it checks (MUST or SHOULD, as in RFC 2119), and the
//! outcome. Checks that need an exact output make it independent of the
//! model with a grammar: `root ::= "ab" "cd"` can only ever produce `abcd`.
//! The runner (`tests/conformance.rs`) fails on any failed MUST.

use serde_json::json;
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::{Error as LlmError, SnapshotError};
use wasi_nn_llm::{
    EmbedInput, EmbedOptions, Error, FinishReason, Model, OverflowPolicy, Params, Session, SessionOptions, TokenStream,
    Usage, poll,
};

/// Requirement levels of RFC 2119.
#[derive(Clone, Copy)]
enum Level {
    Must,
    Should,
}

/// Why a check failed; `?` turns any extension error into one.
struct Fail(String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self(e.to_string())
    }
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

struct Suite {
    failed_musts: usize,
}

impl Suite {
    /// Record one check: `ok` is the outcome, `detail` what was seen.
    fn check(&mut self, id: &str, level: Level, statement: &str, outcome: Result<(), Fail>) {
        let level = match level {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
        };
        if outcome.is_err() && level == "MUST" {
            self.failed_musts += 1;
        }
        let detail = outcome.as_ref().err().map(|f| f.0.clone()).unwrap_or_default();
        println!(
            "{}",
            json!({ "id": id, "level": level, "statement": statement, "pass": outcome.is_ok(), "detail": detail })
        );
    }
}

fn expect(cond: bool, detail: impl FnOnce() -> String) -> Result<(), Fail> {
    if cond { Ok(()) } else { Err(Fail(detail())) }
}

fn greedy(max: u32) -> Params {
    Params::greedy().max_tokens(max)
}

/// Read a stream to the end: its text, tokens and finish reason.
fn drain(mut stream: TokenStream) -> Result<(String, Vec<u32>, FinishReason, u32), Error> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    for chunk in &mut stream {
        let chunk = chunk?;
        text.push_str(&chunk.text);
        tokens.extend(chunk.tokens);
    }
    let finish = stream.finish().cloned().expect("an exhausted stream has finished");
    Ok((text, tokens, finish.reason, finish.usage.generated_tokens))
}

/// Read a stream to the end for its usage.
fn usage(mut stream: TokenStream) -> Result<Usage, Error> {
    for chunk in &mut stream {
        chunk?;
    }
    Ok(stream.finish().cloned().expect("an exhausted stream has finished").usage)
}

/// Session options with every field left to the host.
const DEFAULTS: SessionOptions = SessionOptions { context_length: None, seed: None, overflow: None };

fn session(model: &Model, prompt: &str) -> Result<Session, Error> {
    let s = Session::open(model)?;
    s.append(prompt)?;
    Ok(s)
}

const PROMPT: &str = "The quick brown fox";
const ABCD: &str = r#"root ::= "ab" "cd""#;

fn llm_error(result: Result<impl std::fmt::Debug, Error>, matches: impl Fn(&LlmError) -> bool) -> Result<(), Fail> {
    match result {
        Err(Error::Llm(e)) if matches(&e) => Ok(()),
        other => Err(Fail(format!("got {other:?}"))),
    }
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "conformance".into());
    let model = match Model::load(&name) {
        Ok(m) => m,
        Err(e) => {
            println!(
                "{}",
                json!({ "id": "setup", "level": "MUST", "statement": "load-by-name finds the model", "pass": false, "detail": e.to_string() })
            );
            std::process::exit(1);
        }
    };
    let mut suite = Suite { failed_musts: 0 };
    let s = &mut suite;
    let m = &model;

    // --- generation ---------------------------------------------------
    s.check(
        "generate.greedy-determinism",
        Level::Must,
        "generate with temperature 0 MUST produce the same tokens for sessions holding the same tokens",
        (|| -> Result<(), Fail> {
            let a = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16)))?)?;
            let b = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16)))?)?;
            expect(!a.1.is_empty() && a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check(
        "generate.seed-determinism",
        Level::Must,
        "generate with the same seed and sampling parameters MUST produce the same tokens",
        (|| -> Result<(), Fail> {
            let p = Params::new().temperature(1.0).seed(7).max_tokens(16);
            let a = drain(session(m, PROMPT).and_then(|s| s.generate(&p))?)?;
            let b = drain(session(m, PROMPT).and_then(|s| s.generate(&p))?)?;
            expect(!a.1.is_empty() && a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check(
        "stream.utf8",
        Level::Must,
        "the concatenated chunk texts MUST equal detokenize of the chunk tokens",
        (|| -> Result<(), Fail> {
            let (text, tokens, ..) =
                drain(session(m, "Écris une phrase en japonais : 日本語").and_then(|s| s.generate(&greedy(32)))?)?;
            let detok = m.detokenize(&tokens, false)?;
            expect(text == detok, || format!("{text:?} vs {detok:?}"))
        })(),
    );
    s.check(
        "finish.max-tokens",
        Level::Must,
        "a generation that produces max-tokens tokens MUST finish with max-tokens and report them as generated",
        (|| -> Result<(), Fail> {
            let (_, tokens, reason, generated) =
                drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(5).grammar(r#"root ::= [a-z]+"#)))?)?;
            expect(reason == FinishReason::MaxTokens && tokens.len() == 5 && generated == 5, || {
                format!("{reason:?}, {} tokens, generated {generated}", tokens.len())
            })
        })(),
    );
    s.check("finish.end-of-sequence", Level::Must,
        "a generation that ends with an end-of-generation token MUST finish with end-of-sequence, not an error, and MUST NOT deliver that token's text",
        (|| -> Result<(), Fail> {
            let (text, _, reason, _) = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16).grammar(ABCD)))?)?;
            expect(reason == FinishReason::EndOfSequence && text == "abcd", || format!("{reason:?}, {text:?}"))
        })());
    s.check("finish.stop", Level::Must,
        "a generation that produces a stop string MUST finish with stop(that string) and MUST NOT deliver the stop string or anything after it",
        (|| -> Result<(), Fail> {
            let (text, _, reason, _) = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16).grammar(ABCD).stop("c")))?)?;
            expect(reason == FinishReason::Stop("c".into()) && text == "ab", || format!("{reason:?}, {text:?}"))
        })());
    s.check(
        "finish.cancelled",
        Level::Must,
        "cancel MUST end the stream with finish cancelled, and the session MUST keep exactly the delivered tokens",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let before = sess.len();
            let mut stream = sess.generate(&greedy(32))?;
            let first = stream.next().ok_or("no first chunk")??;
            stream.cancel();
            let finish = stream.finish().cloned().ok_or("no finish after cancel")?;
            drop(stream);
            let delivered = first.tokens.len() as u32;
            expect(
                finish.reason == FinishReason::Cancelled
                    && finish.usage.generated_tokens == delivered
                    && sess.len() == before + delivered,
                || {
                    format!(
                        "{:?}, generated {}, len {} (was {before}, delivered {delivered})",
                        finish.reason,
                        finish.usage.generated_tokens,
                        sess.len()
                    )
                },
            )
        })(),
    );
    s.check("finish.context-full", Level::Must,
        "under the refuse policy a generation that fills the context MUST finish with context-full and leave the session at its limit",
        (|| -> Result<(), Fail> {
            let sess = Session::open_with(m, SessionOptions { context_length: Some(16), seed: None, overflow: None })?;
            sess.append(PROMPT)?;
            let (_, _, reason, _) = drain(sess.generate(&greedy(64).grammar(r#"root ::= [a-z ]+"#))?)?;
            expect(reason == FinishReason::ContextFull && sess.len() == 16, || format!("{reason:?}, len {}", sess.len()))
        })());
    s.check(
        "usage.cached",
        Level::Must,
        "usage cached-tokens MUST count the prompt tokens that were already in the KV cache before the turn's appends",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            drain(sess.generate(&greedy(4).grammar(ABCD))?)?;
            let held = sess.len();
            sess.append(" and more")?;
            let mut stream = sess.generate(&greedy(1))?;
            for chunk in &mut stream {
                chunk?;
            }
            let usage = stream.finish().ok_or("no finish")?.usage;
            // The last token of the earlier reply may be pending (sampled, not
            // yet evaluated), so one token of slack is allowed.
            expect(usage.cached_tokens + 1 >= held && usage.cached_tokens <= held && usage.prompt_tokens > held, || {
                format!("cached {} prompt {} for {held} held", usage.cached_tokens, usage.prompt_tokens)
            })
        })(),
    );
    s.check(
        "stream.next-chunk",
        Level::Must,
        "next-chunk(max) MUST return at most max tokens per chunk once the first chunk is taken",
        (|| -> Result<(), Fail> {
            let mut stream = session(m, PROMPT).and_then(|s| s.generate(&greedy(12)))?;
            let mut total = 0;
            while let Some(chunk) = stream.next_chunk(3) {
                let n = chunk?.tokens.len();
                if n > 3 {
                    return Err(format!("a chunk of {n} tokens").into());
                }
                total += n;
            }
            expect(total as u32 == stream.finish().ok_or("no finish")?.usage.generated_tokens, || {
                "token count mismatch".into()
            })
        })(),
    );
    s.check(
        "stream.pollable",
        Level::Must,
        "a stream's pollable MUST become ready when try-next has a chunk or the end, and try-next MUST NOT block",
        (|| -> Result<(), Fail> {
            let mut stream = session(m, PROMPT).and_then(|s| s.generate(&greedy(6)))?;
            let pollable = stream.subscribe();
            let mut n = 0;
            while stream.finish().is_none() {
                poll(&[&pollable]);
                while let Some(chunk) = stream.try_next()? {
                    n += chunk.tokens.len();
                }
            }
            drop(pollable);
            expect(n > 0, || "no tokens arrived".into())
        })(),
    );

    s.check(
        "stream.outlives-session",
        Level::Must,
        "a stream MUST stay readable to its end after its session is dropped",
        (|| -> Result<(), Fail> {
            let stream = session(m, PROMPT).and_then(|s| s.generate(&greedy(6)))?;
            let (_, tokens, reason, _) = drain(stream)?;
            expect(tokens.len() == 6 && reason == FinishReason::MaxTokens, || {
                format!("{reason:?} after {} tokens", tokens.len())
            })
        })(),
    );

    // --- session state --------------------------------------------------
    s.check(
        "session.fork-isolation",
        Level::Must,
        "a fork and its parent MUST each produce what they would alone: generating in one MUST NOT change the other",
        (|| -> Result<(), Fail> {
            let parent = session(m, PROMPT)?;
            let fork = parent.fork()?;
            let alone = session(m, PROMPT)?;
            fork.append(" jumps")?;
            let f = drain(fork.generate(&greedy(8))?)?;
            let p = drain(parent.generate(&greedy(8))?)?;
            let a = drain(alone.generate(&greedy(8))?)?;
            alone.rewind(a.1.len() as u32)?;
            alone.append(" jumps")?;
            let a2 = drain(alone.generate(&greedy(8))?)?;
            expect(p.1 == a.1 && f.1 == a2.1, || format!("parent {:?} vs {:?}; fork {:?} vs {:?}", p.1, a.1, f.1, a2.1))
        })(),
    );
    s.check(
        "session.rewind",
        Level::Must,
        "rewind(n) MUST drop exactly the last n tokens, and generation afterwards MUST equal generation before",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let tokens = sess.tokens();
            let first = drain(sess.generate(&greedy(8))?)?;
            sess.rewind(first.1.len() as u32)?;
            let second = drain(sess.generate(&greedy(8))?)?;
            sess.rewind(second.1.len() as u32)?;
            expect(sess.tokens() == tokens && first.1 == second.1, || format!("{:?} vs {:?}", first.1, second.1))
        })(),
    );
    s.check(
        "session.save-restore",
        Level::Must,
        "a restored session MUST hold the saved tokens and continue exactly as the saved one would have",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let blob = sess.save()?;
            let restored = Session::restore(m, &blob)?;
            let a = drain(sess.generate(&greedy(8))?)?;
            let b = drain(restored.generate(&greedy(8))?)?;
            expect(a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check("session.exactly-what-was-seen", Level::Should,
        "after a generation that ended at end-of-sequence, the session SHOULD hold the prompt plus the delivered tokens only",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let before = sess.len();
            let (_, tokens, ..) = drain(sess.generate(&greedy(8).grammar(ABCD))?)?;
            expect(sess.len() == before + tokens.len() as u32, || format!("len {} for {before} + {}", sess.len(), tokens.len()))
        })());

    // --- model operations ---------------------------------------------
    s.check("model.tokenize-roundtrip", Level::Must,
        "detokenize(tokenize(text)) MUST return text for plain text, and count-tokens MUST equal what append adds to an empty session",
        (|| -> Result<(), Fail> {
            let ids = m.tokenize(PROMPT, false, false)?;
            let back = m.detokenize(&ids, false)?;
            let count = m.count_tokens(PROMPT)?;
            let added = Session::open(m).and_then(|s| s.append(PROMPT))?;
            expect(back == PROMPT && count == added, || format!("{back:?}, count {count}, appended {added}"))
        })());
    s.check(
        "model.info",
        Level::Must,
        "model-info MUST report a non-empty vocabulary and a per-session context no larger than the trained one",
        (|| -> Result<(), Fail> {
            let info = m.info()?;
            expect(info.vocab_size > 0 && info.max_session_context > 0, || format!("{info:?}"))
        })(),
    );

    // --- 0.1.2: model listing and the prefix cache ---------------------
    s.check(
        "model.list-models",
        Level::Must,
        "list-models MUST name the models this component may load, so it MUST include the one it loaded",
        expect(Model::list().contains(&name), || format!("{:?} lacks {name:?}", Model::list())),
    );
    s.check(
        "session.open-cached",
        Level::Must,
        "a session from open-cached MUST hold exactly its prompt and continue as a session that appended it",
        (|| -> Result<(), Fail> {
            let prompt = session(m, PROMPT)?.tokens();
            let cached = Session::open_cached(m, DEFAULTS, &prompt)?;
            expect(cached.tokens() == prompt, || format!("holds {:?} for {prompt:?}", cached.tokens()))?;
            let a = drain(cached.generate(&greedy(8))?)?;
            let b = drain(session(m, PROMPT)?.generate(&greedy(8))?)?;
            expect(a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check(
        "session.open-cached-reuse",
        Level::Should,
        "after a session from open-cached is dropped with no stream left, open-cached of its tokens plus more \
         SHOULD evaluate only the new ones: usage cached-tokens counts the rest (all but a reply's last token, \
         which was sampled and never evaluated)",
        (|| -> Result<(), Fail> {
            let first = Session::open_cached(m, DEFAULTS, &session(m, "A different opening line")?.tokens())?;
            drain(first.generate(&greedy(4))?)?;
            let mut next = first.tokens();
            let held = next.len();
            drop(first);
            next.extend(m.tokenize(" and more.", false, false)?);
            let again = Session::open_cached(m, DEFAULTS, &next)?;
            let cached = usage(again.generate(&greedy(1))?)?.cached_tokens as usize;
            expect(cached + 1 >= held, || format!("{cached} cached of a kept {held}-token conversation"))
        })(),
    );

    // --- 0.1.3: embeddings -----------------------------------------------
    let texts = ["The cat sat on the mat.", "Rain is expected tomorrow."];
    let text_inputs: Vec<EmbedInput> = texts.iter().map(|t| EmbedInput::Text((*t).into())).collect();
    let raw = EmbedOptions { pooling: None, normalize: false };
    s.check(
        "embeddings.shape",
        Level::Must,
        "embed MUST return one embedding per input, in order, each of dimensions floats, its tokens the input's \
         token count as append would evaluate it",
        (|| -> Result<(), Fail> {
            let dims = m.dimensions()?;
            let out = m.embed(&text_inputs, raw)?;
            let counts = texts.iter().map(|t| m.count_tokens(t)).collect::<Result<Vec<_>, _>>()?;
            let seen: Vec<(usize, u32)> = out.iter().map(|e| (e.vector.len(), e.tokens)).collect();
            expect(
                seen.len() == texts.len()
                    && seen.iter().zip(&counts).all(|(&(len, n), &c)| len as u32 == dims && n == c),
                || format!("{seen:?} for {dims} dimensions and counts {counts:?}"),
            )
        })(),
    );
    s.check(
        "embeddings.text-is-its-tokens",
        Level::Must,
        "a text input MUST embed as the token ids that append evaluates for it in an empty session",
        (|| -> Result<(), Fail> {
            let ids = session(m, texts[0])?.tokens();
            let by_text = m.embed(&text_inputs[..1], raw)?;
            let by_ids = m.embed(&[EmbedInput::Tokens(ids)], raw)?;
            let gap = by_text[0].vector.iter().zip(&by_ids[0].vector).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            expect(gap <= 1e-5, || format!("vectors differ by up to {gap}"))
        })(),
    );
    s.check(
        "embeddings.normalize",
        Level::Must,
        "with normalize, every vector MUST have unit Euclidean length",
        (|| -> Result<(), Fail> {
            let out = m.embed(&text_inputs, EmbedOptions { pooling: None, normalize: true })?;
            let norms: Vec<f32> = out.iter().map(|e| e.vector.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
            expect(norms.iter().all(|n| (n - 1.0).abs() <= 1e-4), || format!("lengths {norms:?}"))
        })(),
    );
    s.check(
        "embeddings.errors",
        Level::Must,
        "embed MUST refuse an empty list and an empty input with invalid-argument, and an input longer than \
         the model's session context with prompt-too-long",
        (|| -> Result<(), Fail> {
            llm_error(m.embed(&[], raw), |e| matches!(e, LlmError::InvalidArgument(_)))?;
            llm_error(m.embed(&[EmbedInput::Text(String::new())], raw), |e| matches!(e, LlmError::InvalidArgument(_)))?;
            let max = m.info()?.max_session_context;
            let id = m.tokenize("a", false, false)?[0];
            let long = EmbedInput::Tokens(vec![id; max as usize + 1]);
            llm_error(m.embed(&[long], raw), |e| matches!(e, LlmError::PromptTooLong(_)))
        })(),
    );

    // --- errors ---------------------------------------------------------
    s.check(
        "error.invalid-argument",
        Level::Must,
        "max-tokens 0 and a NaN temperature MUST be refused with invalid-argument",
        llm_error(session(m, PROMPT).and_then(|s| s.generate(&Params::greedy().max_tokens(0)).map(|_| ())), |e| {
            matches!(e, LlmError::InvalidArgument(_))
        })
        .and_then(|_| {
            llm_error(
                session(m, PROMPT).and_then(|s| s.generate(&Params::new().temperature(f32::NAN)).map(|_| ())),
                |e| matches!(e, LlmError::InvalidArgument(_)),
            )
        }),
    );
    s.check(
        "error.invalid-token",
        Level::Must,
        "append-tokens with an id outside the vocabulary MUST be refused with invalid-token and change nothing",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let before = sess.tokens();
            let vocab = m.info()?.vocab_size;
            llm_error(sess.append_tokens(&[0, vocab]), |e| matches!(e, LlmError::InvalidToken(t) if t.token == vocab))?;
            expect(sess.tokens() == before, || "the session changed".into())
        })(),
    );
    s.check(
        "error.prompt-too-long",
        Level::Must,
        "an append that does not fit MUST be refused with prompt-too-long{requested, used, limit} and change nothing",
        (|| -> Result<(), Fail> {
            let sess = Session::open_with(m, SessionOptions { context_length: Some(8), seed: None, overflow: None })?;
            llm_error(
                sess.append(&"word ".repeat(50)),
                |e| matches!(e, LlmError::PromptTooLong(o) if o.used == 0 && o.limit == 8 && o.requested > 8),
            )?;
            expect(sess.is_empty(), || "the session changed".into())
        })(),
    );
    s.check(
        "error.context-full",
        Level::Must,
        "generate on a full session under the refuse policy MUST be refused with context-full",
        (|| -> Result<(), Fail> {
            let sess = Session::open_with(
                m,
                SessionOptions { context_length: Some(4), seed: None, overflow: Some(OverflowPolicy::Refuse) },
            )?;
            let ids = m.tokenize("one two three four five six", false, false)?;
            sess.append_tokens(&ids[..4])?;
            llm_error(sess.generate(&greedy(4)).map(|_| ()), |e| matches!(e, LlmError::ContextFull(_)))
        })(),
    );
    s.check(
        "error.invalid-grammar",
        Level::Must,
        "a malformed grammar or JSON schema MUST be refused with invalid-grammar",
        llm_error(session(m, PROMPT).and_then(|s| s.generate(&greedy(4).grammar("root ::= (")).map(|_| ())), |e| {
            matches!(e, LlmError::InvalidGrammar(_))
        })
        .and_then(|_| {
            llm_error(session(m, PROMPT).and_then(|s| s.generate(&greedy(4).json_schema("{nope")).map(|_| ())), |e| {
                matches!(e, LlmError::InvalidGrammar(_))
            })
        }),
    );
    s.check("error.invalid-snapshot", Level::Must,
        "restore MUST refuse a truncated blob (truncated) and a modified one (corrupted or wrong-version) without loading it",
        (|| -> Result<(), Fail> {
            let blob = session(m, PROMPT).and_then(|s| s.save())?;
            llm_error(Session::restore(m, &blob[..blob.len() / 2]).map(|_| ()), |e| matches!(e, LlmError::InvalidSnapshot(SnapshotError::Truncated)))?;
            let mut flipped = blob.clone();
            let last = flipped.len() - 40;
            flipped[last] ^= 1;
            llm_error(Session::restore(m, &flipped).map(|_| ()), |e| matches!(e, LlmError::InvalidSnapshot(SnapshotError::Corrupted | SnapshotError::WrongVersion)))
        })());
    s.check(
        "error.limit-exceeded",
        Level::Must,
        "a context-length above the host's maximum MUST be refused with limit-exceeded",
        (|| -> Result<(), Fail> {
            let max = m.info()?.max_session_context;
            llm_error(
                Session::open_with(m, SessionOptions { context_length: Some(max + 1), seed: None, overflow: None })
                    .map(|_| ()),
                |e| matches!(e, LlmError::LimitExceeded(_)),
            )
        })(),
    );
    s.check(
        "error.session-busy",
        Level::Must,
        "append on a session whose stream is still running MUST be refused with session-busy",
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let stream = sess.generate(&greedy(16))?;
            let busy = sess.append("more");
            drop(stream);
            llm_error(busy, |e| matches!(e, LlmError::SessionBusy))
        })(),
    );

    println!("{}", json!({ "summary": true, "failed-musts": suite.failed_musts }));
    std::process::exit(i32::from(suite.failed_musts > 0));
}
