//! The Llama 3 decoder (3, 3.1, 3.2): grouped-query attention, Llama 3 scaled RoPE, SwiGLU,
//! RMSNorm, tied or separate output projection.
//!
//! Parameters live under transformers' key names (`model.layers.N.self_attn.q_proj.weight`,
//! ...). Meta's layout (`layers.N.attention.wq.weight`, ...) is converted at load time:
//! renamed, and `wq`/`wk` rows permuted so that transformers' half-split rotation equals
//! Meta's interleaved one (the permutation of `convert_llama_weights_to_hf.py`).
//!
//! Weights ([`Llama`]) are shared and read-only; each stream owns its [`KvCache`], a fixed
//! budget of positions allocated once.

use std::collections::BTreeMap;
use std::path::Path;

use ocellus_kernels::nn::rms_norm;
use ocellus_kernels::rope::{Llama3Scaling, half_rotation_tables, llama3_inv_freq, rotate_half_apply};
use tch::{Device, Kind, Tensor};

use crate::config::LlamaConfig;
use crate::quant::{self, QLinear, Quantization};
use crate::{LanguageError, Result};

/// Standard deviation of seeded random weights.
const INIT_STD: f64 = 0.02;

/// Which key layout a weights file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// transformers: `model.embed_tokens.weight`, q/k rows permuted for half-split RoPE.
    HuggingFace,
    /// Meta's `consolidated.*.pth`: `tok_embeddings.weight`, interleaved RoPE.
    Meta,
}

impl WeightLayout {
    /// The layout of a key set.
    pub fn detect<'a>(mut keys: impl Iterator<Item = &'a String>) -> Option<Self> {
        keys.find_map(|k| match k.as_str() {
            "model.embed_tokens.weight" => Some(Self::HuggingFace),
            "tok_embeddings.weight" => Some(Self::Meta),
            _ => None,
        })
    }
}

struct Layer {
    input_layernorm: Tensor,
    q_proj: QLinear,
    k_proj: QLinear,
    v_proj: QLinear,
    o_proj: QLinear,
    post_attention_layernorm: Tensor,
    gate_proj: QLinear,
    up_proj: QLinear,
    down_proj: QLinear,
}

impl Layer {
    /// The linear layers, in [`LAYER_LINEARS`]' order.
    fn linears(&self) -> [&QLinear; 7] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj, &self.gate_proj, &self.up_proj, &self.down_proj]
    }
}

/// The linear layers of one decoder layer, by their key's middle part.
pub const LAYER_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Llama 3 weights on one device (shared, read-only).
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `lm_head.weight`, or the embedding when tied (quantized on its own when asked).
    lm_head: QLinear,
    inv_freq: Tensor,
    device: Device,
    kind: Kind,
    quantization: Quantization,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("device", &self.device)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Every key (transformers layout) and shape of `config`.
pub fn expected_shapes(config: &LlamaConfig) -> BTreeMap<String, Vec<i64>> {
    let (d, f, hd) = (config.hidden_size, config.intermediate_size, config.head_dim());
    let (h, kv) = (config.num_attention_heads, config.num_key_value_heads);
    let mut m = BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_owned(), vec![config.vocab_size, d]);
    m.insert("model.norm.weight".to_owned(), vec![d]);
    if !config.tie_word_embeddings {
        m.insert("lm_head.weight".to_owned(), vec![config.vocab_size, d]);
    }
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![h * hd, d]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.o_proj.weight", vec![d, h * hd]),
            ("mlp.gate_proj.weight", vec![f, d]),
            ("mlp.up_proj.weight", vec![f, d]),
            ("mlp.down_proj.weight", vec![d, f]),
        ] {
            m.insert(format!("{p}.{name}"), shape);
        }
    }
    m
}

