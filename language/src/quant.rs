//! Weight-only quantization of Llama's linear layers (every projection and the LM head, tied
//! or not): int8 per output channel, or int4 in groups along the input, run by the ATen kernels
//! libtorch ships for them (`_weight_int8pack_mm`; `_convert_weight_to_int4pack_for_cpu` +
//! `_weight_int4pack_mm_for_cpu` on the CPU, `_convert_weight_to_int4pack` +
//! `_weight_int4pack_mm` on CUDA). The kernels take bf16 activations (their fast paths on the
//! CPU as on CUDA: with fp32 activations the CPU kernels are several times slower than a dense
//! fp32 matmul), so a quantized layer rounds its input to bf16 and returns the model's type.
//!
//! The quantization is gpt-fast's (and torchao's weight-only schemes), so that a checkpoint
//! quantized here equals one quantized by PyTorch bit for bit:
//!
//! - **int8**: symmetric per output row, `scale = max(|w|) / 127.5` (floored at `f32::EPSILON`),
//!   `q = clamp(round(w / scale), -128, 127)`; `y = x · (q · scale)ᵀ`.
//! - **int4**: asymmetric per group of `group` input columns, `scale = (max − min) / 15`
//!   (floored at 1e-6), `zero = min + 8 · scale`, `q = clamp(round((w − (zero − 8 · scale)) /
//!   scale), 0, 15)`; `w ≈ (q − 8) · scale + zero`. Scales and zeros travel as one
//!   `[K / group, N, 2]` tensor, as the kernels take them.

use tch::{Device, Kind, Tensor};

use crate::{LanguageError, Result};

/// int8 range.
const INT8_MIN: f64 = -128.0;
const INT8_MAX: f64 = 127.0;
/// Half of the int8 span: the symmetric scale's divisor.
const INT8_HALF_SPAN: f64 = (INT8_MAX - INT8_MIN) / 2.0;
/// Smallest int8 scale (an all-zero row).
const INT8_MIN_SCALE: f64 = f32::EPSILON as f64;
/// Largest int4 value and the zero offset (2^(4-1)).
const INT4_MAX: f64 = 15.0;
const INT4_MID: f64 = 8.0;
/// Smallest int4 scale (a constant group).
const INT4_MIN_SCALE: f64 = 1e-6;
/// The int4 kernels' inner K tiles (their packing).
pub const INNER_K_TILES: i64 = 8;
/// Group sizes the int4 kernels take.
pub const INT4_GROUPS: [i64; 4] = [32, 64, 128, 256];

/// How a linear layer's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// The model's float type.
    None,
    /// int8 per output channel.
    Int8,
    /// int4 in groups of this many input columns.
    Int4 {
        /// 32, 64, 128 or 256.
        group: i64,
    },
}

impl Quantization {
    /// `none`, `int8`, `int4` (group 128) or `int4:<group>`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || LanguageError::Config(format!("{text:?}: expected int8, int4 or int4:<32|64|128|256>"));
        Ok(match text {
            "none" | "f32" | "bf16" => Self::None,
            "int8" => Self::Int8,
            "int4" => Self::Int4 { group: DEFAULT_INT4_GROUP },
            other => {
                let group: i64 = other.strip_prefix("int4:").ok_or_else(bad)?.parse().map_err(|_| bad())?;
                if !INT4_GROUPS.contains(&group) {
                    return Err(bad());
                }
                Self::Int4 { group }
            }
        })
    }

    /// Its name in configurations (`none`, `int8`, `int4:128`).
    pub fn name(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::Int8 => "int8".into(),
            Self::Int4 { group } => format!("int4:{group}"),
        }
    }
}

/// The activations' type the kernels run in.
pub const COMPUTE_KIND: Kind = Kind::BFloat16;

/// The int4 group size `int4` means.
pub const DEFAULT_INT4_GROUP: i64 = 128;

/// A linear layer's weight `[N, K]`, dense or quantized (read-only, shared).
#[derive(Debug)]
pub enum QLinear {
    /// Dense, in the model's float type.
    Dense(Tensor),
    /// int8 `[N, K]` and one scale per row `[N]` (in the activations' type).
    Int8 {
        /// Quantized weight.
        weight: Tensor,
        /// Scales `[N]`.
        scales: Tensor,
    },
    /// int4 packed for the kernel, with `[K / group, N, 2]` scales and zeros.
    Int4 {
        /// Packed weight (the kernel's layout).
        packed: Tensor,
        /// Group size.
        group: i64,
        /// Scales and zeros `[K / group, N, 2]`.
        scales_and_zeros: Tensor,
    },
}

/// Rows quantized at a time: the temporaries of a large weight (the LM head) stay small.
const CHUNK_ROWS: i64 = 4096;

