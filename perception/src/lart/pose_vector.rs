//! LART's per-token inputs, built from a pose estimate as PHALP builds them
//! (`phalp/utils/utils.py::smpl_to_pose_camera_vector`, `utils_tracks.py::create_fast_tracklets`,
//! and LART's `Pose_transformer.smooth_tracks`):
//!
//! - the **pose vector** (229): the root rotation (9, row-major), the 23 body rotations (207,
//!   joint-major, each row-major), the betas (10) and the camera translation with its depth
//!   divided by 200: `(tx, ty, tz / 200)`;
//! - the **joints vector** (135): the 45 body-model joints (25 OpenPose, 19 from the extra
//!   regressor, one zero), each moved by that same `(tx, ty, tz / 200)` (PHALP divides the
//!   depth through a view of the camera array, so the joints see the divided value too), x y z
//!   per joint;
//! - **normalization** of the pose vector with the checkpoint's mean and standard deviation
//!   (`(v − mean) / (std + 1e-10)`, the statistics padded to 229 with zeros and ones).

use std::path::Path;

use tch::{Kind, Tensor};

use crate::{PerceptionError, Result};

/// Width of the pose vector.
pub const POSE_DIM: usize = 229;
/// Joints of the joints vector.
pub const NUM_JOINTS: usize = 45;
/// Width of the joints vector.
pub const JOINTS_DIM: usize = NUM_JOINTS * 3;
/// The depth of the location is divided by this.
pub const DEPTH_DIVISOR: f32 = 200.0;
/// Added to the standard deviation before dividing by it.
pub const STD_EPS: f32 = 1e-10;
/// Body joints besides the root.
const BODY_JOINTS: usize = 23;

/// PHALP's location of a body: its camera translation with the depth divided by 200.
pub fn location(translation: [f32; 3]) -> [f32; 3] {
    [translation[0], translation[1], translation[2] / DEPTH_DIVISOR]
}

/// The pose vector of one detection: `global_orient` (9), `body_pose` (207), `betas` (10),
/// the location of `translation`.
pub fn pose_shape(
    global_orient: &[f32; 9],
    body_pose: &[f32],
    betas: &[f32; 10],
    translation: [f32; 3],
) -> Result<Vec<f32>> {
    if body_pose.len() != BODY_JOINTS * 9 {
        return Err(vector_error(format!("body_pose has {} values, not {}", body_pose.len(), BODY_JOINTS * 9)));
    }
    let mut v = Vec::with_capacity(POSE_DIM);
    v.extend_from_slice(global_orient);
    v.extend_from_slice(body_pose);
    v.extend_from_slice(betas);
    v.extend_from_slice(&location(translation));
    Ok(v)
}

/// The joints vector of one detection: the 45 joints of the posed body model (not moved by
/// the translation) plus the location of `translation`, flattened joint-major.
pub fn joints_3d(joints45: &[[f32; 3]], translation: [f32; 3]) -> Result<Vec<f32>> {
    if joints45.len() != NUM_JOINTS {
        return Err(vector_error(format!("{} joints, not {NUM_JOINTS}", joints45.len())));
    }
    let loc = location(translation);
    Ok(joints45.iter().flat_map(|j| [j[0] + loc[0], j[1] + loc[1], j[2] + loc[2]]).collect())
}

fn vector_error(message: String) -> PerceptionError {
    PerceptionError::Config { model: "lart pose vector", message }
}

/// The pose vector's statistics (PHALP's `3D/mean_std.npy`), padded to 229.
#[derive(Debug)]
pub struct MeanStd {
    /// `[229]`.
    pub mean: Tensor,
    /// `[229]`.
    pub std: Tensor,
}

impl MeanStd {
    /// No normalization (mean 0, std 1).
    pub fn identity() -> Self {
        Self {
            mean: Tensor::zeros([POSE_DIM as i64], (Kind::Float, tch::Device::Cpu)),
            std: Tensor::ones([POSE_DIM as i64], (Kind::Float, tch::Device::Cpu)),
        }
    }

    /// From `mean` and `std` of up to 229 values each (the rest padded with 0 and 1).
    pub fn new(mean: &Tensor, std: &Tensor) -> Result<Self> {
        let (mean, std) = (mean.f_reshape([-1])?.f_to_kind(Kind::Float)?, std.f_reshape([-1])?.f_to_kind(Kind::Float)?);
        let n = mean.size()[0];
        if n != std.size()[0] || n == 0 || n > POSE_DIM as i64 {
            return Err(vector_error(format!(
                "mean and std must have the same length, at most {POSE_DIM} (got {} and {})",
                n,
                std.size()[0]
            )));
        }
        let pad = POSE_DIM as i64 - n;
        let opts = (Kind::Float, mean.device());
        Ok(Self {
            mean: Tensor::f_cat(&[mean, Tensor::f_zeros([pad], opts)?], 0)?,
            std: Tensor::f_cat(&[std, Tensor::f_ones([pad], opts)?], 0)?,
        })
    }

    /// Reads PHALP's `mean_std.npy` (a float array `[2, 1, D]` or `[2, D]`: mean then std) or
    /// a safetensors file with `mean` and `std`.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |m: String| PerceptionError::Weights { path: path.to_path_buf(), message: m };
        if path.extension().is_some_and(|e| e == "safetensors") {
            let tensors: std::collections::HashMap<String, Tensor> =
                ocellus_kernels::safetensors::read(path).map_err(err)?.into_iter().collect();
            let get = |k: &str| tensors.get(k).ok_or_else(|| err(format!("no `{k}` tensor")));
            return Self::new(get("mean")?, get("std")?);
        }
        let a = Tensor::read_npy(path).map_err(|e| {
            err(format!(
                "{e} (expected a float array [2, 1, D] or [2, D]: mean then std; a pickled object array is not read)"
            ))
        })?;
        if a.size().first() != Some(&2) {
            return Err(err(format!("expected mean and std stacked on the first axis, got shape {:?}", a.size())));
        }
        Self::new(&a.f_get(0)?, &a.f_get(1)?)
    }

    /// `(v − mean) / (std + 1e-10)` over the last axis of `[…, 229]`.
    pub fn normalize(&self, v: &Tensor) -> Result<Tensor> {
        let (mean, std) = (self.mean.f_to_device(v.device())?, self.std.f_to_device(v.device())?);
        Ok(v.f_sub(&mean)?.f_div(&std.f_add_scalar(f64::from(STD_EPS))?)?)
    }
}