/// Meta's name of a transformers key (`model.layers.0.self_attn.q_proj.weight` →
/// `layers.0.attention.wq.weight`).
pub fn meta_key(hf: &str) -> String {
    let k = hf.strip_prefix("model.").unwrap_or(hf);
    match k {
        "embed_tokens.weight" => return "tok_embeddings.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    k.replace("self_attn.q_proj", "attention.wq")
        .replace("self_attn.k_proj", "attention.wk")
        .replace("self_attn.v_proj", "attention.wv")
        .replace("self_attn.o_proj", "attention.wo")
        .replace("mlp.gate_proj", "feed_forward.w1")
        .replace("mlp.down_proj", "feed_forward.w2")
        .replace("mlp.up_proj", "feed_forward.w3")
        .replace("input_layernorm", "attention_norm")
        .replace("post_attention_layernorm", "ffn_norm")
}

/// `permute` of `convert_llama_weights_to_hf.py`: Meta's interleaved RoPE pairs → halves.
/// `w` `[heads * hd, dim]`.
pub fn permute_for_half_rotation(w: &Tensor, heads: i64) -> Result<Tensor> {
    let (rows, dim) = (w.size()[0], w.size()[1]);
    // [heads, hd/2, 2, dim] → [heads, 2, hd/2, dim] → [rows, dim]
    Ok(w.f_view([heads, rows / heads / 2, 2, dim])?.f_transpose(1, 2)?.f_reshape([rows, dim])?)
}

fn weights_error(path: &Path, message: impl std::fmt::Display) -> LanguageError {
    LanguageError::Weights(format!("{}: {message}", path.display()))
}

/// The per-stream key/value cache: `[batch, kv_heads, capacity, head_dim]` per layer,
/// allocated once. Positions past `capacity` are refused ([`LanguageError::CacheFull`]).
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `[batch, capacity]`: which cached positions are real tokens (left padding is not).
    valid: Tensor,
    /// `[batch]`: the next RoPE position of each row (its count of real tokens).
    next_position: Tensor,
    len: i64,
    capacity: i64,
    batch: i64,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("batch", &self.batch)
            .finish()
    }
}

impl KvCache {
    /// Cached positions so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The budget in positions.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Positions left.
    pub fn remaining(&self) -> i64 {
        self.capacity - self.len
    }

    /// Rows.
    pub fn batch(&self) -> i64 {
        self.batch
    }

    /// Forgets every position (the memory stays allocated).
    pub fn clear(&mut self) -> Result<()> {
        self.len = 0;
        let _ = self.valid.f_fill_(0)?;
        let _ = self.next_position.f_fill_(0)?;
        Ok(())
    }

    /// Bytes held by the keys and values.
    pub fn bytes(&self) -> i64 {
        self.keys.iter().chain(&self.values).map(|t| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64).sum()
    }
}

impl Llama {
    /// Builds the model from tensors in either layout (the layout is detected), checking
    /// every key and shape. Tensors are moved to `device` and `kind`.
    pub fn from_tensors(
        config: LlamaConfig,
        tensors: Vec<(String, Tensor)>,
        device: Device,
        kind: Kind,
        path: &Path,
    ) -> Result<Self> {
        Self::from_tensors_quantized(config, tensors, device, kind, path, Quantization::None)
    }