/// `f` over `w`'s rows in chunks of [`CHUNK_ROWS`]: values concatenated along rows, the
/// second tensor along `scales_dim` (the row dimension of the scales).
fn by_rows(w: &Tensor, scales_dim: i64, f: impl Fn(&Tensor) -> Result<(Tensor, Tensor)>) -> Result<(Tensor, Tensor)> {
    let n = w.size().first().copied().unwrap_or(0);
    if n <= CHUNK_ROWS {
        return f(w);
    }
    let (mut values, mut scales) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < n {
        let len = CHUNK_ROWS.min(n - start);
        let (q, s) = f(&w.f_narrow(0, start, len)?)?;
        values.push(q);
        scales.push(s);
        start += len;
    }
    Ok((Tensor::f_cat(&values, 0)?, Tensor::f_cat(&scales, scales_dim)?))
}

/// int8 values and scales of `w` `[N, K]` (f32): see the module documentation.
pub fn quantize_int8(w: &Tensor) -> Result<(Tensor, Tensor)> {
    by_rows(w, 0, |w| {
        let w = w.f_to_kind(Kind::Float)?;
        let scales = w.f_abs()?.f_amax(1, false)?.f_div_scalar(INT8_HALF_SPAN)?.f_clamp_min(INT8_MIN_SCALE)?; // [N]
        let mut q = w.f_div(&scales.f_unsqueeze(1)?)?;
        let _ = q.f_round_()?;
        let _ = q.f_clamp_(INT8_MIN, INT8_MAX)?;
        Ok((q.f_to_kind(Kind::Int8)?, scales)) // [N, K], [N]
    })
}

/// int4 values (int32 in 0..=15, `[N, K]`) and scales and zeros `[K / group, N, 2]` of `w`.
pub fn quantize_int4(w: &Tensor, group: i64) -> Result<(Tensor, Tensor)> {
    let k = match w.size().as_slice() {
        [_, k] => *k,
        other => return Err(LanguageError::Shape(format!("a weight is [N, K], got {other:?}"))),
    };
    if k % group != 0 {
        return Err(LanguageError::Shape(format!("K = {k} is not a multiple of the int4 group {group}")));
    }
    by_rows(w, 1, |w| {
        let n = w.size()[0];
        let grouped = w.f_to_kind(Kind::Float)?.f_reshape([-1, group])?; // [N · K/g, g]
        let max = grouped.f_amax(1, true)?;
        let min = grouped.f_amin(1, true)?;
        let scales = max.f_sub(&min)?.f_clamp_min(INT4_MIN_SCALE)?.f_div_scalar(INT4_MAX)?; // [N · K/g, 1]
        let zeros = min.f_add(&scales.f_mul_scalar(INT4_MID)?)?;
        let low = zeros.f_sub(&scales.f_mul_scalar(INT4_MID)?)?;
        let mut q = grouped.f_sub(&low)?;
        let _ = q.f_div_(&scales)?;
        let _ = q.f_round_()?;
        let _ = q.f_clamp_(0.0, INT4_MAX)?;
        let q = q.f_to_kind(Kind::Int)?.f_reshape([n, k])?;
        // [N, K/g, 1] twice → [N, K/g, 2] → [K/g, N, 2]
        let scales_and_zeros = Tensor::f_cat(&[scales.f_reshape([n, -1, 1])?, zeros.f_reshape([n, -1, 1])?], 2)?
            .f_transpose(0, 1)?
            .f_contiguous()?;
        Ok((q, scales_and_zeros))
    })
}

impl QLinear {
    /// `w` `[N, K]` stored as `mode` asks, on `device`; activations will be `kind`.
    pub fn new(w: &Tensor, mode: Quantization, device: Device, kind: Kind) -> Result<Self> {
        match mode {
            Quantization::None => Ok(Self::Dense(w.f_to_device(device)?.f_to_kind(kind)?)),
            Quantization::Int8 => {
                let (q, scales) = quantize_int8(w)?;
                Self::int8(q, scales, device)
            }
            Quantization::Int4 { group } => {
                let (q, sz) = quantize_int4(w, group)?;
                Self::int4(&q, sz, group, device)
            }
        }
    }

    /// From int8 values and scales (a quantized checkpoint).
    pub fn int8(q: Tensor, scales: Tensor, device: Device) -> Result<Self> {
        Ok(Self::Int8 { weight: q.f_to_device(device)?, scales: scales.f_to_device(device)?.f_to_kind(COMPUTE_KIND)? })
    }

