//! How much to draft: never a slowdown. Each generation keeps how often its
//! drafts were accepted ([`Acceptance`]), each lane how long its decodes
//! took by batch size ([`DecodeCost`]), and a step drafts for a generation
//! only as many tokens as raise the step's expected tokens per second
//! ([`Plan`]). Both are measured as the lane runs, so the break-even
//! follows the model, the CPU, the thread share and the other sessions in
//! the batch, instead of a constant tuned on one machine.

/// How much a step's expected throughput must rise for drafting to be
/// worth it. The acceptance rate is an estimate, and a model either
/// copies (nearly every drafted token accepted) or does not (nearly none):
/// at a middling estimate the expected gain is small and a wrong guess
/// costs a whole draft (about half a step per token on the AMD kind). At
/// 3 %, in one development run (SmolLM2, AMD kind), a chat whose model did
/// not quote decoded at 0.85× and a free chat at 0.97×; at 15 % drafting
/// needs an estimate of about 0.9 or more.
const MARGIN: f32 = 1.15;
/// Weight of the past in [`Acceptance`] after each step (its memory is
/// about 1 / (1 - DECAY) = 10 steps), so a generation that stops quoting
/// stops drafting within a few steps.
const DECAY: f32 = 0.9;
/// Weight of the prior rate in [`Acceptance::rate`], in checks.
const PRIOR_WEIGHT: f32 = 2.0;
/// [`DECAY`] for a lane's [`MatchPriors`], which learn from every
/// generation (a memory of about 30 drafts per match length).
const LANE_DECAY: f32 = 0.97;
/// Weight of a new decode time in [`DecodeCost`]'s running mean.
const COST_WEIGHT: f32 = 0.2;
/// What an extra token costs relative to a one-token decode, until the lane
/// has timed a batch of that size: a guess on the cheap side, so that
/// drafting is tried and the real figure measured (decode on a CPU is
/// bound by reading the weights, once per batch).
const PRIOR_SLOPE: f32 = 0.1;
/// Largest batch whose time is tracked: decode steps, not prefill chunks.
const TRACKED: usize = 128;

/// How often drafted tokens were accepted: a decayed count of the draft
/// positions checked and of those the model agreed with.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Acceptance {
    accepted: f32,
    checked: f32,
}

impl Acceptance {
    /// The chance that the model agrees with the next drafted token, given
    /// it agreed with the ones before: the counts, with `prior` counted as
    /// [`PRIOR_WEIGHT`] checks already made.
    pub fn rate(&self, prior: f32) -> f32 {
        (self.accepted + PRIOR_WEIGHT * prior) / (self.checked + PRIOR_WEIGHT)
    }

    /// A step checked drafts and the model agreed with the first
    /// `accepted` of `drafted`: a position is checked up to the first
    /// disagreement.
    pub fn record(&mut self, accepted: usize, drafted: usize) {
        self.record_decayed(accepted, drafted, DECAY);
    }

    fn record_decayed(&mut self, accepted: usize, drafted: usize, decay: f32) {
        let checked = accepted + usize::from(accepted < drafted);
        self.accepted = self.accepted * decay + accepted as f32;
        self.checked = self.checked * decay + checked as f32;
    }
}

/// Tokens a draft of `k` adds to the step, expected, where each drafted
/// token is accepted with probability `rate` given the ones before: the
/// first with `rate`, the first two with `rate²`, and so on.
pub(crate) fn expected(rate: f32, k: usize) -> f32 {
    (1..=k as i32).map(|i| rate.powi(i)).sum()
}

/// How often a lane's models agreed with a draft's first token, by the
/// length of the match that found the draft: a new generation's prior. A
/// model that has been copying when a long match was found likely copies
/// again, so a generation that quotes drafts from its first steps instead
/// of after several agreements, and one whose matches are short and
/// usually wrong never starts.
#[derive(Debug, Clone)]
pub(crate) struct MatchPriors {
    by_length: Vec<Acceptance>,
}

impl Default for MatchPriors {
    fn default() -> Self {
        Self { by_length: vec![Acceptance::default(); super::lookup::MAX_MATCH + 1] }
    }
}

