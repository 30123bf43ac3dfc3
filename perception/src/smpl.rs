//! The SMPL body model (Loper et al., "SMPL: A Skinned Multi-Person Linear Model", SIGGRAPH
//! Asia 2015), written natively: shape blend shapes, pose blend shapes, joint regression, the
//! kinematic chain and linear blend skinning, as the `smplx` package computes them
//! (`smplx/lbs.py`), and the joints HMR 2.0 and LART read: SMPL's 24, the 21 extra joints
//! `smplx` picks from vertices (face, feet, finger tips), the 25 of them in OpenPose order,
//! and the 19 of an extra regressor.
//!
//! The model file is licensed and never shipped: `ocellus weights import --model smpl --from
//! SMPL_NEUTRAL.pkl` converts the user's own file to safetensors under the names below,
//! checking every array.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// SMPL's vertices.
pub const NUM_VERTICES: i64 = 6890;
/// SMPL's joints (the root and 23 body joints).
pub const NUM_JOINTS: i64 = 24;
/// Pose blend-shape inputs: `(R - I)` of the 23 body joints.
pub const NUM_POSE_BASIS: i64 = 9 * (NUM_JOINTS - 1);
/// Shape coefficients used.
pub const NUM_BETAS: i64 = 10;
/// Joints of the extra regressor HMR 2.0 and LART use (`SMPL_to_J19.pkl`).
pub const NUM_EXTRA_JOINTS: i64 = 19;
/// SMPL's kinematic tree: the parent of each joint (`kintree_table[0]`; the root has none).
pub const PARENTS: [i64; 24] = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21];
/// Vertices `smplx` reads as extra joints, in its order: nose, right and left eye, right and
/// left ear; left big toe, small toe, heel, right big toe, small toe, heel; left then right
/// thumb, index, middle, ring and pinky tips (`smplx.vertex_ids['smplh']`).
pub const EXTRA_VERTEX_JOINTS: [i64; 21] = [
    332, 6260, 2800, 4071, 583, 3216, 3226, 3387, 6617, 6624, 6787, 2746, 2319, 2445, 2556, 2673, 6191, 5782, 5905,
    6016, 6133,
];
/// The 25 OpenPose joints as indices into SMPL's 24 joints followed by the 21 extra ones
/// (HMR 2.0's `smpl_to_openpose`).
pub const SMPL_TO_OPENPOSE: [i64; 25] =
    [24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34];

/// The arrays of a converted model file, their names and shapes (`smplx`'s names).
pub const ARRAYS: [(&str, &[i64]); 6] = [
    ("v_template", &[NUM_VERTICES, 3]),
    ("shapedirs", &[NUM_VERTICES, 3, NUM_BETAS]),
    ("posedirs", &[NUM_VERTICES, 3, NUM_POSE_BASIS]),
    ("J_regressor", &[NUM_JOINTS, NUM_VERTICES]),
    ("weights", &[NUM_VERTICES, NUM_JOINTS]),
    ("f", &[13776, 3]),
];
/// The optional extra regressor's name in a converted file.
pub const EXTRA_REGRESSOR: &str = "J_regressor_extra";
/// The kinematic tree's name in a converted file (`[2, 24]`: parents, then joint ids).
pub const KINTREE: &str = "kintree_table";
/// How a root's missing parent is stored in the official files (`2^32 - 1`).
const NO_PARENT: i64 = u32::MAX as i64;
/// The model file's arrays that hold integers.
const INTEGER_ARRAYS: [&str; 2] = ["f", KINTREE];

