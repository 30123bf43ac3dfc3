//! The inpainter actor (`kind = "inpainter"`): removes tracked objects from frames, for
//! privacy.
//!
//! It reads frames and the tracks computed from them (joined by the runtime, by camera and
//! sequence number) and emits, for every frame, an [`Inpainted`] frame: the tracks to remove
//! are painted over, everything else is the frame's own pixels. Which tracks go:
//!
//! - the ids the configuration names (`tracks`), and tracks whose label (from a labeler
//!   upstream) is one of `labels` (policy);
//! - the ids an agent asks for with its `inpaint` tool ([`InpainterCommand`], on request),
//!   until it asks to restore them.
//!
//! A track's mask is grown by `dilate` pixels first (mask edges are where identity leaks). The
//! region is filled by DiffMAE (`perception::diffmae`: the masked patches sampled from the
//! visible ones) or blurred (a wide box blur, three passes, needing no weights). Occluded tracks
//! have no mask and leave nothing to remove.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use ocellus_kernels::frame_to_tensor;
use ocellus_perception::diffmae::{DiffMae, DiffMaeConfig};
use ocellus_perception::model::{Loaded, ModelSpec};
use ocellus_runtime::control::{ControlReceiver, ControlSender};
use ocellus_runtime::edge::{DropPolicy, EdgePolicy};
use ocellus_runtime::kind::{BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView};
use ocellus_runtime::node::{Context, Input, Stage, StageFactory, stage_factory};
use ocellus_runtime::port::{InputPort, Join, OutputPort, Ports};
use ocellus_runtime::{Frame, Inpainted, Packet, PortType, Result, RuntimeError, Tracks};
use ocellus_wire::{FrameLayout, PixelFormat};
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tracing::{info, trace_span};

use crate::{failed, model_spec};

/// Frames held per camera while their tracks are computed.
const FRAME_BUFFER: usize = 32;
/// Commands waiting in an inpainter's control channel, at most.
pub const CONTROL_DEPTH: usize = 16;
/// Sampling steps of DiffMAE unless `steps` says otherwise.
const DEFAULT_STEPS: usize = 10;
/// Blur radius (pixels) unless `blur_radius` says otherwise.
const DEFAULT_BLUR_RADIUS: u32 = 16;
/// Largest blur radius and mask growth (pixels).
const MAX_BLUR_RADIUS: u32 = 256;
/// Box-blur passes (three approximate a Gaussian).
const BLUR_PASSES: usize = 3;
/// Largest value of an 8-bit channel.
const U8_MAX: f64 = 255.0;

/// Commands to an inpainter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InpainterCommand {
    /// Remove `track_id` from the frames from now on.
    Remove {
        /// Track id.
        track_id: u32,
    },
    /// Show `track_id` again.
    Restore {
        /// Track id.
        track_id: u32,
    },
}

/// How removed tracks are filled.
#[derive(Debug, Clone, PartialEq)]
pub enum InpaintMethod {
    /// DiffMAE sampling.
    DiffMae {
        /// The model (MAE key names plus the DiffMAE decoder's).
        model: ModelSpec,
        /// Sampling steps (respaced DDPM).
        steps: usize,
        /// Noise seed (the same frame and mask give the same result).
        seed: i64,
    },
    /// A box blur of this radius (pixels), three passes.
    Blur {
        /// Radius.
        radius: u32,
    },
}

/// What the inpainter runs.
#[derive(Debug, Clone, PartialEq)]
pub struct InpainterSpec {
    /// The node's name (its control channel's).
    pub name: String,
    /// How regions are filled.
    pub method: InpaintMethod,
    /// Device.
    pub device: Device,
    /// Track ids always removed.
    pub tracks: Vec<u32>,
    /// Tracks labelled with one of these are always removed.
    pub labels: Vec<String>,
    /// Masks grow by this many pixels.
    pub dilate: u32,
}