impl MatchPriors {
    /// The prior rate for a draft found by a match of `length` tokens (one
    /// in two before anything is known).
    pub fn prior(&self, length: usize) -> f32 {
        self.by_length.get(length).map_or(0.5, |a| a.rate(0.5))
    }

    /// The model agreed with (or rejected) the first token of a draft found
    /// by a match of `length`.
    pub fn record(&mut self, length: usize, agreed: bool) {
        if let Some(a) = self.by_length.get_mut(length) {
            a.record_decayed(usize::from(agreed), 1, LANE_DECAY);
        }
    }
}

/// A lane's decode time by batch size (tokens), a running mean per size.
#[derive(Debug, Clone)]
pub(crate) struct DecodeCost {
    seconds: Vec<Option<f32>>,
}

impl Default for DecodeCost {
    fn default() -> Self {
        Self { seconds: vec![None; TRACKED] }
    }
}

impl DecodeCost {
    /// A decode of `tokens` took `seconds`.
    pub fn observe(&mut self, tokens: usize, seconds: f32) {
        let Some(slot) = tokens.checked_sub(1).and_then(|i| self.seconds.get_mut(i)) else { return };
        *slot = Some(slot.map_or(seconds, |mean| mean + COST_WEIGHT * (seconds - mean)));
    }

    /// What a decode of `tokens` is expected to take, in seconds: the mean
    /// where measured, else interpolated between the nearest measured sizes,
    /// else extrapolated from the two largest measured ones below (at
    /// [`PRIOR_SLOPE`] from one), or down from the smallest above; 1 plus
    /// the prior slope per token when nothing is measured yet (only ratios
    /// count). On the AMD kind, llama.cpp's CPU decode of SmolLM2 took
    /// 6.5 ms for one token, 13.3 for two, 28.4 for eight: the second token
    /// costs a whole step and each further one about half, so only long
    /// drafts the model mostly accepts pay.
    pub fn estimate(&self, tokens: usize) -> f32 {
        let at = |n: usize| self.seconds.get(n.wrapping_sub(1)).copied().flatten();
        if let Some(t) = at(tokens) {
            return t;
        }
        let below = (1..tokens.min(TRACKED + 1)).rev().find_map(|n| at(n).map(|t| (n, t)));
        let above = (tokens + 1..=TRACKED).find_map(|n| at(n).map(|t| (n, t)));
        match (below, above) {
            (Some((n0, t0)), Some((n1, t1))) => t0 + (t1 - t0) * (tokens - n0) as f32 / (n1 - n0) as f32,
            (Some((n0, t0)), None) => {
                // The slope of the two largest measured sizes, where there are two.
                let slope = (1..n0).rev().find_map(|n| at(n).map(|t| (t0 - t).max(0.0) / (n0 - n) as f32));
                t0 + slope.unwrap_or(t0 * PRIOR_SLOPE) * (tokens - n0) as f32
            }
            (None, Some((n1, t1))) => t1 / (1.0 + PRIOR_SLOPE * (n1 - tokens) as f32),
            (None, None) => 1.0 + PRIOR_SLOPE * (tokens.max(1) - 1) as f32,
        }
    }
}

/// One decode step's drafting, decided generation by generation: the
/// batch so far and the tokens it is expected to give.
pub(crate) struct Plan<'c> {
    cost: &'c DecodeCost,
    /// Tokens in the batch.
    tokens: usize,
    /// Tokens the step is expected to emit.
    expected: f32,
    /// Most tokens the batch may hold.
    capacity: usize,
}

impl<'c> Plan<'c> {
    /// A step decoding one token for each of `members` generations, in
    /// batches of at most `capacity` tokens.
    pub fn new(cost: &'c DecodeCost, members: usize, capacity: usize) -> Self {
        Self { cost, tokens: members, expected: members as f32, capacity }
    }

