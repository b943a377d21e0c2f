//! The conformance suite against the WASI 0.3 session (`wasi-nn-llm:llm@0.2.0-rc-2026-12-06`, a `wasi:cli/run@0.3.0` command):
//! the statements of `tests/spec/llm` that concern generation,
//! streaming, finish, cancellation, usage, session state and errors, in the
//! very same words (`conformance::statements`), checked through
//! `stream<chunk>`, the finish future and the async session calls.
//! Cancellation here is dropping the stream, the only way p3 has.
//!
//! Run inside the host under test like the 0.1.x suite: `conformance MODEL`
//! as the guest's argument; one JSON line per check.

use conformance::{ABCD, LETTERS, PROMPT, Suite, WORDS, expect, greedy, llm_error, setup_failed, statements};
use futures::StreamExt;
use wasi_nn_llm::p3::{Generation, Session};
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::{Error as LlmError, SnapshotError};
use wasi_nn_llm::{Error, FinishReason, Model, OverflowPolicy, Params, SessionOptions};

struct Conformance;

impl wasi_nn_llm::p3::Run for Conformance {
    async fn run() -> Result<(), ()> {
        let name = std::env::args().nth(1).unwrap_or_else(|| "conformance".into());
        let model = Model::load(&name).map_err(|e| setup_failed(&e))?;
        let mut suite = Suite::default();
        checks(&mut suite, &model).await;
        if suite.finish() == 0 { Ok(()) } else { Err(()) }
    }
}

wasi_nn_llm::p3::export!(Conformance);

/// Read a generation to the end: its text, tokens, finish reason and generated count.
async fn drain(mut generation: Generation) -> Result<(String, Vec<u32>, FinishReason, u32), Error> {
    let (mut text, mut tokens) = (String::new(), Vec::new());
    while let Some(chunk) = generation.next().await {
        text.push_str(&chunk.text);
        tokens.extend(chunk.tokens);
    }
    let finish = generation.finish().await?;
    Ok((text, tokens, finish.reason, finish.usage.generated_tokens))
}

async fn session(model: &Model, prompt: &str) -> Result<Session, Error> {
    let s = Session::open(model)?;
    s.append(prompt).await?;
    Ok(s)
}

fn limited(context_length: u32, overflow: Option<OverflowPolicy>) -> SessionOptions {
    SessionOptions { context_length: Some(context_length), seed: None, overflow }
}

