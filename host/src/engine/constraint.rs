//! Constraints every backend serves: Lark grammars and JSON schemas through
//! `llguidance` (the library behind OpenAI's and llama.cpp's own Lark
//! support), working on the seam's terms only: the vocabulary's bytes and a
//! logits slice. A grammar is compiled on the guest's thread when the
//! generation starts (so its errors come back at once and the scheduler
//! never waits on a compile); the scheduler then masks each step's logits
//! with it before the backend's sampler picks ([`Guided`]).
//!
//! GBNF (llama.cpp's own syntax) stays the llama.cpp backend's: it is
//! compiled and applied by llama.cpp's sampler chain.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use crate::backend::{Model, Sampler};
use crate::error::LlmError;

/// llguidance's marker before a special token's text in the trie.
const SPECIAL: u8 = 0xFF;

/// A model's vocabulary as llguidance sees it.
struct Vocabulary {
    trie: TokTrie,
    model: Arc<dyn Model>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.model.tokenize(s, false, false)
    }
}

/// The compiler of one model's grammars (its token trie is built once).
pub(crate) struct Grammars(ParserFactory);

impl Grammars {
    /// The grammars of `model`: every token's bytes in a trie, special
    /// tokens marked as llguidance expects.
    pub fn new(model: &Arc<dyn Model>) -> Result<Self, LlmError> {
        let n_vocab = model.n_vocab();
        let words: Vec<Vec<u8>> = (0..n_vocab)
            .map(|t| {
                let piece = model.piece(t);
                if !piece.is_empty() {
                    return piece;
                }
                let special = model.detokenize(&[t], true);
                if special.is_empty() { Vec::new() } else { [&[SPECIAL][..], &special].concat() }
            })
            .collect();
        let info = model.info();
        let eos = info.eos.or(info.eot).unwrap_or(0);
        let mut rx = TokRxInfo::new(n_vocab, eos);
        rx.tok_bos = info.bos;
        rx.tok_end_of_turn = info.eot;
        let env: TokEnv = Arc::new(Vocabulary { trie: TokTrie::from(&rx, &words), model: model.clone() });
        let factory = ParserFactory::new_simple(&env)
            .map_err(|e| LlmError::EngineFailure(format!("llguidance cannot read the vocabulary: {e}")))?;
        Ok(Self(factory))
    }

    /// A matcher for `grammar`; one that does not compile is `invalid-grammar`.
    fn compile(&self, grammar: TopLevelGrammar, what: &str) -> Result<Matcher, LlmError> {
        let parser = self.0.create_parser(grammar).map_err(|e| LlmError::InvalidGrammar(format!("{what}: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(e) => Err(LlmError::InvalidGrammar(format!("{what}: {e}"))),
            None => Ok(matcher),
        }
    }

    /// A Lark grammar (llguidance's dialect: rule `start`, `%json` for a
    /// JSON schema inside it).
    pub fn lark(&self, grammar: &str) -> Result<Guide, LlmError> {
        Ok(Guide(self.compile(TopLevelGrammar::from_lark(grammar.to_owned()), "lark grammar")?))
    }

    /// Output that is JSON matching `schema`, read as llama.cpp's
    /// converter and OpenAI's strict mode read it (see [`closed_objects`]).
    pub fn json_schema(&self, schema: &str) -> Result<Guide, LlmError> {
        let mut value = serde_json::from_str(schema)
            .map_err(|e| LlmError::InvalidGrammar(format!("json-schema is not valid JSON: {e}")))?;
        closed_objects(&mut value);
        Ok(Guide(self.compile(TopLevelGrammar::from_json_schema(value), "json-schema")?))
    }
}

/// Read `schema` as llama.cpp's `json_schema_to_grammar` (this host's
/// JSON-schema constraint before it moved to llguidance) reads it, where
/// JSON Schema itself is open-ended and a small model, held to it greedily,
/// writes until its budget runs out:
/// - an object that lists `properties` and says nothing of
///   `additionalProperties` admits only those (as OpenAI's strict
///   structured outputs do too);
/// - an integer with no bounds has at most 16 digits.
///
/// Only schema-valued keywords are walked, so a property that happens to
/// be named `properties` is left alone.
fn closed_objects(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = schema else { return };
    if matches!(map.get("properties"), Some(Value::Object(_))) && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if map.get("type").and_then(Value::as_str) == Some("integer") {
        const LARGEST: i64 = 9_999_999_999_999_999;
        if !map.contains_key("minimum") && !map.contains_key("exclusiveMinimum") {
            map.insert("minimum".into(), Value::from(-LARGEST));
        }
        if !map.contains_key("maximum") && !map.contains_key("exclusiveMaximum") {
            map.insert("maximum".into(), Value::from(LARGEST));
        }
    }
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            ("properties" | "patternProperties" | "$defs" | "definitions", Value::Object(schemas)) => {
                schemas.values_mut().for_each(closed_objects);
            }
            ("items" | "prefixItems" | "anyOf" | "oneOf" | "allOf", Value::Array(schemas)) => {
                schemas.iter_mut().for_each(closed_objects);
            }
            ("items" | "additionalProperties" | "not" | "if" | "then" | "else" | "contains", one) => {
                closed_objects(one)
            }
            _ => {}
        }
    }
}

