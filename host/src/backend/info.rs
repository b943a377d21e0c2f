//! What a model is, as its backend read it from the GGUF's metadata.

/// A model's metadata and the host's limits for it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The name the operator registered it under.
    pub name: String,
    /// `general.architecture`, e.g. `llama`, `gemma3`.
    pub architecture: String,
    /// Context length the model was trained with.
    pub trained_context: u32,
    /// Most tokens one session may hold on this host.
    pub max_session_context: u32,
    /// Token ids are below this.
    pub vocab_size: u32,
    /// Beginning-of-sequence token, where the model has one.
    pub bos: Option<u32>,
    /// End-of-sequence token, where the model has one.
    pub eos: Option<u32>,
    /// End-of-turn token, where the model has one.
    pub eot: Option<u32>,
    /// Number of parameters.
    pub parameters: u64,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// The chat template from the GGUF, if it has one.
    pub chat_template: Option<String>,
    /// Weight quantization, e.g. `Q4_1` (from `general.file_type`).
    pub quantization: String,
}

/// Names of llama.cpp's `llama_ftype` values (GGUF `general.file_type`),
/// which every GGUF writer uses.
pub fn file_type_name(file_type: u32) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        other => return format!("file type {other}"),
    };
    name.to_owned()
}
