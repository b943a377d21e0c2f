//! Drafts from a session's own tokens: the continuation of the latest
//! earlier occurrence of its longest repeated suffix (prompt lookup
//! decoding; llama.cpp's `ngram-simple` does the same with a fixed key
//! length). A session's tokens are exactly its conversation, so what the
//! model is likely to repeat (a quoted file, a restated answer, a JSON
//! schema's field names) is there already; no draft model, no extra memory.

/// Shortest suffix worth matching: a single token recurs too often to say
/// anything about what follows.
const MIN_MATCH: usize = 2;
/// Longest suffix compared: a longer match is no more telling, and this
/// bounds the search's work per position.
pub(crate) const MAX_MATCH: usize = 8;

/// Up to `max` tokens that followed an earlier occurrence of the longest
/// suffix of `history` (at least [`MIN_MATCH`] tokens) into `out` (cleared
/// first). Returns the match's length, 0 where there is none.
///
/// Of the occurrences matching as long, the one with the most tokens after
/// it (up to `max`) wins, then the latest: a phrase a reply has already
/// repeated also occurs a few tokens back, where nothing follows yet, while
/// the prompt it copies holds the whole continuation.
///
/// A continuation that reaches the end of `history` goes on into the draft
/// itself, as an overlapping copy does, where the match is at least as
/// long as the distance back to it: the text has then repeated a whole
/// period already (a reply stuck in a loop), and the draft repeats it. Cut
/// at the end instead, such a draft is a token or three, too short to pay
/// for its batch (BREAK-EVEN.md), while llama.cpp's n-gram drafts, built a
/// token at a time from their own end, follow the loop. A shorter match a
/// little way back (code's indentation, a list's numbering) says nothing
/// of what comes after the history's end and is not carried on.
///
/// One backward pass over `history`, a few comparisons per position: linear
/// in the session's length, where a decode step reads every weight.
pub(crate) fn draft(history: &[u32], max: usize, out: &mut Vec<u32>) -> usize {
    out.clear();
    let len = history.len();
    if max == 0 || len <= MIN_MATCH {
        return 0;
    }
    let last = history[len - 1];
    // (match length, continuation length, the occurrence's last token)
    let mut best = (0, 0, 0);
    // `end`: the candidate occurrence's last token, strictly before the suffix's.
    for end in (0..len - 1).rev() {
        if history[end] != last {
            continue;
        }
        let longest = MAX_MATCH.min(end + 1);
        let matched = (1..longest).take_while(|&i| history[end - i] == history[len - 1 - i]).count() + 1;
        let follows = (len - 1 - end).min(max);
        if (matched, follows) > (best.0, best.1) {
            best = (matched, follows, end);
            if matched == MAX_MATCH && follows == max {
                break;
            }
        }
    }
    if best.0 < MIN_MATCH {
        return 0;
    }
    let from = best.2 + 1;
    out.extend_from_slice(&history[from..from + best.1]);
    // The copy's source runs on past the history's end into the draft.
    let period = len - from;
    if best.0 >= period {
        while out.len() < max {
            out.push(out[out.len() - period]);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::draft;

    fn drafted(history: &[u32], max: usize) -> (Vec<u32>, usize) {
        let mut out = vec![99];
        let matched = draft(history, max, &mut out);
        (out, matched)
    }

    #[test]
    fn the_continuation_of_the_latest_longest_match() {
        // "1 2 3" occurred twice before; the latest occurrence is followed by 7 8.
        let history = [1, 2, 3, 4, 5, 0, 1, 2, 3, 7, 8, 9, 1, 2, 3];
        assert_eq!(drafted(&history, 2), (vec![7, 8], 3));
        // A longer match wins over a later, shorter one.
        let history = [5, 1, 2, 3, 4, 0, 9, 2, 3, 6, 5, 1, 2, 3];
        assert_eq!(drafted(&history, 3), (vec![4, 0, 9], 4));
    }

    #[test]
    fn of_equal_matches_the_one_with_more_after_it_wins() {
        // "1 2" is followed by 3 4 5 early on, and just before the end by
        // only the suffix itself.
        let history = [1, 2, 3, 4, 5, 0, 9, 1, 2, 1, 2];
        assert_eq!(drafted(&history, 3), (vec![3, 4, 5], 2));
        assert_eq!(drafted(&history, 1), (vec![1], 2), "each has enough: the latest wins");
    }

    #[test]
    fn nothing_without_a_match_of_two_tokens() {
        assert_eq!(drafted(&[1, 2, 3, 4, 3], 4), (vec![], 0), "one token is not a match");
        assert_eq!(drafted(&[1, 2], 4), (vec![], 0));
        assert_eq!(drafted(&[1, 2, 1, 2], 0), (vec![], 0), "nothing asked for");
    }

    #[test]
    fn a_draft_that_reaches_the_history_s_end_repeats_a_whole_period() {
        // A run: the suffix "7 7" matches just before itself, and goes on.
        assert_eq!(drafted(&[7, 7, 7], 5), (vec![7; 5], 2));
        // "1 2 3" has come round twice: the text repeats every three tokens.
        assert_eq!(drafted(&[1, 2, 3, 1, 2, 3, 1, 2], 5), (vec![3, 1, 2, 3, 1], 5));
        // "1 2" three tokens back has not yet repeated a period: cut at the end.
        assert_eq!(drafted(&[1, 2, 3, 1, 2], 5), (vec![3, 1, 2], 2));
    }
}
