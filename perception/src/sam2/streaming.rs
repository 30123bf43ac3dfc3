//! The streaming tracker: SAM 2 on an endless stream, any number of objects, bounded memory.
//!
//! Prompts apply to the next frame; a prompt on a tracked object is a correction decoded with
//! its memory and kept as a conditioning frame. Per object it keeps at most `max_cond_frames`
//! conditioning frames and the last [`MAX_OBJ_PTRS_IN_ENCODER`] tracked frames (all the
//! memory attention can read). Object-pointer distances are normalized as for a 16-frame
//! video. All objects of a frame share its encoding and are tracked in batches.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::Sam2;
use super::sam2_base::{
    DEFAULT_MAX_BATCH, FrameFeatures, FrameOutput, Horizon, MAX_OBJ_PTRS_IN_ENCODER, ObjectMemory, PointInputs,
};
use crate::Result;
use tracing::trace_span;

/// A prompt for one object, applied on the next frame the tracker sees.
#[derive(Debug)]
pub enum Prompt {
    /// Points in model pixels with labels (1 positive, 0 negative).
    Points(PointInputs),
    /// A box `[x0, y0, x1, y1]` in model pixels, with optional extra points.
    Box {
        /// The box `[1, 4]`.
        bbox: Tensor,
        /// Points after the box.
        points: Option<PointInputs>,
    },
    /// A binary mask `[1, 1, H, W]` at any size (resized to the model's as `add_new_mask`
    /// does); the way discovered objects start.
    Mask(Tensor),
}

impl Prompt {
    /// Point inputs or a binary mask at `side × side` (the model's input side).
    fn into_inputs(self, side: i64) -> Result<(Option<PointInputs>, Option<Tensor>)> {
        Ok(match self {
            Self::Points(p) => (Some(p), None),
            Self::Box { bbox, points } => {
                let coords = bbox.f_reshape([1, 2, 2])?;
                let labels = Tensor::f_from_slice(&[2i32, 3])?.f_to_device(bbox.device())?.f_view([1, 2])?;
                let p = match points {
                    Some(p) => PointInputs {
                        coords: Tensor::f_cat(&[&coords, &p.coords], 1)?,
                        labels: Tensor::f_cat(&[&labels, &p.labels.f_to_kind(Kind::Int)?], 1)?,
                    },
                    None => PointInputs { coords, labels },
                };
                (Some(p), None)
            }
            Self::Mask(m) => {
                let m = if m.size()[2..] == [side, side] {
                    m
                } else {
                    // `add_new_mask`: antialiased bilinear to the model's side, then `>= 0.5`.
                    m.f_to_kind(Kind::Float)?
                        .f_internal_upsample_bilinear2d_aa([side, side], false, None, None)?
                        .f_ge(0.5)?
                        .f_to_kind(Kind::Float)?
                };
                (None, Some(m))
            }
        })
    }
}

/// Settings of the streaming tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Conditioning frames kept per object: the first, then the most recent corrections.
    pub max_cond_frames: usize,
    /// How object pointer distances are normalized ([`Horizon::Stream`] for live streams).
    pub horizon: Horizon,
    /// Most objects decoded in one batch.
    pub max_batch: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { max_cond_frames: 4, horizon: Horizon::Stream, max_batch: DEFAULT_MAX_BATCH }
    }
}

/// Tracks any number of objects over an endless stream with bounded memory.
///
/// Per object it keeps at most `max_cond_frames` conditioning frames and the last
/// [`MAX_OBJ_PTRS_IN_ENCODER`] tracked frames (what the memory attention can read), whatever
/// the stream's length. A prompt on an object being tracked is a correction: it is decoded
/// with the object's memory and kept as a conditioning frame.
#[derive(Debug, Default)]
pub struct StreamingTracker {
    config: StreamConfig,
    objects: BTreeMap<u64, ObjectMemory>,
    pending: BTreeMap<u64, Prompt>,
}

impl StreamingTracker {
    /// An empty tracker.
    pub fn new(config: StreamConfig) -> Self {
        Self { config, objects: BTreeMap::new(), pending: BTreeMap::new() }
    }

    /// Queues a prompt for object `obj` (a new object, or a correction) for the next frame.
    pub fn add_prompt(&mut self, obj: u64, prompt: Prompt) {
        self.pending.insert(obj, prompt);
    }

    /// Stops tracking `obj`; returns whether it was tracked.
    pub fn remove(&mut self, obj: u64) -> bool {
        self.pending.remove(&obj);
        self.objects.remove(&obj).is_some()
    }

    /// Whether `obj` is tracked or has a prompt waiting.
    pub fn has(&self, obj: u64) -> bool {
        self.objects.contains_key(&obj) || self.pending.contains_key(&obj)
    }

    /// Objects tracked or with a prompt waiting (each once).
    pub fn num_objects(&self) -> usize {
        self.objects.len() + self.pending.keys().filter(|k| !self.objects.contains_key(k)).count()
    }

    /// Tracked object ids.
    pub fn objects(&self) -> impl Iterator<Item = u64> + '_ {
        self.objects.keys().copied()
    }

    /// The memory bank of `obj`.
    pub fn memory(&self, obj: u64) -> Option<&ObjectMemory> {
        self.objects.get(&obj)
    }

    /// Tracks every object on frame `frame` (frame numbers must increase), applying the
    /// queued prompts; returns each object's output, ordered by id.
    ///
    /// Prompted objects (new ones and corrections) are decoded one at a time with their
    /// prompts; all the others are tracked in batches ([`Sam2::track_objects`]).
    pub fn step(&mut self, model: &Sam2, frame: u64, feats: &FrameFeatures) -> Result<Vec<(u64, FrameOutput)>> {
        let _span = trace_span!("sam2_stream_step", frame, objects = self.objects.len()).entered();
        let horizon = self.config.horizon;
        let mut outputs = BTreeMap::new();
        for (id, prompt) in std::mem::take(&mut self.pending) {
            let mem = self.objects.entry(id).or_default();
            let init = mem.cond.is_empty();
            let (points, mask) = prompt.into_inputs(model.image_size())?;
            let out = model.track_step(frame, init, feats, points.as_ref(), mask.as_ref(), mem, horizon, true, None)?;
            mem.non_cond.remove(&frame);
            mem.cond_insert(frame, out.clone());
            while mem.cond.len() > self.config.max_cond_frames.max(1) {
                mem.cond.remove(1.min(mem.cond.len() - 1)); // keep the first prompt
            }
            outputs.insert(id, out);
        }
        let tracked: Vec<u64> = self.objects.keys().copied().filter(|id| !outputs.contains_key(id)).collect();
        for chunk in tracked.chunks(self.config.max_batch.max(1)) {
            let mems: Vec<&ObjectMemory> = chunk.iter().filter_map(|id| self.objects.get(id)).collect();
            let batch = model.track_objects(frame, feats, &mems, horizon)?;
            for (&id, out) in chunk.iter().zip(batch) {
                if let Some(mem) = self.objects.get_mut(&id) {
                    mem.non_cond.insert(frame, out.clone());
                }
                outputs.insert(id, out);
            }
        }
        // Only the last MAX_OBJ_PTRS_IN_ENCODER frames can be read again.
        let keep_from = frame.saturating_sub(MAX_OBJ_PTRS_IN_ENCODER as u64 - 1);
        for mem in self.objects.values_mut() {
            mem.non_cond.retain(|f, _| *f >= keep_from);
        }
        Ok(outputs.into_iter().collect())
    }
}
