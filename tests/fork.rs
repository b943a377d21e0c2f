//! Forking a session copies its KV cache: the branches evaluate nothing of
//! the shared history, and each produces exactly what an unforked session
//! taking the same steps produces.

use serde_json::Value;
use wasi_nn_llm_tests::{MODEL, MODELS, as_u32, host, serial};

fn replies<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    let mut found: Vec<(u64, &Value)> =
        lines.iter().filter_map(|l| Some((l.get(kind)?.as_u64()?, &l["reply"]))).collect();
    found.sort_by_key(|(i, _)| *i);
    found.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn three_way_fork_of_a_500_token_chat_reuses_the_history_and_matches_unforked_sessions() {
    let _serial = serial();
    for model in MODELS {
        check_fork(model);
    }
}

fn check_fork(model: &str) {
    let lines = host().probe(&["fork", model]);
    let parent = lines.iter().find(|l| l.get("parent").is_some()).expect("parent line");
    let len = as_u32(&parent["len"]);
    assert!(len >= 500, "{model}: the shared history should be at least 500 tokens, got {len}");
    // A reply cut by max-tokens ends on a token that was sampled but never
    // evaluated; everything else the parent holds is in its KV cache.
    let shared = len - u32::from(parent["parent"]["finish"]["reason"] == "FinishReason::MaxTokens");

    let (branches, replays) = (replies(&lines, "branch"), replies(&lines, "replay"));
    assert_eq!((branches.len(), replays.len()), (3, 3));
    for (i, (branch, replay)) in branches.iter().zip(&replays).enumerate() {
        let finish = &branch["finish"];
        // No prefill work for the history: everything but the branch's own
        // turn came from the copied KV cache.
        assert_eq!(as_u32(&finish["cached"]), shared, "{model} branch {i}: {finish}");
        assert_eq!(as_u32(&finish["prompt"]) - shared, as_u32(&branch["appended"]) + len - shared);
        assert!(!branch["tokens"].as_array().unwrap().is_empty());
        assert_eq!(branch["tokens"], replay["tokens"], "{model} branch {i} differs from an unforked session");
    }
    if model == MODEL {
        assert_ne!(branches[0]["tokens"], branches[1]["tokens"], "the branches were asked different things");
        assert!(branches[0]["text"].as_str().unwrap().contains("Paris"), "{}", branches[0]["text"]);
    }

    // For the record: the same history evaluated in one batch is not always
    // bit-identical (llama.cpp's CPU kernels depend on the batch shape), so
    // that comparison is reported, not asserted.
    let fresh = replies(&lines, "fresh");
    let same: Vec<bool> = branches.iter().zip(&fresh).map(|(b, f)| b["tokens"] == f["tokens"]).collect();
    eprintln!("{model}: branch equals the history re-evaluated in one batch: {same:?}");
}
