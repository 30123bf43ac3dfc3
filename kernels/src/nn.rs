//! Layers whose parameter names and numerics match PyTorch's `nn` modules, built on a
//! [`tch::nn::Path`] so that variable names are the checkpoint keys (`blocks.0.attn.qkv.weight`).
//!
//! All forwards use tch's fallible ops. Parameters are created as zeros: they are always
//! overwritten by a checked load (see `ocellus_perception::weights`) or a seeded init.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::Result;

/// `torch.nn.LayerNorm` default epsilon.
pub const LAYER_NORM_EPS: f64 = 1e-5;

fn param(p: &Path, name: &str, dims: &[i64]) -> Result<Tensor> {
    Ok(p.f_var(name, dims, Init::Const(0.0))?)
}

/// `torch.nn.Linear`: `weight` `[out, in]`, `bias` `[out]`.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer under `p` (`p.weight`, `p.bias`).
    pub fn new(p: &Path, in_dim: i64, out_dim: i64, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: param(p, "weight", &[out_dim, in_dim])?,
            bias: if bias { Some(param(p, "bias", &[out_dim])?) } else { None },
        })
    }

    /// `x @ weight.T + bias`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// `PreNorm(FeedForward)` of the vit-pytorch-style transformers (HMR 2.0's head, LART): `norm`,
/// then `fn.net.0` → exact GELU → `fn.net.3` (the dropouts between are identity at inference).
#[derive(Debug)]
pub struct PreNormFeedForward {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl PreNormFeedForward {
    /// The block under `p` (`p.norm`, `p.fn.net.0`, `p.fn.net.3`) on `dim` channels.
    pub fn new(p: &Path, dim: i64, hidden: i64) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(&(p / "norm"), dim, LAYER_NORM_EPS)?,
            fc1: Linear::new(&(p / "fn" / "net" / 0), dim, hidden, true)?,
            fc2: Linear::new(&(p / "fn" / "net" / 3), hidden, dim, true)?,
        })
    }

    /// `net(norm(x))`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(&self.norm.forward(x)?)?.f_gelu("none")?)
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// A layer norm under `p` over `dim` channels.
    pub fn new(p: &Path, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: param(p, "weight", &[dim])?, bias: param(p, "bias", &[dim])?, dim, eps })
    }

    /// Normalizes the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, true)?)
    }
}

/// Shape of a convolution: kernel, stride and padding per spatial axis.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape<'a> {
    /// Kernel size per axis.
    pub kernel: &'a [i64],
    /// Stride per axis.
    pub stride: &'a [i64],
    /// Zero padding per axis.
    pub padding: &'a [i64],
    /// Channel groups.
    pub groups: i64,
    /// With a bias.
    pub bias: bool,
}

impl<'a> ConvShape<'a> {
    /// A plain convolution with a bias (one group).
    pub fn new(kernel: &'a [i64], stride: &'a [i64], padding: &'a [i64]) -> Self {
        Self { kernel, stride, padding, groups: 1, bias: true }
    }
}

/// `torch.nn.Conv2d` / `Conv3d` (chosen by the kernel's rank), no dilation.
#[derive(Debug)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: Vec<i64>,
    padding: Vec<i64>,
    groups: i64,
}

impl Conv {
    /// A convolution under `p`: `weight` `[out, in / groups, *kernel]`.
    pub fn new(p: &Path, in_dim: i64, out_dim: i64, shape: ConvShape<'_>) -> Result<Self> {
        let ConvShape { kernel, stride, padding, groups, bias } = shape;
        let mut dims = vec![out_dim, in_dim / groups];
        dims.extend_from_slice(kernel);
        Ok(Self {
            weight: param(p, "weight", &dims)?,
            bias: if bias { Some(param(p, "bias", &[out_dim])?) } else { None },
            stride: stride.to_vec(),
            padding: padding.to_vec(),
            groups,
        })
    }

    /// Convolves `[B, C, *spatial]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ones = vec![1i64; self.stride.len()];
        Ok(match self.stride.len() {
            3 => x.f_conv3d(&self.weight, self.bias.as_ref(), &self.stride, &self.padding, &ones, self.groups)?,
            _ => x.f_conv2d(&self.weight, self.bias.as_ref(), &self.stride, &self.padding, &ones, self.groups)?,
        })
    }
}

/// Activation functions by their PyTorch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `nn.GELU()` (exact, erf).
    Gelu,
    /// `nn.ReLU()`.
    Relu,
    /// OpenAI CLIP's `QuickGELU`: `x * sigmoid(1.702 * x)`.
    QuickGelu,
}

/// The constant of `QuickGELU`.
const QUICK_GELU_SCALE: f64 = 1.702;

impl Activation {
    /// Applies the activation.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => x.f_gelu("none")?,
            Self::Relu => x.f_relu()?,
            Self::QuickGelu => x.f_mul(&x.f_mul_scalar(QUICK_GELU_SCALE)?.f_sigmoid()?)?,
        })
    }

    /// Applies the activation in place (same values; saves a full-size allocation, which
    /// matters for the 4× wide MLP hidden layers).
    pub fn forward_(self, x: &mut Tensor) -> Result<()> {
        let _same_storage = match self {
            Self::Gelu => x.f_gelu_("none")?,
            Self::Relu => x.f_relu_()?,
            Self::QuickGelu => {
                let gate = x.f_mul_scalar(QUICK_GELU_SCALE)?.f_sigmoid()?;
                x.f_mul_(&gate)?
            }
        };
        Ok(())
    }
}

