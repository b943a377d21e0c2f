//! `POST /v1/embeddings` on the extension's embeddings interface. OpenAI's
//! `input` is a string, a list of strings, a list of token ids or a list of
//! such lists; vectors come back unit-length, as OpenAI's do, as JSON
//! numbers or (`encoding_format: "base64"`, what the `openai` Python client
//! asks for) little-endian f32 bytes in base64.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use wasi_nn_llm::{EmbedInput, EmbedOptions};

use crate::error::ApiError;
use crate::request;

/// Most inputs per request, as OpenAI allows (and the extension takes).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: Input,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl Input {
    fn inputs(self) -> Result<Vec<EmbedInput>, ApiError> {
        let inputs: Vec<EmbedInput> = match self {
            Input::Text(text) => vec![EmbedInput::Text(text)],
            Input::Texts(texts) => texts.into_iter().map(EmbedInput::Text).collect(),
            Input::Tokens(tokens) => vec![EmbedInput::Tokens(tokens)],
            Input::TokenLists(lists) => lists.into_iter().map(EmbedInput::Tokens).collect(),
        };
        let empty = |input: &EmbedInput| match input {
            EmbedInput::Text(text) => text.is_empty(),
            EmbedInput::Tokens(tokens) => tokens.is_empty(),
        };
        if inputs.is_empty() || inputs.iter().any(empty) {
            return Err(ApiError::invalid("input must not be empty, nor hold an empty input", Some("input")));
        }
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::invalid(
                format!("input holds {} inputs; at most {MAX_INPUTS} are allowed", inputs.len()),
                Some("input"),
            ));
        }
        Ok(inputs)
    }
}

/// The embeddings of one request's inputs, in OpenAI's list shape.
pub fn embed(body: &[u8]) -> Result<Value, ApiError> {
    let request: EmbeddingRequest = request::parse(body)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("encoding_format {other:?} is not one of float, base64"),
                Some("encoding_format"),
            ));
        }
    };
    let inputs = request.input.inputs()?;
    let model = crate::load(&request.model)?;
    let dimensions = model.dimensions()?;
    if let Some(wanted) = request.dimensions.filter(|&d| d != dimensions) {
        return Err(ApiError::invalid(
            format!(
                "this model's embeddings have {dimensions} dimensions and cannot be shortened to {wanted} \
                 (that needs a model trained for it)"
            ),
            Some("dimensions"),
        ));
    }
    let embeddings = model
        .embed(&inputs, EmbedOptions { pooling: None, normalize: true })
        .map_err(|e| ApiError::from(e).at("input"))?;
    let tokens: u32 = embeddings.iter().map(|e| e.tokens).sum();
    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let vector = if base64 {
                let bytes: Vec<u8> = e.vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(e.vector)
            };
            json!({ "object": "embedding", "index": index, "embedding": vector })
        })
        .collect();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
}
