//! Test guest for WasmEdge's GGML ABI (`wasi_ephemeral_nn`), built for
//! wasm32-wasip1 as WasmEdge's guests are. Prints JSON lines.
//!
//! - `chat MODEL chatml|gemma MAX QUESTION...`: a chat as LlamaEdge holds
//!   one: the template rendered in the guest and the whole history re-sent
//!   every turn, each reply streamed with `compute_single`; per turn, the
//!   time to the first piece and the metadata output.
//! - `bad MODEL`: every bad input and call order of the matrix, each case's
//!   errno, then a normal request.

mod abi;

use std::time::Instant;

use abi::{END_OF_SEQUENCE, Tensor, addr, out, text_tensor};
use serde_json::{Value, json};

/// Room for any output these tests produce: the host copies a whole output
/// without regard to the `max` it is given (as LlamaEdge relies on).
const OUTPUT_ROOM: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match &args[1..] {
        ["chat", model, template, max, questions @ ..] => chat(model, template, max.parse().unwrap_or(32), questions),
        ["bad", model] => bad(model),
        _ => Err("usage: wasmedge-probe chat MODEL chatml|gemma MAX QUESTION... | bad MODEL".into()),
    };
    if let Err(e) = result {
        println!("{}", json!({ "error": e }));
        std::process::exit(1);
    }
}

// Every `unsafe` below is a call of a `wasi_ephemeral_nn` import. The host
// reads and writes only the addresses passed, after checking each against
// this instance's memory; every address passed is either the guest's own
// live buffer or, in the bad-input matrix, one outside memory on purpose.

fn load_graph(model: &str, config: &str) -> Result<i32, i32> {
    let mut graph = 0u32;
    let (name, cfg) = (model.as_bytes(), config.as_bytes());
    let e = unsafe {
        abi::load_by_name_with_config(addr(name), name.len() as i32, addr(cfg), cfg.len() as i32, out(&mut graph))
    };
    if e == 0 { Ok(graph as i32) } else { Err(e) }
}

fn new_context(graph: i32) -> Result<i32, i32> {
    let mut context = 0u32;
    match unsafe { abi::init_execution_context(graph, out(&mut context)) } {
        0 => Ok(context as i32),
        e => Err(e),
    }
}

fn set_text(context: i32, index: i32, text: &[u8]) -> i32 {
    let dims = [text.len() as u32];
    let tensor = text_tensor(text, &dims);
    unsafe { abi::set_input(context, index, addr(&tensor)) }
}

fn output(context: i32, index: i32, single: bool) -> Result<String, i32> {
    let mut buffer = vec![0u8; OUTPUT_ROOM];
    let mut written = 0u32;
    let (ptr, max, at) = (out(buffer.as_mut_ptr()), buffer.len() as i32, out(&mut written));
    let e = unsafe {
        if single {
            abi::get_output_single(context, index, ptr, max, at)
        } else {
            abi::get_output(context, index, ptr, max, at)
        }
    };
    if e != 0 {
        return Err(e);
    }
    buffer.truncate((written as usize).min(OUTPUT_ROOM));
    Ok(String::from_utf8_lossy(&buffer).into_owned())
}

fn ok(what: &str, errno: i32) -> Result<(), String> {
    if errno == 0 { Ok(()) } else { Err(format!("{what}: errno {errno}")) }
}

/// A user turn and the opening of the reply, in `template`.
fn user_turn(template: &str, question: &str) -> String {
    match template {
        "gemma" => format!("<start_of_turn>user\n{question}<end_of_turn>\n<start_of_turn>model\n"),
        _ => format!("<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"),
    }
}

/// The end of a reply, in `template`.
fn reply_end(template: &str) -> &'static str {
    match template {
        "gemma" => "<end_of_turn>\n",
        _ => "<|im_end|>\n",
    }
}

