//! What an operator watches (`GET /metrics` on `serve`, Prometheus' text
//! format): requests by route and status and those in flight, tokens in and
//! out, drafted and accepted tokens, time to first token and decode speed, sessions open, prefix-cache
//! hits by tier with the tokens they gave, and the shared store's writes,
//! errors and refused entries.
//!
//! One set for the process (every model, every front door), kept in the
//! Prometheus project's own client ([`prometheus_client`]): the engine and
//! the front doors count as things happen, and a scrape only encodes.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A request's route (one of the API's, or `other`) and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The path, when it is one the OpenAI-compatible API serves; `other`
    /// else (so no client can grow the label set).
    pub route: &'static str,
    /// The HTTP status answered.
    pub status: u16,
}

/// Which tier of the prefix cache gave a session its prefix.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// `local` (this host's) or `shared` (the store several hosts share).
    pub tier: &'static str,
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// HTTP requests taken and not yet answered (the queue in front of the guests).
    pub requests_in_flight: Gauge,
    /// Prompt tokens of the generations, and how many of them were cached.
    pub prompt_tokens: Counter,
    /// Of [`Self::prompt_tokens`], those the KV cache held already.
    pub cached_prompt_tokens: Counter,
    /// Tokens the generations produced.
    pub generated_tokens: Counter,
    /// From a turn's first appended token (or the `generate` call) to its
    /// first generated token, in seconds.
    pub time_to_first_token: Histogram,
    /// Seconds per generated token after the first, per generation.
    pub decode_seconds_per_token: Histogram,
    /// Drafted tokens checked by speculative decoding.
    pub draft_tokens: Counter,
    /// Of [`Self::draft_tokens`], those the model agreed with (each saved a decode).
    pub accepted_draft_tokens: Counter,
    /// Decode steps that checked drafted tokens (accepted / checks: the
    /// mean accepted length).
    pub draft_checks: Counter,
    /// Sessions holding a KV sequence (those the prefix cache keeps included).
    pub sessions: Gauge,
    /// `open-cached` calls continued from a cache entry, by tier.
    pub prefix_cache_hits: Family<TierLabels, Counter>,
    /// Prompt tokens those entries gave, by tier.
    pub prefix_cache_tokens: Family<TierLabels, Counter>,
    /// `open-cached` calls that found nothing to continue.
    pub prefix_cache_misses: Counter,
    /// Entries written to the shared store, and their bytes.
    pub shared_writes: Counter,
    /// Bytes of [`Self::shared_writes`].
    pub shared_written_bytes: Counter,
    /// Calls to the shared store that failed (down, timed out).
    pub shared_errors: Counter,
    /// Shared entries refused by their tag or the snapshot check.
    pub shared_refused: Counter,
}

/// The process's metrics, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("wasi_nn_llm");
        let m = Self {
            requests: Family::default(),
            requests_in_flight: Gauge::default(),
            prompt_tokens: Counter::default(),
            cached_prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            draft_tokens: Counter::default(),
            accepted_draft_tokens: Counter::default(),
            draft_checks: Counter::default(),
            // 5 ms to about 40 s.
            time_to_first_token: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            // 1 ms to about 1 s a token.
            decode_seconds_per_token: Histogram::new(exponential_buckets(0.001, 2.0, 11)),
            sessions: Gauge::default(),
            prefix_cache_hits: Family::default(),
            prefix_cache_tokens: Family::default(),
            prefix_cache_misses: Counter::default(),
            shared_writes: Counter::default(),
            shared_written_bytes: Counter::default(),
            shared_errors: Counter::default(),
            shared_refused: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("http_requests", "HTTP requests answered, by route and status", m.requests.clone());
        r.register("http_requests_in_flight", "HTTP requests taken and not yet answered", m.requests_in_flight.clone());
        r.register("prompt_tokens", "Prompt tokens of the generations", m.prompt_tokens.clone());
        r.register("cached_prompt_tokens", "Prompt tokens the KV cache held already", m.cached_prompt_tokens.clone());
        r.register("generated_tokens", "Tokens the generations produced", m.generated_tokens.clone());
        r.register("draft_tokens", "Drafted tokens checked by speculative decoding", m.draft_tokens.clone());
        r.register(
            "accepted_draft_tokens",
            "Drafted tokens the model agreed with (speculative decoding)",
            m.accepted_draft_tokens.clone(),
        );
        r.register("draft_checks", "Decode steps that checked drafted tokens", m.draft_checks.clone());
        r.register_with_unit(
            "time_to_first_token",
            "From a turn's first appended token to its first generated token",
            Unit::Seconds,
            m.time_to_first_token.clone(),
        );
        r.register_with_unit(
            "decode_per_token",
            "Time per generated token after the first, per generation",
            Unit::Seconds,
            m.decode_seconds_per_token.clone(),
        );
        r.register(
            "sessions",
            "Sessions holding a KV sequence, those the prefix cache keeps included",
            m.sessions.clone(),
        );
        r.register(
            "prefix_cache_hits",
            "open-cached calls continued from a cache entry, by tier",
            m.prefix_cache_hits.clone(),
        );
        r.register(
            "prefix_cache_tokens",
            "Prompt tokens the prefix cache gave, by tier",
            m.prefix_cache_tokens.clone(),
        );
        r.register(
            "prefix_cache_misses",
            "open-cached calls that found nothing to continue",
            m.prefix_cache_misses.clone(),
        );
        r.register("shared_cache_writes", "Entries written to the shared store", m.shared_writes.clone());
        r.register_with_unit(
            "shared_cache_written",
            "Bytes written to the shared store",
            Unit::Bytes,
            m.shared_written_bytes.clone(),
        );
        r.register("shared_cache_errors", "Calls to the shared store that failed", m.shared_errors.clone());
        r.register("shared_cache_refused", "Shared entries refused by their tag or check", m.shared_refused.clone());
        Self { registry, ..m }
    }

    /// The text a scrape gets.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Count a hit of `tier` that gave `tokens`.
    pub fn cache_hit(&self, tier: &'static str, tokens: usize) {
        let labels = TierLabels { tier };
        self.prefix_cache_hits.get_or_create(&labels).inc();
        self.prefix_cache_tokens.get_or_create(&labels).inc_by(tokens as u64);
    }
}

/// The route label of `path`: one of the API's paths, or `other`.
pub fn route(path: &str) -> &'static str {
    const ROUTES: [&str; 9] = [
        "/health",
        "/metrics",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/",
        "/v1/models/{model}",
    ];
    let path = path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    match ROUTES.iter().find(|r| **r == path) {
        Some(r) => r,
        None if path.starts_with("/v1/models/") => "/v1/models/{model}",
        None => "other",
    }
}
