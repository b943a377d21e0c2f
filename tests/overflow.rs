//! What a session does when its context fills: refuse (the default), or
//! shift (keep the first tokens, drop the oldest after them).

use wasi_nn_llm_tests::{MODEL, as_u32, chatml, host};

#[test]
fn refuse_stops_at_the_limit_and_shift_keeps_going_within_it() {
    let lines = host().probe(&["overflow", MODEL, &chatml("Tell me a long story about a dragon.")]);
    let policy = |name: &str| lines.iter().find(|l| l["policy"] == name).unwrap_or_else(|| panic!("{name} missing"));

    let refuse = policy("refuse");
    assert_eq!(refuse["finish"]["reason"], "FinishReason::ContextFull");
    assert_eq!(as_u32(&refuse["len"]), 64, "a refusing session fills up exactly");
    assert!(
        refuse["long-append"]
            .as_str()
            .unwrap()
            .contains("PromptTooLong(ContextOverflow { requested: 105, used: 64, limit: 64 })")
    );
    assert_eq!(refuse["len-after-append"], 64, "the refused append changed nothing");

    let shift = policy("shift");
    assert_eq!(shift["finish"]["reason"], "FinishReason::MaxTokens", "{shift}");
    assert_eq!(as_u32(&shift["generated"]), 100, "more tokens than the context holds");
    assert!(as_u32(&shift["len"]) <= 64 && as_u32(&shift["len-after-append"]) <= 64, "{shift}");
    assert_eq!(shift["long-append"], "Ok(41)");
    // Up to the limit both policies generated the same tokens.
    let (a, b) = (refuse["text"].as_str().unwrap(), shift["text"].as_str().unwrap());
    assert!(b.starts_with(a), "shift diverged before the context was full:\n{a}\n{b}");

    let keep_all = lines.iter().find(|l| l["case"] == "keep-everything").unwrap();
    assert!(keep_all["llm-error"].as_str().unwrap().starts_with("Error::InvalidArgument"));
}
