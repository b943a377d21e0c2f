//! The WASI 0.3 session (`wasi-nn-llm:llm@0.2.0-rc-2026-12-06`, a `wasi:cli/run@0.3.0` command) on the same engine as
//! 0.1.x: its `stream<chunk>` carries what the pull stream carries, one
//! instance runs several generations at once, dropping a stream cancels it,
//! and the operator's policy holds as for any guest.

use std::sync::Barrier;

use serde_json::Value;
use wasi_nn_llm_tests::{MODEL, Streamed, as_u32, assert_starts_as_alone, chatml, host, policed, run_lines, serial};

/// The p3 test guest (a cdylib: its file is named with an underscore).
const P3: &str = "p3_probe";

fn p3(args: &[&str]) -> Vec<Value> {
    host()
        .run_guest(P3, args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("p3-probe printed {l:?}: {e}")))
        .collect()
}

/// The p3 guests are WASI 0.3 components: the entry point `run` finds is
/// `wasi:cli/run@0.3.x` (no interface of the extension's own, as the 0.2.0
/// draft had), and the session comes from the release candidate.
#[test]
fn p3_guests_export_wasi_0_3_run_and_import_the_rc_session() {
    // Compiling three components takes both cores for seconds: not beside
    // the tests that time streams against each other.
    let _serial = serial();
    let engine = wasmtime::Engine::default();
    for name in [P3, "parallel_p3", "conformance_p3"] {
        let component = wasmtime::component::Component::from_file(&engine, wasi_nn_llm_tests::guest(name)).unwrap();
        let ty = component.component_type();
        let exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_owned()).collect();
        assert!(exports.iter().any(|n| n.starts_with("wasi:cli/run@0.3.")), "{name} exports {exports:?}");
        assert!(!exports.iter().any(|n| n.starts_with("wasi-nn-llm:")), "{name} exports {exports:?}");
        let imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_owned()).collect();
        assert!(
            imports.iter().any(|n| n == "wasi-nn-llm:llm/session@0.2.0-rc-2026-12-06"),
            "{name} imports {imports:?}"
        );
    }
}

/// The four-generations example, a WASI 0.3 command, answers every
/// question it is given, each under its own header.
#[test]
fn the_four_generations_example_runs_as_a_wasi_0_3_command() {
    let _serial = serial();
    let questions = ["What is the capital of France?", "Name three colours.", "Count to five.", "Say hello."];
    let mut args = vec![MODEL];
    args.extend(questions);
    let out = host().run_guest("parallel_p3", &args);
    for (i, question) in questions.iter().enumerate() {
        let header = format!("[{i}] {question}\n");
        let at = out.find(&header).unwrap_or_else(|| panic!("no answer to {question:?}:\n{out}"));
        let answer = out[at + header.len()..].lines().next().unwrap_or_default();
        assert!(!answer.trim().is_empty(), "an empty answer to {question:?}:\n{out}");
    }
}

#[test]
fn a_p3_stream_carries_what_the_pull_stream_carries() {
    let _serial = serial();
    let prompt = chatml("What is the capital of France?");
    let pull = Streamed::parse(&host().probe(&["generate", MODEL, "24", &prompt]));
    let lines = p3(&["generate", MODEL, "24", &prompt]);
    let streamed = Streamed::parse(&lines);
    assert_eq!(streamed.chunks, pull.chunks, "the same chunks, split the same way");
    assert_eq!(streamed.finish, pull.finish, "the same finish and usage");
    let last = lines.last().unwrap();
    assert_eq!(as_u32(&last["len"]), as_u32(&pull.finish["prompt"]) + as_u32(&pull.finish["generated"]));
    assert!(streamed.text().contains("Paris"), "{}", streamed.text());
}

#[test]
fn guests_of_0_1_0_0_1_1_and_p3_run_at_once_on_one_engine() {
    let _serial = serial();
    let prompt = chatml("What is the capital of France?");
    let barrier = Barrier::new(3);
    let [v010, v011, vp3] = std::thread::scope(|s| {
        let run = |name: &'static str, args: Vec<&'static str>| {
            let (barrier, prompt) = (&barrier, &prompt);
            s.spawn(move || {
                let mut args: Vec<&str> = args;
                args.push(prompt);
                barrier.wait();
                host().run_guest(name, &args)
            })
        };
        let handles = [
            run("compat-0-1-0", vec![MODEL]),
            run("compat-0-1-1", vec![MODEL]),
            run(P3, vec!["generate", MODEL, "16"]),
        ];
        handles.map(|h| h.join().expect("a guest thread panicked"))
    });
    let vp3: Vec<Value> = vp3.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let vp3 = Streamed::parse(&vp3).text();
    for (version, text) in
        [("0.1.0", v010.trim_end_matches('\n')), ("0.1.1", v011.trim_end_matches('\n')), ("p3", &vp3)]
    {
        assert!(text.contains("Paris"), "{version}: {text:?}");
    }
    // Batched beside each other, the three still produced one greedy reply.
    assert_eq!(v010.trim_end_matches('\n'), vp3);
    assert_eq!(v011.trim_end_matches('\n'), vp3);
}