    /// How many of `available` drafted tokens a generation whose drafts
    /// are accepted at `rate` adds to the batch: the count that most raises
    /// expected tokens per second, by at least [`MARGIN`], else none. The
    /// chosen count joins the plan.
    pub fn choose(&mut self, rate: f32, available: usize) -> usize {
        let room = self.capacity.saturating_sub(self.tokens);
        let current = self.expected / self.cost.estimate(self.tokens);
        let (mut best_k, mut best) = (0, current * MARGIN);
        for k in 1..=available.min(room) {
            let speed = (self.expected + expected(rate, k)) / self.cost.estimate(self.tokens + k);
            if speed > best {
                (best_k, best) = (k, speed);
            }
        }
        self.tokens += best_k;
        self.expected += expected(rate, best_k);
        best_k
    }
}

#[cfg(test)]
mod tests {
    use super::{Acceptance, DecodeCost, MatchPriors, Plan};

    /// A lane where a decode costs `base` plus `per_token` for each token.
    fn linear(base: f32, per_token: f32) -> DecodeCost {
        let mut cost = DecodeCost::default();
        for n in 1..=16 {
            cost.observe(n, base + per_token * n as f32);
        }
        cost
    }

    /// The rate after `steps` checks that each accepted `rate_of.0` of `rate_of.1`.
    fn accepting(rate_of: (usize, usize), steps: usize) -> f32 {
        let mut a = Acceptance::default();
        for _ in 0..steps {
            a.record(rate_of.0, rate_of.1);
        }
        a.rate(0.5)
    }

    #[test]
    fn drafts_grow_with_acceptance_and_stop_when_it_drops() {
        let cost = linear(10.0, 1.0);
        let good = accepting((8, 8), 20);
        assert_eq!(Plan::new(&cost, 1, 512).choose(good, 8), 8, "all accepted: draft everything");
        let poor = accepting((0, 8), 20);
        assert_eq!(Plan::new(&cost, 1, 512).choose(poor, 8), 0, "none accepted: draft nothing");
        let middling = accepting((1, 4), 20);
        let k = Plan::new(&cost, 1, 512).choose(middling, 8);
        assert!((1..8).contains(&k), "some accepted: a shorter draft, got {k}");
    }

    #[test]
    fn an_expensive_batch_is_not_worth_a_draft() {
        // Each extra token costs as much as a whole step: nothing is gained.
        let cost = linear(0.0, 1.0);
        assert_eq!(Plan::new(&cost, 1, 512).choose(accepting((3, 4), 20), 8), 0);
    }

    #[test]
    fn the_batch_s_capacity_bounds_the_drafts() {
        let cost = linear(10.0, 0.1);
        let good = accepting((8, 8), 20);
        let mut plan = Plan::new(&cost, 4, 10);
        assert_eq!(plan.choose(good, 8), 6);
        assert_eq!(plan.choose(good, 8), 0, "the batch is full");
    }

    #[test]
    fn a_lane_learns_which_match_lengths_the_model_follows() {
        let mut priors = MatchPriors::default();
        assert_eq!(priors.prior(8), 0.5);
        for _ in 0..20 {
            priors.record(8, true);
            priors.record(2, false);
        }
        assert!(priors.prior(8) > 0.9 && priors.prior(2) < 0.1, "{} {}", priors.prior(8), priors.prior(2));
        assert_eq!(priors.prior(5), 0.5, "other lengths keep their own");
        // A generation's own record outweighs the prior once it has some.
        let mut own = Acceptance::default();
        assert_eq!(own.rate(0.9), 0.9);
        for _ in 0..5 {
            own.record(0, 4);
        }
        assert!(own.rate(0.9) < 0.3);
    }

    #[test]
    fn unmeasured_sizes_are_interpolated_and_extrapolated() {
        let mut cost = DecodeCost::default();
        cost.observe(1, 10.0);
        cost.observe(5, 14.0);
        assert_eq!(cost.estimate(3), 12.0);
        assert_eq!(cost.estimate(7), 16.0, "on at the slope of the last two");
        let mut odd = DecodeCost::default();
        odd.observe(1, 10.0);
        odd.observe(5, 8.0);
        assert_eq!(odd.estimate(7), 8.0, "never cheaper than the largest measured");
        let mut one = DecodeCost::default();
        one.observe(1, 10.0);
        assert!((one.estimate(3) - 12.0).abs() < 1e-4, "the prior slope from one size");
        assert_eq!(DecodeCost::default().estimate(1), 1.0);
    }
}
