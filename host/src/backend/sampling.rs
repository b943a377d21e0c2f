//! A generation's parameters, as every backend takes them: typed, with
//! llama.cpp's defaults named once here, and validated once, before any
//! backend sees them (llama.cpp asserts, and so aborts the process, on some
//! out-of-range values; one guest must never take the host down).

use std::collections::VecDeque;

use serde::Deserialize;

use crate::error::LlmError;

/// Sampling temperature when a request gives none.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
/// Top-k when a request gives none (0 keeps every token).
pub const DEFAULT_TOP_K: u32 = 40;
/// Top-p when a request gives none.
pub const DEFAULT_TOP_P: f32 = 0.95;
/// Min-p when a request gives none.
pub const DEFAULT_MIN_P: f32 = 0.05;
/// Tokens the repetition penalties look back over when a request does not say.
pub const DEFAULT_PENALTY_LAST_N: u32 = 64;

/// What constrains sampling to a language.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum Constraint {
    /// A GBNF grammar (root rule `root`): llama.cpp's own syntax, which only
    /// the llama.cpp backend applies.
    Grammar(String),
    /// A JSON schema; every backend serves it (the engine, through llguidance).
    JsonSchema(String),
    /// A Lark grammar in llguidance's dialect (rule `start`); every backend
    /// serves it (the engine, through llguidance).
    Lark(String),
}

/// Sampling parameters for one generation; absent fields take the defaults
/// above (the extension names them normative for every backend).
///
/// Unknown JSON keys are refused: a misspelt option must fail loudly, not be
/// ignored (WasmEdge's `n-gpu-layers` vs `n_gpu_layers` is the cautionary tale).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GenerateParams {
    /// Most tokens to generate (else until end of generation or a full context).
    pub max_tokens: Option<u32>,
    /// 0 samples greedily.
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens.
    pub top_k: Option<u32>,
    /// Keep the most likely tokens up to this probability mass.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the most likely one.
    pub min_p: Option<f32>,
    /// Divide the logits of recently seen tokens by this.
    pub repeat_penalty: Option<f32>,
    /// Subtract this from the logits of tokens seen at all.
    pub presence_penalty: Option<f32>,
    /// Subtract this times the count of each seen token.
    pub frequency_penalty: Option<f32>,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: Option<u32>,
    /// Seed of the sampler's random numbers (else the session's, else fixed).
    pub seed: Option<u64>,
    /// Added to the logits of these token ids.
    #[serde(default)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Strings that end the generation (not delivered).
    #[serde(default)]
    pub stop: Vec<String>,
    /// A grammar or JSON schema the output must follow.
    pub constraint: Option<Constraint>,
    /// Report the log-probability of each token and of this many alternatives.
    pub logprobs: Option<u32>,
}

impl GenerateParams {
    /// Greedy decoding limited to `max_tokens`: the deterministic setting the tests use.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { max_tokens: Some(max_tokens), temperature: Some(0.0), ..Self::default() }
    }
}

/// Most stop strings one request may give, and their longest length in bytes.
const MAX_STOPS: usize = 16;
const MAX_STOP_BYTES: usize = 256;
/// Largest `logprobs` top-n a request may ask for.
pub const MAX_LOGPROBS: u32 = 20;

/// Check the parameters that do not need the model.
pub(crate) fn validate(params: &GenerateParams) -> Result<(), LlmError> {
    let finite_in = |name: &str, v: Option<f32>, lo: f32, hi: f32| match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => {
            Err(LlmError::invalid(format!("{name} must be a number in [{lo}, {hi}], got {x}")))
        }
        _ => Ok(()),
    };
    if params.max_tokens == Some(0) {
        return Err(LlmError::invalid("max-tokens must be at least 1"));
    }
    finite_in("temperature", params.temperature, 0.0, 100.0)?;
    finite_in("top-p", params.top_p, 0.0, 1.0)?;
    finite_in("min-p", params.min_p, 0.0, 1.0)?;
    finite_in("repeat-penalty", params.repeat_penalty, 0.0, 100.0)?;
    finite_in("presence-penalty", params.presence_penalty, -100.0, 100.0)?;
    finite_in("frequency-penalty", params.frequency_penalty, -100.0, 100.0)?;
    if params.repeat_penalty == Some(0.0) {
        return Err(LlmError::invalid("repeat-penalty must be greater than 0 (1.0 disables it)"));
    }
    if params.stop.len() > MAX_STOPS {
        return Err(LlmError::invalid(format!("at most {MAX_STOPS} stop strings are accepted")));
    }
    if let Some(s) = params.stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(LlmError::invalid(format!(
            "stop strings must be 1 to {MAX_STOP_BYTES} bytes long, got {} bytes",
            s.len()
        )));
    }
    if let Some(n) = params.logprobs.filter(|&n| n > MAX_LOGPROBS) {
        return Err(LlmError::invalid(format!("logprobs must be at most {MAX_LOGPROBS}, got {n}")));
    }
    if let Some((t, b)) = params.logit_bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY) {
        return Err(LlmError::invalid(format!("logit bias for token {t} must be finite or -inf, got {b}")));
    }
    Ok(())
}

