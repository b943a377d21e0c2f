//! The checks, each one normative statement of the spec
//! (`wit/deps/wasi-nn/wasi-nn.wit`, cited by line) and how a host is tried
//! against it. The spec writes few requirements in RFC 2119 words; a MUST
//! here is what its text or types leave no room for (a tensor's data "must
//! match" its dimensions; an error code named for exactly the case), a
//! SHOULD what it implies without saying which call does it.

use crate::profile::{Case, Profile, Raw, size_of};
use crate::wasi::nn::errors::{Error, ErrorCode};
use crate::wasi::nn::graph::{self, ExecutionTarget, Graph, GraphEncoding};
use crate::wasi::nn::inference::GraphExecutionContext;
use crate::wasi::nn::tensor::{Tensor, TensorType};

/// A check's outcome and what was observed.
pub enum Outcome {
    Pass(String),
    Fail(String),
    NotApplicable(String),
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Self::Pass(_) => "pass",
            Self::Fail(_) => "fail",
            Self::NotApplicable(_) => "n/a",
        }
    }

    pub fn observed(&self) -> &str {
        match self {
            Self::Pass(s) | Self::Fail(s) | Self::NotApplicable(s) => s,
        }
    }
}

/// One statement and its check.
pub struct Check {
    pub id: &'static str,
    pub level: &'static str,
    /// Lines of `wasi-nn.wit` the statement rests on.
    pub cite: &'static str,
    pub text: &'static str,
    pub run: fn(&Profile) -> Outcome,
}

pub const CHECKS: &[Check] = &[
    Check {
        id: "tensor-round-trip",
        level: "MUST",
        cite: "L46-58",
        text: "A tensor of each tensor-type returns the dimensions, type and data it was constructed with.",
        run: tensor_round_trip,
    },
    Check {
        id: "load-absent-encoding",
        level: "MUST",
        cite: "L73-83, L98-99, L134",
        text: "`load` with an encoding the host does not implement fails with `invalid-encoding`.",
        run: load_absent_encoding,
    },
    Check {
        id: "load-garbage",
        level: "MUST",
        cite: "L98-99",
        text: "`load` of bytes that are no model in the host's encoding returns an error (not a trap).",
        run: load_garbage,
    },
    Check {
        id: "load-by-name-unknown",
        level: "MUST",
        cite: "L101-106, L144",
        text: "`load-by-name` of a name the host does not know fails with `not-found`.",
        run: load_by_name_unknown,
    },
    Check {
        id: "error-data",
        level: "SHOULD",
        cite: "L153-158",
        text: "An error's `data` says what failed (is not empty).",
        run: error_data,
    },
    Check {
        id: "compute-named-outputs",
        level: "MUST",
        cite: "L115-117, L125",
        text: "`compute` on the graph's named inputs returns its output under the graph's name for it, with the expected dimensions, type and data.",
        run: compute_named_outputs,
    },
    Check {
        id: "compute-typed-input",
        level: "MUST",
        cite: "L26-35, L125",
        text: "An input of a tensor-type other than FP32, where the graph takes that type, is computed.",
        run: compute_typed_input,
    },
    Check {
        id: "contexts-independent",
        level: "MUST",
        cite: "L69-70, L109-110",
        text: "Two execution contexts of one graph are independent: computes interleaved on both give each the output it gives alone.",
        run: contexts_independent,
    },
    Check {
        id: "compute-repeatable",
        level: "SHOULD",
        cite: "L123-126",
        text: "A context computes again: the same inputs give the same output.",
        run: compute_repeatable,
    },
    Check {
        id: "unknown-input-name",
        level: "MUST",
        cite: "L115-117",
        text: "An input named as none of the graph's inputs makes `compute` return an error.",
        run: unknown_input_name,
    },
    Check {
        id: "no-inputs",
        level: "MUST",
        cite: "L125",
        text: "`compute` with none of the graph's inputs returns an error.",
        run: no_inputs,
    },
    Check {
        id: "rank-mismatch",
        level: "MUST",
        cite: "L20-24",
        text: "An input of another rank than the graph's input returns an error.",
        run: rank_mismatch,
    },
    Check {
        id: "type-mismatch",
        level: "MUST",
        cite: "L26-35",
        text: "An input of another tensor-type than the graph's input returns an error.",
        run: type_mismatch,
    },
    Check {
        id: "length-mismatch",
        level: "MUST",
        cite: "L37-44",
        text: "An input whose data is shorter than its dimensions times its type's size (it \"must match\") returns an error.",
        run: length_mismatch,
    },
    Check {
        id: "ragged-data",
        level: "MUST",
        cite: "L37-44",
        text: "An input whose data is not a whole number of elements returns an error (not a trap or crash).",
        run: ragged_data,
    },
    Check {
        id: "input-errors-invalid-argument",
        level: "SHOULD",
        cite: "L132-133",
        text: "Those bad inputs (unknown name, none, rank, type, length) fail with `invalid-argument`: the caller passed an invalid argument.",
        run: input_errors_code,
    },
    Check {
        id: "usable-after-error",
        level: "SHOULD",
        cite: "L123-126",
        text: "After a failed compute, the same context computes the expected output.",
        run: usable_after_error,
    },
];

fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}

/// A tensor type as the spec spells it.
fn type_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Fp16 => "FP16",
        TensorType::Fp32 => "FP32",
        TensorType::Fp64 => "FP64",
        TensorType::Bf16 => "BF16",
        TensorType::U8 => "U8",
        TensorType::I32 => "I32",
        TensorType::I64 => "I64",
    }
}

/// An error as the matrix shows it: its code and data.
fn describe(e: &Error) -> String {
    format!("{} ({:?})", code_name(e.code()), e.data())
}

fn encoding(name: &str) -> Option<GraphEncoding> {
    Some(match name {
        "openvino" => GraphEncoding::Openvino,
        "onnx" => GraphEncoding::Onnx,
        "tensorflow" => GraphEncoding::Tensorflow,
        "pytorch" => GraphEncoding::Pytorch,
        "tensorflowlite" => GraphEncoding::Tensorflowlite,
        "ggml" => GraphEncoding::Ggml,
        "autodetect" => GraphEncoding::Autodetect,
        _ => return None,
    })
}

/// The case's graph and a fresh context of it.
fn context(case: &Case) -> Result<(Graph, GraphExecutionContext), String> {
    let graph =
        graph::load_by_name(&case.graph).map_err(|e| format!("load-by-name {:?}: {}", case.graph, describe(&e)))?;
    let context = graph.init_execution_context().map_err(|e| format!("init-execution-context: {}", describe(&e)))?;
    Ok((graph, context))
}

fn inputs(case: &Case) -> Result<Vec<Raw>, String> {
    case.inputs.iter().map(|v| v.raw()).collect()
}

/// What one compute returned: each output's name, type, dimensions and data.
type Outputs = Vec<(String, TensorType, Vec<u32>, Vec<u8>)>;

fn compute(context: &GraphExecutionContext, inputs: &[Raw]) -> Result<Outputs, Error> {
    let named = inputs.iter().map(|r| (r.name.clone(), Tensor::new(&r.dims, r.ty, &r.data))).collect();
    let outputs = context.compute(named)?;
    Ok(outputs.into_iter().map(|(name, t)| (name, t.ty(), t.dimensions(), t.data())).collect())
}

/// Whether `outputs` hold the case's expected output; why not if not.
fn expected(case: &Case, outputs: &Outputs) -> Result<String, String> {
    let want = &case.output;
    let names: Vec<&str> = outputs.iter().map(|o| o.0.as_str()).collect();
    let Some((_, ty, dims, data)) = outputs.iter().find(|o| o.0 == want.name) else {
        return Err(format!("no output named {:?} (got {names:?})", want.name));
    };
    let raw = want.raw()?;
    if *ty != raw.ty || want.dims.as_ref().is_some_and(|d| d != dims) {
        let (got, expected) = (type_name(*ty), type_name(raw.ty));
        return Err(format!("output {:?} is {got} {dims:?}, expected {expected} {:?}", want.name, want.dims));
    }
    match (&want.text, &want.data) {
        (Some(text), _) if data != text.as_bytes() => {
            Err(format!("output text {:?}, expected {text:?}", String::from_utf8_lossy(data)))
        }
        (None, Some(numbers)) if *ty == TensorType::Fp32 => {
            let got: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let close =
                got.len() == numbers.len() && got.iter().zip(numbers).all(|(g, w)| (*g as f64 - w).abs() < 1e-4);
            if close {
                Ok(format!("{:?} {} {dims:?} = {got:?}", want.name, type_name(*ty)))
            } else {
                Err(format!("output {got:?}, expected {numbers:?}"))
            }
        }
        (None, Some(_)) if data != &raw.data => Err(format!("output bytes differ from the expected {:?}", want.data)),
        (Some(text), _) => Ok(format!("{:?} {} {dims:?} = {text:?}", want.name, type_name(*ty))),
        _ => Ok(format!("{:?} {} {dims:?}", want.name, type_name(*ty))),
    }
}

