//! The 3D pose actor (`kind = "pose3d"`): HMR 2.0 on the people SAM 2 tracks.
//!
//! It reads frames and the tracks computed from them (joined by the runtime), and for every
//! visible track that is a person — labelled as one of `people` by a labeler, or not labelled
//! at all — cuts the crop PHALP cuts for HMR 2.0 (the box grown to 192:256, its square, an
//! affine warp bit-exact to OpenCV's, ImageNet statistics), runs the crops of a frame in
//! batches of `batch`, and places each body in the frame camera as PHALP does (focal length
//! 5000 at the 256-px render size of the padded frame). With a SMPL model file (`smpl`, from
//! `ocellus weights import --model smpl`), it poses the body and reports 45 joints in the
//! camera frame; without one, joints are reported as unavailable, never as zeros. Rerun shows
//! each person at `world/<camera>/people/<id>` in the space of the camera, whose pinhole is
//! logged on its image so that the skeletons overlay it.

use std::path::PathBuf;
use std::sync::Arc;

use nalgebra::{Vector2, Vector3};
use ocellus_perception::hmr2::camera::{BoxInFrame, FrameCamera};
use ocellus_perception::hmr2::{Hmr2, preprocess};
use ocellus_perception::model::{Loaded, ModelSpec};
use ocellus_perception::smpl::Smpl;
use ocellus_runtime::edge::{DropPolicy, EdgePolicy};
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, Join, OutputPort, Ports};
use ocellus_runtime::{Packet, PersonPose, PortType, Poses, Result, RuntimeError};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{bad_frame, failed, model_spec};

/// Frames held per camera while their tracks are computed.
const FRAME_BUFFER: usize = 32;
/// Tracks waiting for their frame, per camera.
const TRACKS_BUFFER: usize = 8;
/// The joint LART's 45 end with: all zero (then moved with the body's translation).
const ZERO_JOINTS: usize = 1;

/// `[[actor]] kind = "pose3d"` (with `model = "hmr2"` and `weights`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoseEntry {
    /// The SMPL body model converted by `ocellus weights import --model smpl` (your own
    /// licensed file); without it there are no joints.
    pub smpl: Option<PathBuf>,
    /// Labels that are people (a track without a label counts as one).
    #[serde(default = "default_people")]
    pub people: Vec<String>,
    /// Crops per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Also output each person's SMPL mesh (6890 vertices) and show it in Rerun (needs `smpl`).
    #[serde(default)]
    pub mesh: bool,
    /// Without a `smpl` file, a seeded stand-in body model (demos before SMPL is imported:
    /// joints, meshes and actions run, and mean nothing). `ocellus run` says so in the log
    /// and in the recording.
    #[serde(default)]
    pub allow_random_smpl: bool,
}

fn default_people() -> Vec<String> {
    vec!["person".into()]
}
fn default_batch() -> usize {
    8
}

/// What the pose actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PoseSpec {
    /// HMR 2.0.
    pub model: ModelSpec,
    /// The converted SMPL file.
    pub smpl: Option<PathBuf>,
    /// A seeded stand-in body model instead (`allow_random_smpl`).
    pub random_smpl: bool,
    /// Labels that are people.
    pub people: Vec<String>,
    /// Crops per forward.
    pub batch: usize,
    /// Output meshes.
    pub mesh: bool,
}

/// The `pose3d` kind.
pub struct PoseKind;

impl NodeKind for PoseKind {
    const NAME: &'static str = "pose3d";
    const DOC: &'static str = "HMR 2.0 3D people on tracks: SMPL parameters, camera translation, joints";
    const MODEL: ModelUse = ModelUse::Required;
    type Config = PoseEntry;

    fn configure(common: &Common, e: PoseEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let model = model_spec::<Hmr2>(common)?;
        if let Some(path) = e.smpl.as_ref().filter(|p| !p.exists()) {
            return Err(Issue::at(
                "smpl",
                format!(
                    "{} not found (convert your SMPL file with `ocellus weights import --model smpl`)",
                    path.display()
                ),
            ));
        }
        if e.people.is_empty() || e.people.iter().any(|p| p.trim().is_empty()) {
            return Err(Issue::at("people", "needs at least one non-empty label"));
        }
        if e.batch == 0 {
            return Err(Issue::at("batch", "must be at least 1"));
        }
        if e.smpl.is_some() && e.allow_random_smpl {
            return Err(Issue::at("allow_random_smpl", "give either `smpl` or `allow_random_smpl`, not both"));
        }
        if e.mesh && e.smpl.is_none() && !e.allow_random_smpl {
            return Err(Issue::at("mesh", "needs the body model (`smpl`)"));
        }
        Ok(Arc::new(PoseSpec {
            model,
            smpl: e.smpl,
            random_smpl: e.allow_random_smpl,
            people: e.people,
            batch: e.batch,
            mesh: e.mesh,
        }))
    }
}

