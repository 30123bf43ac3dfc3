//! `TwoWayTransformer` and the SAM attention layer (`sam2/modeling/sam/transformer.py`).

use ocellus_kernels::nn::{Activation, LAYER_NORM_EPS, LayerNorm, Linear, Mlp, sdpa};
use tch::Tensor;
use tch::nn::Path;

use crate::Result;

/// `Attention`: projections to an internal width (`embedding_dim / downsample_rate`), heads,
/// SDPA, output projection.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: i64,
}

impl Attention {
    /// Builds the layer under `p`; keys and values have `kv_in_dim` channels.
    pub fn new(
        p: &Path,
        embedding_dim: i64,
        num_heads: i64,
        downsample_rate: i64,
        kv_in_dim: Option<i64>,
    ) -> Result<Self> {
        let internal = embedding_dim / downsample_rate;
        let kv = kv_in_dim.unwrap_or(embedding_dim);
        Ok(Self {
            q_proj: Linear::new(&(p / "q_proj"), embedding_dim, internal, true)?,
            k_proj: Linear::new(&(p / "k_proj"), kv, internal, true)?,
            v_proj: Linear::new(&(p / "v_proj"), kv, internal, true)?,
            out_proj: Linear::new(&(p / "out_proj"), internal, embedding_dim, true)?,
            num_heads,
        })
    }

    /// `[B, N, C]` → `[B, heads, N, C / heads]`.
    pub fn separate_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.size3()?;
        Ok(x.f_reshape([b, n, self.num_heads, c / self.num_heads])?.f_transpose(1, 2)?)
    }

    /// `[B, heads, N, C / heads]` → `[B, N, C]`.
    pub fn recombine_heads(x: &Tensor) -> Result<Tensor> {
        let (b, h, n, c) = x.size4()?;
        Ok(x.f_transpose(1, 2)?.f_reshape([b, n, h * c])?)
    }

    /// The three projections, heads separated.
    pub fn project(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.separate_heads(&self.q_proj.forward(q)?)?,
            self.separate_heads(&self.k_proj.forward(k)?)?,
            self.separate_heads(&self.v_proj.forward(v)?)?,
        ))
    }

    /// Attention of heads-separated `q`, `k`, `v`, heads recombined and projected out.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        Ok(self.out_proj.forward(&Self::recombine_heads(&sdpa(q, k, v)?)?)?)
    }

    /// `forward(q, k, v)`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.project(q, k, v)?;
        self.attend(&q, &k, &v)
    }
}

/// `TwoWayAttentionBlock`.
#[derive(Debug)]
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn forward(&self, queries: &Tensor, keys: &Tensor, query_pe: &Tensor, key_pe: &Tensor) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = queries.f_add(query_pe)?;
            queries.f_add(&self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;
        let q = queries.f_add(query_pe)?;
        let k = keys.f_add(key_pe)?;
        let queries = queries.f_add(&self.cross_attn_token_to_image.forward(&q, &k, keys)?)?;
        let queries = self.norm2.forward(&queries)?;
        let queries = queries.f_add(&self.mlp.forward(&queries)?)?;
        let queries = self.norm3.forward(&queries)?;
        let q = queries.f_add(query_pe)?;
        let k = keys.f_add(key_pe)?;
        let keys = keys.f_add(&self.cross_attn_image_to_token.forward(&k, &q, &queries)?)?;
        let keys = self.norm4.forward(&keys)?;
        Ok((queries, keys))
    }
}

/// `TwoWayTransformer`: tokens attend to the image and the image to the tokens.
#[derive(Debug)]
pub struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// Builds the transformer under `p` (`sam_mask_decoder.transformer`).
    pub fn new(
        p: &Path,
        depth: usize,
        embedding_dim: i64,
        num_heads: i64,
        mlp_dim: i64,
        downsample: i64,
    ) -> Result<Self> {
        let layers = (0..depth)
            .map(|i| {
                let lp = p / "layers" / i;
                let ln = |name: &str| LayerNorm::new(&(&lp / name), embedding_dim, LAYER_NORM_EPS);
                Ok(TwoWayAttentionBlock {
                    self_attn: Attention::new(&(&lp / "self_attn"), embedding_dim, num_heads, 1, None)?,
                    norm1: ln("norm1")?,
                    cross_attn_token_to_image: Attention::new(
                        &(&lp / "cross_attn_token_to_image"),
                        embedding_dim,
                        num_heads,
                        downsample,
                        None,
                    )?,
                    norm2: ln("norm2")?,
                    mlp: Mlp::sam(&(&lp / "mlp"), embedding_dim, mlp_dim, embedding_dim, 2, Activation::Relu)?,
                    norm3: ln("norm3")?,
                    norm4: ln("norm4")?,
                    cross_attn_image_to_token: Attention::new(
                        &(&lp / "cross_attn_image_to_token"),
                        embedding_dim,
                        num_heads,
                        downsample,
                        None,
                    )?,
                    skip_first_layer_pe: i == 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::new(
                &(p / "final_attn_token_to_image"),
                embedding_dim,
                num_heads,
                downsample,
                None,
            )?,
            norm_final_attn: LayerNorm::new(&(p / "norm_final_attn"), embedding_dim, LAYER_NORM_EPS)?,
        })
    }

    /// `image` `[B, C, h, w]`, `image_pe` same, `points` `[B, N, C]` → (queries `[B, N, C]`,
    /// keys `[B, h*w, C]`).
    pub fn forward(&self, image: &Tensor, image_pe: &Tensor, points: &Tensor) -> Result<(Tensor, Tensor)> {
        let image = image.f_flatten(2, -1)?.f_permute([0, 2, 1])?; // [B, hw, C]
        let image_pe = image_pe.f_flatten(2, -1)?.f_permute([0, 2, 1])?;
        let (mut queries, mut keys) = (points.shallow_clone(), image);
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, points, &image_pe)?;
        }
        let q = queries.f_add(points)?;
        let k = keys.f_add(&image_pe)?;
        let queries = queries.f_add(&self.final_attn_token_to_image.forward(&q, &k, &keys)?)?;
        Ok((self.norm_final_attn.forward(&queries)?, keys))
    }
}