/// Converts the user's SMPL model file (`SMPL_NEUTRAL.pkl`, or an `.npz` of its arrays) and,
/// if given, HMR 2.0's 19-joint regressor (`SMPL_to_J19.pkl`) to safetensors at `out`, then
/// reads it back as the actors do (every array's shape, finite values, SMPL's kinematic tree).
/// Both are read natively ([`crate::pickled_arrays`]: the pickle's chumpy and SciPy objects
/// as their data, nothing run): f32 arrays, `f` and `kintree_table` as i64, the first 10
/// shape components.
pub fn convert(model: &Path, extra: Option<&Path>, out: &Path) -> Result<Smpl> {
    use crate::pickled_arrays::{self as pa, Elements};
    let elements = |name: &str| if INTEGER_ARRAYS.contains(&name) { Elements::Integer } else { Elements::Float };
    let mut arrays: std::collections::BTreeMap<String, Tensor> =
        if model.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz")) {
            pa::read_npz(model, elements)?
        } else {
            let root = pa::read(model)?;
            let entries = pa::dict(model, &root)?;
            let mut arrays = std::collections::BTreeMap::new();
            for (name, _) in ARRAYS.iter().chain([(KINTREE, &[][..])].iter()) {
                if let Some(v) = entries.get(*name) {
                    arrays.insert((*name).to_owned(), pa::array(model, name, v, elements(name))?);
                }
            }
            arrays
        };
    let missing: Vec<&str> = ARRAYS.iter().map(|(n, _)| *n).filter(|n| !arrays.contains_key(*n)).collect();
    if !missing.is_empty() {
        return Err(invalid(model, format!("not a SMPL model file (no {})", missing.join(", "))));
    }
    arrays.retain(|k, _| ARRAYS.iter().any(|(n, _)| n == k) || k == KINTREE);
    // The official file has 300 shape components; SMPL's 10 are the first.
    if let Some(s) = arrays.get("shapedirs").filter(|s| s.dim() == 3 && s.size()[2] > NUM_BETAS) {
        let first = s.f_narrow(2, 0, NUM_BETAS)?.f_contiguous()?;
        arrays.insert("shapedirs".into(), first);
    }
    if let Some(extra) = extra {
        let value = pa::read(extra)?;
        arrays.insert(EXTRA_REGRESSOR.into(), pa::array(extra, EXTRA_REGRESSOR, &value, Elements::Float)?);
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| invalid(out, e.to_string()))?;
    }
    let named: Vec<(&str, &Tensor)> = arrays.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&named, out).map_err(|e| invalid(out, e.to_string()))?;
    Smpl::load(out, Device::Cpu)
}

/// A posed body.
#[derive(Debug)]
pub struct SmplOutput {
    /// Vertices `[B, 6890, 3]`.
    pub vertices: Tensor,
    /// SMPL's 24 joints then the 21 vertex joints `[B, 45, 3]` (`smplx`'s `joints`).
    pub joints: Tensor,
}

/// The body model's arrays, on a device (read-only, shared by every stream).
#[derive(Debug)]
pub struct Smpl {
    v_template: Tensor,    // [V, 3]
    shapedirs: Tensor,     // [V, 3, 10]
    posedirs: Tensor,      // [207, V · 3]
    j_regressor: Tensor,   // [24, V]
    lbs_weights: Tensor,   // [V, 24]
    faces: Tensor,         // [F, 3] (int64)
    extra: Option<Tensor>, // [19, V]
}

fn invalid(path: &Path, message: String) -> PerceptionError {
    PerceptionError::Weights { path: path.to_path_buf(), message }
}

