//! The Llama architecture (SmolLM2's) on candle's kernels: weights read
//! from the GGUF as candle's quantized tensors, and a forward pass over one
//! sequence whose KV cache the caller keeps ([`Cache`]), so that the
//! context can rewind, fork, shift, save and restore it.
//!
//! It is the forward pass of candle-transformers' `quantized_llama`
//! (RMS norm, rotary positions in GGUF's interleaved layout, grouped-query
//! attention, SwiGLU), written out here because that model keeps its KV
//! cache private and can only append to it.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::{QMatMul, gguf_file};
use candle_core::{DType, Device, Module, Tensor};

use gguf_vocab::Metadata;

/// What the forward pass needs to know of the model's shape.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub eps: f64,
    pub rope_base: f32,
    pub trained_context: usize,
}

impl Shape {
    /// The shape a `llama` GGUF's metadata gives.
    pub fn read(meta: &Metadata, n_vocab: usize) -> Result<Self, String> {
        let int = |key: &str| {
            meta.int(&format!("llama.{key}"))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| format!("the GGUF has no llama.{key}"))
        };
        let n_embd = int("embedding_length")?;
        let n_head = int("attention.head_count")?;
        let n_head_kv = int("attention.head_count_kv").unwrap_or(n_head);
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 || n_embd % n_head != 0 {
            return Err(format!("inconsistent attention shape: {n_embd} wide, {n_head} heads, {n_head_kv} KV heads"));
        }
        let head_dim = int("rope.dimension_count").unwrap_or(n_embd / n_head);
        if head_dim != n_embd / n_head || head_dim % 2 != 0 {
            return Err(format!("rotary dimension {head_dim} is not the head size {}", n_embd / n_head));
        }
        Ok(Self {
            n_layer: int("block_count")?,
            n_head,
            n_head_kv,
            head_dim,
            n_embd,
            n_vocab,
            eps: meta.float("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_base: meta.float("llama.rope.freq_base").unwrap_or(10_000.0) as f32,
            trained_context: int("context_length")?,
        })
    }

    /// Bytes of KV cache (f32 keys and values of every layer) one token holds.
    pub fn kv_bytes_per_token(&self) -> u64 {
        (2 * self.n_layer * self.n_head_kv * self.head_dim * 4) as u64
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
}

/// A sequence's keys and values, per layer: `[1, n_head_kv, tokens, head_dim]`,
/// keys already rotated to their positions.
#[derive(Clone, Default)]
pub(super) struct Cache {
    pub layers: Vec<(Tensor, Tensor)>,
}

impl Cache {
    /// Tokens it holds.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims().get(2).copied().unwrap_or(0))
    }
}

/// The weights, shared by every context of the model.
pub(super) struct Weights {
    pub shape: Shape,
    /// Parameters and bytes of all the GGUF's tensors.
    pub parameters: u64,
    pub size_bytes: u64,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QMatMul,
    /// Rotary tables for every position the model was trained for:
    /// `[positions, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

fn failed(e: candle_core::Error) -> String {
    e.to_string()
}

impl Weights {
    /// Read the tensors of the `llama` GGUF at `path`.
    pub fn load(path: &Path, shape: Shape) -> Result<Self, String> {
        let device = Device::Cpu;
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let content = gguf_file::Content::read(&mut file).map_err(failed)?;
        let (parameters, size_bytes) = content.tensor_infos.values().fold((0, 0), |(n, bytes), t| {
            let count = t.shape.elem_count();
            let size = count / t.ggml_dtype.block_size() * t.ggml_dtype.type_size();
            (n + count as u64, bytes + size as u64)
        });
        let mut tensor =
            |name: &str| content.tensor(&mut file, name, &device).map_err(|e| format!("tensor {name}: {e}"));
        let dense = |t: candle_core::quantized::QTensor| t.dequantize(&device).map_err(failed);
        let matmul = |t| QMatMul::from_qtensor(t).map_err(failed);
        let embeddings_q = tensor("token_embd.weight")?;
        let embeddings = dense(embeddings_q)?;
        let output = match tensor("output.weight") {
            Ok(t) => matmul(t)?,
            // Tied embeddings (SmolLM2): the output projection is the embedding table.
            Err(_) => matmul(tensor("token_embd.weight")?)?,
        };
        let norm = dense(tensor("output_norm.weight")?)?;
        let mut layers = Vec::with_capacity(shape.n_layer);
        for i in 0..shape.n_layer {
            let mut t = |what: &str| tensor(&format!("blk.{i}.{what}.weight"));
            layers.push(Layer {
                attn_norm: dense(t("attn_norm")?)?,
                wq: matmul(t("attn_q")?)?,
                wk: matmul(t("attn_k")?)?,
                wv: matmul(t("attn_v")?)?,
                wo: matmul(t("attn_output")?)?,
                ffn_norm: dense(t("ffn_norm")?)?,
                gate: matmul(t("ffn_gate")?)?,
                up: matmul(t("ffn_up")?)?,
                down: matmul(t("ffn_down")?)?,
            });
        }
        let (rows, width) = embeddings.dims2().map_err(failed)?;
        if rows != shape.n_vocab || width != shape.n_embd {
            return Err(format!(
                "the embedding table is {rows} × {width}, the vocabulary {} tokens of {}",
                shape.n_vocab, shape.n_embd
            ));
        }
        let (cos, sin) = rotary_tables(&shape, shape.trained_context, &device).map_err(failed)?;
        Ok(Self { shape, parameters, size_bytes, embeddings, layers, norm, output, cos, sin })
    }