/// `method = "diffmae" | "blur"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MethodName {
    /// DiffMAE sampling (needs `model` weights or `allow_random_weights`).
    #[default]
    Diffmae,
    /// A wide box blur (no weights).
    Blur,
}

/// `[[actor]] kind = "inpainter"`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InpainterEntry {
    /// How regions are filled.
    #[serde(default)]
    pub method: MethodName,
    /// DiffMAE sampling steps (respaced DDPM).
    pub steps: Option<usize>,
    /// DiffMAE noise seed (the same frame and mask give the same result).
    pub noise_seed: Option<i64>,
    /// Blur radius, pixels (`method = "blur"`).
    pub blur_radius: Option<u32>,
    /// Track ids always removed.
    #[serde(default)]
    pub tracks: Vec<u32>,
    /// Tracks labelled with one of these (by a labeler upstream) are always removed.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Masks grow by this many pixels.
    #[serde(default = "default_dilate")]
    pub dilate: u32,
}

fn default_dilate() -> u32 {
    4
}

/// The inpainter kind.
pub struct InpainterKind;

impl NodeKind for InpainterKind {
    const NAME: &'static str = "inpainter";
    const DOC: &'static str =
        "Paints tracks out of frames (DiffMAE or blur): reads frames and tracks, writes inpainted frames";
    const MODEL: ModelUse = ModelUse::Optional;
    type Config = InpainterEntry;

    fn configure(common: &Common, e: InpainterEntry, _view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let method = match e.method {
            MethodName::Diffmae => {
                if e.blur_radius.is_some() {
                    return Err(Issue::at("blur_radius", "only for `method = \"blur\"`"));
                }
                let mut common = common.clone();
                common.model.get_or_insert_with(|| DiffMaeConfig::NAMES[0].to_owned());
                let model = model_spec::<DiffMae>(&common)?;
                let config =
                    DiffMaeConfig::by_name(&model.name).ok_or_else(|| Issue::at("model", "unknown DiffMAE model"))?;
                let steps = e.steps.unwrap_or(DEFAULT_STEPS);
                if steps == 0 || steps > config.num_timesteps {
                    return Err(Issue::at("steps", format!("{steps}: must be in 1..={}", config.num_timesteps)));
                }
                InpaintMethod::DiffMae { model, steps, seed: e.noise_seed.unwrap_or(0) }
            }
            MethodName::Blur => {
                for (key, given) in [
                    ("model", common.model.is_some()),
                    ("weights", common.weights.is_some()),
                    ("steps", e.steps.is_some()),
                    ("noise_seed", e.noise_seed.is_some()),
                ] {
                    if given {
                        return Err(Issue::at(key, "only for `method = \"diffmae\"`"));
                    }
                }
                let radius = e.blur_radius.unwrap_or(DEFAULT_BLUR_RADIUS);
                if !(1..=MAX_BLUR_RADIUS).contains(&radius) {
                    return Err(Issue::at("blur_radius", format!("{radius}: must be in 1..={MAX_BLUR_RADIUS}")));
                }
                InpaintMethod::Blur { radius }
            }
        };
        if e.dilate > MAX_BLUR_RADIUS {
            return Err(Issue::at("dilate", format!("{}: must be at most {MAX_BLUR_RADIUS}", e.dilate)));
        }
        if let Some(i) = e.labels.iter().position(|l| l.trim().is_empty()) {
            return Err(Issue::at("labels", "labels are non-empty class names").index(i));
        }
        Ok(Arc::new(InpainterSpec {
            name: common.name.clone(),
            method,
            device: common.device,
            tracks: e.tracks,
            labels: e.labels,
            dilate: e.dilate,
        }))
    }
}

/// The inpainter's ports: frames joined with the tracks derived from them.
pub fn ports() -> Ports {
    let frames_edge = EdgePolicy::Queue { depth: FRAME_BUFFER, drop: DropPolicy::Oldest };
    Ports {
        inputs: vec![
            InputPort::new("frames", &[PortType::Frame], frames_edge),
            InputPort::new("tracks", &[PortType::Tracks], EdgePolicy::Queue { depth: 8, drop: DropPolicy::Oldest }),
        ],
        outputs: vec![OutputPort { name: "inpainted", ty: PortType::Inpainted }],
        join: Some(Join { primary: "tracks", with: "frames", capacity: FRAME_BUFFER }),
    }
}

