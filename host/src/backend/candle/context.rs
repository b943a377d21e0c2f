//! candle contexts behind the seam: each sequence's KV cache is a list of
//! candle tensors ([`Cache`]), so rewinding is a narrow, forking a clone
//! (the tensors are shared until written), and saving writes them out.
//!
//! Concurrency is simpler than llama.cpp's: a batch that holds tokens of
//! several sequences (a generation step of several sessions) runs one
//! forward pass per sequence, one after another, instead of one pass for
//! all. Each pass's matrix products run on candle's own process-wide
//! worker pool (`CANDLE_NUM_THREADS`, else the physical cores), which the
//! engine's per-lane thread shares do not govern.

use candle_core::{Device, Tensor};

use super::llama::{Cache, Weights};
use crate::backend::{Batch, ContextSetup, StateError};

/// The first bytes of this backend's saved states.
pub(crate) const STATE_MAGIC: [u8; 8] = *b"CNDLKV01";

/// A lane's context: one KV cache per sequence.
pub(super) struct Lane<'m> {
    weights: &'m Weights,
    seqs: Vec<Cache>,
    /// The last decode's logits, by batch index (empty where not asked for).
    logits: Vec<Vec<f32>>,
}

impl<'m> Lane<'m> {
    pub fn new(weights: &'m Weights, setup: &ContextSetup) -> Self {
        Self { weights, seqs: vec![Cache::default(); setup.sequences as usize], logits: Vec::new() }
    }

    fn cache(&mut self, seq: u32) -> Result<&mut Cache, String> {
        self.seqs.get_mut(seq as usize).ok_or_else(|| format!("no sequence {seq}"))
    }

    /// Run the batch's passes, one per run of consecutive tokens of one
    /// sequence; `undo` gets each sequence's cache as it was before its pass.
    fn run(&mut self, batch: &Batch, undo: &mut Vec<(u32, Cache)>) -> Result<(), String> {
        let tokens = batch.tokens();
        let mut at = 0;
        while at < tokens.len() {
            let seq = tokens[at].seq;
            let end = at + tokens[at..].iter().take_while(|t| t.seq == seq).count();
            let run = &tokens[at..end];
            let weights = self.weights;
            let cache = self.cache(seq)?;
            if run[0].pos as usize != cache.len() || run.windows(2).any(|w| w[1].pos != w[0].pos + 1) {
                return Err(format!("sequence {seq} holds {} tokens, not the positions of the batch", cache.len()));
            }
            let ids: Vec<u32> = run.iter().map(|t| t.token).collect();
            undo.push((seq, cache.clone()));
            let hidden = weights.forward(&ids, cache).map_err(|e| e.to_string())?;
            let wanted: Vec<u32> = (0..run.len() as u32).filter(|&i| run[i as usize].logits).collect();
            let mut rows = if wanted.is_empty() {
                Vec::new()
            } else {
                let picked = hidden.index_select(&Tensor::new(wanted.as_slice(), &Device::Cpu).map_err(failed)?, 0);
                weights.logits(&picked.map_err(failed)?).and_then(|l| l.to_vec2::<f32>()).map_err(failed)?
            }
            .into_iter();
            for t in run {
                self.logits.push(if t.logits { rows.next().unwrap_or_default() } else { Vec::new() });
            }
            at = end;
        }
        Ok(())
    }
}

fn failed(e: candle_core::Error) -> String {
    e.to_string()
}