#[test]
fn one_p3_instance_runs_four_generations_at_once() {
    let _serial = serial();
    let prompts =
        ["Write a haiku about the sea.", "List the planets.", "Name three colours.", "Count to five."].map(chatml);
    let mut args = vec!["parallel", MODEL, "24"];
    args.extend(prompts.iter().map(String::as_str));
    let lines = p3(&args);
    let order: Vec<u32> = lines.last().unwrap()["order"].as_array().unwrap().iter().map(as_u32).collect();
    // Every stream delivered before any finished: they ran together.
    let first_done = (0..4).map(|i| order.iter().rposition(|&j| j == i).unwrap()).min().unwrap();
    for i in 0..4 {
        assert!(order[..=first_done].contains(&i), "stream {i} waited for another to finish: {order:?}");
    }
    // And each carried what its prompt generates alone.
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = Streamed::parse(&host().probe(&["generate", MODEL, "24", prompt]));
        assert_starts_as_alone(&lines[i]["tokens"], &alone.tokens(), &format!("stream {i}"));
    }
}

#[test]
fn dropping_a_p3_stream_cancels_it_and_the_session_keeps_what_was_read() {
    let _serial = serial();
    let prompt = chatml("Tell me a long story about a dragon.");
    let r = &p3(&["read-one", MODEL, &prompt])[0];
    let read: Vec<u32> = r["read"].as_array().unwrap().iter().map(as_u32).collect();
    assert!(!read.is_empty());
    assert_eq!(r["finish"]["reason"], "FinishReason::Cancelled", "{r}");
    assert_eq!(as_u32(&r["finish"]["generated"]) as usize, read.len(), "usage counts what was read: {r}");
    // The session holds the prompt and exactly the chunk the guest read,
    // though the engine had generated ahead of it.
    assert_eq!(as_u32(&r["len"]), as_u32(&r["before"]) + read.len() as u32, "{r}");
    let tokens: Vec<u32> = r["tokens"].as_array().unwrap().iter().map(as_u32).collect();
    assert_eq!(tokens[tokens.len() - read.len()..], read[..]);
}

#[test]
fn the_policy_fences_a_p3_guest_as_any_other() {
    // Two sessions per instance: the third is refused with the limit's name.
    let runtime = policed("[limits]\ninstance-sessions = 2\n");
    let (code, lines) = run_lines(&runtime, P3, &["open", MODEL]).expect("the guest ran");
    assert_eq!(code, 0, "{lines:#?}");
    let opened: Vec<bool> = lines.iter().map(|l| l["open"].as_bool().unwrap()).collect();
    assert_eq!(opened, [true, true, false], "{lines:#?}");
    let refused = lines[2]["error"].as_str().unwrap();
    assert!(refused.contains("instance-sessions"), "{refused}");

    // A grant that names another component leaves this one no model.
    let denied = policed(&format!("[[grants]]\ncomponent = \"probe\"\nmodels = [\"{MODEL}\"]\n"));
    let (code, lines) = run_lines(&denied, P3, &["open", MODEL]).expect("the guest ran");
    assert_eq!(code, 0, "{lines:#?}");
    let refused = |l: &Value| l["open"] == false && l["error"].as_str().is_some_and(|e| e.contains("not permitted"));
    assert!(lines.len() == 3 && lines.iter().all(refused), "a model no grant gives this component: {lines:#?}");
}

#[test]
fn guest_seconds_stops_a_p3_guest_that_waits_on_a_stream() {
    // The guest spends its time awaiting chunks, not running code, so only
    // the host's timeout around the whole run can stop it.
    let runtime = policed("[limits]\nguest-seconds = 1\n");
    let ended = run_lines(&runtime, P3, &["generate", MODEL, "1000", &chatml("Tell me a very long story.")]);
    let message = ended.expect_err("the run must be stopped");
    assert!(message.contains("guest-seconds"), "{message}");
}
