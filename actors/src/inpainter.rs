//! The inpainter actor: removes tracked objects from frames, for privacy.
//!
//! It reads frames and the tracks computed from them (paired by camera and sequence number,
//! [`FramePairing`]) and emits, for every frame, an [`Inpainted`] frame: the tracks to remove
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

use bytes::Bytes;
use ocellus_kernels::{DType, FrameLayout, PixelFormat, frame_to_tensor};
use ocellus_perception::diffmae::{DiffMae, DiffMaeConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::{info, trace_span};

use crate::backbone::WeightsSource;
use crate::control::{ControlReceiver, InpainterCommand};
use crate::frame::{Frame, Inpainted, Packet, Tracks};
use crate::pairing::FramePairing;
use crate::stage::{Outputs, Processor};
use crate::{ActorError, Result};

/// Frames kept per camera while their tracks are computed.
const FRAME_BUFFER: usize = 32;
/// Box-blur passes (three approximate a Gaussian).
const BLUR_PASSES: usize = 3;
/// Largest value of an 8-bit channel.
const U8_MAX: f64 = 255.0;

/// How removed tracks are filled.
#[derive(Debug, Clone, PartialEq)]
pub enum InpaintMethod {
    /// DiffMAE sampling.
    DiffMae {
        /// Preset name (`diffmae_vit_base_patch16`, ...).
        model: String,
        /// Weights (MAE key names plus the DiffMAE decoder's).
        weights: WeightsSource,
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
    /// How regions are filled.
    pub method: InpaintMethod,
    /// Device.
    pub device: Device,
    /// Precision of the model.
    pub dtype: DType,
    /// Track ids always removed.
    pub tracks: Vec<u32>,
    /// Tracks labelled with one of these are always removed.
    pub labels: Vec<String>,
    /// Masks grow by this many pixels.
    pub dilate: u32,
    /// Requests from the agent's `inpaint` tool.
    pub control: Option<ControlReceiver<InpainterCommand>>,
}

/// Loads DiffMAE (every key checked) or seeds it.
pub fn load_diffmae(model: &str, source: &WeightsSource, device: Device, dtype: DType) -> Result<(VarStore, DiffMae)> {
    let config =
        DiffMaeConfig::by_name(model).ok_or_else(|| ActorError::Failed(format!("unknown DiffMAE model {model:?}")))?;
    let mut vs = VarStore::new(device);
    let diffmae = DiffMae::new(&vs.root(), &config)?;
    source.fill(&mut vs, dtype)?;
    Ok((vs, diffmae))
}

/// Paints tracks out of frames.
pub struct InpainterProcessor {
    _vs: Option<VarStore>,
    model: Option<DiffMae>,
    spec: InpainterSpec,
    frames: FramePairing,
    requested: BTreeSet<u32>,
    emitted: u64,
    painted: u64,
}

fn torch(e: tch::TchError) -> ActorError {
    ActorError::Failed(e.to_string())
}

impl InpainterProcessor {
    /// Builds the processor (loads DiffMAE when it is the method).
    pub fn new(spec: InpainterSpec) -> Result<Self> {
        let (vs, model) = match &spec.method {
            InpaintMethod::DiffMae { model, weights, .. } => {
                let (vs, m) = load_diffmae(model, weights, spec.device, spec.dtype)?;
                (Some(vs), Some(m))
            }
            InpaintMethod::Blur { .. } => (None, None),
        };
        Ok(Self {
            _vs: vs,
            model,
            spec,
            frames: FramePairing::new(FRAME_BUFFER),
            requested: BTreeSet::new(),
            emitted: 0,
            painted: 0,
        })
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
            return Err(ActorError::BadInput(format!(
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
                let model = self.model.as_ref().ok_or_else(|| ActorError::Failed("DiffMAE not loaded".into()))?;
                Ok(tch::no_grad(|| model.inpaint(rgb, mask, *steps, *seed))?)
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
            return Err(ActorError::BadInput(format!(
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

impl Processor for InpainterProcessor {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        match input {
            Packet::Frame(frame) => {
                self.frames.push(frame);
                Ok(())
            }
            Packet::Tracks(tracks) => {
                if let Some(control) = &self.spec.control {
                    for command in control.drain() {
                        self.request(command);
                    }
                }
                let frame = self.frames.take(&tracks.meta)?;
                let inpainted = self.inpaint(&frame, &tracks)?;
                self.emitted += 1;
                out.emit(Packet::Inpainted(inpainted));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<()> {
        info!(frames = self.emitted, painted = self.painted, unpaired = self.frames.dropped(), "inpainter done");
        Ok(())
    }
}
