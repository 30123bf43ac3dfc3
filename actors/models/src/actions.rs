//! The action actor (`kind = "actions"`): LART on the 3D people of each camera.
//!
//! It reads the pose actor's people (joined with their frames when the model reads
//! appearance) and keeps, per camera, a ring of the last `frame_length` (125) frames: per
//! person a token with LART's pose vector (229, normalized with the checkpoint's statistics),
//! joints vector (135) and appearance feature (2048: the last stage of a Hiera backbone on the
//! person's crop, averaged over the person's mask, refreshed every `appearance.every` frames
//! and kept on the device). Every `stride` frames it runs LART over a window:
//!
//! - `window = "causal"` (default, lowest latency): the last `frame_length` frames, actions of
//!   the current frame;
//! - `window = "centred"`: the official smoothing window (`Pose_transformer.smooth_tracks`),
//!   `context` frames before and after the `stride` key frames, so actions come `context`
//!   frames (about a second) behind.
//!
//! Inside a person's span of the window, a frame without a detection (occluded, dropped) is a
//! masked token (`mask_detection = 1`: the model fills it in), never a zero; the frames
//! before the span and after the window are padding. People are grouped `max_people` to a
//! clip (the model's P) and all clips run as one batch. The AVA scores are the sigmoid of the
//! logits averaged over `[kf − average, kf + average)` of the key frame kf (LART's evaluation,
//! `avg.W`), and the `top_k` above `min_score` are reported per person with their AVA ids and
//! names.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use ocellus_kernels::preprocess::{Fit, Normalization, Resize, Transform};
use ocellus_perception::backbone::Backbone;
use ocellus_perception::hiera::HieraConfig;
use ocellus_perception::lart::pose_vector::{self, JOINTS_DIM, MeanStd, POSE_DIM};
use ocellus_perception::lart::transformer::LartInput;
use ocellus_perception::lart::{Lart, LartConfig, ava};
use ocellus_perception::model::{Loaded, ModelSpec};
use ocellus_runtime::edge::{DropPolicy, EdgePolicy};
use ocellus_runtime::kind::{
    BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView, WeightsKeys,
};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, Join, OutputPort, Ports};
use ocellus_runtime::{
    ActionScore, Actions, Frame, FrameMeta, Packet, PersonActions, PersonPose, PortType, Poses, Result, RuntimeError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{bad_frame, failed, model_spec, nested_model_spec};

/// Frames held per camera while their people are computed.
const FRAME_BUFFER: usize = 32;
/// People messages waiting for their frame, per camera.
const POSES_BUFFER: usize = 8;
/// The most people one window takes (the position embedding's).
const MAX_PEOPLE: i64 = 10;
/// The appearance backbone's input side.
const APPEARANCE_SIDE: i64 = 224;

/// Which frames a window covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// The last `frame_length` frames; actions of the newest.
    #[default]
    Causal,
    /// `context` frames on either side of the key frames (the official smoothing); actions
    /// `context` frames behind.
    #[serde(alias = "centered")]
    Centred,
}

/// `appearance = { model = "hiera_huge_224", weights = "...", every = 6 }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppearanceEntry {
    /// A Hiera image backbone whose last stage is as wide as the model's appearance input
    /// (2048: `hiera_huge_224`).
    #[serde(default = "default_appearance_model")]
    pub model: String,
    /// Its weights (`ocellus weights import --model hiera_huge_224`).
    pub weights: Option<PathBuf>,
    /// Seeded random weights instead (demos and tests).
    #[serde(default)]
    pub allow_random_weights: bool,
    /// Seed of random weights.
    #[serde(default)]
    pub seed: i64,
    /// Frames between two features of a person (the official demo's 6: 5 Hz at 30 fps); the
    /// frames in between reuse the last one.
    #[serde(default = "default_every")]
    pub every: u64,
    /// Box padding per side, a fraction of the box's longer side, in [0, 1].
    #[serde(default = "default_padding")]
    pub padding: f64,
}

fn default_appearance_model() -> String {
    "hiera_huge_224".into()
}
fn default_every() -> u64 {
    6
}
fn default_padding() -> f64 {
    0.1
}