async fn checks(s: &mut Suite, m: &Model) {
    // --- generation ---------------------------------------------------
    s.check(
        &statements::GENERATE_GREEDY_DETERMINISM,
        async {
            let a = drain(session(m, PROMPT).await?.generate(&greedy(16))?).await?;
            let b = drain(session(m, PROMPT).await?.generate(&greedy(16))?).await?;
            expect(!a.1.is_empty() && a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        }
        .await,
    );
    s.check(
        &statements::GENERATE_SEED_DETERMINISM,
        async {
            let p = Params::new().temperature(1.0).seed(7).max_tokens(16);
            let a = drain(session(m, PROMPT).await?.generate(&p)?).await?;
            let b = drain(session(m, PROMPT).await?.generate(&p)?).await?;
            expect(!a.1.is_empty() && a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        }
        .await,
    );
    s.check(
        &statements::STREAM_UTF8,
        async {
            let sess = session(m, "Écris une phrase en japonais : 日本語").await?;
            let (text, tokens, ..) = drain(sess.generate(&greedy(32))?).await?;
            let detok = m.detokenize(&tokens, false)?;
            expect(text == detok, || format!("{text:?} vs {detok:?}"))
        }
        .await,
    );
    s.check(
        &statements::FINISH_MAX_TOKENS,
        async {
            let sess = session(m, PROMPT).await?;
            let (_, tokens, reason, generated) = drain(sess.generate(&greedy(5).lark(LETTERS))?).await?;
            expect(reason == FinishReason::MaxTokens && tokens.len() == 5 && generated == 5, || {
                format!("{reason:?}, {} tokens, generated {generated}", tokens.len())
            })
        }
        .await,
    );
    s.check(
        &statements::FINISH_END_OF_SEQUENCE,
        async {
            let (text, _, reason, _) = drain(session(m, PROMPT).await?.generate(&greedy(16).lark(ABCD))?).await?;
            expect(reason == FinishReason::EndOfSequence && text == "abcd", || format!("{reason:?}, {text:?}"))
        }
        .await,
    );
    s.check(
        &statements::FINISH_STOP,
        async {
            let sess = session(m, PROMPT).await?;
            let (text, _, reason, _) = drain(sess.generate(&greedy(16).lark(ABCD).stop("c"))?).await?;
            expect(reason == FinishReason::Stop("c".into()) && text == "ab", || format!("{reason:?}, {text:?}"))
        }
        .await,
    );
    s.check(
        &statements::FINISH_CANCELLED,
        async {
            let sess = session(m, PROMPT).await?;
            let before = sess.len();
            let mut generation = sess.generate(&greedy(32))?;
            let first = generation.next().await.ok_or("no first chunk")?;
            // Cancel is dropping the stream; the future then reports it.
            let finish = generation.finish().await?;
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
        }
        .await,
    );
    s.check(
        &statements::FINISH_CONTEXT_FULL,
        async {
            let sess = Session::open_with(m, limited(16, None))?;
            sess.append(PROMPT).await?;
            let (_, _, reason, _) = drain(sess.generate(&greedy(64).lark(WORDS))?).await?;
            expect(reason == FinishReason::ContextFull && sess.len() == 16, || {
                format!("{reason:?}, len {}", sess.len())
            })
        }
        .await,
    );
    s.check(
        &statements::USAGE_CACHED,
        async {
            let sess = session(m, PROMPT).await?;
            drain(sess.generate(&greedy(4).lark(ABCD))?).await?;
            let held = sess.len();
            sess.append(" and more").await?;
            let mut generation = sess.generate(&greedy(1))?;
            while generation.next().await.is_some() {}
            let usage = generation.finish().await?.usage;
            // As in the 0.1.x suite: the earlier reply's last token may be pending.
            expect(usage.cached_tokens + 1 >= held && usage.cached_tokens <= held && usage.prompt_tokens > held, || {
                format!("cached {} prompt {} for {held} held", usage.cached_tokens, usage.prompt_tokens)
            })
        }
        .await,
    );
    s.check(
        &statements::STREAM_OUTLIVES_SESSION,
        async {
            let generation = session(m, PROMPT).await?.generate(&greedy(6))?;
            let (_, tokens, reason, _) = drain(generation).await?;
            expect(tokens.len() == 6 && reason == FinishReason::MaxTokens, || {
                format!("{reason:?} after {} tokens", tokens.len())
            })
        }
        .await,
    );

    // --- session state --------------------------------------------------
    s.check(
        &statements::SESSION_FORK_ISOLATION,
        async {
            let parent = session(m, PROMPT).await?;
            let fork = parent.fork().await?;
            let alone = session(m, PROMPT).await?;
            fork.append(" jumps").await?;
            let f = drain(fork.generate(&greedy(8))?).await?;
            let p = drain(parent.generate(&greedy(8))?).await?;
            let a = drain(alone.generate(&greedy(8))?).await?;
            alone.rewind(a.1.len() as u32)?;
            alone.append(" jumps").await?;
            let a2 = drain(alone.generate(&greedy(8))?).await?;
            expect(p.1 == a.1 && f.1 == a2.1, || format!("parent {:?} vs {:?}; fork {:?} vs {:?}", p.1, a.1, f.1, a2.1))
        }
        .await,
    );
    s.check(
        &statements::SESSION_SAVE_RESTORE,
        async {
            let sess = session(m, PROMPT).await?;
            let blob = sess.save().await?;
            let restored = Session::restore(m, &blob).await?;
            let a = drain(sess.generate(&greedy(8))?).await?;
            let b = drain(restored.generate(&greedy(8))?).await?;
            expect(a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        }
        .await,
    );

    // --- errors ---------------------------------------------------------
    s.check(
        &statements::ERROR_INVALID_ARGUMENT,
        async {
            let sess = session(m, PROMPT).await?;
            llm_error(sess.generate(&Params::greedy().max_tokens(0)).map(|_| ()), |e| {
                matches!(e, LlmError::InvalidArgument(_))
            })?;
            llm_error(sess.generate(&Params::new().temperature(f32::NAN)).map(|_| ()), |e| {
                matches!(e, LlmError::InvalidArgument(_))
            })
        }
        .await,
    );
    s.check(
        &statements::ERROR_INVALID_TOKEN,
        async {
            let sess = session(m, PROMPT).await?;
            let before = sess.tokens();
            let vocab = m.info()?.vocab_size;
            llm_error(
                sess.append_tokens(&[0, vocab]).await,
                |e| matches!(e, LlmError::InvalidToken(t) if t.token == vocab),
            )?;
            expect(sess.tokens() == before, || "the session changed".into())
        }
        .await,
    );
    s.check(
        &statements::ERROR_PROMPT_TOO_LONG,
        async {
            let sess = Session::open_with(m, limited(8, None))?;
            llm_error(
                sess.append(&"word ".repeat(50)).await,
                |e| matches!(e, LlmError::PromptTooLong(o) if o.used == 0 && o.limit == 8 && o.requested > 8),
            )?;
            expect(sess.is_empty(), || "the session changed".into())
        }
        .await,
    );
    s.check(
        &statements::ERROR_CONTEXT_FULL,
        async {
            let sess = Session::open_with(m, limited(4, Some(OverflowPolicy::Refuse)))?;
            let ids = m.tokenize("one two three four five six", false, false)?;
            sess.append_tokens(&ids[..4]).await?;
            llm_error(sess.generate(&greedy(4)).map(|_| ()), |e| matches!(e, LlmError::ContextFull(_)))
        }
        .await,
    );
    s.check(
        &statements::ERROR_INVALID_GRAMMAR,
        async {
            let sess = session(m, PROMPT).await?;
            llm_error(sess.generate(&greedy(4).lark("start: (")).map(|_| ()), |e| {
                matches!(e, LlmError::InvalidGrammar(_))
            })?;
            llm_error(sess.generate(&greedy(4).json_schema("{nope")).map(|_| ()), |e| {
                matches!(e, LlmError::InvalidGrammar(_))
            })
        }
        .await,
    );
    s.check(
        &statements::ERROR_INVALID_SNAPSHOT,
        async {
            let blob = session(m, PROMPT).await?.save().await?;
            llm_error(Session::restore(m, &blob[..blob.len() / 2]).await.map(|_| ()), |e| {
                matches!(e, LlmError::InvalidSnapshot(SnapshotError::Truncated))
            })?;
            let mut flipped = blob.clone();
            let last = flipped.len() - 40;
            flipped[last] ^= 1;
            llm_error(Session::restore(m, &flipped).await.map(|_| ()), |e| {
                matches!(e, LlmError::InvalidSnapshot(SnapshotError::Corrupted | SnapshotError::WrongVersion))
            })
        }
        .await,
    );
    s.check(
        &statements::ERROR_LIMIT_EXCEEDED,
        async {
            let max = m.info()?.max_session_context;
            llm_error(Session::open_with(m, limited(max + 1, None)).map(|_| ()), |e| {
                matches!(e, LlmError::LimitExceeded(_))
            })
        }
        .await,
    );
    s.check(
        &statements::ERROR_SESSION_BUSY,
        async {
            let sess = session(m, PROMPT).await?;
            let generation = sess.generate(&greedy(16))?;
            let busy = sess.append("more").await;
            drop(generation);
            llm_error(busy, |e| matches!(e, LlmError::SessionBusy))
        }
        .await,
    );
}