/// The pose actor's ports: tracks joined with their frames in, poses out.
pub fn ports() -> Ports {
    let queue = |depth| EdgePolicy::Queue { depth, drop: DropPolicy::Oldest };
    Ports {
        inputs: vec![
            InputPort::new("frames", &[PortType::Frame], queue(FRAME_BUFFER)),
            InputPort::new("tracks", &[PortType::Tracks], queue(TRACKS_BUFFER)),
        ],
        outputs: vec![OutputPort { name: "poses", ty: PortType::Poses }],
        join: Some(Join { primary: "tracks", with: "frames", capacity: FRAME_BUFFER }),
    }
}

impl ConfiguredNode for PoseSpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, _ctx: &mut BuildContext) -> Result<StageFactory> {
        let spec = self.clone();
        Ok(stage_factory(move || PoseStage::new(spec.clone())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Running {
    hmr2: Loaded<Hmr2>,
    smpl: Option<Smpl>,
    /// The mesh's triangles (with `mesh`).
    faces: Option<Arc<[[u32; 3]]>>,
}

/// 3D people for the tracks of every frame (the models load when the stage starts).
pub struct PoseStage {
    spec: PoseSpec,
    running: Option<Running>,
    camera: FrameCamera,
}

impl PoseStage {
    /// A stage running `spec`.
    pub fn new(spec: PoseSpec) -> Self {
        Self { spec, running: None, camera: FrameCamera::default() }
    }

    /// Whether a track is a person: labelled as one of `people`, or not labelled.
    fn is_person(&self, label: Option<&str>) -> bool {
        label.is_none_or(|l| self.spec.people.iter().any(|p| p == l))
    }
}

fn values<const N: usize>(t: &Tensor) -> Result<[f32; N]> {
    let v = Vec::<f32>::try_from(t.f_to_kind(Kind::Float)?.f_reshape([-1])?)?;
    v.try_into().map_err(|v: Vec<f32>| RuntimeError::Failed(format!("expected {N} values, got {}", v.len())))
}

impl Stage for PoseStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let hmr2 = self.spec.model.load::<Hmr2>().map_err(failed)?;
        let smpl = match &self.spec.smpl {
            Some(path) => Some(Smpl::load(path, self.spec.model.device).map_err(failed)?),
            None if self.spec.random_smpl => {
                tracing::warn!("pose3d: a SEEDED STAND-IN body model: joints, meshes and actions mean nothing");
                Some(Smpl::seeded(0, self.spec.model.device).map_err(failed)?)
            }
            None => {
                tracing::warn!("pose3d: no SMPL model file (`smpl`): SMPL parameters and camera only, no joints");
                None
            }
        };
        let faces = match (&smpl, self.spec.mesh) {
            (Some(body), true) => {
                let f = Vec::<i64>::try_from(body.faces().f_reshape([-1])?)?;
                let faces: Vec<[u32; 3]> = f
                    .chunks_exact(3)
                    .map(|t| t.iter().map(|&v| u32::try_from(v).unwrap_or(u32::MAX)).collect::<Vec<_>>())
                    .map(|t| [t[0], t[1], t[2]])
                    .collect();
                Some(faces.into())
            }
            _ => None,
        };
        self.running = Some(Running { hmr2, smpl, faces });
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let (Packet::Tracks(tracks), Some(Packet::Frame(frame))) = (input.packet, input.with) else {
            return Err(RuntimeError::BadInput("pose3d takes tracks joined with their frame".into()));
        };
        let _span = trace_span!("pose3d", camera = %frame.meta.camera, seq = frame.meta.seq).entered();
        let (w, h) = (frame.layout.width, frame.layout.height);
        let people: Vec<(u32, [f64; 4])> = tracks
            .tracks
            .iter()
            .filter(|t| !t.occluded && self.is_person(t.label.as_ref().map(|l| &*l.name)))
            .filter_map(|t| {
                t.bbox.map(|b| (t.id, [f64::from(b.x0), f64::from(b.y0), f64::from(b.x1), f64::from(b.y1)]))
            })
            .collect();
        let mut out = Vec::with_capacity(people.len());
        if !people.is_empty() {
            let rgb = frame.layout.to_rgb8(&frame.pixels).map_err(|e| bad_frame(&frame.meta, e))?;
            for chunk in people.chunks(self.spec.batch) {
                out.extend(self.estimate(&rgb, (w, h), chunk)?);
            }
        }
        let side = w.max(h) as f64;
        let scale = side / self.camera.resolution;
        let (left, top) = ((w.max(h) - w) / 2, (w.max(h) - h) / 2);
        ctx.emit(Packet::Poses(Arc::new(Poses {
            meta: frame.meta.clone(),
            width: w as u32,
            height: h as u32,
            focal_length: self.camera.focal_length * scale,
            principal_point: [side / 2.0 - left as f64, side / 2.0 - top as f64],
            people: out,
            faces: self.running.as_ref().and_then(|r| r.faces.clone()),
            labels: Some(tracks.labels.clone()),
        })));
        Ok(())
    }
}

impl PoseStage {
    /// HMR 2.0 on the crops of `people` (id, box) of one frame, one forward pass.
    fn estimate(&self, rgb: &[u8], (w, h): (usize, usize), people: &[(u32, [f64; 4])]) -> Result<Vec<PersonPose>> {
        let Some(run) = self.running.as_ref() else { return Err(RuntimeError::Failed("not started".into())) };
        let device = self.spec.model.device;
        let crops = people
            .iter()
            .map(|(_, b)| preprocess::crop(rgb, (w, h), *b))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(failed)?;
        let x = preprocess::normalize(&crops, device).map_err(failed)?.f_to_kind(self.spec.model.dtype.kind())?; // [N, 3, 256, 256]
        let output = tch::no_grad(|| run.hmr2.forward(&x)).map_err(failed)?;
        let p = &output.params;
        let (joints, vertices) = match &run.smpl {
            Some(smpl) => {
                let posed = tch::no_grad(|| smpl.forward(&p.betas, &p.global_orient, &p.body_pose)).map_err(failed)?;
                let j44 = smpl.joints44(&posed).map_err(failed)?; // [N, 44, 3]
                let zero = Tensor::f_zeros([j44.size()[0], ZERO_JOINTS as i64, 3], (Kind::Float, j44.device()))?;
                let vertices = match self.spec.mesh {
                    true => Some(posed.vertices.f_to_device(Device::Cpu)?), // [N, 6890, 3]
                    false => None,
                };
                (Some(Tensor::f_cat(&[j44, zero], 1)?.f_to_device(Device::Cpu)?), vertices) // [N, 45, 3]
            }
            None => (None, None),
        };
        // Points `[K, 3]` of row `row`, moved by `t`.
        let moved = |points: &Tensor, row: i64, t: [f32; 3]| -> Result<Vec<[f32; 3]>> {
            let v = Vec::<f32>::try_from(points.f_get(row)?.f_reshape([-1])?)?;
            Ok(v.chunks_exact(3).map(|p| [p[0] + t[0], p[1] + t[1], p[2] + t[2]]).collect())
        };
        let mut out = Vec::with_capacity(people.len());
        for (i, (id, b)) in people.iter().enumerate() {
            let row = i as i64;
            let crop_cam: [f32; 3] = values(&p.cam.f_get(row)?)?;
            let (center, side) = preprocess::crop_square(*b);
            let (c, s) = self.camera.to_render(
                BoxInFrame { center: Vector2::new(center[0], center[1]), side },
                w as u32,
                h as u32,
            );
            let t = self.camera.translation(Vector3::new(crop_cam[0], crop_cam[1], crop_cam[2]).cast(), c, s);
            let translation = [t.x as f32, t.y as f32, t.z as f32];
            let joints = joints.as_ref().map(|j| moved(j, row, translation)).transpose()?;
            let vertices = vertices.as_ref().map(|v| moved(v, row, translation).map(Into::into)).transpose()?;
            out.push(PersonPose {
                id: *id,
                global_orient: values(&p.global_orient.f_get(row)?)?,
                body_pose: Vec::<f32>::try_from(p.body_pose.f_get(row)?.f_to_kind(Kind::Float)?.f_reshape([-1])?)?,
                betas: values(&p.betas.f_get(row)?)?,
                crop_cam,
                bbox: b.map(|v| v as f32),
                translation,
                joints,
                vertices,
            });
        }
        Ok(out)
    }
}
