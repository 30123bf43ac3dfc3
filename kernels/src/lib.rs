//! # ocellus-kernels
//!
//! Tensor building blocks over [`tch`] shared by every Ocellus model:
//!
//! - [`preprocess`]: strided camera bytes (RGB, BGR, GRAY8, NV12) → a normalized
//!   `[1, 3, H, W]` float tensor at model resolution on the target device, by each model's
//!   official transform ([`Transform`]: region, resampling, normalization) or a fast path.
//! - [`resample`]: Pillow's 8-bit resampling (bicubic, bilinear), bit for bit.
//! - [`masks`]: mask post-processing (device tensor → host bytes, boxes, area).
//! - [`cache`]: tensors derived from a size alone, computed once.
//! - [`device`]: parsing of device names (`"cpu"`, `"cuda:0"`) and dtypes.
//! - [`keys`]: a weights file's keys and shapes against a model's, every mismatch at once.
//! - [`nn`]: PyTorch-compatible layers (names and numerics) over a `tch::nn::Path`, RMSNorm.
//! - [`optim`]: AdamW exact to PyTorch's, and a warm-up + cosine learning-rate schedule.
//! - [`position`]: position encodings (2D sine).
//! - [`rope`]: SAM 2's 2D axial rotary encoding; Llama 3's scaled 1D RoPE.
//! - [`sampling`]: token sampling (greedy, temperature, top-p), seeded.
//! - [`window`]: window partition / unpartition of `[B, H, W, C]` maps.
//!
//! Everything here returns [`KernelError`]; shapes that depend on user input go
//! through tch's fallible `f_*` ops so that a bad frame is an error, never a panic.
#![warn(missing_docs)]

pub mod cache;
pub mod device;
pub mod keys;
pub mod masks;
pub mod nn;
pub mod optim;
pub mod position;
pub mod preprocess;
pub mod resample;
pub mod rope;
pub mod safetensors;
pub mod sampling;
pub mod warp;
pub mod window;

pub use device::{DType, parse_device};
pub use preprocess::{
    Fit, FrameLayout, Normalization, PixelFormat, Resize, ResizeMode, Transform, YuvMatrix, frame_to_tensor,
};

/// Errors of the kernel crate.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A frame's buffer does not hold its layout.
    #[error(transparent)]
    Frame(#[from] ocellus_wire::LayoutError),
    /// A tensor or image of the wrong shape or size.
    #[error("invalid layout: {0}")]
    Layout(String),
    /// A device or dtype name could not be parsed.
    #[error("unknown {what} {name:?} (expected {expected})")]
    UnknownName {
        /// What was being parsed ("device", "dtype").
        what: &'static str,
        /// The offending name.
        name: String,
        /// The accepted forms.
        expected: &'static str,
    },
    /// The requested CUDA device is not available in this build or machine.
    #[error("device {0} is not available (CUDA devices found: {1})")]
    DeviceUnavailable(String, i64),
    /// An error from libtorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// libtorch's default generator is global: every seeded initialization runs under this lock,
/// so that concurrent ones (tests run in parallel threads) cannot interleave their draws.
static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` right after `tch::manual_seed(seed)`, holding the seeding lock.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = SEED_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed);
    f()
}

/// Result alias of the kernel crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;