    /// Evaluate `tokens` at positions from `cache.len()` on, appending
    /// their keys and values to `cache`; returns the final hidden states
    /// (after the output norm), `[tokens, n_embd]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> candle_core::Result<Tensor> {
        let device = Device::Cpu;
        let past = cache.len();
        let n = tokens.len();
        let ids = Tensor::new(tokens, &device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?.unsqueeze(0)?;
        let mask = causal_mask(n, past, &device)?;
        let cos = self.cos.narrow(0, past, n)?;
        let sin = self.sin.narrow(0, past, n)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = &x;
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.shape.eps as f32)?;
            let (h, kv) = self.attention(layer, &h, cache.layers.get(i), mask.as_ref(), &cos, &sin)?;
            layers.push(kv);
            let x1 = (residual + h)?;
            let h = candle_nn::ops::rms_norm(&x1, &layer.ffn_norm, self.shape.eps as f32)?;
            let h = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x1 + layer.down.forward(&h)?)?;
        }
        cache.layers = layers;
        candle_nn::ops::rms_norm(&x, &self.norm, self.shape.eps as f32)?.squeeze(0)
    }

    /// The logits of hidden states `[rows, n_embd]`: `[rows, n_vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        self.output.forward(hidden)
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cached: Option<&(Tensor, Tensor)>,
        mask: Option<&Tensor>,
        cos: &Tensor,
        sin: &Tensor,
    ) -> candle_core::Result<(Tensor, (Tensor, Tensor))> {
        let s = &self.shape;
        let (_, n, _) = x.dims3()?;
        let heads = |w: &QMatMul, count: usize| -> candle_core::Result<Tensor> {
            w.forward(x)?.reshape((1, n, count, s.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let q = candle_nn::rotary_emb::rope_i(&heads(&layer.wq, s.n_head)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(&layer.wk, s.n_head_kv)?, cos, sin)?;
        let v = heads(&layer.wv, s.n_head_kv)?;
        let (k, v) = match cached {
            Some((ck, cv)) if ck.dim(2)? > 0 => (Tensor::cat(&[ck, &k], 2)?, Tensor::cat(&[cv, &v], 2)?),
            _ => (k, v),
        };
        let groups = s.n_head / s.n_head_kv;
        let k_all = repeat_kv(&k, groups)?;
        let v_all = repeat_kv(&v, groups)?;
        let scores = (q.matmul(&k_all.t()?)? / (s.head_dim as f64).sqrt())?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = weights.matmul(&v_all)?.transpose(1, 2)?.reshape((1, n, s.n_embd))?;
        Ok((layer.wo.forward(&y)?, (k, v)))
    }

    /// Keys at positions `from..` moved back by `by` positions: rotated by
    /// `-by` positions' angle (rotations compose), as llama.cpp's context
    /// shift re-rotates its cached keys.
    pub fn shift_keys(&self, keys: &Tensor, by: usize) -> candle_core::Result<Tensor> {
        let n = keys.dim(2)?;
        if n == 0 || by == 0 {
            return Ok(keys.clone());
        }
        let (cos, sin) = rotary_at(&self.shape, -(by as f32), n, &Device::Cpu)?;
        candle_nn::rotary_emb::rope_i(&keys.contiguous()?, &cos, &sin)
    }
}

/// Rotary angles θ_i · p for positions `0..positions`.
fn rotary_tables(shape: &Shape, positions: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let theta = inverse_frequencies(shape);
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx = Tensor::arange(0, positions as u32, device)?.to_dtype(DType::F32)?.reshape((positions, 1))?;
    let angles = idx.matmul(&theta.reshape((1, theta.elem_count()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The same angle (of position `position`) for `rows` rows.
fn rotary_at(shape: &Shape, position: f32, rows: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let angles: Vec<f32> = inverse_frequencies(shape).iter().map(|t| t * position).collect();
    let angles = Tensor::new(angles.as_slice(), device)?.unsqueeze(0)?.repeat((rows, 1))?;
    Ok((angles.cos()?.contiguous()?, angles.sin()?.contiguous()?))
}

fn inverse_frequencies(shape: &Shape) -> Vec<f32> {
    (0..shape.head_dim).step_by(2).map(|i| 1.0 / shape.rope_base.powf(i as f32 / shape.head_dim as f32)).collect()
}

/// `-inf` above the diagonal for `n` new tokens after `past` cached ones;
/// none for a single token (it sees everything).
fn causal_mask(n: usize, past: usize, device: &Device) -> candle_core::Result<Option<Tensor>> {
    if n <= 1 {
        return Ok(None);
    }
    let mask: Vec<f32> =
        (0..n).flat_map(|i| (0..past + n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Some(Tensor::from_vec(mask, (n, past + n), device)?))
}

/// Each KV head repeated for the query heads that share it.
fn repeat_kv(x: &Tensor, groups: usize) -> candle_core::Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, heads, n, d) = x.dims4()?;
    Tensor::cat(&vec![x; groups], 2)?.reshape((b, heads * groups, n, d))
}
