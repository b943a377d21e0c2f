//! The GGML plugin's JSON "metadata": the configuration a guest sends with
//! `load_by_name_with_config` or `set_input(1, …)`, read into typed
//! settings.
//!
//! As WasmEdge does, a key of the wrong JSON type is `invalid-argument`,
//! text that is not a JSON object is `invalid-encoding`, and keys nobody
//! knows are ignored. Unlike WasmEdge, a guest does not run the host: the
//! keys that size or place the model (GPU layers, threads, batch sizes, KV
//! types, …) are the operator's, so they are noted and not used; `ctx-size`
//! is a session's context, capped at the operator's; and keys that name a
//! host file (`mmproj`, `image`, …) are refused, since guests never name
//! host paths. The operator's own settings (the policy's
//! `[wasi-ephemeral-nn] config`) use the same keys, read strictly: there an
//! unknown key is a mistake.

use serde_json::{Map, Value};

use super::abi::{Errno, Fault};
use crate::engine::{Constraint, GenerateParams};

/// Keys that size or place the model or its contexts: the operator's.
const OPERATOR_KEYS: &[&str] = &[
    "n-gpu-layers",
    "main-gpu",
    "tensor-split",
    "split-mode",
    "threads",
    "threads-batch",
    "batch-size",
    "ubatch-size",
    "flash-attn",
    "cache-type-k",
    "cache-type-v",
    "use-mmap",
    "use-mlock",
    "no-kv-offload",
    "warmup",
    "ctx-shift",
    "n-keep",
    "rope-scaling-type",
    "rope-freq-base",
    "rope-freq-scale",
    "yarn-ext-factor",
    "yarn-attn-factor",
    "yarn-beta-fast",
    "yarn-beta-slow",
    "yarn-orig-ctx",
];

/// Keys that name a file on the host: refused.
const PATH_KEYS: &[&str] = &["mmproj", "image", "model-vocoder", "tts-speaker-file", "lora", "control-vector"];

/// Sampling keys the plugin knows that this engine does not implement.
const UNSUPPORTED_KEYS: &[&str] = &[
    "ignore-eos",
    "mirostat",
    "mirostat-lr",
    "mirostat-ent",
    "typ-p",
    "xtc-probability",
    "xtc-threshold",
    "dynatemp-range",
    "dynatemp-exponent",
    "dry-multiplier",
    "dry-base",
    "dry-allowed-length",
    "dry-penalty-last-n",
    "top-n-sigma",
    "n-probs",
];

/// Logging switches: accepted, and without effect (`WASI_NN_LLM_LOG` is the
/// operator's switch for llama.cpp's logs).
const QUIET_KEYS: &[&str] = &["enable-log", "enable-debug-log"];

/// What a graph or context is configured with; absent keys take WasmEdge's
/// defaults, which are llama.cpp's (temperature 0.8, top-k 40, top-p 0.95,
/// min-p 0.05, a random seed; no token limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// Most tokens a compute generates; negative: no limit.
    pub n_predict: Option<i64>,
    /// Sampling temperature (`temp`); 0 is greedy.
    pub temp: Option<f64>,
    /// Nucleus sampling's probability mass.
    pub top_p: Option<f64>,
    /// Keep this many most likely tokens (0: all).
    pub top_k: Option<i64>,
    /// Drop tokens less likely than this fraction of the best.
    pub min_p: Option<f64>,
    /// Divide recent tokens' logits by this.
    pub repeat_penalty: Option<f64>,
    /// Subtract this from seen tokens' logits.
    pub presence_penalty: Option<f64>,
    /// Subtract this times each seen token's count.
    pub frequency_penalty: Option<f64>,
    /// How many recent tokens the penalties see (`last-n-penalty`).
    pub last_n_penalty: Option<i64>,
    /// Negative (llama.cpp's `LLAMA_DEFAULT_SEED` is -1 as a u32): random.
    pub seed: Option<i64>,
    /// A GBNF grammar the output follows.
    pub grammar: Option<String>,
    /// A JSON schema the output follows (wins over `grammar`).
    pub json_schema: Option<String>,
    /// Ends a generation where it appears (WasmEdge's one stop string).
    pub reverse_prompt: Option<String>,
    /// Write each token to the guest's stdout during `compute`.
    pub stream_stdout: Option<bool>,
    /// Tokens a context's session may hold (capped at the operator's).
    pub ctx_size: Option<i64>,
    /// `compute` embeds the prompt instead of generating.
    pub embedding: Option<bool>,
}

/// How strictly to read a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// A guest's: unknown keys ignored, operator keys noted and not used.
    Guest,
    /// The operator's: every key must be one this host uses.
    Operator,
}

