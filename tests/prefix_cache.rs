//! The prefix cache behind `session.open-cached`: a conversation outlives
//! its session (and instance) and is continued by the next session that
//! sends it with more, never by another component; under pressure it is
//! saved to host memory and restored, continuing exactly as before.

use wasi_nn_llm_host::engine::{Engine, Namespace, Quota, QuotaLimits, Session, SessionOptions};
use wasi_nn_llm_tests::{MODELS, greedy_reply, host, serial};

fn reply(session: &Session) -> (Vec<u32>, u32) {
    greedy_reply(session, 16)
}

fn prompt(engine: &Engine, model: &str, user: &str) -> Vec<u32> {
    engine.tokenize(&host().user_prompt(model, user), true, true).expect("tokenize")
}

fn namespace(test: &str, model: &str) -> Namespace {
    Namespace(format!("sha256:{test}-{model}"))
}

#[test]
fn a_kept_conversation_is_continued_by_its_own_component_only() {
    let _serial = serial();
    for model in MODELS {
        let engine = host().engine_of(model);
        let quota = Quota::unlimited();
        let (mine, theirs) = (namespace("own", model), namespace("other", model));
        let first = prompt(engine, model, "Name a colour of the rainbow.");
        let options = SessionOptions::default();

        let session = engine.open_cached(&options, &first, &mine, &quota).expect("open-cached");
        assert_eq!(session.tokens().unwrap(), first);
        let (answer, _) = reply(&session);
        let held = session.tokens().unwrap();
        drop(session);

        // Another component sending the very same prompt evaluates it all.
        let other = engine.open_cached(&options, &first, &theirs, &quota).expect("open-cached");
        let (other_answer, cached) = reply(&other);
        assert_eq!(cached, 0, "{model}: a conversation leaked between components");
        assert_eq!(other_answer, answer, "{model}: greedy, the same answer");
        drop(other);

        // The same component continuing its conversation evaluates only the new turn.
        let mut next = held.clone();
        next.extend(prompt(engine, model, "And another one?"));
        let continued = engine.open_cached(&options, &next, &mine, &quota).expect("open-cached");
        assert_eq!(continued.tokens().unwrap(), next);
        let (_, cached) = reply(&continued);
        // A reply's last token was sampled, never evaluated: all but it were cached.
        assert!(cached as usize >= held.len() - 1, "{model}: {cached} cached of a {}-token history", held.len());
    }
}

#[test]
fn a_kept_conversation_does_not_count_against_its_instance() {
    let _serial = serial();
    let model = MODELS[0];
    let engine = host().engine_of(model);
    let quota = Quota::new(QuotaLimits { sessions: Some(1), ..QuotaLimits::default() });
    let ns = namespace("quota", model);
    let tokens = prompt(engine, model, "Hello!");
    for _ in 0..3 {
        let session = engine.open_cached(&SessionOptions::default(), &tokens, &ns, &quota).expect("open-cached");
        assert_eq!(quota.held().0, 1);
        drop(session);
        assert_eq!(quota.held().0, 0, "the cache holds the session on its own quota");
    }
}

#[test]
fn a_spilled_conversation_is_restored_and_continues_exactly() {
    let _serial = serial();
    for model in MODELS {
        let engine = host().engine_of(model);
        let quota = Quota::unlimited();
        let ns = namespace("spill", model);
        let first = prompt(engine, model, "Name three animals that live in the sea.");
        let session = engine.open_cached(&SessionOptions::default(), &first, &ns, &quota).expect("open-cached");
        reply(&session);
        let held = session.tokens().unwrap();
        drop(session);
        let (_, spilled_before) = engine.cached_entries();

        // Every sequence taken by live sessions: kept conversations give theirs up.
        let mut live = Vec::new();
        while live.len() < engine.max_sessions() {
            live.push(engine.open_session(&SessionOptions::default(), &quota).expect("a sequence for a live session"));
        }
        let (live_entries, spilled) = engine.cached_entries();
        assert_eq!(live_entries, 0, "{model}: no kept conversation holds a sequence now");
        assert!(spilled > spilled_before, "{model}: the conversation was saved to host memory");
        live.pop();

        let mut next = held.clone();
        next.extend(prompt(engine, model, "Which of them is the largest?"));
        let restored = engine.open_cached(&SessionOptions::default(), &next, &ns, &quota).expect("open-cached");
        let (tokens, cached) = reply(&restored);
        assert!(cached as usize >= held.len() - 1, "{model}: {cached} cached of {}", held.len());
        drop(restored);
        drop(live);

        // The same conversation evaluated from nothing answers the same.
        let fresh = engine.open_session(&SessionOptions::default(), &quota).expect("open");
        fresh.append_tokens(&next).expect("append");
        assert_eq!(reply(&fresh).0, tokens, "{model}: a restored conversation continues exactly");
    }
}

#[test]
fn a_conversation_that_comes_back_is_continued_in_place() {
    let _serial = serial();
    for model in MODELS {
        let engine = host().engine_of(model);
        engine.clear_cache();
        let quota = Quota::unlimited();
        let ns = namespace("in-place", model);
        let mut history = prompt(engine, model, "Name a fruit.");
        let mut held = 0;
        for question in ["Name another one.", "And one more?"] {
            let session = engine.open_cached(&SessionOptions::default(), &history, &ns, &quota).expect("open-cached");
            assert_eq!(quota.held().0, 1, "{model}: the continued session counts against its instance again");
            let (answer, cached) = reply(&session);
            assert!(cached as usize >= held.max(1) - 1, "{model}: {cached} cached of a {held}-token history");
            assert_eq!(
                engine.cached_entries(),
                (0, 0),
                "{model}: the kept conversation became this session, not a copy"
            );

            // Evaluated from nothing, beside it, the conversation answers the same.
            let fresh = engine.open_session(&SessionOptions::default(), &quota).expect("open");
            fresh.append_tokens(&history).expect("append");
            assert_eq!(reply(&fresh).0, answer, "{model}: a conversation continued in place continues exactly");
            drop(fresh);

            let tokens = session.tokens().unwrap();
            held = tokens.len();
            drop(session);
            assert_eq!(quota.held().0, 0, "{model}: kept again, on the cache's quota");
            assert_eq!(engine.cached_entries(), (1, 0), "{model}: kept, in its sequence");
            history = tokens;
            history.extend(prompt(engine, model, question));
        }
        // A conversation sharing only the template's start leaves the kept one whole.
        let other =
            engine.open_cached(&SessionOptions::default(), &prompt(engine, model, "Name a river."), &ns, &quota);
        reply(&other.expect("open-cached"));
        let back = engine.open_cached(&SessionOptions::default(), &history, &ns, &quota).expect("open-cached");
        let (_, cached) = reply(&back);
        assert!(cached as usize >= held - 1, "{model}: {cached} cached of a {held}-token history after another one");
    }
}