impl Smpl {
    /// Reads a converted model file (safetensors with [`ARRAYS`], and [`EXTRA_REGRESSOR`]
    /// when present), checking every array's shape and that its values are finite.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let tensors: std::collections::HashMap<String, Tensor> =
            ocellus_kernels::safetensors::read(path).map_err(|e| invalid(path, e))?.into_iter().collect();
        let get = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| invalid(path, format!("no array {name:?}")))?;
            if t.size() != shape {
                return Err(invalid(path, format!("{name} has shape {:?}, SMPL's is {shape:?}", t.size())));
            }
            let kind = if name == "f" { Kind::Int64 } else { Kind::Float };
            let t = t.f_to_kind(kind)?;
            if kind == Kind::Float && t.f_isfinite()?.f_all()?.int64_value(&[]) == 0 {
                return Err(invalid(path, format!("{name} has values that are not finite")));
            }
            Ok(t.f_to_device(device)?)
        };
        let [v, s, p, j, w, f] = ARRAYS.map(|(n, shape)| get(n, shape));
        if let Some(tree) = tensors.get(KINTREE) {
            let parents: Vec<i64> = Vec::<i64>::try_from(tree.f_to_kind(Kind::Int64)?.f_get(0)?)?
                .into_iter()
                .map(|p| if p == NO_PARENT { -1 } else { p })
                .collect();
            if parents != PARENTS {
                return Err(invalid(path, format!("{KINTREE} is not SMPL's kinematic tree: parents {parents:?}")));
            }
        }
        let extra = match tensors.contains_key(EXTRA_REGRESSOR) {
            true => Some(get(EXTRA_REGRESSOR, &[NUM_EXTRA_JOINTS, NUM_VERTICES])?),
            false => None,
        };
        let posedirs = p?.f_reshape([-1, NUM_POSE_BASIS])?.f_transpose(0, 1)?.f_contiguous()?; // [207, V · 3]
        Ok(Self { v_template: v?, shapedirs: s?, posedirs, j_regressor: j?, lbs_weights: w?, faces: f?, extra })
    }

    /// A seeded stand-in with SMPL's shapes (never SMPL's body: that file is licensed), for
    /// pipelines that run before the user imported theirs: a body-sized cloud of vertices,
    /// regressors and skinning weights that are convex combinations, small blend shapes.
    /// Everything downstream runs; what it shows means nothing.
    pub fn seeded(seed: i64, device: Device) -> Result<Self> {
        /// Half-extents of the body's box, metres (x, y, z).
        const HALF_EXTENT: [f64; 3] = [0.3, 0.9, 0.15];
        /// Scale of the shape and pose blend shapes.
        const SHAPE_SCALE: f64 = 0.01;
        const POSE_SCALE: f64 = 0.001;
        const FACES: i64 = 13776;
        let opts = (Kind::Float, device);
        let convex = |rows: i64, cols: i64| -> Result<Tensor> {
            let w = Tensor::f_rand([rows, cols], opts)?;
            Ok(w.f_div(&w.f_sum_dim_intlist(1, true, Kind::Float)?)?)
        };
        ocellus_kernels::seeded(seed, || -> Result<Self> {
            let half = Tensor::f_from_slice(&HALF_EXTENT)?.f_to_kind(Kind::Float)?.f_to_device(device)?;
            let v_template =
                Tensor::f_rand([NUM_VERTICES, 3], opts)?.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?.f_mul(&half)?;
            let shapedirs = Tensor::f_randn([NUM_VERTICES, 3, NUM_BETAS], opts)?.f_mul_scalar(SHAPE_SCALE)?;
            let posedirs = Tensor::f_randn([NUM_POSE_BASIS, NUM_VERTICES * 3], opts)?.f_mul_scalar(POSE_SCALE)?; // [207, V · 3]
            let j_regressor = convex(NUM_JOINTS, NUM_VERTICES)?;
            let lbs_weights = convex(NUM_VERTICES, NUM_JOINTS)?;
            let faces = Tensor::f_randint(NUM_VERTICES, [FACES, 3], (Kind::Int64, device))?;
            let extra = Some(convex(NUM_EXTRA_JOINTS, NUM_VERTICES)?);
            Ok(Self { v_template, shapedirs, posedirs, j_regressor, lbs_weights, faces, extra })
        })
    }

    /// Whether the extra 19-joint regressor is there.
    pub fn has_extra_regressor(&self) -> bool {
        self.extra.is_some()
    }

    /// The triangles `[13776, 3]`.
    pub fn faces(&self) -> &Tensor {
        &self.faces
    }

    /// Poses the body: `betas` `[B, 10]`, `global_orient` `[B, 1, 3, 3]`, `body_pose`
    /// `[B, 23, 3, 3]` (rotation matrices).
    pub fn forward(&self, betas: &Tensor, global_orient: &Tensor, body_pose: &Tensor) -> Result<SmplOutput> {
        let _span = trace_span!("smpl").entered();
        let b = betas.size()[0];
        let rot = Tensor::f_cat(&[global_orient, body_pose], 1)?.f_to_kind(Kind::Float)?; // [B, 24, 3, 3]
        if rot.size() != [b, NUM_JOINTS, 3, 3] || betas.size() != [b, NUM_BETAS] {
            return Err(PerceptionError::Config {
                model: "smpl",
                message: format!("betas {:?} and rotations {:?} of another batch or shape", betas.size(), rot.size()),
            });
        }
        let betas = betas.f_to_kind(Kind::Float)?;
        // Shape: v_template + shapedirs · betas.
        let v_shaped = self.v_template.f_unsqueeze(0)?.f_add(&Tensor::f_einsum(
            "bl,mkl->bmk",
            &[&betas, &self.shapedirs],
            None::<&[i64]>,
        )?)?; // [B, V, 3]
        let joints = Tensor::f_einsum("bik,ji->bjk", &[&v_shaped, &self.j_regressor], None::<&[i64]>)?; // [B, 24, 3]
        // Pose blend shapes from (R - I) of the body joints.
        let eye = Tensor::f_eye(3, (Kind::Float, rot.device()))?;
        let pose_feature = rot.f_narrow(1, 1, NUM_JOINTS - 1)?.f_sub(&eye)?.f_reshape([b, -1])?; // [B, 207]
        let pose_offsets = pose_feature.f_matmul(&self.posedirs)?.f_reshape([b, -1, 3])?; // [B, V, 3]
        let v_posed = v_shaped.f_add(&pose_offsets)?;
        let (posed_joints, relative) = rigid_transform(&rot, &joints)?; // [B, 24, 3], [B, 24, 4, 4]
        // Skinning: per-vertex blend of the joint transforms.
        let t = self
            .lbs_weights
            .f_unsqueeze(0)?
            .f_expand([b, -1, -1], false)?
            .f_matmul(&relative.f_reshape([b, NUM_JOINTS, 16])?)?
            .f_reshape([b, -1, 4, 4])?; // [B, V, 4, 4]
        let ones = Tensor::f_ones([b, v_posed.size()[1], 1], (Kind::Float, rot.device()))?;
        let homogeneous = Tensor::f_cat(&[&v_posed, &ones], 2)?.f_unsqueeze(-1)?; // [B, V, 4, 1]
        let vertices = t.f_matmul(&homogeneous)?.f_narrow(2, 0, 3)?.f_squeeze_dim(-1)?; // [B, V, 3]
        let index = Tensor::f_from_slice(&EXTRA_VERTEX_JOINTS)?.f_to_device(rot.device())?;
        let extra = vertices.f_index_select(1, &index)?; // [B, 21, 3]
        let joints = Tensor::f_cat(&[posed_joints, extra], 1)?; // [B, 45, 3]
        Ok(SmplOutput { vertices, joints })
    }

    /// HMR 2.0's 44 joints: the 25 OpenPose joints of `output`, then the 19 of the extra
    /// regressor (an error without it).
    pub fn joints44(&self, output: &SmplOutput) -> Result<Tensor> {
        let extra = self.extra.as_ref().ok_or_else(|| PerceptionError::Config {
            model: "smpl",
            message: format!(
                "the model file has no {EXTRA_REGRESSOR} (the 19-joint regressor): import it with the model"
            ),
        })?;
        let map = Tensor::f_from_slice(&SMPL_TO_OPENPOSE)?.f_to_device(output.joints.device())?;
        let openpose = output.joints.f_index_select(1, &map)?; // [B, 25, 3]
        let regressed = Tensor::f_einsum("bik,ji->bjk", &[&output.vertices, extra], None::<&[i64]>)?; // [B, 19, 3]
        Ok(Tensor::f_cat(&[openpose, regressed], 1)?) // [B, 44, 3]
    }
}

