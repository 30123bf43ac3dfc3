//! Frames paired with the tracks computed from them, for actors that read both a camera and
//! a tracker (the labeler, the inpainter).
//!
//! Frames arrive first and wait, per camera, until tracks with the same sequence number come;
//! older frames are dropped then (their tracks will never come), and at most `capacity`
//! frames wait per camera (policy: drop the oldest).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::frame::{Frame, FrameMeta};
use crate::{ActorError, Result};

/// Waiting frames per camera.
#[derive(Debug)]
pub struct FramePairing {
    capacity: usize,
    frames: HashMap<Arc<str>, VecDeque<Frame>>,
    dropped: u64,
}

impl FramePairing {
    /// Keeps at most `capacity` frames per camera.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), frames: HashMap::new(), dropped: 0 }
    }

    /// A frame waits for its tracks.
    pub fn push(&mut self, frame: Frame) {
        let frames = self.frames.entry(frame.meta.camera.clone()).or_default();
        frames.push_back(frame);
        while frames.len() > self.capacity {
            frames.pop_front();
            self.dropped += 1;
        }
    }

    /// The frame of the tracks `meta` describes; frames before it are dropped. An error
    /// (bad input: counted and skipped by the stage) when it was never received.
    pub fn take(&mut self, meta: &FrameMeta) -> Result<Frame> {
        let frames = self.frames.entry(meta.camera.clone()).or_default();
        while frames.front().is_some_and(|f| f.meta.seq < meta.seq) {
            frames.pop_front();
            self.dropped += 1;
        }
        match frames.front() {
            Some(f) if f.meta.seq == meta.seq => Ok(f.clone()),
            _ => Err(ActorError::BadInput(format!(
                "{} tracks {}: their frame was not received (dropped upstream?)",
                meta.camera, meta.seq
            ))),
        }
    }

    /// Frames dropped without their tracks so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