/// A compiled grammar's state for one generation.
pub(crate) struct Guide(Matcher);

/// A backend's sampler held to a grammar: each step, tokens the grammar
/// does not allow get `-inf` before the sampler sees the logits, and the
/// token picked advances the grammar. Once the grammar is complete only
/// the end-of-sequence token is allowed, so the generation finishes with
/// end-of-sequence.
pub(crate) struct Guided {
    guide: Guide,
    inner: Box<dyn Sampler>,
    masked: Vec<f32>,
}

impl Guided {
    pub fn new(guide: Guide, inner: Box<dyn Sampler>) -> Self {
        Self { guide, inner, masked: Vec::new() }
    }
}

impl Sampler for Guided {
    fn sample(&mut self, logits: &[f32]) -> u32 {
        let matcher = &mut self.guide.0;
        self.masked.clear();
        match matcher.compute_mask_or_eos() {
            Ok(mask) => self.masked.extend(
                logits
                    .iter()
                    .enumerate()
                    .map(|(t, &l)| if mask.is_allowed(t as TokenId) { l } else { f32::NEG_INFINITY }),
            ),
            // A grammar in error allows nothing more: end the generation.
            Err(e) => {
                tracing::warn!("the grammar failed: {e}");
                let eos = matcher.tok_env().map(|env| env.tok_trie().eos_token()).unwrap_or(0);
                self.masked.extend((0..logits.len()).map(|t| if t as u32 == eos { 0.0 } else { f32::NEG_INFINITY }));
            }
        }
        let token = self.inner.sample(&self.masked);
        if let Err(e) = matcher.consume_token(token) {
            tracing::debug!("the grammar refused token {token}: {e}");
        }
        token
    }
}

#[cfg(test)]
mod tests {
    use super::closed_objects;

    #[test]
    fn objects_admit_only_their_properties_unless_the_schema_says_otherwise() {
        let mut schema = serde_json::json!({
            "type": "object",
            "properties": {
                "properties": { "type": "object", "properties": { "a": { "type": "string" } } },
                "open": { "type": "object", "properties": {}, "additionalProperties": true },
                "list": { "type": "array", "items": { "type": "object", "properties": { "b": {} } } },
                "n": { "type": "integer", "minimum": 0 }
            },
            "$defs": { "d": { "anyOf": [{ "type": "object", "properties": { "c": {} } }] } }
        });
        closed_objects(&mut schema);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["properties"]["additionalProperties"], false);
        assert!(schema["properties"].get("additionalProperties").is_none(), "a property map is not a schema");
        assert_eq!(schema["properties"]["open"]["additionalProperties"], true);
        assert_eq!(schema["properties"]["list"]["items"]["additionalProperties"], false);
        assert_eq!(schema["$defs"]["d"]["anyOf"][0]["additionalProperties"], false);
        assert_eq!(
            (schema["properties"]["n"]["minimum"].as_i64(), schema["properties"]["n"]["maximum"].as_i64()),
            (Some(0), Some(9_999_999_999_999_999))
        );
    }
}