    /// [`Llama::from_tensors`] with every linear layer (the LM head included) quantized as
    /// `quantization` asks. A file quantized by `ocellus weights import --quantize` (its
    /// linear layers stored quantized) is taken as it is.
    pub fn from_tensors_quantized(
        config: LlamaConfig,
        tensors: Vec<(String, Tensor)>,
        device: Device,
        kind: Kind,
        path: &Path,
        quantization: Quantization,
    ) -> Result<Self> {
        config.validate()?;
        let mut map: BTreeMap<String, Tensor> = tensors.into_iter().collect();
        let (mut stored, stored_mode) = quant::take_stored(&mut map, device).map_err(|e| weights_error(path, e))?;
        let quantization = match (stored_mode, quantization) {
            (Some(s), Quantization::None) => s,
            (Some(s), q) if s == q => s,
            (Some(s), q) => {
                return Err(weights_error(path, format!("the file is quantized {s:?}; it cannot be loaded as {q:?}")));
            }
            (None, q) => q,
        };
        let layout = WeightLayout::detect(map.keys())
            .ok_or_else(|| weights_error(path, "neither model.embed_tokens.weight nor tok_embeddings.weight found"))?;
        let expected = expected_shapes(&config);
        if layout == WeightLayout::Meta {
            let mut converted = BTreeMap::new();
            for key in expected.keys() {
                let Some(t) = map.remove(&meta_key(key)) else { continue };
                let t = if key.ends_with("q_proj.weight") {
                    permute_for_half_rotation(&t, config.num_attention_heads)?
                } else if key.ends_with("k_proj.weight") {
                    permute_for_half_rotation(&t, config.num_key_value_heads)?
                } else {
                    t
                };
                converted.insert(key.clone(), t);
            }
            // Meta checkpoints of tied models still carry `output.weight` (equal to the embedding).
            if config.tie_word_embeddings {
                map.remove("output.weight");
            }
            map.remove("rope.freqs");
            for (k, t) in map {
                converted.insert(k, t);
            }
            map = converted;
        } else if config.tie_word_embeddings && !stored.contains_key("lm_head.weight") {
            map.remove("lm_head.weight");
        }
        let mut expected = expected;
        for key in stored.keys() {
            expected.remove(key);
        }
        check_keys(&expected, &map, path, layout)?;

        let mut take = |key: &str| -> Result<Tensor> {
            let t = map.remove(key).ok_or_else(|| weights_error(path, format!("missing {key}")))?;
            Ok(t.f_to_device(device)?.f_to_kind(kind)?)
        };
        let embed_tokens = take("model.embed_tokens.weight")?;
        let norm = take("model.norm.weight")?;
        // A linear layer: as stored quantized, else quantized now (or kept dense).
        let mut linear = |key: &str, map: &mut dyn FnMut(&str) -> Result<Tensor>| -> Result<QLinear> {
            match stored.remove(key) {
                Some(q) => Ok(q),
                None if quantization == Quantization::None => Ok(QLinear::Dense(map(key)?)),
                None => QLinear::new(&map(key)?, quantization, device, kind),
            }
        };
        let lm_head = match (config.tie_word_embeddings, quantization) {
            (true, Quantization::None) => QLinear::Dense(embed_tokens.shallow_clone()),
            (true, _) => linear("lm_head.weight", &mut |_| Ok(embed_tokens.shallow_clone()))?,
            (false, _) => linear("lm_head.weight", &mut take)?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for i in 0..config.num_hidden_layers {
            let key = |name: &str| format!("model.layers.{i}.{name}.weight");
            let mut l = |name: &str| linear(&key(name), &mut take);
            let (q_proj, k_proj, v_proj, o_proj) =
                (l("self_attn.q_proj")?, l("self_attn.k_proj")?, l("self_attn.v_proj")?, l("self_attn.o_proj")?);
            let (gate_proj, up_proj, down_proj) = (l("mlp.gate_proj")?, l("mlp.up_proj")?, l("mlp.down_proj")?);
            layers.push(Layer {
                input_layernorm: take(&key("input_layernorm"))?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                post_attention_layernorm: take(&key("post_attention_layernorm"))?,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let scaling = config.rope_scaling.map(|s| Llama3Scaling {
            factor: s.factor,
            low_freq_factor: s.low_freq_factor,
            high_freq_factor: s.high_freq_factor,
            original_max_position_embeddings: s.original_max_position_embeddings as f64,
        });
        let inv_freq = llama3_inv_freq(config.head_dim(), config.rope_theta, scaling, device)?;
        Ok(Self { config, embed_tokens, layers, norm, lm_head, inv_freq, device, kind, quantization })
    }

    /// Loads a safetensors file in either layout.
    pub fn load(config: LlamaConfig, path: &Path, device: Device, kind: Kind) -> Result<Self> {
        Self::load_quantized(config, path, device, kind, Quantization::None)
    }

    /// Loads a safetensors file, its linear layers quantized as `quantization` asks (or as
    /// the file stores them).
    pub fn load_quantized(
        config: LlamaConfig,
        path: &Path,
        device: Device,
        kind: Kind,
        quantization: Quantization,
    ) -> Result<Self> {
        let tensors = ocellus_kernels::safetensors::read(path).map_err(|e| weights_error(path, e))?;
        Self::from_tensors_quantized(config, tensors, device, kind, path, quantization)
    }

    /// How the linear layers are stored.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// Bytes of weights one decode step reads: every linear layer, the norms, and one row of
    /// the embedding (the bound on tokens per second is bandwidth / this).
    pub fn bytes_per_token(&self) -> i64 {
        let of = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        let row = of(&self.embed_tokens) / self.config.vocab_size.max(1);
        let layers: i64 = self
            .layers
            .iter()
            .map(|l| {
                l.linears().iter().map(|q| q.bytes()).sum::<i64>()
                    + of(&l.input_layernorm)
                    + of(&l.post_attention_layernorm)
            })
            .sum();
        layers + self.lm_head.bytes() + of(&self.norm) + row
    }

    /// Seeded random weights (normal, std 0.02; norms around 1), in transformers layout.
    pub fn random_tensors(config: &LlamaConfig, seed: i64) -> Result<Vec<(String, Tensor)>> {
        ocellus_kernels::seeded(seed, || {
            let mut out = Vec::new();
            for (name, shape) in expected_shapes(config) {
                let noise = Tensor::f_randn(shape.as_slice(), (Kind::Float, Device::Cpu))?.f_mul_scalar(INIT_STD)?;
                let t = if name.contains("norm") { noise.f_add_scalar(1.0)? } else { noise };
                out.push((name, t));
            }
            Ok(out)
        })
    }

    /// Seeded random weights, loaded.
    pub fn random(config: LlamaConfig, seed: i64, device: Device, kind: Kind) -> Result<Self> {
        let tensors = Self::random_tensors(&config, seed)?;
        Self::from_tensors(config, tensors, device, kind, Path::new("<random>"))
    }

    /// The weights under transformers' key names (the tied output projection is not
    /// repeated). Only a model with dense linear layers has them: quantize a file with
    /// `quant::quantize_named` instead.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let dense = |q: &QLinear| match q {
            QLinear::Dense(w) => Ok(w.shallow_clone()),
            _ => Err(LanguageError::Config("a quantized model's weights are not dense tensors".into())),
        };
        let mut out = vec![
            ("model.embed_tokens.weight".to_owned(), self.embed_tokens.shallow_clone()),
            ("model.norm.weight".to_owned(), self.norm.shallow_clone()),
        ];
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_owned(), dense(&self.lm_head)?));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), l.input_layernorm.shallow_clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.shallow_clone()));
            for (name, q) in LAYER_LINEARS.iter().zip(l.linears()) {
                out.push((format!("{p}.{name}.weight"), dense(q)?));
            }
        }
        Ok(out)
    }

    /// Writes the weights (transformers layout) to a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = self.named_tensors()?;
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, path).map_err(|e| weights_error(path, e))
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The compute dtype.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A cache for `batch` rows and `capacity` positions (prompt plus generated tokens).
    pub fn new_cache(&self, batch: i64, capacity: i64) -> Result<KvCache> {
        if batch <= 0 || capacity <= 0 {
            return Err(LanguageError::Config(format!(
                "cache needs batch and capacity > 0, got {batch} and {capacity}"
            )));
        }
        let shape = [batch, self.config.num_key_value_heads, capacity, self.config.head_dim()];
        let n = self.layers.len();
        let alloc = || Tensor::f_zeros(shape, (self.kind, self.device));
        Ok(KvCache {
            keys: (0..n).map(|_| alloc()).collect::<Result<_, _>>()?,
            values: (0..n).map(|_| alloc()).collect::<Result<_, _>>()?,
            valid: Tensor::f_zeros([batch, capacity], (Kind::Bool, self.device))?,
            next_position: Tensor::f_zeros([batch], (Kind::Int64, self.device))?,
            len: 0,
            capacity,
            batch,
        })
    }

    /// Runs `tokens` `[B, T]` (int64) after what `cache` holds and returns the logits (fp32)
    /// of every position `[B, T, vocab]`, or of the last one `[B, 1, vocab]` when
    /// `last_only`. `valid` `[B, T]` marks real tokens (left padding is not); `None` means
    /// all are real.
    pub fn forward(
        &self,
        tokens: &Tensor,
        valid: Option<&Tensor>,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("llama.forward", len = cache.len).entered();
        let size = tokens.size();
        let (b, t) = match size.as_slice() {
            [b, t] => (*b, *t),
            other => return Err(LanguageError::Shape(format!("tokens must be [batch, len], got {other:?}"))),
        };
        if b != cache.batch {
            return Err(LanguageError::Shape(format!("batch {b} does not match the cache's {}", cache.batch)));
        }
        if t == 0 {
            return Err(LanguageError::Shape("no tokens".into()));
        }
        if cache.len + t > cache.capacity {
            return Err(LanguageError::CacheFull { needed: cache.len + t, capacity: cache.capacity });
        }
        let tokens = tokens.f_to_device(self.device)?;
        let valid = match valid {
            Some(v) => v.f_to_device(self.device)?.f_to_kind(Kind::Bool)?,
            None => Tensor::f_ones([b, t], (Kind::Bool, self.device))?,
        };
        let (start, total) = (cache.len, cache.len + t);
        // RoPE positions count real tokens only, so a left-padded row starts at 0.
        let counts = valid.f_to_kind(Kind::Int64)?.f_cumsum(1, Kind::Int64)?; // [B, T]
        let positions = counts.f_sub_scalar(1)?.f_clamp_min(0)?.f_add(&cache.next_position.f_unsqueeze(1)?)?;
        let (cos, sin) = half_rotation_tables(&self.inv_freq, &positions)?;
        let (cos, sin) = (cos.f_to_kind(self.kind)?, sin.f_to_kind(self.kind)?); // [B, T, hd]
        cache.valid.f_narrow(1, start, t)?.f_copy_(&valid)?;
        let mask = self.attention_mask(&cache.valid.f_narrow(1, 0, total)?, start, t)?; // [B, 1, T, total]

        let mut h = embed(&self.embed_tokens, &tokens)?; // [B, T, d]
        for (i, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("llama.layer", i).entered();
            let x = rms_norm(&h, &layer.input_layernorm, self.config.rms_norm_eps)?;
            let attn = self.attention(layer, &x, &cos, &sin, &mask, cache, i, start, t)?;
            h = h.f_add_(&attn)?;
            let x = rms_norm(&h, &layer.post_attention_layernorm, self.config.rms_norm_eps)?;
            let mut gate = layer.gate_proj.forward(&x)?.f_silu()?;
            let up = layer.up_proj.forward(&x)?;
            let mlp = layer.down_proj.forward(&gate.f_mul_(&up)?)?;
            h = h.f_add_(&mlp)?;
        }
        cache.len = total;
        cache.next_position = cache.next_position.f_add(&valid.f_sum_dim_intlist(1, false, Kind::Int64)?)?;
        let h = if last_only { h.f_narrow(1, t - 1, 1)? } else { h };
        let h = rms_norm(&h, &self.norm, self.config.rms_norm_eps)?;
        Ok(self.lm_head.forward(&h)?.f_to_kind(Kind::Float)?)
    }

    /// Additive mask `[B, 1, T, total]`: a query at slot `start + q` sees keys at slots
    /// `≤ start + q` that hold real tokens; a query that sees nothing (padding) sees itself.
    fn attention_mask(&self, valid_keys: &Tensor, start: i64, t: i64) -> Result<Tensor> {
        let total = start + t;
        let q = Tensor::f_arange_start(start, total, (Kind::Int64, self.device))?.f_unsqueeze(1)?; // [T, 1]
        let k = Tensor::f_arange(total, (Kind::Int64, self.device))?.f_unsqueeze(0)?; // [1, total]
        let causal = k.f_le_tensor(&q)?; // [T, total]
        let allowed = causal.f_unsqueeze(0)?.f_logical_and(&valid_keys.f_unsqueeze(1)?)?; // [B, T, total]
        let diagonal = k.f_eq_tensor(&q)?.f_unsqueeze(0)?;
        let none = allowed.f_any_dim(-1, true)?.f_logical_not()?;
        let allowed = allowed.f_logical_or(&diagonal.f_logical_and(&none)?)?;
        let zeros = Tensor::f_zeros([1], (self.kind, self.device))?;
        let neg = Tensor::f_full([1], f64::NEG_INFINITY, (self.kind, self.device))?;
        Ok(zeros.f_where_self(&allowed, &neg)?.f_unsqueeze(1)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
        index: usize,
        start: i64,
        t: i64,
    ) -> Result<Tensor> {
        let (b, hd) = (x.size()[0], self.config.head_dim());
        let (h, kv) = (self.config.num_attention_heads, self.config.num_key_value_heads);
        let heads = |w: &QLinear, n: i64| -> Result<Tensor> {
            // [B, T, n * hd] → [B, n, T, hd]
            Ok(w.forward(x)?.f_view([b, t, n, hd])?.f_transpose(1, 2)?)
        };
        let q = rotate_half_apply(&heads(&layer.q_proj, h)?, cos, sin)?;
        let k = rotate_half_apply(&heads(&layer.k_proj, kv)?, cos, sin)?;
        let v = heads(&layer.v_proj, kv)?;
        cache.keys[index].f_narrow(2, start, t)?.f_copy_(&k)?;
        cache.values[index].f_narrow(2, start, t)?.f_copy_(&v)?;
        let keys = cache.keys[index].f_narrow(2, 0, start + t)?; // [B, kv, total, hd]
        let values = cache.values[index].f_narrow(2, 0, start + t)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let out = Tensor::f_scaled_dot_product_attention(&q, &keys, &values, Some(mask), 0.0, false, scale, h != kv)?;
        // [B, h, T, hd] → [B, T, h * hd]
        let out = out.f_transpose(1, 2)?.f_reshape([b, t, h * hd])?;
        layer.o_proj.forward(&out)
    }
}

/// Lists every missing, unexpected or mis-shaped key at once (named as the file's layout
/// spells them).
fn check_keys(
    expected: &BTreeMap<String, Vec<i64>>,
    found: &BTreeMap<String, Tensor>,
    path: &Path,
    layout: WeightLayout,
) -> Result<()> {
    let found: BTreeMap<String, Vec<i64>> = found.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    let shown = |k: &str| if layout == WeightLayout::Meta { meta_key(k) } else { k.to_owned() };
    match ocellus_kernels::keys::key_report(expected, &found, shown) {
        None => Ok(()),
        Some(report) => Err(weights_error(path, format!("{layout:?} layout does not fit the config: {report}"))),
    }
}

/// Embedding lookup with an id range check, so that a bad token is an error, not a crash.
fn embed(weight: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let vocab = weight.size()[0];
    let (min, max) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
    if min < 0 || max >= vocab {
        return Err(LanguageError::Shape(format!("token ids must be in [0, {vocab}), got [{min}, {max}]")));
    }
    Ok(Tensor::f_embedding(weight, ids, -1, false, false)?)
}