impl ConfiguredNode for InpainterSpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, ctx: &mut BuildContext) -> Result<StageFactory> {
        let (_, rx) = ctx.control::<InpainterCommand>(&self.name, CONTROL_DEPTH);
        let spec = self.clone();
        Ok(stage_factory(move || InpainterStage::new(spec.clone(), Some(rx.clone()))))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The sending side of an inpainter's control channel, for other nodes (the agent).
pub fn control_of(ctx: &mut BuildContext, inpainter: &str) -> ControlSender<InpainterCommand> {
    ctx.control::<InpainterCommand>(inpainter, CONTROL_DEPTH).0
}

/// Paints tracks out of frames (DiffMAE loads when the stage starts).
pub struct InpainterStage {
    model: Option<Loaded<DiffMae>>,
    spec: InpainterSpec,
    control: Option<ControlReceiver<InpainterCommand>>,
    requested: BTreeSet<u32>,
    emitted: u64,
    painted: u64,
}

fn torch(e: tch::TchError) -> RuntimeError {
    RuntimeError::Torch(e)
}

impl InpainterStage {
    /// A stage running `spec`, commanded over `control`.
    pub fn new(spec: InpainterSpec, control: Option<ControlReceiver<InpainterCommand>>) -> Self {
        Self { model: None, spec, control, requested: BTreeSet::new(), emitted: 0, painted: 0 }
    }

    /// Removes `id` from now on (the agent's `inpaint`), or stops removing it.
    pub fn request(&mut self, command: InpainterCommand) {
        match command {
            InpainterCommand::Remove { track_id } => self.requested.insert(track_id),
            InpainterCommand::Restore { track_id } => self.requested.remove(&track_id),
        };
    }

    /// The visible tracks of `tracks` to remove.
    fn chosen(&self, tracks: &Tracks) -> Vec<u32> {
        tracks
            .tracks
            .iter()
            .filter(|t| !t.occluded && t.area > 0)
            .filter(|t| {
                self.requested.contains(&t.id)
                    || self.spec.tracks.contains(&t.id)
                    || t.label.as_ref().is_some_and(|l| self.spec.labels.iter().any(|n| n.as_str() == &*l.name))
            })
            .map(|t| t.id)
            .collect()
    }

    /// The pixels of `ids` in the label image of `tracks`, grown by `dilate`: `[1, 1, H, W]`
    /// bool.
    fn mask(&self, tracks: &Tracks, ids: &[u32]) -> Result<Tensor> {
        let (w, h) = (tracks.width as usize, tracks.height as usize);
        if tracks.labels.len() != 2 * w * h {
            return Err(RuntimeError::BadInput(format!(
                "{} tracks {}: label image of {} bytes for {w}x{h}",
                tracks.meta.camera,
                tracks.meta.seq,
                tracks.labels.len()
            )));
        }
        let inside: Vec<u8> = tracks
            .labels
            .chunks_exact(2)
            .map(|b| u8::from(ids.contains(&u32::from(u16::from_le_bytes([b[0], b[1]])))))
            .collect();
        let mask = Tensor::f_from_slice(&inside)
            .and_then(|m| m.f_view([1, 1, h as i64, w as i64]))
            .and_then(|m| m.f_to_device(self.spec.device))
            .map_err(torch)?;
        let r = i64::from(self.spec.dilate);
        let mask = if r > 0 {
            mask.f_to_kind(Kind::Float)
                .and_then(|m| m.f_max_pool2d([2 * r + 1, 2 * r + 1], [1, 1], [r, r], [1, 1], false))
                .map_err(torch)?
        } else {
            mask
        };
        mask.f_gt(0).map_err(torch)
    }

