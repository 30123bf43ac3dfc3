//! `PromptEncoder` (`sam2/modeling/sam/prompt_encoder.py`): points, boxes (as corner points
//! with labels 2 and 3) and masks → sparse and dense prompt embeddings.

use ocellus_kernels::nn::{Activation, Conv, ConvShape, LayerNorm2d, embedding, parameter};
use tch::nn::Path;
use tch::{Kind, Tensor};

use crate::Result;

/// LayerNorm2d epsilon of the mask downscaler.
const NORM_EPS: f64 = 1e-6;
/// Point labels with a learned embedding: negative, positive, box top-left, box bottom-right.
const NUM_POINT_EMBEDDINGS: i64 = 4;

/// Random-Fourier position encoding (`PositionEmbeddingRandom`).
#[derive(Debug)]
pub struct PositionEmbeddingRandom {
    gaussian: Tensor, // [2, C/2] buffer `positional_encoding_gaussian_matrix`
}

impl PositionEmbeddingRandom {
    fn new(p: &Path, num_pos_feats: i64) -> Result<Self> {
        Ok(Self { gaussian: parameter(p, "positional_encoding_gaussian_matrix", &[2, num_pos_feats])? })
    }

    /// Encodes `[..., 2]` coordinates normalized to `[0, 1]` → `[..., C]`.
    fn encode(&self, coords: &Tensor) -> Result<Tensor> {
        let c = coords.f_mul_scalar(2)?.f_sub_scalar(1)?.f_matmul(&self.gaussian)?;
        let c = c.f_mul_scalar(2.0 * std::f64::consts::PI)?;
        Ok(Tensor::f_cat(&[c.f_sin()?, c.f_cos()?], -1)?)
    }

    /// The encoding of an `h × w` grid of cell centres, `[C, h, w]`.
    pub fn grid(&self, h: i64, w: i64) -> Result<Tensor> {
        let grid = Tensor::f_ones([h, w], (Kind::Float, self.gaussian.device()))?;
        let y = grid.f_cumsum(0, None::<Kind>)?.f_sub_scalar(0.5)?.f_div_scalar(h as f64)?;
        let x = grid.f_cumsum(1, None::<Kind>)?.f_sub_scalar(0.5)?.f_div_scalar(w as f64)?;
        Ok(self.encode(&Tensor::f_stack(&[x, y], -1)?)?.f_permute([2, 0, 1])?) // [C, h, w]
    }

    /// Encodes pixel coordinates `[B, N, 2]` (x, y) of an image of `(h, w)`.
    fn with_coords(&self, coords: &Tensor, (h, w): (i64, i64)) -> Result<Tensor> {
        let x = coords.f_select(2, 0)?.f_div_scalar(w as f64)?;
        let y = coords.f_select(2, 1)?.f_div_scalar(h as f64)?;
        self.encode(&Tensor::f_stack(&[x, y], 2)?.f_to_kind(Kind::Float)?)
    }
}

/// The prompt encoder.
#[derive(Debug)]
pub struct PromptEncoder {
    embed_dim: i64,
    image_embedding_size: (i64, i64),
    input_image_size: (i64, i64),
    pe_layer: PositionEmbeddingRandom,
    point_embeddings: Vec<Tensor>, // 4 × [1, C]
    not_a_point_embed: Tensor,     // [1, C]
    mask_downscaling: (Conv, LayerNorm2d, Conv, LayerNorm2d, Conv),
    no_mask_embed: Tensor, // [1, C]
}