    /// From int4 values (int32 0..=15, `[N, K]`) and scales and zeros: packs them for the
    /// device's kernel.
    pub fn int4(q: &Tensor, scales_and_zeros: Tensor, group: i64, device: Device) -> Result<Self> {
        let q = q.f_to_device(device)?.f_to_kind(Kind::Int)?;
        let packed = if device.is_cuda() {
            // CUDA's kernel takes the values two to a byte, high nibble first.
            pack_int4(&q)?.f_internal_convert_weight_to_int4pack(INNER_K_TILES)?
        } else {
            q.f_internal_convert_weight_to_int4pack_for_cpu(INNER_K_TILES)?
        };
        let scales_and_zeros = scales_and_zeros.f_to_device(device)?.f_to_kind(COMPUTE_KIND)?;
        Ok(Self::Int4 { packed, group, scales_and_zeros })
    }

    /// `x · wᵀ` for `x` `[..., K]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(x.f_linear::<Tensor>(w, None)?),
            Self::Int8 { weight, scales } => {
                let (rows, lead) = flatten(x)?;
                let y = rows.f_internal_weight_int8pack_mm(weight, scales)?; // [M, N]
                unflatten(y.f_to_kind(x.kind())?, &lead)
            }
            Self::Int4 { packed, group, scales_and_zeros, .. } => {
                let (rows, lead) = flatten(x)?;
                let y = if rows.device().is_cuda() {
                    rows.f_internal_weight_int4pack_mm(packed, *group, scales_and_zeros)?
                } else {
                    rows.f_internal_weight_int4pack_mm_for_cpu(packed, *group, scales_and_zeros)?
                }; // [M, N]
                unflatten(y.f_to_kind(x.kind())?, &lead)
            }
        }
    }

    /// Bytes the weight occupies (what one forward reads).
    pub fn bytes(&self) -> i64 {
        let of = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match self {
            Self::Dense(w) => of(w),
            Self::Int8 { weight, scales } => of(weight) + of(scales),
            Self::Int4 { packed, scales_and_zeros, .. } => of(packed) + of(scales_and_zeros),
        }
    }
}

/// `[..., K]` → `[M, K]` (contiguous, in the kernels' type) and the leading shape.
fn flatten(x: &Tensor) -> Result<(Tensor, Vec<i64>)> {
    let size = x.size();
    let (lead, k) = size.split_at(size.len().saturating_sub(1));
    let k = *k.first().ok_or_else(|| LanguageError::Shape("a scalar is not a row of activations".into()))?;
    Ok((x.f_reshape([-1, k])?.f_to_kind(COMPUTE_KIND)?.f_contiguous()?, lead.to_vec()))
}

/// `[M, N]` → `[..., N]`.
fn unflatten(y: Tensor, lead: &[i64]) -> Result<Tensor> {
    let n = y.size()[1];
    let mut shape = lead.to_vec();
    shape.push(n);
    Ok(y.f_reshape(shape.as_slice())?)
}

// --- Quantized files ---------------------------------------------------------------------
//
// A quantized checkpoint keeps transformers' key names; a linear layer `X.weight` is stored as
// `X.weight` (int8 `[N, K]`) with `X.weight_scale` (f32 `[N]`), or as `X.weight_int4` (uint8
// `[N, K / 2]`, two values a byte, the even column in the high nibble) with
// `X.weight_scales_and_zeros` (f32 `[K / group, N, 2]`). A tied LM head is stored quantized as
// `lm_head.weight…` (the embedding stays dense).

/// Suffix of an int8 layer's scales.
pub const INT8_SCALE: &str = "_scale";
/// Suffix of an int4 layer's packed values.
pub const INT4_VALUES: &str = "_int4";
/// Suffix of an int4 layer's scales and zeros.
pub const INT4_SCALES_AND_ZEROS: &str = "_scales_and_zeros";

/// int4 values `[N, K]` (int32 0..=15) → `[N, K / 2]` bytes, the even column high.
pub fn pack_int4(q: &Tensor) -> Result<Tensor> {
    let q = q.f_to_kind(Kind::Uint8)?;
    let hi = q.f_slice(1, 0, None, 2)?.f_bitwise_left_shift_tensor_scalar(4)?;
    let lo = q.f_slice(1, 1, None, 2)?;
    Ok(hi.f_bitwise_or_tensor(&lo)?)
}

/// [`pack_int4`]'s inverse: `[N, K / 2]` bytes → `[N, K]` int32.
pub fn unpack_int4(packed: &Tensor) -> Result<Tensor> {
    let (n, half) = match packed.size().as_slice() {
        [n, half] => (*n, *half),
        other => return Err(LanguageError::Shape(format!("packed int4 is [N, K / 2], got {other:?}"))),
    };
    let p = packed.f_to_kind(Kind::Int)?;
    let hi = p.f_bitwise_right_shift_tensor_scalar(4)?;
    let lo = p.f_bitwise_and(0x0f)?;
    // [N, K/2, 2] → [N, K]
    Ok(Tensor::f_stack(&[hi, lo], 2)?.f_reshape([n, 2 * half])?)
}

