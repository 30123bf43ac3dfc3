//! # ocellus-perception
//!
//! Vision models written natively over tch, one file per model (a folder when large), with
//! weights (shared, read-only) kept apart from per-stream state:
//!
//! - [`motion`]: motion segmentation by frame differencing, the first real tch model of the
//!   runtime; its per-camera state is [`motion::MotionState`].
//! - [`hiera`]: Hiera image and video backbones (official `hiera`), exact on the same weights.
//! - [`hiera_mae`]: MAE pre-training of Hiera (official `MaskedAutoencoderHiera`), exact loss
//!   and gradients; what `ocellus adapt` trains on a robot's own footage.
//! - [`hieradet`]: HieraDet + FPN neck, SAM 2's image encoder (official `sam2`), exact.
//! - [`sam2`]: SAM 2's prompt encoder, mask decoder and image prediction (official `sam2`).
//! - [`clip`]: CLIP / MetaCLIP vision and text towers (official `open_clip`), exact; its BPE
//!   tokenizer (token-exact), zero-shot classification and MetaCLIP's data curation.
//! - [`diffmae`]: DiffMAE inpainting (MAE encoder, "joint" denoising decoder, respaced DDPM);
//!   no official code exists, so MAE's (`models_mae.py`) structure and keys where MAE has them.
//! - [`hmr2`] and [`smpl`]: HMR 2.0 (3D people from crops) and the SMPL body model.
//! - [`lart`]: LART action recognition over tracklets (AVA actions per person), with PHALP's
//!   pose and joints vectors.
//! - [`revvit`]: the reversible ViT (two streams, activations rebuilt in the backward pass), for
//!   training in memory that does not grow with depth.
//! - [`rev_hiera`]: Hiera's stages as reversible blocks (Reversible MViT's scheme: two streams
//!   within a stage, ordinary stage-transition blocks), under Hiera's key names.
//! - [`vit`]: timm's `VisionTransformer`, the architecture of the MAWS checkpoints (exact).
//! - [`backbone`]: Hiera, SAM 2 encoders and MAWS ViTs by name.
//! - [`model`]: one way to load any of them ([`model::ModelSpec`]: name, weights, device,
//!   precision).
//! - [`weights`]: checked loading, seeded init, checkpoint import, manifests.
//! - [`onnx`]: the ONNX Runtime backend, loaded dynamically from the venv made by
//!   `scripts/bootstrap` or from `ORT_DYLIB_PATH`.
#![warn(missing_docs)]

pub mod backbone;
pub mod clip;
pub mod diffmae;
pub mod hiera;
pub mod hiera_mae;
pub mod hieradet;
pub mod hmr2;
pub mod lart;
pub mod model;
pub mod motion;
pub mod onnx;
pub mod pickled_arrays;
pub mod rev_hiera;
pub mod revvit;
pub mod sam2;
pub mod smpl;
pub mod vit;
pub mod weights;

/// Errors of the perception crate.
#[derive(Debug, thiserror::Error)]
pub enum PerceptionError {
    /// A preprocessing or post-processing kernel failed.
    #[error(transparent)]
    Kernel(#[from] ocellus_kernels::KernelError),
    /// libtorch failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A model configuration value is out of range.
    #[error("invalid {model} config: {message}")]
    Config {
        /// The model.
        model: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A weights file does not fit its model (every offending key is listed).
    #[error("weights {}: {message}", path.display())]
    Weights {
        /// The file.
        path: std::path::PathBuf,
        /// What does not fit.
        message: String,
    },
    /// ONNX Runtime could not be found or loaded.
    #[error("ONNX Runtime: {0}")]
    Onnx(String),
}

/// Result alias of the perception crate.
pub type Result<T, E = PerceptionError> = std::result::Result<T, E>;
