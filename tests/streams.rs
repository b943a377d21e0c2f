//! Token streams: stop strings are never emitted, a dropped stream cancels
//! its generation, and either way the session holds exactly what the guest
//! was given.

use serde_json::Value;
use wasi_nn_llm_tests::{MODEL, Streamed, as_u32, assert_starts_as_alone, chatml, host, serial};

fn line<'a>(lines: &'a [Value], key: &str) -> &'a Value {
    lines.iter().find_map(|l| l.get(key)).unwrap_or_else(|| panic!("no {key:?} in {lines:?}"))
}

#[test]
fn a_stop_string_ends_the_reply_before_it_and_leaves_the_session() {
    let _serial = serial();
    let prompt = chatml("What is the capital of France?");
    let full = Streamed::parse(&host().probe(&["generate", MODEL, "64", &prompt])).text();
    let at = full.find("Paris").unwrap_or_else(|| panic!("the unconstrained reply should name Paris: {full:?}"));

    let lines = host().probe(&["stop", MODEL, "Paris", &prompt]);
    let stopped = Streamed::parse(&lines);
    assert_eq!(stopped.text(), full[..at], "the reply up to the stop string, without it");
    assert_eq!(stopped.finish["reason"], "FinishReason::Stop(\"Paris\")");

    // The session continues after the delivered text: its tokens are the
    // prompt plus the tokens the chunks reported.
    let continued = line(&lines, "continued");
    let expected = as_u32(line(&lines, "appended")) + stopped.tokens().len() as u32;
    assert_eq!(as_u32(&continued["prompt"]), expected, "{continued}");
}

#[test]
fn dropping_a_stream_cancels_it_and_the_session_keeps_what_was_delivered() {
    let _serial = serial();
    let lines = host().probe(&["cancel", MODEL, "3", &chatml("Tell me a long story about a dragon.")]);
    let delivered = as_u32(line(&lines, "delivered"));
    assert!(delivered >= 3, "three chunks carry at least three tokens, got {delivered}");
    // The engine ran ahead of the reader; what was not delivered is gone.
    let continued = line(&lines, "continued");
    assert_eq!(as_u32(&continued["prompt"]), as_u32(line(&lines, "appended")) + delivered, "{continued}");
    assert!(as_u32(&continued["generated"]) > 0);
}

#[test]
fn next_chunk_batches_what_is_ready_and_cancel_reports_what_was_delivered() {
    let _serial = serial();
    let lines = host().probe(&["chunks", MODEL, &chatml("What is the capital of France?")]);
    let r = &lines[0];
    let sizes: Vec<u32> = r["sizes"].as_array().unwrap().iter().map(as_u32).collect();
    assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
    assert!(sizes[0] > 1, "the reader waited, so its first read should batch several tokens: {sizes:?}");
    assert_eq!(sizes.iter().sum::<u32>(), as_u32(&r["finish"]["generated"]));

    let cancelled = &r["cancelled"];
    assert_eq!(cancelled["reason"], "FinishReason::Cancelled");
    assert_eq!(as_u32(&cancelled["generated"]), as_u32(&r["first"]));
    assert_eq!(as_u32(&r["len-after"]), as_u32(&r["len-before"]) + as_u32(&r["first"]));
}

#[test]
fn rewind_regenerates_and_reset_empties() {
    let _serial = serial();
    let lines = host().probe(&["rewind", MODEL, &chatml("What is the capital of France?")]);
    let r = lines.iter().find(|l| l.get("first").is_some()).unwrap();
    assert_eq!(r["rewound"], r["before"], "rewinding the reply returns to the prompt");
    assert!(as_u32(&r["after"]) > as_u32(&r["before"]));
    assert_eq!(r["first"], r["second"], "greedy decoding from the same state gives the same reply");
    assert_eq!(r["reset"], 0);
    let too_far = lines.iter().find(|l| l["case"] == "rewind-too-far").unwrap();
    assert!(too_far["llm-error"].as_str().unwrap().starts_with("Error::InvalidArgument"), "{too_far}");
}

#[test]
fn one_guest_thread_reads_two_streams_through_wasi_io_poll() {
    let _serial = serial();
    let (a, b) = (chatml("Write a haiku about the sea."), chatml("List the planets."));
    let r = &host().probe(&["poll", MODEL, &a, &b])[0];
    let order: Vec<u32> = r["order"].as_array().unwrap().iter().map(as_u32).collect();
    // Both streams made progress before either finished: they ran together.
    let first_done = order.iter().rposition(|&i| i == 0).unwrap().min(order.iter().rposition(|&i| i == 1).unwrap());
    assert!(order[..first_done].contains(&0) && order[..first_done].contains(&1), "{order:?}");
    // poll blocked between chunks instead of spinning.
    assert!(as_u32(&r["polls"]) as usize <= order.len() + 2, "{} polls for {} chunks", r["polls"], order.len());
    // And each stream carried what that prompt generates on its own.
    for (i, prompt) in [a, b].iter().enumerate() {
        let alone = Streamed::parse(&host().probe(&["generate", MODEL, "32", prompt]));
        assert_starts_as_alone(&r["tokens"][i], &alone.tokens(), &format!("stream {i}"));
    }
}