/// Greedy decoding with logit biases (token index, bias, sorted by token)
/// and repetition penalties: the argmax of the adjusted logits, the first
/// maximum winning, with llama.cpp's operations in llama.cpp's order.
pub(crate) struct Greedy {
    biases: Vec<(usize, f32)>,
    penalties: Option<Penalties>,
}

impl Greedy {
    /// The greedy sampler of `params` for a vocabulary of `n_vocab`,
    /// penalties primed with `history`, in a session of `context` tokens.
    pub fn new(params: &GenerateParams, n_vocab: u32, history: &[u32], context: usize) -> Result<Self, LlmError> {
        let mut biases = checked_biases(params, n_vocab)?;
        // Stable: a token's biases are added in the order given, as llama.cpp does.
        biases.sort_by_key(|&(token, _)| token);
        Ok(Self { biases, penalties: Penalties::of(params, n_vocab, history, context) })
    }

    /// The adjusted logit of every token, in order.
    fn adjusted<'a>(&'a self, logits: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
        // `biases` is sorted by token: walk it alongside the logits.
        let mut pending = self.biases.iter().peekable();
        logits.iter().enumerate().map(move |(i, &raw)| {
            let mut logit = raw;
            while let Some((_, bias)) = pending.next_if(|&&(t, _)| t == i) {
                logit += bias;
            }
            if let Some(p) = self.penalties.as_ref()
                && let Some(&count) = p.counts.get(i).filter(|&&c| c > 0)
            {
                logit = p.apply(logit, count);
            }
            logit
        })
    }

    /// Count `token` as generated (the penalties' window).
    fn accept(&mut self, token: usize) {
        if let Some(p) = self.penalties.as_mut() {
            p.accept(token);
        }
    }
}

impl super::Sampler for Greedy {
    fn sample(&mut self, logits: &[f32]) -> u32 {
        let (mut best, mut best_logit) = (0, f32::NEG_INFINITY);
        for (i, logit) in self.adjusted(logits).enumerate() {
            if i == 0 || logit > best_logit {
                (best, best_logit) = (i, logit);
            }
        }
        self.accept(best);
        best as u32
    }
}

/// Sampling at a temperature, in Rust, for backends without a sampler
/// library of their own: logit biases and penalties as in [`Greedy`], then
/// top-k → top-p → min-p → temperature → a seeded draw, llama.cpp's order
/// and meanings.
pub(crate) struct Chain {
    greedy: Greedy,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    temperature: f32,
    rng: rand::rngs::StdRng,
    /// Candidates (token, logit), kept between steps.
    candidates: Vec<(u32, f32)>,
}

impl Chain {
    /// The sampler of `params` (temperature above 0) with `seed` for its draws.
    pub fn new(
        params: &GenerateParams,
        seed: u64,
        n_vocab: u32,
        history: &[u32],
        context: usize,
    ) -> Result<Self, LlmError> {
        use rand::SeedableRng as _;
        Ok(Self {
            greedy: Greedy::new(params, n_vocab, history, context)?,
            top_k: params.top_k.unwrap_or(DEFAULT_TOP_K) as usize,
            top_p: params.top_p.unwrap_or(DEFAULT_TOP_P),
            min_p: params.min_p.unwrap_or(DEFAULT_MIN_P),
            temperature: params.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            candidates: Vec::new(),
        })
    }
}

