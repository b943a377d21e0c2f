//! Speculative decoding's part of a decode step (see
//! `crate::engine::speculation` for why the output stays the model's):
//! before the decode, which drafted tokens each generation adds to the
//! batch; after it, sampling each generation's positions in order up to
//! the first disagreement, and dropping the KV cells of the rejected rest.

use super::{Scheduler, open};
use crate::engine::protocol::SeqId;
use crate::engine::speculation::{self, Acceptance, Plan};

/// One generation's drafting so far.
#[derive(Debug, Default)]
pub(in crate::engine) struct Drafting {
    /// How its drafts fared, by the length of the match that found them
    /// (a two-token match is a guess, an eight-token one a quote).
    pub acceptance: [Acceptance; speculation::MAX_MATCH + 1],
    /// Tokens this generation checked in its decodes, those accepted, and
    /// the decodes that checked any.
    pub drafted: u32,
    pub accepted: u32,
    pub checks: u32,
    /// The model could not drop a rejected draft's cells: no more drafts.
    pub stopped: bool,
}

/// What one step drafted for one generation.
#[derive(Debug, Default)]
pub(super) struct Draft {
    /// The drafted tokens, from the lookup's first on.
    tokens: Vec<u32>,
    /// How many of them the step checks (the rest only tell whether
    /// the first would have been accepted).
    checked: usize,
    /// The length of the match that found them.
    matched: usize,
}

impl Draft {
    /// The tokens added to the batch after the generation's last.
    pub fn checked(&self) -> &[u32] {
        &self.tokens[..self.checked]
    }
}

impl Scheduler<'_> {
    /// Each member's draft, decided in member order against the batch the
    /// earlier members make (`budget.rs`).
    pub(super) fn plan_drafts(&mut self, members: &[SeqId]) -> Vec<Draft> {
        let mut drafts: Vec<Draft> = members.iter().map(|_| Draft::default()).collect();
        if !self.speculation.on() {
            return drafts;
        }
        let mut plan = Plan::new(&self.cost, members.len(), self.batch_limit);
        for (&seq, draft) in members.iter().zip(&mut drafts) {
            let Some(s) = self.seqs[seq.index()].as_ref() else { continue };
            let Some(g) = s.generation.as_ref().filter(|g| !g.drafting.stopped) else { continue };
            // Every token the step may emit must fit: the drafts that agree,
            // plus the one sampled after them.
            let fits = s.limit.saturating_sub(s.tokens.len() + 1);
            let wanted = g.remaining.map_or(usize::MAX, |r| r.saturating_sub(1) as usize);
            let max = (self.speculation.draft_max as usize).min(fits).min(wanted);
            draft.matched = speculation::draft(&s.tokens, max.max(1), &mut draft.tokens);
            let own = g.drafting.acceptance.get(draft.matched).copied().unwrap_or_default();
            let rate = own.rate(self.priors.prior(draft.matched));
            draft.checked = plan.choose(rate, draft.tokens.len().min(max));
        }
        drafts
    }

    /// Sample `seq`'s tokens from batch `first` on, one position per
    /// drafted token the model agrees with, then drop the cells of the
    /// drafts after the first disagreement.
    pub(super) fn verify(&mut self, seq: SeqId, first: usize, draft: &Draft) {
        let Ok(s) = open(&mut self.seqs, seq) else { return };
        // The KV cache holds every position up to `evaluated` now.
        let evaluated = s.tokens.len() + draft.checked;
        let checked = draft.checked();
        let mut accepted = 0;
        let mut sampled = None;
        for i in 0..=checked.len() {
            sampled = self.sample(seq, first + i);
            match sampled {
                Some(token) if checked.get(i) == Some(&token) => accepted += 1,
                _ => break,
            }
        }
        let Ok(s) = open(&mut self.seqs, seq) else { return };
        if s.n_past < evaluated && !checked.is_empty() {
            let keep = s.n_past;
            if let Err(e) = self.ctx.remove(seq.id(), keep as u32, None) {
                tracing::debug!(seq = seq.index(), keep, "dropping rejected drafts failed ({e}); no more drafts");
                self.restart(seq);
                if let Some(g) = self.seqs[seq.index()].as_mut().and_then(|s| s.generation.as_mut()) {
                    g.drafting.stopped = true;
                }
            }
        }
        let Some(g) = self.seqs[seq.index()].as_mut().and_then(|s| s.generation.as_mut()) else { return };
        let d = &mut g.drafting;
        let Some(acceptance) = d.acceptance.get_mut(draft.matched) else { return };
        if !checked.is_empty() {
            acceptance.record(accepted, checked.len());
            d.drafted += checked.len() as u32;
            d.accepted += accepted as u32;
            d.checks += 1;
            self.priors.record(draft.matched, accepted > 0);
        } else if let (Some(&guess), Some(token)) = (draft.tokens.first(), sampled) {
            // Not checked, but whether the model agreed is known for free:
            // drafting resumes when the text starts repeating again.
            acceptance.record(usize::from(guess == token), 1);
            self.priors.record(draft.matched, guess == token);
        }
    }
}