fn tensor_round_trip(_: &Profile) -> Outcome {
    let types = [
        TensorType::Fp16,
        TensorType::Fp32,
        TensorType::Fp64,
        TensorType::Bf16,
        TensorType::U8,
        TensorType::I32,
        TensorType::I64,
    ];
    for ty in types {
        let dims = [2, 3];
        let data: Vec<u8> = (0..6 * size_of(ty)).map(|i| (i * 37 % 251) as u8).collect();
        let tensor = Tensor::new(&dims, ty, &data);
        if tensor.dimensions() != dims || tensor.ty() != ty || tensor.data() != data {
            let got = type_name(tensor.ty());
            return Outcome::Fail(format!("{}: got {:?} {got} and other data", type_name(ty), tensor.dimensions()));
        }
    }
    Outcome::Pass("all 7 types".into())
}

fn load_absent_encoding(p: &Profile) -> Outcome {
    let Some(absent) = encoding(&p.absent_encoding) else {
        return Outcome::Fail(format!("the profile names no encoding {:?}", p.absent_encoding));
    };
    match graph::load(&[b"model".to_vec()], absent, ExecutionTarget::Cpu) {
        Ok(_) => Outcome::Fail(format!("{}: loaded", p.absent_encoding)),
        Err(e) if e.code() == ErrorCode::InvalidEncoding => {
            Outcome::Pass(format!("{}: {}", p.absent_encoding, describe(&e)))
        }
        Err(e) => Outcome::Fail(format!("{}: {}", p.absent_encoding, describe(&e))),
    }
}

fn load_garbage(p: &Profile) -> Outcome {
    let Some(own) = encoding(&p.encoding) else { return Outcome::Fail(format!("unknown encoding {:?}", p.encoding)) };
    match graph::load(&[b"\x00not a model\xff".to_vec()], own, ExecutionTarget::Cpu) {
        Ok(_) => Outcome::Fail("garbage loaded as a graph".into()),
        Err(e) => Outcome::Pass(describe(&e)),
    }
}

fn load_by_name_unknown(_: &Profile) -> Outcome {
    match graph::load_by_name("no-such-graph-anywhere") {
        Ok(_) => Outcome::Fail("loaded".into()),
        Err(e) if e.code() == ErrorCode::NotFound => Outcome::Pass(describe(&e)),
        Err(e) => Outcome::Fail(describe(&e)),
    }
}

fn error_data(_: &Profile) -> Outcome {
    match graph::load_by_name("no-such-graph-anywhere") {
        Ok(_) => Outcome::NotApplicable("no error to look at".into()),
        Err(e) if e.data().is_empty() => Outcome::Fail(format!("{}: empty data", code_name(e.code()))),
        Err(e) => Outcome::Pass(describe(&e)),
    }
}

fn compute_named_outputs(p: &Profile) -> Outcome {
    run_case(&p.case)
}

fn run_case(case: &Case) -> Outcome {
    let outcome = || -> Result<String, String> {
        let (_graph, context) = context(case)?;
        let outputs = compute(&context, &inputs(case)?).map_err(|e| format!("compute: {}", describe(&e)))?;
        expected(case, &outputs)
    };
    outcome().map_or_else(Outcome::Fail, Outcome::Pass)
}

fn compute_typed_input(p: &Profile) -> Outcome {
    let main_types: Vec<&str> = p.case.inputs.iter().map(|i| i.ty.as_str()).collect();
    match &p.typed {
        Some(case) => run_case(case),
        None if main_types.iter().any(|t| *t != "fp32") => match run_case(&p.case) {
            Outcome::Pass(_) => Outcome::Pass(format!("the main case's {main_types:?} inputs")),
            other => other,
        },
        None => Outcome::NotApplicable("the profile has no graph with a non-FP32 input".into()),
    }
}

fn contexts_independent(p: &Profile) -> Outcome {
    let outcome = || -> Result<String, String> {
        let (graph, a) = context(&p.case)?;
        let b = graph.init_execution_context().map_err(|e| format!("a second context: {}", describe(&e)))?;
        let inputs = inputs(&p.case)?;
        let run = |c: &GraphExecutionContext| compute(c, &inputs).map_err(|e| format!("compute: {}", describe(&e)));
        let (first, other, again) = (run(&a)?, run(&b)?, run(&a)?);
        if first != other || first != again {
            return Err("the outputs differ between contexts or after the other context computed".into());
        }
        expected(&p.case, &first).map(|_| "three interleaved computes, the same output".to_owned())
    };
    outcome().map_or_else(Outcome::Fail, Outcome::Pass)
}

fn compute_repeatable(p: &Profile) -> Outcome {
    let outcome = || -> Result<String, String> {
        let (_graph, context) = context(&p.case)?;
        let inputs = inputs(&p.case)?;
        let first = compute(&context, &inputs).map_err(|e| format!("compute: {}", describe(&e)))?;
        let again = compute(&context, &inputs).map_err(|e| format!("compute again: {}", describe(&e)))?;
        if first != again {
            return Err("a second compute of the same inputs gave another output".into());
        }
        Ok("the same output twice".into())
    };
    outcome().map_or_else(Outcome::Fail, Outcome::Pass)
}

