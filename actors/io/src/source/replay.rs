//! The replay source: the images of one camera read back from a Rerun recording (`.rrd`).
//!
//! A recording written by the Rerun sink holds each camera's frames at `world/<camera>/image`
//! on the `frame/<camera>` (or, in older recordings, `frame`) and `capture_time` timelines.
//! The source streams the file with Rerun's decoder (memory stays bounded: one chunk at a
//! time) and sends the frames again with their recorded frame numbers, so that what a
//! pipeline makes of them lines up with the original recording frame by frame.
//!
//! Capture times keep the recorded intervals (every camera of a recording on one time base,
//! starting when the first frame of any of them is sent), so logic that depends on time (the
//! agent's cadence, rate limits) decides as it did when the recording was made.
//! [`ReplayTiming::Realtime`] sends each frame when it is due, like a live camera;
//! [`ReplayTiming::Fast`] sends as fast as the edges accept.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ocellus_runtime::node::{Flow, Source, SourceContext};
use ocellus_runtime::{Frame, FrameMeta, Packet, RuntimeError, now_ns};
use tracing::{info, warn};

use crate::recording::{self, RecordedImage};

/// Longest sleep between looks at the source's requests.
const STEP: Duration = Duration::from_millis(50);

/// How fast a recording is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayTiming {
    /// At the recorded pace.
    #[default]
    Realtime,
    /// As fast as the pipeline takes frames.
    Fast,
}

/// The time base every camera of one replay shares: recorded capture times map to wall time
/// from the first frame sent by any of them.
#[derive(Debug)]
pub struct ReplayClock {
    /// The earliest capture time of the recording (ns).
    recorded_origin_ns: i64,
    /// Wall time when the first frame was sent (ns).
    wall_origin_ns: OnceLock<i64>,
}

impl ReplayClock {
    /// A time base whose recorded time starts at `recorded_origin_ns`.
    pub fn new(recorded_origin_ns: i64) -> Arc<Self> {
        Arc::new(Self { recorded_origin_ns, wall_origin_ns: OnceLock::new() })
    }

    /// The capture time (wall time at which it is due) of a frame recorded at `capture_ns`.
    fn due_ns(&self, capture_ns: i64) -> i64 {
        let origin = *self.wall_origin_ns.get_or_init(now_ns);
        origin.saturating_add(capture_ns.saturating_sub(self.recorded_origin_ns).max(0))
    }
}

/// One camera of a recording, replayed.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    /// The `.rrd` file.
    pub recording: PathBuf,
    /// The camera whose images are sent (`world/<camera>/image`).
    pub camera: String,
    /// Pace.
    pub timing: ReplayTiming,
    /// The time base shared by the cameras of this replay.
    pub clock: Arc<ReplayClock>,
}

impl PartialEq for ReplaySpec {
    fn eq(&self, other: &Self) -> bool {
        self.recording == other.recording
            && self.camera == other.camera
            && self.timing == other.timing
            && Arc::ptr_eq(&self.clock, &other.clock)
    }
}

type Chunks = Box<dyn Iterator<Item = Result<re_chunk::Chunk, crate::IoError>> + Send>;

/// The replay source.
pub struct ReplaySource {
    spec: ReplaySpec,
    chunks: Option<Chunks>,
    pending: VecDeque<RecordedImage>,
    /// A frame waiting for its time.
    due: Option<(i64, RecordedImage)>,
    sent: u64,
    skipped: u64,
    /// The previous frame's capture time (frames without one take it).
    last_capture_ns: i64,
}

impl ReplaySource {
    /// A source replaying `spec` once started.
    pub fn new(spec: ReplaySpec) -> Self {
        Self { spec, chunks: None, pending: VecDeque::new(), due: None, sent: 0, skipped: 0, last_capture_ns: 0 }
    }

    /// The next recorded image of the camera, reading chunks as needed.
    fn next_image(&mut self) -> Result<Option<RecordedImage>, crate::IoError> {
        loop {
            if let Some(image) = self.pending.pop_front() {
                return Ok(Some(image));
            }
            let Some(chunk) = self.chunks.as_mut().and_then(Iterator::next) else { return Ok(None) };
            let chunk = chunk?;
            let entity = recording::entity_of(&chunk);
            if chunk.is_static() || recording::camera_of_image(&entity) != Some(self.spec.camera.as_str()) {
                continue;
            }
            self.pending.extend(recording::images_of(&chunk, &mut self.skipped));
        }
    }
}

impl Source for ReplaySource {
    fn start(&mut self, _ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        let chunks = recording::chunks(&self.spec.recording).map_err(|e| RuntimeError::Fatal(e.to_string()))?;
        self.chunks = Some(Box::new(chunks));
        Ok(())
    }

    fn process(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<Flow> {
        if ctx.end_requested() {
            return Ok(Flow::End);
        }
        let (capture_ns, image) = match self.due.take() {
            Some(due) => due,
            None => {
                let Some(image) = self.next_image().map_err(|e| RuntimeError::Fatal(e.to_string()))? else {
                    for _ in 0..self.skipped {
                        ctx.metrics().record_skipped();
                    }
                    info!(source = %ctx.name(), recording = %self.spec.recording.display(), sent = self.sent, skipped = self.skipped, "replay ended");
                    return Ok(Flow::End);
                };
                let recorded = image.capture_ns.unwrap_or(self.last_capture_ns);
                self.last_capture_ns = recorded;
                (self.spec.clock.due_ns(recorded), image)
            }
        };
        if self.spec.timing == ReplayTiming::Realtime {
            let left = capture_ns - now_ns();
            if left > 0 {
                std::thread::sleep(Duration::from_nanos(left as u64).min(STEP));
                self.due = Some((capture_ns, image));
                return Ok(Flow::Continue);
            }
        }
        let meta = FrameMeta { camera: ctx.name().clone(), seq: image.seq, capture_ns, frame_id: None };
        match Frame::new(meta, image.layout, image.pixels) {
            Ok(frame) => {
                if !ctx.emit(Packet::Frame(frame)) {
                    return Ok(Flow::End);
                }
                self.sent += 1;
            }
            Err(e) => {
                warn!(source = %ctx.name(), seq = image.seq, error = %e, "skipped a recorded image");
                ctx.metrics().record_skipped();
            }
        }
        Ok(Flow::Continue)
    }
}
