//! A `tokenizers` tokenizer built from a GGUF's own vocabulary, merges and
//! scores, so that it gives llama.cpp's token ids.
//!
//! Two of llama.cpp's tokenizer kinds are covered, one per test model:
//!
//! - `gpt2` (byte-level BPE; SmolLM2): the GGUF holds the merges. The
//!   pre-tokenizer is llama.cpp's `smollm`/`starcoder` one: each digit
//!   alone, then GPT-2's regex.
//! - `llama` (SentencePiece BPE; gemma-3): the GGUF holds scores, not
//!   merges. SentencePiece merges the adjacent pair whose joined piece has
//!   the best score, which is BPE with every split of every piece as a merge,
//!   ranked by the joined piece's score (Hugging Face's converter does the
//!   same). Spaces become `▁`, and characters outside the vocabulary fall
//!   back to `<0xXX>` byte tokens.
//!
//! In both, control tokens are matched as special tokens (llama.cpp's
//! `parse_special`; [`GgufTokenizer::encode_plain`] leaves them text), and
//! user-defined tokens (gemma's whitespace runs) are split out of the raw
//! text before anything else, as llama.cpp does.
//!
//! A token's bytes ([`GgufTokenizer::piece`]) are llama.cpp's
//! `token_to_piece`: byte-level BPE's alphabet mapped back to bytes, or
//! SentencePiece's `▁` as a space and `<0xXX>` byte tokens as their byte;
//! control tokens print only when asked.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

use crate::gguf::Metadata;

/// llama.cpp's token types, as stored in `tokenizer.ggml.token_type`.
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

/// Texts of tokens that end a turn. llama.cpp treats these as
/// end-of-generation besides the GGUF's eos/eot ids.
const TURN_ENDS: [&str; 5] = ["<|im_end|>", "<end_of_turn>", "<|endoftext|>", "<|eot_id|>", "<|end|>"];

/// A model's tokenizer.
pub struct GgufTokenizer {
    inner: Tokenizer,
    /// The same, with control tokens' text left as text.
    plain: Tokenizer,
    /// Every token's bytes as generated text, and whether it is a control token.
    pieces: Vec<(Vec<u8>, bool)>,
    /// Prepended to a sequence's first text when the model wants it.
    bos: Option<u32>,
    end_of_generation: Vec<u32>,
}

impl GgufTokenizer {
    /// Build the tokenizer that the GGUF's `tokenizer.*` keys describe.
    pub fn from_gguf(meta: &Metadata) -> Result<Self, String> {
        let kind = meta.str("tokenizer.ggml.model").ok_or("the GGUF names no tokenizer model")?;
        let tokens = meta.strings("tokenizer.ggml.tokens").ok_or("the GGUF has no vocabulary")?;
        let types = meta.ints("tokenizer.ggml.token_type").ok_or("the GGUF has no token types")?;
        if types.len() != tokens.len() {
            return Err(format!("{} token types for {} tokens", types.len(), tokens.len()));
        }
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

        let pieces = match kind {
            "gpt2" => byte_level_pieces(tokens, types),
            _ => sentencepiece_pieces(tokens, types),
        };
        let mut inner = match kind {
            "gpt2" => byte_level_bpe(meta, vocab)?,
            "llama" => sentencepiece_bpe(meta, tokens, types, vocab)?,
            other => return Err(format!("tokenizer model {other:?} is not supported (gpt2 and llama are)")),
        };
        let added = |ty: i64| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(types)
                .filter(|&(_, &t)| t == ty)
                .map(|(text, _)| AddedToken::from(text.clone(), ty == CONTROL).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(CONTROL));
        inner.add_tokens(&added(USER_DEFINED));

        let id = |key: &str| meta.int(key).and_then(|n| u32::try_from(n).ok());
        let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(kind == "llama");
        let mut end_of_generation: Vec<u32> =
            [id("tokenizer.ggml.eos_token_id"), id("tokenizer.ggml.eot_token_id")].into_iter().flatten().collect();
        end_of_generation.extend(
            tokens
                .iter()
                .zip(types)
                .enumerate()
                .filter(|(_, (text, ty))| **ty == CONTROL && TURN_ENDS.contains(&text.as_str()))
                .map(|(i, _)| i as u32),
        );
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let bos = id("tokenizer.ggml.bos_token_id").filter(|_| add_bos);
        Ok(Self { inner, plain, pieces, bos, end_of_generation })
    }

    /// How many tokens the vocabulary has.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty (never, for a model that loaded).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The token a sequence starts with, where the model wants one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Token ids of `text` with control tokens' text left as text
    /// (llama.cpp's tokenize without `parse_special`).
    pub fn encode_plain(&self, text: &str, first: bool) -> Result<Vec<u32>, String> {
        let encoding = self.plain.encode_fast(text, false).map_err(|e| e.to_string())?;
        Ok(self.bos.filter(|_| first).into_iter().chain(encoding.get_ids().iter().copied()).collect())
    }

