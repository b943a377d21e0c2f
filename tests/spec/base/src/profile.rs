//! A host's fixture: what this suite cannot know about a host without
//! being told (which encoding it serves and under which name a graph waits,
//! the graph's inputs and its expected output), as JSON.

use serde::Deserialize;

use crate::wasi::nn::tensor::TensorType;

/// One host's fixture.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Profile {
    /// The encoding the host serves (`load` of garbage bytes uses it).
    pub encoding: String,
    /// An encoding the host does not serve.
    pub absent_encoding: String,
    /// The graph every check computes with.
    pub case: Case,
    /// A graph whose input is of a tensor type other than FP32, if the main
    /// case's input is FP32.
    pub typed: Option<Case>,
}

/// A graph loaded by name, inputs for it, and what it answers.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Case {
    /// Its `load-by-name` name.
    pub graph: String,
    /// Its inputs.
    pub inputs: Vec<Value>,
    /// The output checked.
    pub output: Value,
}

/// A tensor in the profile: numbers (encoded as its type, little-endian,
/// row-major) or UTF-8 text (u8); dimensions default to the flat length.
#[derive(Deserialize, Clone)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Value {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub dims: Option<Vec<u32>>,
    /// Expected numbers of an output may be left out: then only its name,
    /// type and dimensions are checked.
    pub data: Option<Vec<f64>>,
    pub text: Option<String>,
}

/// A named tensor's parts, before it becomes a `tensor` resource.
#[derive(Clone, Debug)]
pub struct Raw {
    pub name: String,
    pub ty: TensorType,
    pub dims: Vec<u32>,
    pub data: Vec<u8>,
}

impl Profile {
    pub fn parse(json: &str) -> Result<Self, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }
}

/// A tensor type by its name in the profile.
pub fn tensor_type(name: &str) -> Result<TensorType, String> {
    Ok(match name {
        "fp16" => TensorType::Fp16,
        "fp32" => TensorType::Fp32,
        "fp64" => TensorType::Fp64,
        "bf16" => TensorType::Bf16,
        "u8" => TensorType::U8,
        "i32" => TensorType::I32,
        "i64" => TensorType::I64,
        other => return Err(format!("unknown tensor type {other:?}")),
    })
}

/// Bytes per element of `ty`.
pub fn size_of(ty: TensorType) -> usize {
    match ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    }
}

/// `x` as one element of `ty`, little-endian.
pub fn encode(ty: TensorType, x: f64) -> Vec<u8> {
    match ty {
        TensorType::U8 => vec![x as u8],
        TensorType::Fp16 => f32_to_f16(x as f32).to_le_bytes().to_vec(),
        TensorType::Bf16 => (((x as f32).to_bits() >> 16) as u16).to_le_bytes().to_vec(),
        TensorType::Fp32 => (x as f32).to_le_bytes().to_vec(),
        TensorType::Fp64 => x.to_le_bytes().to_vec(),
        TensorType::I32 => (x as i32).to_le_bytes().to_vec(),
        TensorType::I64 => (x as i64).to_le_bytes().to_vec(),
    }
}

/// IEEE half precision of a small, exactly representable value (what the
/// fixtures hold).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = ((bits >> 13) & 0x3ff) as u16;
    if x == 0.0 || exponent <= 0 { sign } else { sign | ((exponent.min(30) as u16) << 10) | mantissa }
}

impl Value {
    /// The tensor as the profile gives it.
    pub fn raw(&self) -> Result<Raw, String> {
        let ty = tensor_type(&self.ty)?;
        let data: Vec<u8> = match (&self.text, &self.data) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(numbers)) => numbers.iter().flat_map(|&x| encode(ty, x)).collect(),
            (None, None) => Vec::new(),
        };
        let dims = self.dims.clone().unwrap_or_else(|| vec![(data.len() / size_of(ty)) as u32]);
        Ok(Raw { name: self.name.clone(), ty, dims, data })
    }
}
