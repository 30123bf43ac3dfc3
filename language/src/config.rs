//! Llama 3 configurations under transformers' `config.json` names, from a file, from Meta's
//! `params.json`, or by model name.

use serde::{Deserialize, Serialize};

use crate::{LanguageError, Result};

/// `rope_scaling` of a Llama 3.1 / 3.2 `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `"llama3"`.
    #[serde(alias = "type")]
    pub rope_type: RopeType,
    /// Slow-down of the low frequencies: 32 for 3.2 1B/3B, 8 for 3.1.
    pub factor: f64,
    /// 1.
    pub low_freq_factor: f64,
    /// 4.
    pub high_freq_factor: f64,
    /// 8192.
    pub original_max_position_embeddings: i64,
}

/// The RoPE scaling rule; only Llama 3's exists in these models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeType {
    /// `apply_scaling` of llama-models.
    Llama3,
}

/// transformers 5 writes `rope_parameters` (theta inside) instead of `rope_theta` +
/// `rope_scaling`.
#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    rope_theta: f64,
    #[serde(default)]
    rope_type: Option<String>,
    #[serde(default)]
    factor: Option<f64>,
    #[serde(default)]
    low_freq_factor: Option<f64>,
    #[serde(default)]
    high_freq_factor: Option<f64>,
    #[serde(default)]
    original_max_position_embeddings: Option<i64>,
}

/// `eos_token_id`: one id or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// A Llama 3 architecture, with the names of transformers' `LlamaConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// 128256.
    pub vocab_size: i64,
    /// Model width (`dim`).
    pub hidden_size: i64,
    /// SwiGLU width.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: i64,
    /// Per-head width; `hidden_size / num_attention_heads` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// RMSNorm epsilon (1e-5).
    pub rms_norm_eps: f64,
    /// RoPE base (500000).
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Llama 3 RoPE scaling (3.1 and 3.2).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: i64,
    /// Whether the output projection is the embedding matrix (3.2 1B/3B).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `<|begin_of_text|>`.
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    /// End tokens of generation.
    #[serde(default = "default_eos")]
    pub eos_token_id: TokenIds,
}

fn default_theta() -> f64 {
    500_000.0
}

fn default_bos() -> u32 {
    128_000
}

fn default_eos() -> TokenIds {
    TokenIds::Many(vec![128_001, 128_008, 128_009])
}

/// Meta's `params.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaParams {
    /// Width.
    pub dim: i64,
    /// Layers.
    pub n_layers: i64,
    /// Query heads.
    pub n_heads: i64,
    /// Key/value heads.
    #[serde(default)]
    pub n_kv_heads: Option<i64>,
    /// Vocabulary.
    pub vocab_size: i64,
    /// SwiGLU rounding.
    pub multiple_of: i64,
    /// SwiGLU width multiplier.
    #[serde(default)]
    pub ffn_dim_multiplier: Option<f64>,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Whether Llama 3 RoPE scaling applies.
    #[serde(default)]
    pub use_scaled_rope: bool,
}

/// Llama 3's standard RoPE scaling with `factor`.
pub fn llama3_scaling(factor: f64) -> RopeScaling {
    RopeScaling {
        rope_type: RopeType::Llama3,
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    }
}

/// The names [`LlamaConfig::by_name`] knows.
pub const NAMES: [&str; 8] = [
    "llama-3.2-1b",
    "llama-3.2-1b-instruct",
    "llama-3.2-3b",
    "llama-3.2-3b-instruct",
    "llama-3.1-8b",
    "llama-3.1-8b-instruct",
    "llama-guard-3-1b",
    "llama-guard-3-8b",
];