/// `[[actor]] kind = "actions"` (with `model = "lart"` and `weights`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionsEntry {
    /// The pose vector's statistics (PHALP's `3D/mean_std.npy`, or a safetensors file with
    /// `mean` and `std`); needed with real weights, identity with random ones.
    pub mean_std: Option<PathBuf>,
    /// Frames between two inferences.
    #[serde(default = "default_stride")]
    pub stride: u64,
    /// `causal` (default) or `centred`.
    #[serde(default)]
    pub window: WindowKind,
    /// Frames before and after the key frames of a centred window (the official 32).
    #[serde(default = "default_context")]
    pub context: u64,
    /// Half-width of the averaging of scores around the key frame (LART's `avg.W`; 0: the key
    /// frame alone).
    #[serde(default = "default_average")]
    pub average: u64,
    /// Actions reported per person.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Least score of a reported action, in [0, 1].
    #[serde(default)]
    pub min_score: f64,
    /// People per clip (the model's P; the released model was trained with 5, its demo uses
    /// 1); more people run as more clips of the same batch.
    #[serde(default = "default_max_people")]
    pub max_people: i64,
    /// Frames a person is still predicted after their last detection (masked tokens).
    #[serde(default = "default_keep_lost")]
    pub keep_lost: u64,
    /// Input features of the checkpoint besides the pose (`extra_feat.enable`; the released
    /// model reads `joints_3D` and `apperance`).
    pub features: Option<Vec<String>>,
    /// Transformer layers of the checkpoint (the released model has 16).
    pub depth: Option<usize>,
    /// The appearance backbone (needed when the model reads `apperance`).
    pub appearance: Option<AppearanceEntry>,
    /// LART's `ava_valid_classes.npy`: the AVA id of each output (ascending ids by default).
    pub classes: Option<PathBuf>,
}

fn default_stride() -> u64 {
    6
}
fn default_context() -> u64 {
    32
}
fn default_average() -> u64 {
    6
}
fn default_top_k() -> usize {
    5
}
fn default_max_people() -> i64 {
    5
}
fn default_keep_lost() -> u64 {
    30
}

/// The appearance backbone of an actions actor.
#[derive(Debug, Clone, PartialEq)]
pub struct AppearanceSpec {
    /// The backbone.
    pub model: ModelSpec,
    /// Frames between features.
    pub every: u64,
    /// Box padding.
    pub padding: f64,
}

/// What the action actor runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionsSpec {
    /// LART.
    pub model: ModelSpec,
    /// Its configuration (official names).
    pub config: LartConfig,
    /// The pose vector's statistics.
    pub mean_std: Option<PathBuf>,
    /// Frames between inferences.
    pub stride: u64,
    /// Window kind.
    pub window: WindowKind,
    /// Centred context.
    pub context: u64,
    /// Score averaging half-width.
    pub average: u64,
    /// Actions per person.
    pub top_k: usize,
    /// Least score.
    pub min_score: f64,
    /// Frames a lost person is still predicted.
    pub keep_lost: u64,
    /// Appearance.
    pub appearance: Option<AppearanceSpec>,
    /// `ava_valid_classes.npy`.
    pub classes: Option<PathBuf>,
}

/// The `actions` kind.
pub struct ActionsKind;

impl NodeKind for ActionsKind {
    const NAME: &'static str = "actions";
    const DOC: &'static str =
        "LART actions per person over tracklets: reads 3D people (and frames), writes AVA actions";
    const MODEL: ModelUse = ModelUse::Required;
    type Config = ActionsEntry;