fn chat(model: &str, template: &str, max: u32, questions: &[&str]) -> Result<(), String> {
    let config = json!({ "n-predict": max, "temp": 0.0 }).to_string();
    let graph = load_graph(model, &config).map_err(|e| format!("load: errno {e}"))?;
    let context = new_context(graph).map_err(|e| format!("init_execution_context: errno {e}"))?;
    let mut history = String::new();
    for (turn, question) in questions.iter().enumerate() {
        history.push_str(&user_turn(template, question));
        ok("set_input", set_text(context, 0, history.as_bytes()))?;
        let start = Instant::now();
        let (mut first, mut text, mut pieces) = (None, String::new(), 0);
        loop {
            match unsafe { abi::compute_single(context) } {
                0 => {}
                END_OF_SEQUENCE => break,
                e => return Err(format!("compute_single: errno {e}")),
            }
            first.get_or_insert_with(|| start.elapsed());
            text.push_str(&output(context, 0, true).map_err(|e| format!("get_output_single: errno {e}"))?);
            pieces += 1;
        }
        let elapsed = start.elapsed();
        let metadata: Value =
            serde_json::from_str(&output(context, 1, false).map_err(|e| format!("metadata: errno {e}"))?)
                .map_err(|e| format!("the metadata is not JSON: {e}"))?;
        println!(
            "{}",
            json!({
                "turn": turn + 1,
                "ttft_ms": first.unwrap_or(elapsed).as_secs_f64() * 1e3,
                "total_ms": elapsed.as_secs_f64() * 1e3,
                "pieces": pieces,
                "text": text,
                "input_tokens": metadata["input_tokens"],
                "output_tokens": metadata["output_tokens"],
                "cached_tokens": metadata["cached_tokens"],
            })
        );
        history.push_str(&text);
        history.push_str(reply_end(template));
        ok("fini_single", unsafe { abi::fini_single(context) })?;
    }
    Ok(())
}

fn report(case: &str, errno: i32) {
    println!("{}", json!({ "case": case, "errno": errno }));
}

/// The first address past this instance's memory (asked anew for every
/// case: the memory grows as the guest allocates).
fn memory_end() -> i32 {
    (core::arch::wasm32::memory_size(0) * 65536) as i32
}