impl crate::backend::Context for Lane<'_> {
    /// A failed pass leaves every sequence as it was before the batch.
    fn decode(&mut self, batch: &Batch) -> Result<(), String> {
        self.logits.clear();
        let mut undo = Vec::new();
        let result = self.run(batch, &mut undo);
        if result.is_err() {
            for (seq, cache) in undo.into_iter().rev() {
                self.seqs[seq as usize] = cache;
            }
            self.logits.clear();
        }
        result
    }

    fn logits(&self, index: usize) -> &[f32] {
        self.logits.get(index).map_or(&[], Vec::as_slice)
    }

    fn clear(&mut self, seq: u32) -> Result<(), String> {
        *self.cache(seq)? = Cache::default();
        Ok(())
    }

    fn remove(&mut self, seq: u32, from: u32, to: Option<u32>) -> Result<(), String> {
        let cache = self.cache(seq)?;
        let len = cache.len();
        let (from, to) = (from as usize, to.map_or(len, |t| (t as usize).min(len)));
        if from >= to {
            return Ok(());
        }
        let cut = |t: &Tensor| -> candle_core::Result<Tensor> {
            let head = t.narrow(2, 0, from)?;
            if to == len { Ok(head) } else { Tensor::cat(&[&head, &t.narrow(2, to, len - to)?], 2) }
        };
        let layers = cache.layers.iter().map(|(k, v)| Ok((cut(k)?, cut(v)?))).collect::<candle_core::Result<_>>();
        cache.layers = layers.map_err(failed)?;
        Ok(())
    }

    /// Cells from `from` on, moved by `delta` (< 0): the engine removed the
    /// `-delta` cells before `from` first, so the moved ones now start at
    /// `from + delta`; their keys are rotated back by `-delta` positions.
    fn shift(&mut self, seq: u32, from: u32, delta: i32) -> Result<(), String> {
        let weights = self.weights;
        let cache = self.cache(seq)?;
        let by = usize::try_from(-i64::from(delta)).map_err(|_| "only moving cells back is supported".to_owned())?;
        let start = (from as usize).checked_sub(by).ok_or("shift before the first position")?;
        let len = cache.len();
        let moved = |k: &Tensor| -> candle_core::Result<Tensor> {
            let keep = k.narrow(2, 0, start)?;
            let tail = weights.shift_keys(&k.narrow(2, start, len - start)?, by)?;
            Tensor::cat(&[&keep, &tail], 2)
        };
        let layers = cache.layers.iter().map(|(k, v)| Ok((moved(k)?, v.clone()))).collect::<candle_core::Result<_>>();
        cache.layers = layers.map_err(failed)?;
        Ok(())
    }

    fn copy(&mut self, from: u32, to: u32) -> Result<(), String> {
        let cache = self.cache(from)?.clone();
        *self.cache(to)? = cache;
        Ok(())
    }

    /// Layout: [`STATE_MAGIC`], then (little-endian u32s) layers, KV heads,
    /// head size, tokens n, the n token ids, then each layer's keys and
    /// values as f32s in `[heads, n, head size]` order.
    fn save(&mut self, seq: u32, tokens: &[u32]) -> Result<Vec<u8>, String> {
        let shape = self.weights.shape;
        let cache = self.cache(seq)?;
        if cache.len() != tokens.len() {
            return Err(format!("the cache holds {} tokens, not {}", cache.len(), tokens.len()));
        }
        let mut out = STATE_MAGIC.to_vec();
        for n in [shape.n_layer, shape.n_head_kv, shape.head_dim, tokens.len()] {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for t in tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        if tokens.is_empty() {
            return Ok(out);
        }
        for (k, v) in &cache.layers {
            for t in [k, v] {
                let values = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(failed)?;
                out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
            }
        }
        Ok(out)
    }

    fn load(&mut self, seq: u32, state: &[u8], tokens: usize) -> Result<Vec<u32>, StateError> {
        let Some(body) = state.strip_prefix(&STATE_MAGIC) else {
            return Err(StateError::foreign(state));
        };
        let shape = self.weights.shape;
        let mut words = body.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize);
        let mut next = || words.next().ok_or(StateError::Corrupted);
        let (layers, heads, dim, n) = (next()?, next()?, next()?, next()?);
        if (layers, heads, dim) != (shape.n_layer, shape.n_head_kv, shape.head_dim) || n != tokens {
            return Err(StateError::Corrupted);
        }
        let ids = (0..n).map(|_| next().map(|t| t as u32)).collect::<Result<Vec<_>, _>>()?;
        let per_tensor = heads * n * dim;
        let data = &body[4 * (4 + n)..];
        let expected = if n == 0 { 0 } else { layers * 2 * per_tensor * 4 };
        if data.len() != expected {
            return Err(StateError::Corrupted);
        }
        let mut cache = Cache::default();
        if n > 0 {
            let mut floats = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            let mut tensor = || {
                let values: Vec<f32> = floats.by_ref().take(per_tensor).collect();
                Tensor::from_vec(values, (1, heads, n, dim), &Device::Cpu).map_err(|_| StateError::Corrupted)
            };
            for _ in 0..layers {
                cache.layers.push((tensor()?, tensor()?));
            }
        }
        *self.cache(seq).map_err(|_| StateError::Corrupted)? = cache;
        Ok(ids)
    }

    fn use_threads(&mut self, _threads: u32) {}

    fn rest(&mut self) {}
}

/// An embedding context: one sequence, every token's final hidden state.
pub(super) struct Embedding<'m> {
    weights: &'m Weights,
    cache: Cache,
    hidden: Vec<Vec<f32>>,
}

impl<'m> Embedding<'m> {
    pub fn new(weights: &'m Weights) -> Self {
        Self { weights, cache: Cache::default(), hidden: Vec::new() }
    }
}

impl crate::backend::Embedder for Embedding<'_> {
    fn decode(&mut self, tokens: &[u32], start: usize) -> Result<(), String> {
        if start != self.cache.len() {
            return Err(format!("the embedding sequence holds {} tokens, not {start}", self.cache.len()));
        }
        let hidden = self.weights.forward(tokens, &mut self.cache).map_err(failed)?;
        self.hidden = hidden.to_vec2::<f32>().map_err(failed)?;
        Ok(())
    }

    fn hidden(&self, index: usize) -> Result<&[f32], String> {
        self.hidden.get(index).map(Vec::as_slice).ok_or_else(|| format!("no hidden state for token {index}"))
    }

    fn clear(&mut self) {
        self.cache = Cache::default();
        self.hidden.clear();
    }

    fn use_threads(&mut self, _threads: u32) {}

    fn rest(&mut self) {}
}