impl super::Sampler for Chain {
    fn sample(&mut self, logits: &[f32]) -> u32 {
        use rand::Rng as _;
        let c = &mut self.candidates;
        c.clear();
        c.extend(self.greedy.adjusted(logits).enumerate().map(|(i, l)| (i as u32, l)));
        c.retain(|&(_, l)| l > f32::NEG_INFINITY);
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.top_k > 0 {
            c.truncate(self.top_k.max(1));
        }
        if c.is_empty() {
            return 0;
        }
        // Top-p over the softmax of what is left: the smallest prefix that
        // holds `top_p` of the mass.
        let max = c[0].1;
        let weights: Vec<f64> = c.iter().map(|&(_, l)| f64::from(l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        if self.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = weights.iter().position(|w| {
                mass += w / total;
                mass >= f64::from(self.top_p)
            });
            c.truncate(keep.map_or(c.len(), |k| k + 1));
        }
        // Min-p: drop tokens less likely than `min_p` times the most likely.
        if self.min_p > 0.0 {
            let floor = max + self.min_p.ln();
            let kept = c.iter().take_while(|&&(_, l)| l >= floor).count().max(1);
            c.truncate(kept);
        }
        let weights: Vec<f64> = c.iter().map(|&(_, l)| f64::from((l - max) / self.temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        let mut token = c[c.len() - 1].0;
        for (&(t, _), w) in c.iter().zip(&weights) {
            if draw < *w {
                token = t;
                break;
            }
            draw -= w;
        }
        self.greedy.accept(token as usize);
        token
    }
}

/// `params`' logit biases as (token index, bias), each token checked
/// against a vocabulary of `n_vocab`.
pub(crate) fn checked_biases(params: &GenerateParams, n_vocab: u32) -> Result<Vec<(usize, f32)>, LlmError> {
    params
        .logit_bias
        .iter()
        .map(|&(token, bias)| match token < n_vocab {
            true => Ok((token as usize, bias)),
            false => Err(LlmError::InvalidToken { token, vocab_size: n_vocab }),
        })
        .collect()
}

/// llama.cpp's repetition penalties (`llama_sampler_init_penalties`), with
/// the window's counts kept densely so a step reads them alongside the logits.
struct Penalties {
    last_n: usize,
    repeat: f32,
    frequency: f32,
    presence: f32,
    recent: VecDeque<usize>,
    counts: Vec<u32>,
}

impl Penalties {
    /// The penalties `params` ask for, if any, primed with the last of
    /// `history` as llama-server primes them with the prompt. A window past
    /// the session's `context` sees nothing more (and llama.cpp allocates
    /// the whole window up front: an unclamped u32::MAX-ish guest value was
    /// a 13 GB allocation, found by fuzzing).
    fn of(params: &GenerateParams, n_vocab: u32, history: &[u32], context: usize) -> Option<Self> {
        let (repeat, frequency, presence) = penalty_values(params)?;
        let last_n = penalty_window(params, context);
        let mut p = Self::new(n_vocab as usize, last_n, repeat, frequency, presence);
        for &t in &history[history.len().saturating_sub(last_n)..] {
            p.accept(t as usize);
        }
        Some(p)
    }

    fn new(n_vocab: usize, last_n: usize, repeat: f32, frequency: f32, presence: f32) -> Self {
        Self { last_n, repeat, frequency, presence, recent: VecDeque::new(), counts: vec![0; n_vocab] }
    }

    /// A token joins the window (the oldest leaves once it is full).
    fn accept(&mut self, token: usize) {
        if self.last_n == 0 || token >= self.counts.len() {
            return;
        }
        self.counts[token] += 1;
        if self.recent.len() >= self.last_n
            && let Some(old) = self.recent.pop_front()
        {
            self.counts[old] -= 1;
        }
        self.recent.push_back(token);
    }

    /// `logit` of a token seen `count` times in the window.
    fn apply(&self, logit: f32, count: u32) -> f32 {
        let logit = if logit <= 0.0 { logit * self.repeat } else { logit / self.repeat };
        logit - (count as f32 * self.frequency + f32::from(u8::from(count > 0)) * self.presence)
    }
}

/// The repetition penalties `params` ask for (repeat, frequency,
/// presence), or none when every one is at its neutral value.
pub(crate) fn penalty_values(params: &GenerateParams) -> Option<(f32, f32, f32)> {
    let repeat = params.repeat_penalty.unwrap_or(1.0);
    let frequency = params.frequency_penalty.unwrap_or(0.0);
    let presence = params.presence_penalty.unwrap_or(0.0);
    (repeat != 1.0 || frequency != 0.0 || presence != 0.0).then_some((repeat, frequency, presence))
}

/// Tokens the repetition penalties look back over in a session of `context` tokens.
pub(crate) fn penalty_window(params: &GenerateParams, context: usize) -> usize {
    (params.penalty_last_n.unwrap_or(DEFAULT_PENALTY_LAST_N) as usize).min(context)
}

/// The seed of a generation's draws: the request's, else the session's,
/// else a fresh one (std's per-process random keys, so no RNG crate is
/// needed for this one use).
pub(crate) fn seed(params: &GenerateParams, session: Option<u64>) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    params.seed.or(session).unwrap_or_else(|| RandomState::new().hash_one(std::time::SystemTime::now()))
}