/// A stack of linear layers with an activation between them (timm `Mlp` with names
/// `fc1`/`fc2`, or SAM 2 `MLP` with names `layers.{i}`).
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    act: Activation,
}

impl Mlp {
    /// timm `Mlp(in, hidden)`: `fc1` → act → `fc2`, output = input width.
    pub fn timm(p: &Path, dim: i64, hidden: i64, act: Activation) -> Result<Self> {
        Ok(Self {
            layers: vec![Linear::new(&(p / "fc1"), dim, hidden, true)?, Linear::new(&(p / "fc2"), hidden, dim, true)?],
            act,
        })
    }

    /// SAM 2 `MLP(input, hidden, output, num_layers)`: `layers.{i}`.
    pub fn sam(p: &Path, input: i64, hidden: i64, output: i64, num_layers: usize, act: Activation) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| {
                let in_dim = if i == 0 { input } else { hidden };
                let out_dim = if i + 1 == num_layers { output } else { hidden };
                Linear::new(&(p / "layers" / i), in_dim, out_dim, true)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, act })
    }

    /// Applies the layers, the activation between each pair.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.layers.len() {
                if x.requires_grad() {
                    // Training: the activation's backward needs its input, so keep it.
                    x = self.act.forward(&x)?;
                } else {
                    // `x` is the fresh output of the layer: safe to overwrite.
                    self.act.forward_(&mut x)?;
                }
            }
        }
        Ok(x)
    }
}

/// `F.scaled_dot_product_attention(q, k, v)` with the default scale, no mask.
pub fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false)?)
}

/// Max over `dim` (values only), as `x.max(dim).values`: the same op, so that its backward
/// sends the gradient to the one index `max` picked, as PyTorch's does (`amax` splits it among
/// ties).
pub fn max_dim(x: &Tensor, dim: i64) -> Result<Tensor> {
    Ok(x.f_max_dim(dim, false)?.0)
}

/// `F.softmax(x, -1)` in the input's dtype.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_softmax(-1, None::<Kind>)?)
}

/// `LayerNorm2d` of SAM 2 / ConvNeXt: normalizes the channels of `[B, C, H, W]`.
#[derive(Debug)]
pub struct LayerNorm2d {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm2d {
    /// A channel norm under `p` over `dim` channels.
    pub fn new(p: &Path, dim: i64, eps: f64) -> Result<Self> {
        Ok(Self { weight: param(p, "weight", &[dim])?, bias: param(p, "bias", &[dim])?, eps })
    }

    /// `(x - mean_c) / sqrt(var_c + eps) * weight + bias`, in the reference's order.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let u = x.f_mean_dim(Some(&[1i64][..]), true, None::<Kind>)?;
        let centered = x.f_sub(&u)?;
        let s = centered.f_pow_tensor_scalar(2)?.f_mean_dim(Some(&[1i64][..]), true, None::<Kind>)?;
        let x = centered.f_div(&s.f_add_scalar(self.eps)?.f_sqrt()?)?;
        let w = self.weight.f_view([-1, 1, 1])?;
        let b = self.bias.f_view([-1, 1, 1])?;
        Ok(w.f_mul(&x)?.f_add(&b)?)
    }
}

/// `torch.nn.ConvTranspose2d` with kernel = stride (the upscaling layers of SAM).
#[derive(Debug)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
}

impl ConvTranspose2d {
    /// `weight` `[in, out, k, k]`, `bias` `[out]`.
    pub fn new(p: &Path, in_dim: i64, out_dim: i64, kernel: i64, stride: i64) -> Result<Self> {
        Ok(Self {
            weight: param(p, "weight", &[in_dim, out_dim, kernel, kernel])?,
            bias: param(p, "bias", &[out_dim])?,
            stride,
        })
    }

    /// Upscales `[B, in, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.stride;
        Ok(x.f_conv_transpose2d(&self.weight, Some(&self.bias), [s, s], [0, 0], [0, 0], 1, [1, 1])?)
    }
}

/// `torch.nn.Embedding(n, dim)`: its `weight` `[n, dim]`.
pub fn embedding(p: &Path, n: i64, dim: i64) -> Result<Tensor> {
    param(p, "weight", &[n, dim])
}

/// A named parameter of the given shape (for bare `nn.Parameter`s and buffers).
pub fn parameter(p: &Path, name: &str, dims: &[i64]) -> Result<Tensor> {
    param(p, name, dims)
}

/// RMSNorm of Llama: `weight * (x / sqrt(mean(x²) + eps))`, normalized in fp32 and cast back
/// to the input's dtype before the weight, as both llama-models and transformers do.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.f_to_kind(Kind::Float)?;
    let rms = xf.f_square()?.f_mean_dim(-1, true, None::<Kind>)?.f_add_scalar(eps)?.f_rsqrt()?;
    Ok(weight.f_mul(&xf.f_mul(&rms)?.f_to_kind(x.kind())?)?)
}
