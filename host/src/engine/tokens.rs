//! Tokenizer operations on a model: no session, no KV cache, no scheduler.
//! They run on the calling guest's thread (the vocabulary is read-only).

use crate::backend::Model;
use crate::error::LlmError;

/// Largest text, in bytes, accepted for tokenizing: llama.cpp counts tokens
/// in an `i32`, and no real prompt comes near this.
const MAX_TEXT: usize = (i32::MAX / 2) as usize;

/// Token ids for `text`; `add_special` adds BOS where the model uses one
/// (unless the text already starts with it, as a chat template that writes
/// `{{ bos_token }}` makes it: two would be a prompt the model never saw),
/// and special tokens (chat markers) are parsed when `parse_special` is set.
pub(crate) fn tokenize_with(
    model: &dyn Model,
    text: &str,
    add_special: bool,
    parse_special: bool,
) -> Result<Vec<u32>, LlmError> {
    if text.len() > MAX_TEXT {
        return Err(LlmError::invalid(format!("text of {} bytes is too large to tokenize", text.len())));
    }
    let mut tokens = model.tokenize(text.as_bytes(), add_special, parse_special);
    if add_special && tokens.len() >= 2 && tokens[0] == tokens[1] && Some(tokens[0]) == model.bos() {
        tokens.remove(0);
    }
    Ok(tokens)
}

/// Tokenize guest text for a session: special tokens parsed, so templated
/// turns keep their markers.
pub(crate) fn tokenize(model: &dyn Model, text: &str, add_special: bool) -> Result<Vec<u32>, LlmError> {
    tokenize_with(model, text, add_special, true)
}

/// Guest token ids, each checked against the vocabulary (the first outside
/// it is the error): nothing unchecked reaches a batch.
pub(crate) fn checked_tokens(model: &dyn Model, ids: &[u32]) -> Result<Vec<u32>, LlmError> {
    let vocab_size = model.n_vocab();
    match ids.iter().find(|&&t| t >= vocab_size) {
        Some(&token) => Err(LlmError::InvalidToken { token, vocab_size }),
        None => Ok(ids.to_vec()),
    }
}

/// How many leading tokens of `wanted` a sequence holding `held` keeps:
/// the longest prefix the two share, short of `wanted`'s last token, which
/// is always evaluated anew (its logits are what comes next).
pub(crate) fn reusable_prefix(held: &[u32], wanted: &[u32]) -> usize {
    held.iter().zip(wanted).take_while(|(a, b)| a == b).count().min(wanted.len().saturating_sub(1))
}

/// Text for token ids, each checked against the vocabulary first; invalid
/// UTF-8 (a character cut between tokens) becomes U+FFFD.
pub(crate) fn detokenize(model: &dyn Model, tokens: &[u32], render_special: bool) -> Result<String, LlmError> {
    let tokens = checked_tokens(model, tokens)?;
    if tokens.is_empty() {
        return Ok(String::new());
    }
    let bytes = model.detokenize(&tokens, render_special);
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::reusable_prefix;

    #[test]
    fn the_shared_start_is_kept_short_of_the_last_token() {
        assert_eq!(reusable_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(reusable_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(reusable_prefix(&[1, 2, 3], &[1, 2, 3]), 2);
        assert_eq!(reusable_prefix(&[1, 2, 3, 4], &[1, 2]), 1);
        assert_eq!(reusable_prefix(&[], &[1]), 0);
        assert_eq!(reusable_prefix(&[5], &[1]), 0);
        assert_eq!(reusable_prefix(&[1], &[]), 0);
    }
}