    /// The bytes `id` adds to generated text: none for a control token
    /// unless `special` (llama.cpp's `token_to_piece`); none for an id
    /// outside the vocabulary.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        match self.pieces.get(id as usize) {
            Some((_, true)) if !special => &[],
            Some((bytes, _)) => bytes,
            None => &[],
        }
    }

    /// Token ids of `text`, with the model's BOS first when `first` is set
    /// (the start of a sequence). Control tokens in the text are matched.
    pub fn encode(&self, text: &str, first: bool) -> Result<Vec<u32>, String> {
        let encoding = self.inner.encode_fast(text, false).map_err(|e| e.to_string())?;
        Ok(self.bos.filter(|_| first).into_iter().chain(encoding.get_ids().iter().copied()).collect())
    }

    /// The text of `ids`; bytes of an unfinished UTF-8 character come out
    /// as U+FFFD, so stream callers decode only complete runs.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, false).map_err(|e| e.to_string())
    }

    /// Whether `id` ends generation (end of sequence or end of turn).
    pub fn is_end(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The ids that end generation, e.g. to mask them out of logits.
    pub fn end_ids(&self) -> &[u32] {
        &self.end_of_generation
    }
}

/// GPT-2's byte-level alphabet backwards: each printable stand-in
/// character to the byte it stands for.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let direct = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            if direct(b) {
                (char::from(b), b)
            } else {
                shifted += 1;
                (char::from_u32(255 + shifted).unwrap_or('\u{FFFD}'), b)
            }
        })
        .collect()
}

/// Pieces of a byte-level BPE vocabulary: normal and user-defined tokens'
/// characters mapped back to bytes; control tokens their text.
fn byte_level_pieces(tokens: &[String], types: &[i64]) -> Vec<(Vec<u8>, bool)> {
    let alphabet = byte_level_alphabet();
    tokens
        .iter()
        .zip(types)
        .map(|(text, &ty)| match ty {
            NORMAL | USER_DEFINED => {
                let bytes = text.chars().map(|c| alphabet.get(&c).copied()).collect::<Option<Vec<u8>>>();
                (bytes.unwrap_or_else(|| text.as_bytes().to_vec()), false)
            }
            _ => (text.as_bytes().to_vec(), ty == CONTROL),
        })
        .collect()
}

/// Pieces of a SentencePiece vocabulary: `▁` as a space, `<0xXX>` byte
/// tokens as their byte, control tokens their text.
fn sentencepiece_pieces(tokens: &[String], types: &[i64]) -> Vec<(Vec<u8>, bool)> {
    tokens
        .iter()
        .zip(types)
        .map(|(text, &ty)| match ty {
            BYTE => {
                let byte = text.strip_prefix("<0x").and_then(|h| h.strip_suffix('>'));
                let byte = byte.and_then(|h| u8::from_str_radix(h, 16).ok());
                (byte.map_or_else(|| text.as_bytes().to_vec(), |b| vec![b]), false)
            }
            NORMAL | USER_DEFINED => (text.replace('▁', " ").into_bytes(), false),
            _ => (text.as_bytes().to_vec(), ty == CONTROL),
        })
        .collect()
}

/// GPT-2 style: merges stored as "left right", byte-level alphabet.
fn byte_level_bpe(meta: &Metadata, vocab: Vocab) -> Result<Tokenizer, String> {
    let merges = meta
        .strings("tokenizer.ggml.merges")
        .ok_or("a gpt2 tokenizer needs tokenizer.ggml.merges")?
        .iter()
        .map(|m| m.split_once(' ').map(|(l, r)| (l.to_owned(), r.to_owned())).ok_or(format!("bad merge {m:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("default");
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, false, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // llama.cpp: "\p{N}" first, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "codeshell" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "gpt-2" | "gpt2" | "default" => byte_level.into(),
        other => return Err(format!("pre-tokenizer {other:?} is not supported")),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::from(ByteLevel::default())));
    Ok(tokenizer)
}

/// SentencePiece style: merges derived from the piece scores.
fn sentencepiece_bpe(meta: &Metadata, tokens: &[String], types: &[i64], vocab: Vocab) -> Result<Tokenizer, String> {
    let scores = meta.floats("tokenizer.ggml.scores").ok_or("a llama tokenizer needs tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(format!("{} scores for {} tokens", scores.len(), tokens.len()));
    }
    if meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(true) {
        return Err("SentencePiece with a space prefix is not supported (gemma-3 has none)".into());
    }
    // Every split of every normal piece into two pieces is a merge, ranked by
    // the joined piece's score (best first), ties by the halves' ids.
    let mut ranked: Vec<(f32, u32, u32)> = Vec::new();
    for (joined, piece) in tokens.iter().enumerate() {
        if types[joined] != NORMAL {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                ranked.push((scores[joined], li, ri));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = ranked.iter().map(|&(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone())).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).build().map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(Replace::new(" ", "▁").map_err(|e| e.to_string())?));
    let decoder = DecoderSequence::new(vec![
        Replace::new("▁", " ").map_err(|e| e.to_string())?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ]);
    tokenizer.with_decoder(Some(DecoderWrapper::from(decoder)));
    Ok(tokenizer)
}