impl PromptEncoder {
    /// Builds the encoder under `p` (`sam_prompt_encoder`).
    pub fn new(
        p: &Path,
        embed_dim: i64,
        image_embedding_size: (i64, i64),
        input_image_size: (i64, i64),
        mask_in_chans: i64,
    ) -> Result<Self> {
        let point_embeddings = (0..NUM_POINT_EMBEDDINGS)
            .map(|i| embedding(&(p / "point_embeddings" / i), 1, embed_dim))
            .collect::<Result<Vec<_>, _>>()?;
        let md = p / "mask_downscaling";
        let quarter = mask_in_chans / 4;
        let mask_downscaling = (
            Conv::new(&(&md / 0), 1, quarter, ConvShape::new(&[2, 2], &[2, 2], &[0, 0]))?,
            LayerNorm2d::new(&(&md / 1), quarter, NORM_EPS)?,
            Conv::new(&(&md / 3), quarter, mask_in_chans, ConvShape::new(&[2, 2], &[2, 2], &[0, 0]))?,
            LayerNorm2d::new(&(&md / 4), mask_in_chans, NORM_EPS)?,
            Conv::new(&(&md / 6), mask_in_chans, embed_dim, ConvShape::new(&[1, 1], &[1, 1], &[0, 0]))?,
        );
        Ok(Self {
            embed_dim,
            image_embedding_size,
            input_image_size,
            pe_layer: PositionEmbeddingRandom::new(&(p / "pe_layer"), embed_dim / 2)?,
            point_embeddings,
            not_a_point_embed: embedding(&(p / "not_a_point_embed"), 1, embed_dim)?,
            mask_downscaling,
            no_mask_embed: embedding(&(p / "no_mask_embed"), 1, embed_dim)?,
        })
    }

    /// The dense position encoding of the image embedding grid, `[1, C, h, w]`.
    pub fn dense_pe(&self) -> Result<Tensor> {
        let (h, w) = self.image_embedding_size;
        Ok(self.pe_layer.grid(h, w)?.f_unsqueeze(0)?)
    }

    /// Size masks must have as input (4× the embedding grid).
    pub fn mask_input_size(&self) -> (i64, i64) {
        (4 * self.image_embedding_size.0, 4 * self.image_embedding_size.1)
    }

    /// `_embed_points`: `coords` `[B, N, 2]` pixels, `labels` `[B, N]` (−1 pad, 0 negative,
    /// 1 positive, 2/3 box corners); `pad` appends a padding point.
    fn embed_points(&self, coords: &Tensor, labels: &Tensor, pad: bool) -> Result<Tensor> {
        let mut points = coords.f_add_scalar(0.5)?; // centre of the pixel
        let mut labels = labels.shallow_clone();
        if pad {
            let b = points.size()[0];
            let padding_point = Tensor::f_zeros([b, 1, 2], (points.kind(), points.device()))?;
            let padding_label = Tensor::f_ones([b, 1], (Kind::Float, labels.device()))?.f_neg()?;
            points = Tensor::f_cat(&[points, padding_point], 1)?;
            labels = Tensor::f_cat(&[labels.f_to_kind(Kind::Float)?, padding_label], 1)?;
        }
        let mut emb = self.pe_layer.with_coords(&points, self.input_image_size)?; // [B, N, C]
        let is = |v: f64| -> Result<Tensor> { Ok(labels.f_eq(v)?.f_unsqueeze(-1)?) };
        emb = emb.f_zeros_like()?.f_add(&self.not_a_point_embed)?.f_where_self(&is(-1.0)?, &emb)?;
        for (k, pe) in self.point_embeddings.iter().enumerate() {
            emb = emb.f_add(pe)?.f_where_self(&is(k as f64)?, &emb)?;
        }
        Ok(emb)
    }

    /// Sparse `[B, N, C]` and dense `[B, C, h, w]` embeddings of the prompts. Boxes are passed
    /// as points with labels 2 and 3 (as the predictors do); `pad` is what the reference
    /// computes as `boxes is None`.
    pub fn forward(&self, points: Option<(&Tensor, &Tensor)>, masks: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let bs = points.map(|(c, _)| c.size()[0]).or_else(|| masks.map(|m| m.size()[0])).unwrap_or(1);
        let device = self.no_mask_embed.device();
        let sparse = match points {
            Some((coords, labels)) => self.embed_points(coords, labels, true)?,
            None => Tensor::f_empty([bs, 0, self.embed_dim], (Kind::Float, device))?,
        };
        let dense = match masks {
            Some(m) => {
                let (c0, n0, c1, n1, c2) = &self.mask_downscaling;
                let x = Activation::Gelu.forward(&n0.forward(&c0.forward(m)?)?)?;
                let x = Activation::Gelu.forward(&n1.forward(&c1.forward(&x)?)?)?;
                c2.forward(&x)?
            }
            None => {
                let (h, w) = self.image_embedding_size;
                self.no_mask_embed.f_reshape([1, -1, 1, 1])?.f_expand([bs, -1, h, w], false)?
            }
        };
        Ok((sparse, dense))
    }
}
