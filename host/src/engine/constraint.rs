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

    /// Output that is JSON matching `schema`.
    pub fn json_schema(&self, schema: &str) -> Result<Guide, LlmError> {
        let value = serde_json::from_str(schema)
            .map_err(|e| LlmError::InvalidGrammar(format!("json-schema is not valid JSON: {e}")))?;
        Ok(Guide(self.compile(TopLevelGrammar::from_json_schema(value), "json-schema")?))
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
                logits.iter().enumerate().map(|(t, &l)| if mask.is_allowed(t as TokenId) { l } else { f32::NEG_INFINITY }),
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