    fn configure(common: &Common, e: ActionsEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let model = model_spec::<Lart>(common)?;
        let mut config = LartConfig::default();
        if let Some(features) = &e.features {
            if let Some(bad) = features.iter().find(|f| !matches!(f.as_str(), "joints_3D" | "apperance")) {
                return Err(Issue::at("features", format!("{bad:?}: LART reads `joints_3D` and `apperance`")));
            }
            let names: Vec<&str> = features.iter().map(String::as_str).collect();
            config = config.with_features(&names);
        }
        if let Some(depth) = e.depth {
            if depth == 0 {
                return Err(Issue::at("depth", "must be at least 1"));
            }
            config.transformer.depth = depth;
        }
        if !(1..=MAX_PEOPLE).contains(&e.max_people) {
            return Err(Issue::at("max_people", format!("{}: must be in 1..={MAX_PEOPLE}", e.max_people)));
        }
        config.max_people = e.max_people;
        let t = config.frame_length as u64;
        if e.stride == 0 || e.stride > t {
            return Err(Issue::at("stride", format!("{}: must be in 1..={t}", e.stride)));
        }
        if e.window == WindowKind::Centred && 2 * e.context + e.stride >= t {
            return Err(Issue::at(
                "context",
                format!("2 · context + stride = {} must be below the window's {t} frames", 2 * e.context + e.stride),
            ));
        }
        if e.average >= t {
            return Err(Issue::at("average", format!("{}: must be below {t}", e.average)));
        }
        if e.top_k == 0 {
            return Err(Issue::at("top_k", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&e.min_score) {
            return Err(Issue::at("min_score", format!("{}: must be in [0, 1]", e.min_score)));
        }
        match (&e.mean_std, &common.weights) {
            (Some(p), _) if !p.exists() => return Err(Issue::at("mean_std", format!("{} not found", p.display()))),
            (None, Some(WeightsKeys::File(_))) => {
                return Err(Issue::at(
                    "mean_std",
                    "needs the pose statistics of the checkpoint (PHALP's `3D/mean_std.npy`) with real weights",
                ));
            }
            _ => {}
        }
        if let Some(p) = e.classes.as_ref().filter(|p| !p.exists()) {
            return Err(Issue::at("classes", format!("{} not found", p.display())));
        }
        let appearance = match (e.appearance, config.uses_apperance()) {
            (Some(a), true) => Some(appearance_spec(common, a, config.extra_feat.apperance.dim)?),
            (None, true) => {
                return Err(Issue::at(
                    "appearance",
                    "the model reads appearance (`apperance` in features): give \
                     `appearance = { model = \"hiera_huge_224\", weights = \"...\" }`",
                ));
            }
            (Some(_), false) => {
                return Err(Issue::at("appearance", "the model does not read appearance (`features`)"));
            }
            (None, false) => None,
        };
        Ok(Arc::new(ActionsSpec {
            model,
            config,
            mean_std: e.mean_std,
            stride: e.stride,
            window: e.window,
            context: e.context,
            average: e.average,
            top_k: e.top_k,
            min_score: e.min_score,
            keep_lost: e.keep_lost,
            appearance,
            classes: e.classes,
        }))
    }
}

/// The backbone that `appearance = { ... }` describes, checked to give `width` channels.
fn appearance_spec(common: &Common, a: AppearanceEntry, width: i64) -> Result<AppearanceSpec, Issue> {
    let at = |key: &str, m: String| Issue::at(key, m).inside("appearance");
    let weights = crate::nested_weights(a.weights.as_ref(), a.allow_random_weights, a.seed)
        .map_err(|i| i.inside("appearance"))?;
    let Some(hiera) = HieraConfig::by_name(&a.model).filter(|c| c.input_size.len() == 2) else {
        return Err(at("model", format!("{:?}: needs a Hiera image backbone (hiera_huge_224)", a.model)));
    };
    let last = hiera.embed_dim as f64 * hiera.dim_mul.powi(hiera.stages.len() as i32 - 1);
    if last as i64 != width {
        return Err(at(
            "model",
            format!("{}'s last stage has {last} channels; the model reads {width} (hiera_huge_224 has 2048)", a.model),
        ));
    }
    if a.every == 0 {
        return Err(at("every", "must be at least 1".into()));
    }
    if !(0.0..=1.0).contains(&a.padding) {
        return Err(at("padding", format!("{}: must be in [0, 1]", a.padding)));
    }
    let model = nested_model_spec::<Backbone>(&a.model, &weights, common).map_err(|i| i.inside("appearance"))?;
    Ok(AppearanceSpec { model, every: a.every, padding: a.padding })
}

/// The action actor's ports: people in (joined with their frames when appearance is read),
/// actions out.
pub fn ports(with_frames: bool) -> Ports {
    let queue = |depth| EdgePolicy::Queue { depth, drop: DropPolicy::Oldest };
    let mut inputs = vec![InputPort::new("poses", &[PortType::Poses], queue(POSES_BUFFER))];
    if with_frames {
        inputs.push(InputPort::new("frames", &[PortType::Frame], queue(FRAME_BUFFER)));
    }
    Ports {
        inputs,
        outputs: vec![OutputPort { name: "actions", ty: PortType::Actions }],
        join: with_frames.then_some(Join { primary: "poses", with: "frames", capacity: FRAME_BUFFER }),
    }
}

impl ConfiguredNode for ActionsSpec {
    fn ports(&self) -> Ports {
        ports(self.appearance.is_some())
    }

    fn build(&self, _ctx: &mut BuildContext) -> Result<StageFactory> {
        let spec = self.clone();
        Ok(stage_factory(move || ActionsStage::new(spec.clone())))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// One person on one frame.
#[derive(Debug)]
struct Token {
    /// The raw pose vector (229).
    pose: Vec<f32>,
    /// The joints vector (135), when the model reads it.
    joints: Option<Vec<f32>>,
    /// The appearance feature `[2048]` on the device, when the model reads it.
    appearance: Option<Tensor>,
}

/// The people of one frame.
#[derive(Debug)]
struct FrameTokens {
    meta: FrameMeta,
    people: BTreeMap<u32, Token>,
}

/// What the actor remembers of a camera.
#[derive(Debug, Default)]
struct CameraState {
    /// The last `frame_length` frames, by sequence number.
    frames: VecDeque<FrameTokens>,
    /// Frames handled.
    handled: u64,
    /// Each person's last appearance feature and the frame it was computed on.
    appearance: HashMap<u32, (u64, Tensor)>,
}

impl CameraState {
    fn get(&self, seq: u64) -> Option<&FrameTokens> {
        let first = self.frames.front()?.meta.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.frames.get(i).filter(|f| f.meta.seq == seq)
    }
}

struct Running {
    lart: Loaded<Lart>,
    mean_std: MeanStd,
    appearance: Option<(Loaded<Backbone>, Transform)>,
    classes: Vec<(u16, String)>,
}

/// Actions of the people of every camera (the models load when the stage starts).
pub struct ActionsStage {
    spec: ActionsSpec,
    running: Option<Running>,
    cameras: HashMap<Arc<str>, CameraState>,
}

/// The classes of the model's outputs: LART's `ava_valid_classes.npy` (AVA ids) when given,
/// else ascending AVA ids.
fn classes(spec: &ActionsSpec, outputs: i64) -> Result<Vec<(u16, String)>> {
    let name_of = |id: u16| {
        ava::VALID_CLASSES
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("AVA action {id}"), |(_, n)| (*n).into())
    };
    let ids: Vec<u16> = match &spec.classes {
        Some(path) => {
            let t = Tensor::read_npy(path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
            let ids = Vec::<i64>::try_from(t.f_to_kind(Kind::Int64)?.f_reshape([-1])?)?;
            ids.into_iter()
                .map(|i| u16::try_from(i).ok().filter(|i| (1..=ava::NUM_AVA_CLASSES).contains(i)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| failed(format!("{}: AVA ids must be in 1..=80", path.display())))?
        }
        None if outputs == ava::VALID_CLASSES.len() as i64 => ava::VALID_CLASSES.iter().map(|(i, _)| *i).collect(),
        None => (1..=ava::NUM_AVA_CLASSES).take(outputs as usize).collect(),
    };
    if ids.len() as i64 != outputs {
        return Err(failed(format!("{} class ids for {outputs} outputs", ids.len())));
    }
    Ok(ids.into_iter().map(|i| (i, name_of(i))).collect())
}

impl ActionsStage {
    /// A stage running `spec`.
    pub fn new(spec: ActionsSpec) -> Self {
        Self { spec, running: None, cameras: HashMap::new() }
    }

    fn run(&self) -> Result<&Running> {
        self.running.as_ref().ok_or_else(|| RuntimeError::Failed("not started".into()))
    }

    /// The tokens of the people of one frame; appearance computed for those whose feature is
    /// `every` frames old or missing.
    fn tokens(&mut self, poses: &Poses, frame: Option<&Frame>) -> Result<BTreeMap<u32, Token>> {
        let config = &self.spec.config;
        let (uses_joints, uses_appearance) = (config.uses_joints(), config.uses_apperance());
        let mut out = BTreeMap::new();
        for person in &poses.people {
            let pose =
                pose_vector::pose_shape(&person.global_orient, &person.body_pose, &person.betas, person.translation)
                    .map_err(|e| bad_frame(&poses.meta, e))?;
            let joints = match (uses_joints, &person.joints) {
                (false, _) => None,
                (true, Some(j)) => Some(joints_vector(person, j).map_err(|e| bad_frame(&poses.meta, e))?),
                (true, None) => {
                    return Err(bad_frame(
                        &poses.meta,
                        "LART reads the 45 joints: give the pose3d actor the SMPL body model (`smpl`)",
                    ));
                }
            };
            out.insert(person.id, Token { pose, joints, appearance: None });
        }
        if uses_appearance {
            let frame = frame.ok_or_else(|| bad_frame(&poses.meta, "appearance needs the frame"))?;
            let every = self.spec.appearance.as_ref().map_or(1, |a| a.every);
            let seq = poses.meta.seq;
            let cached = self.cameras.get(&poses.meta.camera).map(|s| &s.appearance);
            let stale: Vec<&PersonPose> = poses
                .people
                .iter()
                .filter(|p| cached.and_then(|c| c.get(&p.id)).is_none_or(|(at, _)| seq.saturating_sub(*at) >= every))
                .collect();
            let features = match stale.is_empty() {
                true => None,
                false => Some(self.appearance(poses, frame, &stale)?), // [N, C]
            };
            let state = self.cameras.entry(poses.meta.camera.clone()).or_default();
            if let Some(features) = features {
                for (i, p) in stale.iter().enumerate() {
                    state.appearance.insert(p.id, (seq, features.f_get(i as i64)?));
                }
            }
            for (id, token) in &mut out {
                token.appearance = state.appearance.get(id).map(|(_, f)| f.shallow_clone());
            }
        }
        Ok(out)
    }

    /// Appearance features `[N, C]` of `people`: the backbone's last stage on each person's
    /// square crop (Pillow-bicubic to 224², ImageNet statistics), averaged over the cells the
    /// person's mask covers (weighted by coverage; the whole crop without a mask).
    fn appearance(&self, poses: &Poses, frame: &Frame, people: &[&PersonPose]) -> Result<Tensor> {
        let _span = trace_span!("lart_appearance", people = people.len()).entered();
        let run = self.run()?;
        let (Some((backbone, transform)), Some(spec)) = (&run.appearance, &self.spec.appearance) else {
            return Err(RuntimeError::Failed("no appearance backbone".into()));
        };
        let device = spec.model.device;
        let rgb = frame.layout.to_rgb8(&frame.pixels).map_err(|e| bad_frame(&frame.meta, e))?;
        let (w, h) = (frame.layout.width, frame.layout.height);
        let labels = poses.labels.as_ref().filter(|l| l.len() == 2 * w * h);
        let (mut crops, mut masks) = (Vec::with_capacity(people.len()), Vec::with_capacity(people.len()));
        for p in people {
            let b = p.bbox.map(|v| v.max(0.0) as u32);
            let pixel_box = ocellus_kernels::masks::PixelBox { x0: b[0], y0: b[1], x1: b[2], y1: b[3] };
            let (x0, y0, side) = crate::labeler::square(&pixel_box, spec.padding);
            let (crop, mask) = square_crop(&rgb, labels.map(|l| &l[..]), (w, h), p.id, (x0, y0, side));
            let side = side as usize;
            crops.push(transform.apply_rgb8(&crop, side, side, device)?); // [1, 3, 224, 224]
            masks.push(Tensor::from_slice(&mask).f_view([1, 1, side as i64, side as i64])?.f_to_device(device)?);
        }
        let x = Tensor::f_cat(&crops, 0)?.f_to_kind(spec.model.dtype.kind())?; // [N, 3, 224, 224]
        let maps = backbone.forward(&x).map_err(failed)?;
        let last = maps.last().ok_or_else(|| failed("the backbone returned no feature map"))?; // [N, C, h, w]
        pool_over_masks(last, &masks)
    }

    /// Runs LART on the window ending at `seq` of `camera`, if one is due.
    fn infer(&self, camera: &Arc<str>, seq: u64) -> Result<Option<Actions>> {
        let Some(state) = self.cameras.get(camera) else { return Ok(None) };
        let run = self.run()?;
        let config = &self.spec.config;
        let t_len = config.frame_length as u64;
        let (key, first) = match self.spec.window {
            WindowKind::Causal => (seq, seq.saturating_sub(t_len - 1)),
            WindowKind::Centred => {
                let Some(key) = seq.checked_sub(self.spec.context) else { return Ok(None) };
                (key, (key + 1).saturating_sub(self.spec.stride + self.spec.context))
            }
        };
        let Some(key_frame) = state.get(key) else { return Ok(None) };
        // Each person's span: from their first detection in the window to `keep_lost` frames
        // after their last one (a person out of sight is presumed there, masked), at most the
        // newest frame; only people so present on the key frame are predicted.
        let mut spans: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for f in state.frames.iter().filter(|f| f.meta.seq >= first && f.meta.seq <= seq) {
            for id in f.people.keys() {
                let s = spans.entry(*id).or_insert((f.meta.seq, f.meta.seq));
                s.1 = f.meta.seq;
            }
        }
        spans.retain(|_, (start, last)| *start <= key && *last + self.spec.keep_lost >= key);
        for (_, last) in spans.values_mut() {
            *last = (*last + self.spec.keep_lost).min(seq);
        }
        if spans.is_empty() {
            return Ok(Some(Actions { meta: key_frame.meta.clone(), people: Vec::new() }));
        }
        let _span = trace_span!("lart_window", camera = %camera, key, people = spans.len()).entered();
        let p = config.max_people as usize;
        let people: Vec<(u32, (u64, u64))> = spans.into_iter().collect();
        let clips: Vec<&[(u32, (u64, u64))]> = people.chunks(p).collect();
        let (b, t, pn) = (clips.len(), t_len as usize, p);
        let app_dim = config.extra_feat.apperance.dim as usize;
        let device = self.spec.model.device;
        let mut pose = vec![0f32; b * t * pn * POSE_DIM];
        let mut joints = vec![0f32; b * t * pn * JOINTS_DIM];
        let mut has = vec![0f32; b * t * pn];
        let mut masked = vec![0f32; b * t * pn];
        let zero_app = Tensor::f_zeros([app_dim as i64], (Kind::Float, device))?;
        let mut app: Vec<Tensor> = Vec::new();
        let mut starts = Vec::with_capacity(b);
        for (ci, clip) in clips.iter().enumerate() {
            // Frame 0 of the clip: its earliest span start (the padding after the window).
            let start = clip.iter().map(|(_, (s, _))| *s).min().unwrap_or(first);
            starts.push(start);
            for ti in 0..t {
                let s = start + ti as u64;
                let frame = state.get(s).filter(|_| s <= seq);
                for pi in 0..pn {
                    let slot = (ci * t + ti) * pn + pi;
                    let token = clip.get(pi).and_then(|(id, (from, to))| {
                        let inside = s >= *from && s <= *to;
                        inside.then(|| frame.and_then(|f| f.people.get(id)))
                    });
                    match token {
                        None => {}
                        Some(None) => {
                            has[slot] = 1.0;
                            masked[slot] = 1.0;
                        }
                        Some(Some(tok)) => {
                            has[slot] = 1.0;
                            pose[slot * POSE_DIM..(slot + 1) * POSE_DIM].copy_from_slice(&tok.pose);
                            if let Some(j) = &tok.joints {
                                joints[slot * JOINTS_DIM..(slot + 1) * JOINTS_DIM].copy_from_slice(j);
                            }
                        }
                    }
                    if config.uses_apperance() {
                        let feature = match token {
                            Some(Some(tok)) => tok.appearance.as_ref().map(Tensor::shallow_clone),
                            _ => None,
                        };
                        app.push(feature.unwrap_or_else(|| zero_app.shallow_clone()));
                    }
                }
            }
        }
        let shape = |c: usize| [b as i64, t as i64, pn as i64, c as i64];
        let to = |v: &[f32], c: usize| -> Result<Tensor> {
            Ok(Tensor::from_slice(v).f_view(shape(c))?.f_to_device(device)?) // [B, T, P, c]
        };
        let kind = self.spec.model.dtype.kind();
        let input = LartInput {
            pose_shape: run.mean_std.normalize(&to(&pose, POSE_DIM)?).map_err(failed)?.f_to_kind(kind)?,
            joints_3d: match config.uses_joints() {
                true => Some(to(&joints, JOINTS_DIM)?.f_to_kind(kind)?),
                false => None,
            },
            apperance_emb: match config.uses_apperance() {
                true => Some(Tensor::f_stack(&app, 0)?.f_view(shape(app_dim))?.f_to_kind(kind)?),
                false => None,
            },
            has_detection: to(&has, 1)?.f_to_kind(kind)?,
            mask_detection: to(&masked, 1)?.f_to_kind(kind)?,
        };
        let output = tch::no_grad(|| run.lart.forward(&input)).map_err(failed)?;
        let scores = output.ava_logits.f_sigmoid()?.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?; // [B·T·P, C]
        let classes = scores.size()[1] as usize;
        let scores = Vec::<f32>::try_from(scores.f_reshape([-1])?)?;
        let mut out = Vec::with_capacity(people.len());
        for (ci, clip) in clips.iter().enumerate() {
            for (pi, (id, (from, to))) in clip.iter().enumerate() {
                // LART's evaluation: the mean of the sigmoid over [kf − W, kf + W) of the frames the
                // person has a token on (kf alone with W = 0).
                let w = self.spec.average;
                let (lo, hi) = match w {
                    0 => (key, key),
                    w => (key.saturating_sub(w).max(*from), (key + w - 1).min(*to).min(seq)),
                };
                let mut mean = vec![0f32; classes];
                let mut n = 0f32;
                for s in lo..=hi {
                    let ti = (s - starts[ci]) as usize;
                    let row = ((ci * t + ti) * pn + pi) * classes;
                    for (m, v) in mean.iter_mut().zip(&scores[row..row + classes]) {
                        *m += v;
                    }
                    n += 1.0;
                }
                let mut ranked: Vec<(usize, f32)> = mean.into_iter().map(|v| v / n).enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                let actions = ranked
                    .into_iter()
                    .filter(|(_, s)| f64::from(*s) >= self.spec.min_score)
                    .take(self.spec.top_k)
                    .map(|(i, score)| {
                        let (ava_id, name) = run.classes.get(i).cloned().unwrap_or((0, format!("output {i}")));
                        ActionScore { ava_id, name, score }
                    })
                    .collect();
                out.push(PersonActions { id: *id, detected: key_frame.people.contains_key(id), actions });
            }
        }
        Ok(Some(Actions { meta: key_frame.meta.clone(), people: out }))
    }
}

/// Each person's feature `[N, C]` from feature maps `[N, C, h, w]`: the mean of the cells
/// weighted by how much of each cell the person's mask `[1, 1, S, S]` covers (the crop's
/// square, any side; the plain mean when the mask is empty).
pub fn pool_over_masks(maps: &Tensor, masks: &[Tensor]) -> Result<Tensor> {
    let (_, _, fh, fw) = maps.size4()?;
    let mut pooled = Vec::with_capacity(masks.len());
    for (i, mask) in masks.iter().enumerate() {
        let cover = mask.f_adaptive_avg_pool2d([fh, fw])?.f_reshape([1, 1, fh * fw])?; // [1, 1, h·w]
        let total = cover.f_sum(Kind::Float)?.double_value(&[]);
        let weights = if total > 0.0 { cover.f_div_scalar(total)? } else { cover.f_fill(1.0 / (fh * fw) as f64)? };
        let f = maps.f_get(i as i64)?.f_to_kind(Kind::Float)?.f_reshape([1, -1, fh * fw])?; // [1, C, h·w]
        pooled.push(f.f_mul(&weights)?.f_sum_dim_intlist(&[-1i64][..], false, None::<Kind>)?); // [1, C]
    }
    Ok(Tensor::f_cat(&pooled, 0)?) // [N, C]
}

/// The joints vector of a person: their 45 joints back in the body model's frame (the pose
/// actor moved them by the translation), plus PHALP's location.
fn joints_vector(person: &PersonPose, joints: &[[f32; 3]]) -> ocellus_perception::Result<Vec<f32>> {
    let t = person.translation;
    let raw: Vec<[f32; 3]> = joints.iter().map(|j| [j[0] - t[0], j[1] - t[1], j[2] - t[2]]).collect();
    pose_vector::joints_3d(&raw, t)
}

/// The `side × side` square at `(x0, y0)` of a packed RGB frame (black outside it) and the
/// person's mask in it (1 on pixels labelled `id`; 1 everywhere without labels).
pub fn square_crop(
    rgb: &[u8],
    labels: Option<&[u8]>,
    (w, h): (usize, usize),
    id: u32,
    (x0, y0, side): (i64, i64, i64),
) -> (Vec<u8>, Vec<f32>) {
    let n = side.max(1) as usize;
    let mut crop = vec![0u8; 3 * n * n];
    let mut mask = vec![if labels.is_some() { 0f32 } else { 1f32 }; n * n];
    for r in 0..n {
        let y = y0 + r as i64;
        if y < 0 || y >= h as i64 {
            continue;
        }
        for c in 0..n {
            let x = x0 + c as i64;
            if x < 0 || x >= w as i64 {
                continue;
            }
            let at = y as usize * w + x as usize;
            crop[3 * (r * n + c)..3 * (r * n + c) + 3].copy_from_slice(&rgb[3 * at..3 * at + 3]);
            if let Some(l) = labels
                && u32::from(u16::from_le_bytes([l[2 * at], l[2 * at + 1]])) == id
            {
                mask[r * n + c] = 1.0;
            }
        }
    }
    (crop, mask)
}

impl Stage for ActionsStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        let lart = self.spec.model.load_with::<Lart>(&self.spec.config).map_err(failed)?;
        let mean_std = match &self.spec.mean_std {
            Some(path) => MeanStd::load(path).map_err(failed)?,
            None => {
                tracing::warn!("actions: no pose statistics (`mean_std`): pose vectors are not normalized");
                MeanStd::identity()
            }
        };
        let appearance = match &self.spec.appearance {
            Some(a) => {
                let backbone = a.model.load::<Backbone>().map_err(failed)?;
                let transform = Transform {
                    fit: Fit::Stretch { height: APPEARANCE_SIDE, width: APPEARANCE_SIDE },
                    resize: Resize::PilBicubic,
                    norm: Normalization::IMAGENET,
                };
                Some((backbone, transform))
            }
            None => None,
        };
        let classes = classes(&self.spec, lart.config().ava_outputs())?;
        self.running = Some(Running { lart, mean_std, appearance, classes });
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let (poses, frame) = match (input.packet, input.with) {
            (Packet::Poses(p), Some(Packet::Frame(f))) => (p, Some(f)),
            (Packet::Poses(p), None) if self.spec.appearance.is_none() => (p, None),
            _ => return Err(RuntimeError::BadInput("actions takes people (joined with their frame)".into())),
        };
        let _span = trace_span!("actions", camera = %poses.meta.camera, seq = poses.meta.seq).entered();
        let camera = poses.meta.camera.clone();
        let seq = poses.meta.seq;
        // A camera that starts over (a new stream, a replay) starts a new history.
        if self.cameras.get(&camera).and_then(|s| s.frames.back()).is_some_and(|f| f.meta.seq >= seq) {
            self.cameras.remove(&camera);
        }
        let people = self.tokens(&poses, frame.as_ref())?;
        let t_len = self.spec.config.frame_length as u64;
        let state = self.cameras.entry(camera.clone()).or_default();
        state.frames.push_back(FrameTokens { meta: poses.meta.clone(), people });
        while state.frames.front().is_some_and(|f| f.meta.seq + t_len <= seq) {
            state.frames.pop_front();
        }
        // Appearance of people not seen for a whole window is forgotten.
        state.appearance.retain(|_, (at, _)| *at + t_len > seq);
        state.handled += 1;
        if (state.handled - 1).is_multiple_of(self.spec.stride)
            && let Some(actions) = self.infer(&camera, seq)?
        {
            ctx.emit(Packet::Actions(Arc::new(actions)));
        }
        Ok(())
    }
}