    /// `rgb` `[1, 3, H, W]` in 0..1 with `mask` filled.
    fn fill(&self, rgb: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match &self.spec.method {
            InpaintMethod::DiffMae { steps, seed, .. } => {
                let model = self.model.as_ref().ok_or_else(|| RuntimeError::Failed("DiffMAE not loaded".into()))?;
                tch::no_grad(|| model.inpaint(rgb, mask, *steps, *seed)).map_err(failed)
            }
            InpaintMethod::Blur { radius } => {
                let r = i64::from(*radius);
                let mut blurred = rgb.shallow_clone();
                for _ in 0..BLUR_PASSES {
                    blurred = blurred
                        .f_avg_pool2d([2 * r + 1, 2 * r + 1], [1, 1], [r, r], false, false, None::<i64>)
                        .map_err(torch)?;
                }
                blurred.f_where_self(mask, rgb).map_err(torch)
            }
        }
    }

    fn inpaint(&mut self, frame: &Frame, tracks: &Tracks) -> Result<Inpainted> {
        let ids = self.chosen(tracks);
        if ids.is_empty() && frame.layout.format == PixelFormat::Rgb {
            // Nothing to remove: the frame itself, no copy.
            return Ok(Inpainted { frame: frame.clone(), removed: ids });
        }
        let _span =
            trace_span!("inpaint", camera = %frame.meta.camera, seq = frame.meta.seq, tracks = ids.len()).entered();
        let (w, h) = (frame.layout.width, frame.layout.height);
        if (tracks.width as usize, tracks.height as usize) != (w, h) {
            return Err(RuntimeError::BadInput(format!(
                "{} tracks {}: {}x{} labels for a {w}x{h} frame",
                frame.meta.camera, frame.meta.seq, tracks.width, tracks.height
            )));
        }
        let rgb = frame_to_tensor(&frame.pixels, &frame.layout, self.spec.device, None, None)?; // [1, 3, H, W]
        let out = if ids.is_empty() {
            rgb
        } else {
            let mask = self.mask(tracks, &ids)?; // [1, 1, H, W]
            self.painted += 1;
            self.fill(&rgb, &mask)?
        };
        let hwc = out
            .f_mul_scalar(U8_MAX)
            .and_then(|x| x.f_round())
            .and_then(|x| x.f_clamp(0.0, U8_MAX))
            .and_then(|x| x.f_to_kind(Kind::Uint8))
            .and_then(|x| x.f_squeeze_dim(0))
            .and_then(|x| x.f_permute([1, 2, 0])) // [H, W, 3]
            .and_then(|x| x.f_contiguous())
            .and_then(|x| x.f_to_device(Device::Cpu))
            .map_err(torch)?;
        let mut pixels = vec![0u8; w * h * 3];
        hwc.f_copy_data_u8(&mut pixels, w * h * 3).map_err(torch)?;
        let frame = Frame::new(frame.meta.clone(), FrameLayout::packed(PixelFormat::Rgb, w, h), Bytes::from(pixels))?;
        Ok(Inpainted { frame, removed: ids })
    }
}

impl Stage for InpainterStage {
    fn start(&mut self, _ctx: &mut Context) -> Result<()> {
        if let InpaintMethod::DiffMae { model, .. } = &self.spec.method {
            self.model = Some(model.load::<DiffMae>().map_err(failed)?);
        }
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> Result<()> {
        let (Packet::Tracks(tracks), Some(Packet::Frame(frame))) = (input.packet, input.with) else {
            return Err(RuntimeError::BadInput("the inpainter takes tracks joined with their frame".into()));
        };
        if let Some(control) = &self.control {
            for command in control.drain() {
                self.request(command);
            }
        }
        let inpainted = self.inpaint(&frame, &tracks)?;
        self.emitted += 1;
        ctx.emit(Packet::Inpainted(inpainted));
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) -> Result<()> {
        info!(frames = self.emitted, painted = self.painted, "inpainter done");
        Ok(())
    }
}
