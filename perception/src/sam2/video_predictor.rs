//! `SAM2VideoPredictor` (`sam2/sam2_video_predictor.py`) over frames held in memory: prompts,
//! then propagation. It drives [`Sam2::track_step`](super::Sam2) as the official predictor
//! does and is what the parity tests run against the official code.

use std::collections::{BTreeMap, BTreeSet};

use tch::{Kind, Tensor};

use super::Sam2;
use super::sam2_base::{FrameFeatures, FrameOutput, Horizon, ObjectMemory, PREV_LOGIT_CLAMP, PointInputs};
use crate::{PerceptionError, Result};

/// A temporary output not yet merged into memory (`temp_output_dict_per_obj`).
struct Temp {
    frame: u64,
    cond: bool,
    out: FrameOutput,
}

/// One object of a [`VideoSession`].
#[derive(Default)]
struct SessionObject {
    points: BTreeMap<u64, PointInputs>,
    memory: ObjectMemory,
    temp: Vec<Temp>,
    tracked: BTreeSet<u64>,
}

/// `SAM2VideoPredictor` over frames held in memory: prompts, then propagation.
pub struct VideoSession<'a> {
    model: &'a Sam2,
    frames: Vec<Tensor>,
    features: BTreeMap<u64, FrameFeatures>,
    objects: BTreeMap<u64, SessionObject>,
}

impl<'a> VideoSession<'a> {
    /// A session over normalized `[3, 1024, 1024]` frames.
    pub fn new(model: &'a Sam2, frames: Vec<Tensor>) -> Self {
        Self { model, frames, features: BTreeMap::new(), objects: BTreeMap::new() }
    }

    fn features(&mut self, frame: u64) -> Result<&FrameFeatures> {
        if !self.features.contains_key(&frame) {
            let x = self.frames.get(frame as usize).ok_or_else(|| PerceptionError::Config {
                model: "sam2",
                message: format!("frame {frame} out of range"),
            })?;
            let f = self.model.frame_features(&x.f_unsqueeze(0)?)?;
            self.features.insert(frame, f);
        }
        self.features.get(&frame).ok_or_else(|| PerceptionError::Config { model: "sam2", message: "features".into() })
    }

    fn horizon(&self) -> Horizon {
        Horizon::Video(self.frames.len() as i64)
    }

    /// The features of `frame`, once the session has computed them (they are computed once per
    /// frame and kept for the session).
    pub fn cached_features(&self, frame: u64) -> Option<&FrameFeatures> {
        self.features.get(&frame)
    }

    /// `add_new_points_or_box` (old points cleared): `coords` `[1, N, 2]` in model pixels.
    pub fn add_points(&mut self, obj: u64, frame: u64, coords: &Tensor, labels: &Tensor) -> Result<FrameOutput> {
        let horizon = self.horizon();
        let model = self.model;
        self.features(frame)?;
        let feats = self
            .features
            .get(&frame)
            .ok_or_else(|| PerceptionError::Config { model: "sam2", message: "features".into() })?;
        let o = self.objects.entry(obj).or_default();
        let points = PointInputs { coords: coords.shallow_clone(), labels: labels.f_to_kind(Kind::Int)? };
        o.points.insert(frame, points.clone());
        let init_cond = !o.tracked.contains(&frame);
        let prev = o
            .temp
            .iter()
            .find(|t| t.frame == frame && t.cond == init_cond)
            .map(|t| &t.out)
            .or_else(|| o.memory.cond_get(frame))
            .or_else(|| o.memory.non_cond.get(&frame))
            .map(|p| p.pred_masks.f_clamp(-PREV_LOGIT_CLAMP, PREV_LOGIT_CLAMP))
            .transpose()?;
        let out =
            model.track_step(frame, init_cond, feats, Some(&points), None, &o.memory, horizon, false, prev.as_ref())?;
        o.temp.retain(|t| !(t.frame == frame && t.cond == init_cond));
        o.temp.push(Temp { frame, cond: init_cond, out: out.clone() });
        Ok(out)
    }

    /// `propagate_in_video` from the first conditioning frame to the end; returns every
    /// frame's outputs per object (`frame → obj → output`).
    pub fn propagate(&mut self) -> Result<BTreeMap<u64, BTreeMap<u64, FrameOutput>>> {
        // Preflight: merge temporary outputs, computing their memories.
        let ids: Vec<u64> = self.objects.keys().copied().collect();
        for id in &ids {
            let temps = self.objects.get_mut(id).map(|o| std::mem::take(&mut o.temp)).unwrap_or_default();
            let (conds, non_conds): (Vec<Temp>, Vec<Temp>) = temps.into_iter().partition(|t| t.cond);
            for mut t in non_conds.into_iter().chain(conds) {
                if t.out.maskmem_features.is_none() {
                    let model = self.model;
                    let feats = self.features(t.frame)?;
                    t.out.maskmem_features = Some(model.memory_of(feats, &t.out)?);
                }
                let o = self
                    .objects
                    .get_mut(id)
                    .ok_or_else(|| PerceptionError::Config { model: "sam2", message: "object".into() })?;
                if t.cond {
                    o.memory.cond_insert(t.frame, t.out);
                } else {
                    o.memory.non_cond.insert(t.frame, t.out);
                }
            }
            if let Some(o) = self.objects.get_mut(id) {
                let cond_frames: Vec<u64> = o.memory.cond.iter().map(|(f, _)| *f).collect();
                for f in cond_frames {
                    o.memory.non_cond.remove(&f);
                }
            }
        }
        let start = self.objects.values().flat_map(|o| o.memory.cond.iter().map(|(f, _)| *f)).min().unwrap_or(0);
        let horizon = self.horizon();
        let mut results = BTreeMap::new();
        for frame in start..self.frames.len() as u64 {
            let mut per_obj = BTreeMap::new();
            for id in &ids {
                let is_cond = self.objects.get(id).is_some_and(|o| o.memory.cond_get(frame).is_some());
                let out = if is_cond {
                    self.objects.get(id).and_then(|o| o.memory.cond_get(frame)).cloned()
                } else {
                    self.features(frame)?;
                    let feats = self.features.get(&frame);
                    let o = self.objects.get(id);
                    match (feats, o) {
                        (Some(feats), Some(o)) => {
                            let out = self
                                .model
                                .track_step(frame, false, feats, None, None, &o.memory, horizon, true, None)?;
                            if let Some(o) = self.objects.get_mut(id) {
                                o.memory.non_cond.insert(frame, out.clone());
                            }
                            Some(out)
                        }
                        _ => None,
                    }
                };
                if let Some(o) = self.objects.get_mut(id) {
                    o.tracked.insert(frame);
                }
                if let Some(out) = out {
                    per_obj.insert(*id, out);
                }
            }
            results.insert(frame, per_obj);
        }
        Ok(results)
    }

    /// The memory bank of object `obj`.
    pub fn memory(&self, obj: u64) -> Option<&ObjectMemory> {
        self.objects.get(&obj).map(|o| &o.memory)
    }
}