/// A change that makes the case's inputs bad (`Err`: it cannot be made).
type Change = fn(&mut Vec<Raw>) -> Result<(), String>;

/// The case's inputs, changed by `change`: a bad input.
fn bad_input(p: &Profile, change: Change) -> Result<Result<Outputs, Error>, String> {
    let (_graph, context) = context(&p.case)?;
    let mut inputs = inputs(&p.case)?;
    change(&mut inputs)?;
    Ok(compute(&context, &inputs))
}

fn must_fail(p: &Profile, change: Change) -> Outcome {
    match bad_input(p, change) {
        Err(skip) => Outcome::NotApplicable(skip),
        Ok(Ok(_)) => Outcome::Fail("computed without an error".into()),
        Ok(Err(e)) => Outcome::Pass(describe(&e)),
    }
}

fn rename(inputs: &mut [Raw]) -> Result<(), String> {
    inputs[0].name = "no-such-input".into();
    Ok(())
}

fn drop_all(inputs: &mut Vec<Raw>) -> Result<(), String> {
    inputs.clear();
    Ok(())
}

fn add_rank(inputs: &mut [Raw]) -> Result<(), String> {
    inputs[0].dims.push(1);
    Ok(())
}

/// Another type, the dimensions and data kept consistent with it.
fn retype(inputs: &mut [Raw]) -> Result<(), String> {
    let input = &mut inputs[0];
    let (to, same_size) = match input.ty {
        TensorType::Fp32 => (TensorType::I32, true),
        TensorType::I32 => (TensorType::Fp32, true),
        TensorType::I64 => (TensorType::Fp64, true),
        TensorType::Fp64 => (TensorType::I64, true),
        _ => (TensorType::I32, false),
    };
    if !same_size {
        input.data.resize(input.data.len().next_multiple_of(4), 0);
        input.dims = vec![(input.data.len() / 4) as u32];
    }
    input.ty = to;
    Ok(())
}

fn shorten(inputs: &mut [Raw]) -> Result<(), String> {
    let input = &mut inputs[0];
    let size = size_of(input.ty);
    if input.data.len() < size {
        return Err("the input has no element to drop".into());
    }
    input.data.truncate(input.data.len() - size);
    Ok(())
}

fn ragged(inputs: &mut [Raw]) -> Result<(), String> {
    let input = &mut inputs[0];
    if size_of(input.ty) == 1 {
        return Err(format!("{} elements are single bytes: every length is whole", type_name(input.ty)));
    }
    input.data.push(0);
    Ok(())
}

fn unknown_input_name(p: &Profile) -> Outcome {
    must_fail(p, |v| rename(v))
}

fn no_inputs(p: &Profile) -> Outcome {
    must_fail(p, drop_all)
}

fn rank_mismatch(p: &Profile) -> Outcome {
    must_fail(p, |v| add_rank(v))
}

fn type_mismatch(p: &Profile) -> Outcome {
    must_fail(p, |v| retype(v))
}

fn length_mismatch(p: &Profile) -> Outcome {
    must_fail(p, |v| shorten(v))
}

fn ragged_data(p: &Profile) -> Outcome {
    must_fail(p, |v| ragged(v))
}

fn input_errors_code(p: &Profile) -> Outcome {
    let mut seen = Vec::new();
    for (what, change) in [
        ("name", (|v| rename(v)) as Change),
        ("none", drop_all),
        ("rank", |v| add_rank(v)),
        ("type", |v| retype(v)),
        ("length", |v| shorten(v)),
    ] {
        match bad_input(p, change) {
            Ok(Err(e)) => seen.push((what, e.code())),
            Ok(Ok(_)) => return Outcome::Fail(format!("{what}: computed without an error")),
            Err(why) => return Outcome::Fail(why),
        }
    }
    let codes: Vec<String> = seen.iter().map(|(what, code)| format!("{what}: {}", code_name(*code))).collect();
    if seen.iter().all(|(_, code)| *code == ErrorCode::InvalidArgument) {
        Outcome::Pass(codes.join(", "))
    } else {
        Outcome::Fail(codes.join(", "))
    }
}

fn usable_after_error(p: &Profile) -> Outcome {
    let outcome = || -> Result<String, String> {
        let (_graph, context) = context(&p.case)?;
        let mut bad = inputs(&p.case)?;
        rename(&mut bad)?;
        if compute(&context, &bad).is_ok() {
            return Err("the bad input computed".into());
        }
        let outputs =
            compute(&context, &inputs(&p.case)?).map_err(|e| format!("compute after the error: {}", describe(&e)))?;
        expected(&p.case, &outputs)
    };
    outcome().map_or_else(Outcome::Fail, Outcome::Pass)
}
