//! Conformance suite for hosts of the `wasi-nn-llm:llm` world.
//!
//! Run inside the host under test with one model registered (any LLM):
//! `conformance MODEL`. Every check prints one JSON line: its id, the
//! normative statement it checks (MUST or SHOULD, as in RFC 2119), and the
//! outcome. Checks that need an exact output make it independent of the
//! model with a grammar in the constraint every host serves (Lark): `start:
//! "ab" "cd"` can only ever produce `abcd`. Optional features are checked
//! where `features` claims them, and refused as `unsupported` where not.
//! The runner (`tests/conformance.rs`) fails on any failed MUST.

use conformance::{ABCD, Fail, LETTERS, PROMPT, Suite, WORDS, expect, greedy, llm_error, setup_failed, statements};
use wasi_nn_llm::raw::wasi_nn_llm::llm::types::{Error as LlmError, SnapshotError};
use wasi_nn_llm::{
    ChatMessage, EmbedInput, EmbedOptions, Error, Feature, FinishReason, Model, OverflowPolicy, Params, RenderOptions,
    Session, SessionOptions, TemplateSource, TemplateValue, TokenStream, Tool, Usage, poll,
};

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

/// `features` lists no feature twice, and the unclaimed ones the suite can
/// call are refused as `unsupported`.
fn check_features(m: &Model, features: &[Feature]) -> Result<(), Fail> {
    for (i, f) in features.iter().enumerate() {
        expect(!features[..i].contains(f), || format!("{f:?} is listed twice in {features:?}"))?;
    }
    let unsupported = |e: &LlmError| matches!(e, LlmError::Unsupported(_));
    if !features.contains(&Feature::Gbnf) {
        let gbnf = session(m, PROMPT).and_then(|s| s.generate(&greedy(2).grammar(r#"root ::= "a""#)).map(|_| ()));
        llm_error(gbnf, unsupported)?;
    }
    if !features.contains(&Feature::ContextShift) {
        let options = SessionOptions { context_length: Some(64), seed: None, overflow: Some(OverflowPolicy::Shift(4)) };
        llm_error(Session::open_with(m, options).map(|_| ()), unsupported)?;
    }
    if !features.contains(&Feature::Fork) {
        llm_error(session(m, PROMPT).and_then(|s| s.fork()).map(|_| ()), unsupported)?;
    }
    if !features.contains(&Feature::SaveRestore) {
        llm_error(session(m, PROMPT).and_then(|s| s.save()).map(|_| ()), unsupported)?;
    }
    if !features.contains(&Feature::Logprobs) {
        llm_error(session(m, PROMPT).and_then(|s| s.generate(&greedy(2).logprobs(2))).map(|_| ()), unsupported)?;
    }
    if !features.contains(&Feature::Embeddings) {
        let options = EmbedOptions { pooling: None, normalize: false };
        llm_error(m.embed(&[EmbedInput::Text("x".into())], options).map(|_| ()), unsupported)?;
    }
    Ok(())
}

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "conformance".into());
    let model = match Model::load(&name) {
        Ok(m) => m,
        Err(e) => {
            setup_failed(&e);
            std::process::exit(1);
        }
    };
    let mut suite = Suite::default();
    let s = &mut suite;
    let m = &model;
    let features = model.features().unwrap_or_default();
    let features = &features;
    let names: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
    println!("{}", serde_json::json!({ "features": names }));
    s.check(&statements::MODEL_FEATURES, check_features(m, features));

    // --- generation ---------------------------------------------------
    s.check(
        &statements::GENERATE_GREEDY_DETERMINISM,
        (|| -> Result<(), Fail> {
            let a = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16)))?)?;
            let b = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16)))?)?;
            expect(!a.1.is_empty() && a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check(
        &statements::GENERATE_SEED_DETERMINISM,
        (|| -> Result<(), Fail> {
            let p = Params::new().temperature(1.0).seed(7).max_tokens(16);
            let a = drain(session(m, PROMPT).and_then(|s| s.generate(&p))?)?;
            let b = drain(session(m, PROMPT).and_then(|s| s.generate(&p))?)?;
            expect(!a.1.is_empty() && a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check(
        &statements::STREAM_UTF8,
        (|| -> Result<(), Fail> {
            let (text, tokens, ..) =
                drain(session(m, "Écris une phrase en japonais : 日本語").and_then(|s| s.generate(&greedy(32)))?)?;
            let detok = m.detokenize(&tokens, false)?;
            expect(text == detok, || format!("{text:?} vs {detok:?}"))
        })(),
    );
    s.check(
        &statements::FINISH_MAX_TOKENS,
        (|| -> Result<(), Fail> {
            let (_, tokens, reason, generated) =
                drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(5).lark(LETTERS)))?)?;
            expect(reason == FinishReason::MaxTokens && tokens.len() == 5 && generated == 5, || {
                format!("{reason:?}, {} tokens, generated {generated}", tokens.len())
            })
        })(),
    );
    s.check(
        &statements::FINISH_END_OF_SEQUENCE,
        (|| -> Result<(), Fail> {
            let (text, _, reason, _) = drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16).lark(ABCD)))?)?;
            expect(reason == FinishReason::EndOfSequence && text == "abcd", || format!("{reason:?}, {text:?}"))
        })(),
    );
    s.check(
        &statements::FINISH_STOP,
        (|| -> Result<(), Fail> {
            let (text, _, reason, _) =
                drain(session(m, PROMPT).and_then(|s| s.generate(&greedy(16).lark(ABCD).stop("c")))?)?;
            expect(reason == FinishReason::Stop("c".into()) && text == "ab", || format!("{reason:?}, {text:?}"))
        })(),
    );
    s.check(
        &statements::FINISH_CANCELLED,
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
    s.check(
        &statements::FINISH_CONTEXT_FULL,
        (|| -> Result<(), Fail> {
            let sess = Session::open_with(m, SessionOptions { context_length: Some(16), seed: None, overflow: None })?;
            sess.append(PROMPT)?;
            let (_, _, reason, _) = drain(sess.generate(&greedy(64).lark(WORDS))?)?;
            expect(reason == FinishReason::ContextFull && sess.len() == 16, || {
                format!("{reason:?}, len {}", sess.len())
            })
        })(),
    );
    s.check(
        &statements::USAGE_CACHED,
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            drain(sess.generate(&greedy(4).lark(ABCD))?)?;
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
        &statements::STREAM_NEXT_CHUNK,
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
        &statements::STREAM_POLLABLE,
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
        &statements::STREAM_OUTLIVES_SESSION,
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
        &statements::SESSION_FORK_ISOLATION,
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
        &statements::SESSION_REWIND,
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
        &statements::SESSION_SAVE_RESTORE,
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let blob = sess.save()?;
            let restored = Session::restore(m, &blob)?;
            let a = drain(sess.generate(&greedy(8))?)?;
            let b = drain(restored.generate(&greedy(8))?)?;
            expect(a.1 == b.1, || format!("{:?} vs {:?}", a.1, b.1))
        })(),
    );
    s.check(
        &statements::SESSION_EXACTLY_WHAT_WAS_SEEN,
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let before = sess.len();
            let (_, tokens, ..) = drain(sess.generate(&greedy(8).lark(ABCD))?)?;
            expect(sess.len() == before + tokens.len() as u32, || {
                format!("len {} for {before} + {}", sess.len(), tokens.len())
            })
        })(),
    );

    // --- model operations ---------------------------------------------
    s.check(
        &statements::MODEL_TOKENIZE_ROUNDTRIP,
        (|| -> Result<(), Fail> {
            let ids = m.tokenize(PROMPT, false, false)?;
            let back = m.detokenize(&ids, false)?;
            let count = m.count_tokens(PROMPT)?;
            let added = Session::open(m).and_then(|s| s.append(PROMPT))?;
            expect(back == PROMPT && count == added, || format!("{back:?}, count {count}, appended {added}"))
        })(),
    );
    s.check(
        &statements::MODEL_INFO,
        (|| -> Result<(), Fail> {
            let info = m.info()?;
            expect(info.vocab_size > 0 && info.max_session_context > 0, || format!("{info:?}"))
        })(),
    );

    // --- 0.1.2: model listing and the prefix cache ---------------------
    s.check(
        &statements::MODEL_LIST_MODELS,
        expect(Model::list().contains(&name), || format!("{:?} lacks {name:?}", Model::list())),
    );
    s.check(
        &statements::SESSION_OPEN_CACHED,
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
        &statements::SESSION_OPEN_CACHED_REUSE,
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
        &statements::EMBEDDINGS_SHAPE,
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
        &statements::EMBEDDINGS_TEXT_IS_ITS_TOKENS,
        (|| -> Result<(), Fail> {
            let ids = session(m, texts[0])?.tokens();
            let by_text = m.embed(&text_inputs[..1], raw)?;
            let by_ids = m.embed(&[EmbedInput::Tokens(ids)], raw)?;
            let gap = by_text[0].vector.iter().zip(&by_ids[0].vector).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            expect(gap <= 1e-5, || format!("vectors differ by up to {gap}"))
        })(),
    );
    s.check(
        &statements::EMBEDDINGS_NORMALIZE,
        (|| -> Result<(), Fail> {
            let out = m.embed(&text_inputs, EmbedOptions { pooling: None, normalize: true })?;
            let norms: Vec<f32> = out.iter().map(|e| e.vector.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
            expect(norms.iter().all(|n| (n - 1.0).abs() <= 1e-4), || format!("lengths {norms:?}"))
        })(),
    );
    s.check(
        &statements::EMBEDDINGS_ERRORS,
        (|| -> Result<(), Fail> {
            llm_error(m.embed(&[], raw), |e| matches!(e, LlmError::InvalidArgument(_)))?;
            llm_error(m.embed(&[EmbedInput::Text(String::new())], raw), |e| matches!(e, LlmError::InvalidArgument(_)))?;
            let max = m.info()?.max_session_context;
            let id = m.tokenize("a", false, false)?[0];
            let long = EmbedInput::Tokens(vec![id; max as usize + 1]);
            llm_error(m.embed(&[long], raw), |e| matches!(e, LlmError::PromptTooLong(_)))
        })(),
    );

    // --- 0.1.4: model identity -------------------------------------------
    s.check(
        &statements::IDENTITY_DIGEST,
        (|| -> Result<(), Fail> {
            let first = m.identity()?;
            let again = Model::load(&name)?.identity()?;
            let digest = &first.digest;
            let hex = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            expect(hex && again.digest == *digest && m.identity()?.digest == *digest, || {
                format!("{digest:?}, then {:?} from a second graph", again.digest)
            })?;
            // The harness compares it with the file's SHA-256.
            println!("{}", serde_json::json!({ "identity-digest": digest }));
            Ok(())
        })(),
    );
    s.check(
        &statements::IDENTITY_FACTS,
        (|| -> Result<(), Fail> {
            let id = m.identity()?;
            let named = [&id.format, &id.backend, &id.backend_version, &id.host, &id.device];
            expect(id.size_bytes > 0 && named.iter().all(|s| !s.is_empty()), || format!("{id:?}"))
        })(),
    );

    // --- 0.1.5: chat templates -------------------------------------------
    let said = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: Some(content.into()),
        reasoning: None,
        tool_calls: vec![],
        tool_call_id: None,
        name: None,
    };
    let options = |add_generation_prompt| RenderOptions {
        add_generation_prompt,
        tools: vec![],
        documents: vec![],
        arguments: vec![],
    };
    s.check(
        &statements::CHAT_RENDER_OWN,
        (|| -> Result<(), Fail> {
            let messages =
                [said("user", "Where is Zürich?"), said("assistant", "In Switzerland."), said("user", "And Bern?")];
            let closed = m.render_chat(&messages, &options(false))?;
            let open = m.render_chat(&messages, &options(true))?;
            let own = m.info()?.chat_template.is_some();
            let source_ok = match &closed.source {
                TemplateSource::Jinja => own,
                TemplateSource::BuiltIn(name) => !own && !name.is_empty(),
            };
            let contents = messages.iter().all(|msg| closed.text.contains(msg.content.as_deref().unwrap_or_default()));
            let extends = open.text.len() > closed.text.len() && open.text.starts_with(closed.text.trim_end());
            expect(source_ok && contents && extends && open.source == closed.source, || {
                format!("own template {own}: {:?} {:?} / {:?}", closed.source, closed.text, open.text)
            })
        })(),
    );
    s.check(
        &statements::CHAT_RENDER_REFUSALS,
        (|| -> Result<(), Fail> {
            let own = m.info()?.chat_template.is_some();
            let refused = |e: &LlmError| {
                if own { matches!(e, LlmError::InvalidArgument(_)) } else { matches!(e, LlmError::Unsupported(_)) }
            };
            let tool = Tool { name: "f".into(), description: None, parameters: "{not json".into() };
            let with_tool = RenderOptions { tools: vec![tool], ..options(true) };
            llm_error(m.render_chat(&[said("user", "hi")], &with_tool), refused)?;
            let argument =
                RenderOptions { arguments: vec![("messages".into(), TemplateValue::Boolean(true))], ..options(true) };
            llm_error(m.render_chat(&[said("user", "hi")], &argument), refused)
        })(),
    );
    s.check(
        &statements::CHAT_SCHEMA_GRAMMAR,
        (|| -> Result<(), Fail> {
            let grammar = wasi_nn_llm::json_schema_grammar(r#"{"type": "string", "enum": ["abcd"]}"#)?;
            let generated = session(m, PROMPT)?.generate(&greedy(16).grammar(grammar));
            if features.contains(&Feature::Gbnf) {
                let (text, ..) = drain(generated?)?;
                expect(text.trim() == "\"abcd\"", || format!("{text:?}"))?;
            } else {
                llm_error(generated.map(|_| ()), |e| matches!(e, LlmError::Unsupported(_)))?;
            }
            llm_error(wasi_nn_llm::json_schema_grammar("{not json"), |e| matches!(e, LlmError::InvalidGrammar(_)))
        })(),
    );

    s.check(
        &statements::SESSION_NOTES,
        (|| -> Result<(), Fail> {
            let prompt = m.tokenize(PROMPT, true, true)?;
            let cached = Session::open_cached(m, DEFAULTS, &prompt)?;
            cached.keep_note("conformance-note", b"kept")?;
            drop(cached);
            let back = Session::cached_note(m, "conformance-note")?;
            expect(back.as_deref() == Some(&b"kept"[..]), || format!("{back:?}"))?;
            expect(Session::cached_note(m, "no-such-note")?.is_none(), || "an unknown key found a note".into())?;
            llm_error(session(m, PROMPT)?.keep_note("k", b"v"), |e| matches!(e, LlmError::Unsupported(_)))
        })(),
    );

    // --- errors ---------------------------------------------------------
    s.check(
        &statements::ERROR_INVALID_ARGUMENT,
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
        &statements::ERROR_INVALID_TOKEN,
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let before = sess.tokens();
            let vocab = m.info()?.vocab_size;
            llm_error(sess.append_tokens(&[0, vocab]), |e| matches!(e, LlmError::InvalidToken(t) if t.token == vocab))?;
            expect(sess.tokens() == before, || "the session changed".into())
        })(),
    );
    s.check(
        &statements::ERROR_PROMPT_TOO_LONG,
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
        &statements::ERROR_CONTEXT_FULL,
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
        &statements::ERROR_INVALID_GRAMMAR,
        llm_error(session(m, PROMPT).and_then(|s| s.generate(&greedy(4).lark("start: (")).map(|_| ())), |e| {
            matches!(e, LlmError::InvalidGrammar(_))
        })
        .and_then(|_| {
            let gbnf = session(m, PROMPT).and_then(|s| s.generate(&greedy(4).grammar("root ::= (")).map(|_| ()));
            llm_error(gbnf, |e| match features.contains(&Feature::Gbnf) {
                true => matches!(e, LlmError::InvalidGrammar(_)),
                false => matches!(e, LlmError::Unsupported(_)),
            })
        })
        .and_then(|_| {
            llm_error(session(m, PROMPT).and_then(|s| s.generate(&greedy(4).json_schema("{nope")).map(|_| ())), |e| {
                matches!(e, LlmError::InvalidGrammar(_))
            })
        }),
    );
    s.check(
        &statements::ERROR_INVALID_SNAPSHOT,
        (|| -> Result<(), Fail> {
            let blob = session(m, PROMPT).and_then(|s| s.save())?;
            llm_error(Session::restore(m, &blob[..blob.len() / 2]).map(|_| ()), |e| {
                matches!(e, LlmError::InvalidSnapshot(SnapshotError::Truncated))
            })?;
            let mut flipped = blob.clone();
            let last = flipped.len() - 40;
            flipped[last] ^= 1;
            llm_error(Session::restore(m, &flipped).map(|_| ()), |e| {
                matches!(e, LlmError::InvalidSnapshot(SnapshotError::Corrupted | SnapshotError::WrongVersion))
            })
        })(),
    );
    s.check(
        &statements::ERROR_LIMIT_EXCEEDED,
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
        &statements::ERROR_SESSION_BUSY,
        (|| -> Result<(), Fail> {
            let sess = session(m, PROMPT)?;
            let stream = sess.generate(&greedy(16))?;
            let busy = sess.append("more");
            drop(stream);
            llm_error(busy, |e| matches!(e, LlmError::SessionBusy))
        })(),
    );

    std::process::exit(suite.finish());
}