impl LlamaConfig {
    /// The published configuration of a model (`config.json` of its Hugging Face repository).
    pub fn by_name(name: &str) -> Result<Self> {
        let base = name.trim_end_matches("-instruct");
        let c = match base {
            "llama-3.2-1b" | "llama-guard-3-1b" => Self::shape(2048, 8192, 16, 32, 8, 64, Some(32.0), true),
            "llama-3.2-3b" => Self::shape(3072, 8192, 28, 24, 8, 128, Some(32.0), true),
            "llama-3.1-8b" | "llama-guard-3-8b" => Self::shape(4096, 14336, 32, 32, 8, 128, Some(8.0), false),
            _ => {
                return Err(LanguageError::Config(format!("unknown model {name:?} (known: {})", NAMES.join(", "))));
            }
        };
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn shape(
        hidden: i64,
        ffn: i64,
        layers: i64,
        heads: i64,
        kv: i64,
        head_dim: i64,
        rope_factor: Option<f64>,
        tied: bool,
    ) -> Self {
        Self {
            vocab_size: 128_256,
            hidden_size: hidden,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: Some(head_dim),
            rms_norm_eps: 1e-5,
            rope_theta: default_theta(),
            rope_scaling: rope_factor.map(llama3_scaling),
            max_position_embeddings: 131_072,
            tie_word_embeddings: tied,
            bos_token_id: default_bos(),
            eos_token_id: default_eos(),
        }
    }

    /// Reads a transformers `config.json` (`rope_scaling` or transformers 5's
    /// `rope_parameters`; other keys of the file are ignored).
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LanguageError::Config(format!("config.json: {e}")))?;
        let mut config: Self =
            serde_json::from_value(value.clone()).map_err(|e| LanguageError::Config(format!("config.json: {e}")))?;
        if let Some(p) = value.get("rope_parameters").filter(|v| !v.is_null()) {
            let p: RopeParameters = serde_json::from_value(p.clone())
                .map_err(|e| LanguageError::Config(format!("config.json: rope_parameters: {e}")))?;
            config.rope_theta = p.rope_theta;
            if p.rope_type.as_deref() == Some("llama3") {
                let d = llama3_scaling(8.0);
                config.rope_scaling = Some(RopeScaling {
                    rope_type: RopeType::Llama3,
                    factor: p.factor.unwrap_or(d.factor),
                    low_freq_factor: p.low_freq_factor.unwrap_or(d.low_freq_factor),
                    high_freq_factor: p.high_freq_factor.unwrap_or(d.high_freq_factor),
                    original_max_position_embeddings: p
                        .original_max_position_embeddings
                        .unwrap_or(d.original_max_position_embeddings),
                });
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// From Meta's `params.json`. llama-models hard-codes the scaling factor to 8; pass the
    /// model's real factor (32 for 3.2 1B/3B).
    pub fn from_meta_params(params: &MetaParams, rope_factor: f64, max_position_embeddings: i64) -> Result<Self> {
        // FeedForward: int(2 * 4 * dim / 3), times the multiplier, rounded up to `multiple_of`.
        let mut hidden = (2 * 4 * params.dim) / 3;
        if let Some(m) = params.ffn_dim_multiplier {
            hidden = (m * hidden as f64) as i64;
        }
        let hidden = params.multiple_of * ((hidden + params.multiple_of - 1) / params.multiple_of);
        let config = Self {
            vocab_size: params.vocab_size,
            hidden_size: params.dim,
            intermediate_size: hidden,
            num_hidden_layers: params.n_layers,
            num_attention_heads: params.n_heads,
            num_key_value_heads: params.n_kv_heads.unwrap_or(params.n_heads),
            head_dim: Some(params.dim / params.n_heads.max(1)),
            rms_norm_eps: params.norm_eps,
            rope_theta: params.rope_theta,
            rope_scaling: params.use_scaled_rope.then(|| llama3_scaling(rope_factor)),
            max_position_embeddings,
            tie_word_embeddings: false,
            bos_token_id: default_bos(),
            eos_token_id: default_eos(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks that the shapes fit together.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LanguageError::Config(m));
        if [self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers].iter().any(|&v| v <= 0) {
            return bad("vocab_size, hidden_size, intermediate_size and num_hidden_layers must be positive".into());
        }
        if self.num_attention_heads <= 0 || self.num_key_value_heads <= 0 {
            return bad("head counts must be positive".into());
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim()));
        }
        Ok(())
    }

    /// This config with `layers` decoder layers (reduced-depth test shapes).
    pub fn with_layers(mut self, layers: i64) -> Self {
        self.num_hidden_layers = layers;
        self
    }

    /// Number of parameters (the embedding counted once when tied).
    pub fn num_parameters(&self) -> i64 {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let attn = d * self.num_attention_heads * hd * 2 + d * self.num_key_value_heads * hd * 2;
        let layer = attn + 3 * d * f + 2 * d;
        let embed = self.vocab_size * d;
        embed * if self.tie_word_embeddings { 1 } else { 2 } + self.num_hidden_layers * layer + d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_params_give_the_published_ffn_widths() {
        let p = |dim, mult, multiple_of| MetaParams {
            dim,
            n_layers: 1,
            n_heads: 32,
            n_kv_heads: Some(8),
            vocab_size: 128_256,
            multiple_of,
            ffn_dim_multiplier: Some(mult),
            norm_eps: 1e-5,
            rope_theta: 500_000.0,
            use_scaled_rope: true,
        };
        assert_eq!(LlamaConfig::from_meta_params(&p(2048, 1.5, 256), 32.0, 131_072).unwrap().intermediate_size, 8192);
        assert_eq!(LlamaConfig::from_meta_params(&p(4096, 1.3, 1024), 8.0, 131_072).unwrap().intermediate_size, 14336);
        let c = LlamaConfig::by_name("llama-3.2-1b-instruct").unwrap();
        assert_eq!(c.num_parameters(), 1_235_814_400);
        assert!(LlamaConfig::by_name("llama-2").is_err());
    }
}