/// Whether `key` names a linear layer of Llama (a projection or the LM head).
pub fn is_linear(key: &str) -> bool {
    key == "lm_head.weight"
        || crate::llama::LAYER_LINEARS
            .iter()
            .any(|l| key.starts_with("model.layers.") && key.ends_with(&format!(".{l}.weight")))
}

/// Quantizes the linear layers of dense transformers-layout `tensors` into the stored form
/// (see above); a tied model gets its LM head from the embedding.
pub fn quantize_named(tensors: Vec<(String, Tensor)>, tied: bool, mode: Quantization) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(tensors.len() + 1);
    let mut head = None;
    for (key, t) in tensors {
        if tied && key == "model.embed_tokens.weight" {
            head = Some(t.shallow_clone());
        }
        if !is_linear(&key) || mode == Quantization::None {
            out.push((key, t));
            continue;
        }
        out.extend(stored(&key, &t, mode)?);
    }
    if let (true, Some(embed), false) = (tied, head, mode == Quantization::None) {
        out.extend(stored("lm_head.weight", &embed, mode)?);
    }
    Ok(out)
}

/// The stored entries of one linear layer.
fn stored(key: &str, w: &Tensor, mode: Quantization) -> Result<Vec<(String, Tensor)>> {
    Ok(match mode {
        Quantization::None => vec![(key.to_owned(), w.shallow_clone())],
        Quantization::Int8 => {
            let (q, scales) = quantize_int8(w)?;
            vec![(key.to_owned(), q), (format!("{key}{INT8_SCALE}"), scales)]
        }
        Quantization::Int4 { group } => {
            let (q, sz) = quantize_int4(w, group)?;
            vec![(format!("{key}{INT4_VALUES}"), pack_int4(&q)?), (format!("{key}{INT4_SCALES_AND_ZEROS}"), sz)]
        }
    })
}

/// Takes the stored quantized layers out of `map` (read from a file) as [`QLinear`]s on
/// `device` by their `X.weight` key, with the one quantization they share.
pub fn take_stored(
    map: &mut std::collections::BTreeMap<String, Tensor>,
    device: Device,
) -> std::result::Result<(std::collections::BTreeMap<String, QLinear>, Option<Quantization>), String> {
    let mut out = std::collections::BTreeMap::new();
    let mut mode = None;
    let mut agree = |m: Quantization, key: &str| match mode {
        None => {
            mode = Some(m);
            Ok(())
        }
        Some(seen) if seen == m => Ok(()),
        Some(seen) => Err(format!("{key} is quantized {m:?}, other layers {seen:?}")),
    };
    let int8: Vec<String> = map.keys().filter(|k| k.ends_with(INT8_SCALE)).cloned().collect();
    for scale_key in int8 {
        let key = scale_key.trim_end_matches(INT8_SCALE).to_owned();
        let (Some(q), Some(scales)) = (map.remove(&key), map.remove(&scale_key)) else {
            return Err(format!("{scale_key} without its int8 {key}"));
        };
        if q.kind() != Kind::Int8 || scales.size() != [q.size()[0]] {
            return Err(format!("{key}: int8 [N, K] with [N] scales expected, got {:?} {:?}", q.kind(), scales.size()));
        }
        agree(Quantization::Int8, &key)?;
        out.insert(key, QLinear::int8(q, scales, device).map_err(|e| e.to_string())?);
    }
    let int4: Vec<String> = map.keys().filter(|k| k.ends_with(INT4_VALUES)).cloned().collect();
    for values_key in int4 {
        let key = values_key.trim_end_matches(INT4_VALUES).to_owned();
        let sz_key = format!("{key}{INT4_SCALES_AND_ZEROS}");
        let (Some(packed), Some(sz)) = (map.remove(&values_key), map.remove(&sz_key)) else {
            return Err(format!("{values_key} without its {sz_key}"));
        };
        let (n, k) = (packed.size()[0], 2 * packed.size().get(1).copied().unwrap_or(0));
        let groups = sz.size().first().copied().unwrap_or(0);
        let group = if groups > 0 { k / groups } else { 0 };
        if packed.kind() != Kind::Uint8
            || sz.size() != [groups, n, 2]
            || !INT4_GROUPS.contains(&group)
            || k % groups != 0
        {
            return Err(format!("{key}: int4 [N, K/2] bytes with [K/group, N, 2] scales and zeros expected"));
        }
        agree(Quantization::Int4 { group }, &key)?;
        let q = unpack_int4(&packed).map_err(|e| e.to_string())?;
        out.insert(key, QLinear::int4(&q, sz, group, device).map_err(|e| e.to_string())?);
    }
    Ok((out, mode))
}
