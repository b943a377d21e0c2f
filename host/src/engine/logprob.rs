//! Log-probabilities for a stream's chunks (`generate-params.logprobs`),
//! computed from a decode step's raw logits.

use super::text::TokenLogprob;

/// Log-probability of `token` and the `top` best alternatives, from raw logits.
pub(crate) fn logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    for (id, &l) in logits.iter().enumerate() {
        if best.len() < top || best.last().is_some_and(|&(_, b)| l > b) {
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (id as u32, l));
            best.truncate(top);
        }
    }
    let lp = |l: f32| l - log_sum;
    TokenLogprob {
        token,
        logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: best.into_iter().map(|(id, l)| (id, lp(l))).collect(),
    }
}