/// The kinematic chain: each joint's world transform from its rotation and its offset from
/// its parent; returns the posed joints `[B, 24, 3]` and the transforms relative to the rest
/// pose `[B, 24, 4, 4]` (`smplx`'s `batch_rigid_transform`).
fn rigid_transform(rot: &Tensor, joints: &Tensor) -> Result<(Tensor, Tensor)> {
    let b = rot.size()[0];
    let j = joints.f_unsqueeze(-1)?; // [B, 24, 3, 1]
    let parents = Tensor::f_from_slice(&PARENTS[1..])?.f_to_device(rot.device())?;
    let rel_rest = j.f_narrow(1, 1, NUM_JOINTS - 1)?.f_sub(&j.f_index_select(1, &parents)?)?; // [B, 23, 3, 1]
    let rel = Tensor::f_cat(&[j.f_narrow(1, 0, 1)?, rel_rest], 1)?; // [B, 24, 3, 1]
    // [R t; 0 1] per joint.
    let top = Tensor::f_cat(&[rot, &rel], 3)?; // [B, 24, 3, 4]
    let bottom = Tensor::f_zeros([b, NUM_JOINTS, 1, 4], (Kind::Float, rot.device()))?.f_index_fill_(
        3,
        &Tensor::f_from_slice(&[3i64])?.f_to_device(rot.device())?,
        1.0,
    )?;
    let local = Tensor::f_cat(&[top, bottom], 2)?; // [B, 24, 4, 4]
    let mut chain: Vec<Tensor> = vec![local.f_select(1, 0)?];
    for (i, &parent) in PARENTS.iter().enumerate().skip(1) {
        let next = chain[parent as usize].f_matmul(&local.f_select(1, i as i64)?)?;
        chain.push(next);
    }
    let transforms = Tensor::f_stack(&chain, 1)?; // [B, 24, 4, 4]
    let posed = transforms.f_narrow(2, 0, 3)?.f_select(3, 3)?; // [B, 24, 3]
    let homogeneous = Tensor::f_cat(&[&j, &Tensor::f_zeros([b, NUM_JOINTS, 1, 1], (Kind::Float, rot.device()))?], 2)?; // [B, 24, 4, 1]
    let moved = transforms.f_matmul(&homogeneous)?; // [B, 24, 4, 1]
    let offset = Tensor::f_cat(&[Tensor::f_zeros([b, NUM_JOINTS, 4, 3], (Kind::Float, rot.device()))?, moved], 3)?; // [B, 24, 4, 4]
    Ok((posed, transforms.f_sub(&offset)?))
}
