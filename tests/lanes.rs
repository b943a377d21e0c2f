//! A model's sessions are spread over lanes (llama.cpp contexts that split
//! the cores while busy). Placement balances the lanes, and a fork from a
//! full lane crosses into another through the state API, continuing exactly
//! as a fork inside the lane does.

use wasi_nn_llm_host::engine::{Quota, Session, SessionOptions};
use wasi_nn_llm_tests::{LANES, MODELS, greedy_reply, host, serial};

fn reply(session: &Session) -> (Vec<u32>, u32) {
    greedy_reply(session, 24)
}

#[test]
fn sessions_spread_over_lanes_and_a_fork_from_a_full_lane_matches_one_inside_it() {
    let _serial = serial();
    for model in MODELS {
        let engine = host().engine_of(model);
        let quota = Quota::unlimited();
        assert_eq!(engine.lanes(), LANES as usize, "{model}: the test host's lanes");
        let open = || engine.open_session(&SessionOptions::default(), &quota).expect("open");

        // Placement alternates while the lanes are equally loaded.
        let parent = open();
        let second = open();
        assert_ne!(parent.lane(), second.lane(), "{model}: two sessions should land in different lanes");
        drop(second);

        let prompt = host().user_prompt(model, "Name three colours of the rainbow.");
        let history = parent.append(&prompt).expect("append");
        let (first, _) = reply(&parent);
        assert!(!first.is_empty());
        let inside = parent.fork().expect("fork inside the lane");
        assert_eq!(inside.lane(), parent.lane(), "{model}: a lane with room keeps its forks");

        // Fill the parent's lane, so the next fork must cross.
        let mut others = Vec::new();
        while let Ok(s) = engine.open_session(&SessionOptions::default(), &quota) {
            others.push(s);
        }
        others.retain(|s| s.lane() == parent.lane());
        let outside = parent.fork().expect("fork across lanes");
        assert_ne!(outside.lane(), parent.lane(), "{model}: the parent's lane is full");
        assert_eq!(outside.tokens().expect("tokens"), parent.tokens().expect("tokens"));

        let follow_up = host().user_prompt(model, "And three more?");
        let (a, cached_a) = (inside.append(&follow_up).map(|_| reply(&inside))).expect("append");
        let (b, cached_b) = (outside.append(&follow_up).map(|_| reply(&outside))).expect("append");
        assert!(!a.is_empty());
        assert_eq!(a, b, "{model}: a fork across lanes continues exactly as one inside the lane");
        // Neither re-evaluates the shared history.
        assert_eq!(cached_a, cached_b, "{model}");
        assert!(cached_a >= history, "{model}: {cached_a} cached of a {history}-token history and a reply");
    }
}