fn bad(model: &str) -> Result<(), String> {
    let mut handle = 0u32;
    let name = model.as_bytes();

    // Loading.
    let unknown = b"no-such-model";
    report("load-unknown-model", unsafe { abi::load_by_name(addr(unknown), unknown.len() as i32, out(&mut handle)) });
    let weights = b"GGUF\x03\0\0\0";
    let builders = [addr(weights), weights.len() as i32];
    report("load-bytes", unsafe { abi::load(addr(&builders), 1, 6, 0, out(&mut handle)) });
    let preload = b"preload:/etc/passwd";
    let builders = [addr(preload), preload.len() as i32];
    report("load-preload-path", unsafe { abi::load(addr(&builders), 1, 6, 0, out(&mut handle)) });
    report("load-onnx-encoding", unsafe { abi::load(addr(&builders), 1, 1, 0, out(&mut handle)) });
    report("load-builders-past-memory", unsafe { abi::load(memory_end() - 4, 1, 6, 0, out(&mut handle)) });
    report("name-past-memory", unsafe { abi::load_by_name(memory_end() - 2, 100, out(&mut handle)) });
    report("name-length-negative", unsafe { abi::load_by_name(addr(name), -1, out(&mut handle)) });
    let not_utf8 = b"\xff\xfe";
    report("name-not-utf8", unsafe { abi::load_by_name(addr(not_utf8), 2, out(&mut handle)) });
    report("graph-out-past-memory", unsafe { abi::load_by_name(addr(name), name.len() as i32, memory_end()) });
    for (case, config) in [
        ("config-not-json", "{not json"),
        ("config-not-object", "[1, 2]"),
        ("config-wrong-type", r#"{"temp": "hot"}"#),
        ("config-host-path", r#"{"mmproj": "/etc/passwd"}"#),
    ] {
        report(case, load_graph(model, config).err().unwrap_or(0));
    }
    report("config-past-memory", unsafe {
        abi::load_by_name_with_config(addr(name), name.len() as i32, memory_end() - 1, 64, out(&mut handle))
    });
    report(
        "config-unknown-keys-ignored",
        load_graph(model, r#"{"llama3": true, "n-gpu-layers": 99}"#).err().unwrap_or(0),
    );

    // Handles.
    report("context-of-unknown-graph", new_context(9999).err().unwrap_or(0));
    report("set-input-unknown-context", set_text(9999, 0, b"hi"));
    report("compute-unknown-context", unsafe { abi::compute(9999) });
    report("compute-single-unknown-context", unsafe { abi::compute_single(9999) });
    report("fini-single-unknown-context", unsafe { abi::fini_single(9999) });
    report("get-output-unknown-context", output(9999, 0, false).err().unwrap_or(0));
    report("unload-unknown-graph", unsafe { abi::unload(9999) });
    report("finalize-unknown-context", unsafe { abi::finalize_execution_context(9999) });
    let graph = load_graph(model, r#"{"n-predict": 8, "temp": 0.0}"#).map_err(|e| format!("load: errno {e}"))?;
    let spare = load_graph(model, "{}").map_err(|e| format!("load: errno {e}"))?;
    report("unload", unsafe { abi::unload(spare) });
    report("unload-twice", unsafe { abi::unload(spare) });
    report("context-out-past-memory", unsafe { abi::init_execution_context(graph, memory_end()) });

    // Tensors.
    let context = new_context(graph).map_err(|e| format!("context: errno {e}"))?;
    report("tensor-past-memory", unsafe { abi::set_input(context, 0, memory_end() - 8) });
    let dims = [4u32];
    let far = Tensor { dims: addr(dims.as_ptr()), rank: 1, ty: abi::U8, data: memory_end() - 2, len: 64 };
    report("tensor-data-past-memory", unsafe { abi::set_input(context, 0, addr(&far)) });
    let huge_rank = Tensor { dims: addr(dims.as_ptr()), rank: i32::MAX, ty: abi::U8, data: addr(name), len: 1 };
    report("tensor-dims-past-memory", unsafe { abi::set_input(context, 0, addr(&huge_rank)) });
    let floats = Tensor { dims: addr(dims.as_ptr()), rank: 1, ty: 1, data: addr(name), len: name.len() as i32 };
    report("tensor-type-f32", unsafe { abi::set_input(context, 0, addr(&floats)) });
    report("prompt-not-utf8", set_text(context, 0, b"\xc3\x28"));
    report("config-input-not-json", set_text(context, 1, b"{nope"));

    // Calls out of order.
    report("compute-before-input", unsafe { abi::compute(context) });
    report("compute-single-before-input", unsafe { abi::compute_single(context) });
    report("get-output-before-compute", output(context, 0, false).map(|s| s.len() as i32).unwrap_or_else(|e| -e));
    report("fini-single-before-compute-single", unsafe { abi::fini_single(context) });

    // Outputs to bad addresses.
    set_text(context, 0, b"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    report("get-output-buffer-past-memory", unsafe {
        abi::get_output(context, 1, memory_end() - 4, 0, out(&mut handle))
    });
    let mut buffer = [0u8; 256];
    report("get-output-written-past-memory", unsafe {
        abi::get_output(context, 1, out(buffer.as_mut_ptr()), 256, memory_end())
    });

    // The context's limits.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(40);
    set_text(context, 1, br#"{"ctx-size": 64}"#);
    set_text(context, 0, long.as_bytes());
    report("prompt-too-long", unsafe { abi::compute(context) });
    report("prompt-too-long-single", unsafe { abi::compute_single(context) });
    let exact = "the quick brown fox jumps over the lazy dog ".repeat(3);
    set_text(context, 0, exact.as_bytes());
    let prompt_tokens = output(context, 1, false)
        .ok()
        .and_then(|m| serde_json::from_str::<Value>(&m).ok())
        .and_then(|m| m["input_tokens"].as_u64())
        .ok_or("no input_tokens in the metadata")?;
    set_text(context, 1, format!(r#"{{"ctx-size": {prompt_tokens}}}"#).as_bytes());
    report("context-full", unsafe { abi::compute(context) });
    report("context-full-single", unsafe { abi::compute_single(context) });
    set_text(context, 1, br#"{"ctx-size": 2048, "n-predict": 0}"#);
    report("n-predict-zero", unsafe { abi::compute(context) });
    report("n-predict-zero-output", output(context, 0, false).map(|s| s.len() as i32).unwrap_or_else(|e| -e));

    // Too many handles.
    let mut opened = 0;
    let refused = loop {
        match new_context(graph) {
            Ok(_) => opened += 1,
            Err(e) => break e,
        }
        if opened > 100_000 {
            break 0;
        }
    };
    println!("{}", json!({ "case": "too-many-contexts", "errno": refused, "opened": opened }));

    // A normal request on the first context, after all of that.
    set_text(context, 1, br#"{"n-predict": 8, "temp": 0.0}"#);
    ok(
        "set_input",
        set_text(context, 0, b"<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"),
    )?;
    report("normal-compute", unsafe { abi::compute(context) });
    let text = output(context, 0, false).map_err(|e| format!("get_output: errno {e}"))?;
    println!("{}", json!({ "case": "normal-output", "text": text }));
    report("finalize", unsafe { abi::finalize_execution_context(context) });
    Ok(())
}