impl Config {
    /// Read `json` over `self`; returns notes for the guest's stderr (keys
    /// set that are the operator's, or that this engine does not support).
    pub fn apply(&mut self, json: &[u8], reader: Reader) -> Result<Vec<String>, Fault> {
        let value: Value = serde_json::from_slice(json)
            .map_err(|e| Fault::new(Errno::InvalidEncoding, format!("the config is not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Fault::new(Errno::InvalidEncoding, "the config must be a JSON object"));
        };
        self.apply_map(&map, reader)
    }

    /// [`apply`](Self::apply) on a parsed object.
    pub fn apply_map(&mut self, map: &Map<String, Value>, reader: Reader) -> Result<Vec<String>, Fault> {
        let mut operator = Vec::new();
        let mut unsupported = Vec::new();
        for (key, value) in map {
            let key = key.as_str();
            match key {
                "n-predict" => self.n_predict = Some(int(key, value)?),
                "temp" => self.temp = Some(float(key, value)?),
                "top-p" => self.top_p = Some(float(key, value)?),
                "top-k" => self.top_k = Some(int(key, value)?),
                "min-p" => self.min_p = Some(float(key, value)?),
                "repeat-penalty" => self.repeat_penalty = Some(float(key, value)?),
                "presence-penalty" => self.presence_penalty = Some(float(key, value)?),
                "frequency-penalty" => self.frequency_penalty = Some(float(key, value)?),
                "last-n-penalty" => self.last_n_penalty = Some(int(key, value)?),
                "seed" => self.seed = Some(int(key, value)?),
                "grammar" => self.grammar = Some(string(key, value)?),
                "json-schema" => self.json_schema = Some(string(key, value)?),
                "reverse-prompt" => self.reverse_prompt = Some(string(key, value)?),
                "stream-stdout" => self.stream_stdout = Some(boolean(key, value)?),
                "ctx-size" => self.ctx_size = Some(int(key, value)?),
                "embedding" => self.embedding = Some(boolean(key, value)?),
                _ if PATH_KEYS.contains(&key) => {
                    return Err(Fault::new(
                        Errno::InvalidArgument,
                        format!("config key {key:?} names a host file; this host gives guests no host paths"),
                    ));
                }
                _ if QUIET_KEYS.contains(&key) && reader == Reader::Guest => {}
                _ if OPERATOR_KEYS.contains(&key) && reader == Reader::Guest => operator.push(key),
                _ if UNSUPPORTED_KEYS.contains(&key) && reader == Reader::Guest => unsupported.push(key),
                _ if reader == Reader::Operator => {
                    return Err(Fault::new(
                        Errno::InvalidArgument,
                        format!("config key {key:?} is not one this host uses"),
                    ));
                }
                _ => {}
            }
        }
        let mut notes = Vec::new();
        if !operator.is_empty() {
            notes.push(format!("config {} ignored: the host's operator sets how the model runs", operator.join(", ")));
        }
        if !unsupported.is_empty() {
            notes.push(format!(
                "config {} ignored: this host's sampler does not implement them",
                unsupported.join(", ")
            ));
        }
        Ok(notes)
    }

    /// Every key `over` sets, in place of this one's.
    pub fn overlay(&mut self, over: &Config) {
        macro_rules! take {
            ($($field:ident),*) => { $( if over.$field.is_some() { self.$field = over.$field.clone(); } )* };
        }
        take!(
            n_predict,
            temp,
            top_p,
            top_k,
            min_p,
            repeat_penalty,
            presence_penalty,
            frequency_penalty,
            last_n_penalty,
            seed,
            grammar,
            json_schema,
            reverse_prompt,
            stream_stdout,
            ctx_size,
            embedding
        );
    }

    /// Whether `compute` embeds rather than generates.
    pub fn embeds(&self) -> bool {
        self.embedding == Some(true)
    }

    /// Whether `compute` writes each piece to the guest's stdout as it comes.
    pub fn streams_to_stdout(&self) -> bool {
        self.stream_stdout == Some(true)
    }

    /// The session context this configuration asks for: `ctx-size` when it
    /// is positive and within the operator's `limit`; `None` takes the
    /// operator's. The note says when a guest's value was capped.
    pub fn context_length(&self, limit: u32) -> (Option<u32>, Option<String>) {
        match self.ctx_size {
            Some(n) if n > i64::from(limit) => {
                (None, Some(format!("config ctx-size {n} capped at the host's context of {limit} tokens")))
            }
            Some(n) if n > 0 => (Some(n as u32), None),
            _ => (None, None),
        }
    }

    /// Tokens to generate: `Some(0)` generates none, `None` has no limit.
    pub fn max_tokens(&self) -> Option<u32> {
        match self.n_predict {
            Some(n) if n >= 0 => Some(n.min(i64::from(u32::MAX)) as u32),
            _ => None,
        }
    }

    /// The engine's sampling parameters, clamped as the plugin clamps
    /// (negative temperature, top-p and penalties count as 0).
    pub fn params(&self) -> GenerateParams {
        let unit = |v: Option<f64>| v.map(|x| x.clamp(0.0, 1.0) as f32);
        let non_negative = |v: Option<f64>| v.map(|x| x.clamp(0.0, 100.0) as f32);
        let constraint = match (&self.grammar, &self.json_schema) {
            (_, Some(schema)) if !schema.is_empty() => Some(Constraint::JsonSchema(schema.clone())),
            (Some(grammar), _) if !grammar.is_empty() => Some(Constraint::Grammar(grammar.clone())),
            _ => None,
        };
        GenerateParams {
            max_tokens: self.max_tokens().filter(|&n| n > 0),
            temperature: non_negative(self.temp),
            top_k: self.top_k.map(|k| k.clamp(0, i64::from(u32::MAX)) as u32),
            top_p: unit(self.top_p),
            min_p: unit(self.min_p),
            // 0 means "off" to llama.cpp's penalties; the engine says 1.0.
            repeat_penalty: non_negative(self.repeat_penalty).map(|p| if p == 0.0 { 1.0 } else { p }),
            presence_penalty: self.presence_penalty.map(|x| x.clamp(-100.0, 100.0) as f32),
            frequency_penalty: self.frequency_penalty.map(|x| x.clamp(-100.0, 100.0) as f32),
            penalty_last_n: self.last_n_penalty.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            seed: self.seed.filter(|&s| (0..i64::from(u32::MAX)).contains(&s)).map(|s| s as u64),
            stop: self.reverse_prompt.iter().filter(|s| !s.is_empty()).cloned().collect(),
            constraint,
            ..GenerateParams::default()
        }
    }
}

fn wrong(key: &str, wanted: &str, value: &Value) -> Fault {
    Fault::new(Errno::InvalidArgument, format!("config key {key:?} must be {wanted}, got {value}"))
}

fn int(key: &str, value: &Value) -> Result<i64, Fault> {
    value.as_i64().ok_or_else(|| wrong(key, "an integer", value))
}

fn float(key: &str, value: &Value) -> Result<f64, Fault> {
    value.as_f64().ok_or_else(|| wrong(key, "a number", value))
}

fn boolean(key: &str, value: &Value) -> Result<bool, Fault> {
    value.as_bool().ok_or_else(|| wrong(key, "true or false", value))
}

fn string(key: &str, value: &Value) -> Result<String, Fault> {
    value.as_str().map(str::to_owned).ok_or_else(|| wrong(key, "a string", value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_guests_configs_read_as_wasmedge_reads_them() {
        let mut config = Config::default();
        let notes = config
            .apply(br#"{"ctx-size":1024,"enable-log":false,"llama3":false,"n-gpu-layers":0}"#, Reader::Guest)
            .expect("a valid config");
        assert_eq!(config.ctx_size, Some(1024));
        assert_eq!(notes, ["config n-gpu-layers ignored: the host's operator sets how the model runs"]);
        assert_eq!(config.context_length(2048), (Some(1024), None));
        assert!(config.context_length(512).1.is_some_and(|n| n.contains("capped")));
        assert_eq!(config.params().temperature, None);
    }

    #[test]
    fn wrong_types_paths_and_bad_json_are_refused() {
        let refused =
            |json: &str, reader| Config::default().apply(json.as_bytes(), reader).map(|_| ()).unwrap_err().errno;
        assert_eq!(refused(r#"{"temp":"hot"}"#, Reader::Guest), Errno::InvalidArgument);
        assert_eq!(refused(r#"{"mmproj":"/etc/passwd"}"#, Reader::Guest), Errno::InvalidArgument);
        assert_eq!(refused("{not json", Reader::Guest), Errno::InvalidEncoding);
        assert_eq!(refused("[1]", Reader::Guest), Errno::InvalidEncoding);
        assert_eq!(refused(r#"{"tmep":0}"#, Reader::Operator), Errno::InvalidArgument);
        assert!(Config::default().apply(br#"{"tmep":0}"#, Reader::Guest).is_ok());
    }

    #[test]
    fn the_operator_overlays_the_guest() {
        let mut guest = Config::default();
        guest.apply(br#"{"temp":0.1,"n-predict":512,"stream-stdout":true}"#, Reader::Guest).unwrap();
        let mut operator = Config::default();
        operator.apply(br#"{"temp":0,"seed":7}"#, Reader::Operator).unwrap();
        guest.overlay(&operator);
        let params = guest.params();
        assert_eq!((params.temperature, params.seed, params.max_tokens), (Some(0.0), Some(7), Some(512)));
        assert!(guest.streams_to_stdout());
    }
}
