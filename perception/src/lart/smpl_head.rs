//! PHALP's SMPL head (`phalp/models/heads/smpl_head.py`, `SMPLHead` with `pool = 'pooled'`),
//! which LART reads its pose tokens with: iterative error feedback from the mean parameters,
//! three iterations of `fc1` → ReLU → `fc2` → ReLU → corrections to the 6-D pose, the betas
//! and the camera. Dropout is off at inference.
//!
//! Variable names are the checkpoint's under `smpl_head.{i}.` (`fc1.weight`,
//! `init_body_pose`, …).

use ocellus_kernels::nn::{Linear, parameter};
use tch::Tensor;
use tch::nn::Path;

use crate::hmr2::smpl_head::{NUM_BETAS, rot6d_to_rotmat};
use crate::{PerceptionError, Result};

/// Values per 6-D rotation.
const ROT6D: i64 = 6;
/// The camera `(s, tx, ty)`.
const CAM_DIM: i64 = 3;
/// The hidden width.
const HIDDEN: i64 = 1024;
/// Refinement iterations (`n_iter`'s default, which LART keeps).
pub const N_ITER: usize = 3;

/// SMPL parameters read from tokens.
#[derive(Debug)]
pub struct HeadOutput {
    /// Root rotation `[N, 1, 3, 3]`.
    pub global_orient: Tensor,
    /// Body-joint rotations `[N, 23, 3, 3]`.
    pub body_pose: Tensor,
    /// Shape `[N, 10]`.
    pub betas: Tensor,
    /// The head's own camera `[N, 3]` (LART discards it for its location head).
    pub cam: Tensor,
}

/// `SMPLHead`.
#[derive(Debug)]
pub struct SmplHead {
    init_body_pose: Tensor, // [1, 6 · joints]
    init_betas: Tensor,     // [1, 10]
    init_cam: Tensor,       // [1, 3]
    fc1: Linear,
    fc2: Linear,
    decpose: Linear,
    decshape: Linear,
    deccam: Linear,
    joints: i64,
}

impl SmplHead {
    /// The head under `p` for tokens of `input_dim` channels and `num_body_joints` + 1 joints.
    pub fn new(p: &Path, input_dim: i64, num_body_joints: i64) -> Result<Self> {
        if input_dim <= 0 || num_body_joints <= 0 {
            return Err(PerceptionError::Config {
                model: "lart smpl head",
                message: format!("input_dim {input_dim}, joints {num_body_joints}"),
            });
        }
        let joints = num_body_joints + 1;
        let npose = ROT6D * joints;
        Ok(Self {
            init_body_pose: parameter(p, "init_body_pose", &[1, npose])?,
            init_betas: parameter(p, "init_betas", &[1, NUM_BETAS])?,
            init_cam: parameter(p, "init_cam", &[1, CAM_DIM])?,
            fc1: Linear::new(&(p / "fc1"), input_dim + npose + NUM_BETAS + CAM_DIM, HIDDEN, true)?,
            fc2: Linear::new(&(p / "fc2"), HIDDEN, HIDDEN, true)?,
            decpose: Linear::new(&(p / "decpose"), HIDDEN, npose, true)?,
            decshape: Linear::new(&(p / "decshape"), HIDDEN, NUM_BETAS, true)?,
            deccam: Linear::new(&(p / "deccam"), HIDDEN, CAM_DIM, true)?,
            joints,
        })
    }

    /// SMPL parameters of tokens `[N, input_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<HeadOutput> {
        let n = x.size()[0];
        let kind = x.kind();
        let expand = |t: &Tensor| -> Result<Tensor> { Ok(t.f_to_kind(kind)?.f_expand([n, -1], false)?) };
        let (mut pose, mut betas, mut cam) =
            (expand(&self.init_body_pose)?, expand(&self.init_betas)?, expand(&self.init_cam)?);
        for _ in 0..N_ITER {
            let xc = Tensor::f_cat(&[x, &pose, &betas, &cam], 1)?; // [N, input + 144 + 13]
            let xc = self.fc1.forward(&xc)?.f_relu()?;
            let xc = self.fc2.forward(&xc)?.f_relu()?;
            pose = self.decpose.forward(&xc)?.f_add(&pose)?;
            betas = self.decshape.forward(&xc)?.f_add(&betas)?;
            cam = self.deccam.forward(&xc)?.f_add(&cam)?;
        }
        let rot = rot6d_to_rotmat(&pose)?.f_view([n, self.joints, 3, 3])?; // [N, joints, 3, 3]
        Ok(HeadOutput {
            global_orient: rot.f_narrow(1, 0, 1)?,
            body_pose: rot.f_narrow(1, 1, self.joints - 1)?,
            betas,
            cam,
        })
    }
}
