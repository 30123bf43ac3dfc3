//! The replay source: the images of one camera read back from a Rerun recording (`.rrd`).
//!
//! A recording written by the Rerun sink holds each camera's frames at `world/<camera>/image`
//! on the `frame/<camera>` (or, in older recordings, `frame`) and `capture_time` timelines.
//! The source streams the file with Rerun's decoder on its own thread (memory stays bounded:
//! one chunk at a time) and sends the frames again with their recorded frame numbers, so
//! that what a pipeline makes of them lines up with the original recording frame by frame.
//!
//! Timing: [`ReplayTiming::Realtime`] keeps the recorded intervals (every camera of a
//! recording on one clock, started at the first frame sent) and stamps each frame with its
//! due time, like a live camera; [`ReplayTiming::Fast`] sends as fast as the edges accept and
//! stamps frames as they leave, like a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use ocellus_kernels::{FrameLayout, PixelFormat};
use rerun::components::{ImageBuffer, ImageFormat};
use rerun::datatypes::{ChannelDatatype, ColorModel};
use tracing::{info, warn};

use super::SourceOutputs;
use crate::frame::{Frame, FrameMeta, Packet};
use crate::now_ns;

/// Why a recording cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file cannot be read.
    #[error("{path}: {message}")]
    Read {
        /// The recording.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// How fast a recording is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayTiming {
    /// At the recorded pace.
    #[default]
    Realtime,
    /// As fast as the pipeline takes frames.
    Fast,
}

/// The clock every camera of one replay shares: recorded capture times map to wall time
/// from the first frame sent by any of them.
#[derive(Debug)]
pub struct ReplayClock {
    /// The earliest capture time of the recording (ns).
    recorded_origin_ns: i64,
    /// Wall time when the first frame was sent (ns).
    wall_origin_ns: OnceLock<i64>,
}

impl ReplayClock {
    /// A clock whose recorded time starts at `recorded_origin_ns`.
    pub fn new(recorded_origin_ns: i64) -> Arc<Self> {
        Arc::new(Self { recorded_origin_ns, wall_origin_ns: OnceLock::new() })
    }

    /// Wall time (ns) at which a frame captured at `capture_ns` is due.
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
    /// The clock shared by the cameras of this replay.
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

/// The images of one camera in a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraRecord {
    /// Images.
    pub frames: u64,
    /// Earliest capture time (ns), when the images have one.
    pub first_capture_ns: Option<i64>,
}

/// The cameras of a recording (by name) and their images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingIndex {
    /// Camera name → its images.
    pub cameras: BTreeMap<String, CameraRecord>,
}

impl RecordingIndex {
    /// The earliest capture time of any camera.
    pub fn origin_ns(&self) -> i64 {
        self.cameras.values().filter_map(|c| c.first_capture_ns).min().unwrap_or(0)
    }
}

/// One decoded image row.
struct Row {
    seq: u64,
    capture_ns: Option<i64>,
    layout: FrameLayout,
    pixels: Bytes,
}

/// The camera of an image entity `world/<camera>/image`.
fn camera_of_image(entity: &str) -> Option<&str> {
    let rest = entity.trim_start_matches('/').strip_prefix("world/")?;
    let (camera, tail) = rest.split_once('/')?;
    (tail == "image").then_some(camera)
}

/// A time column of `chunk`, by timeline name.
fn times(chunk: &re_chunk::Chunk, name: &str) -> Option<Vec<i64>> {
    chunk.timelines().iter().find(|(n, _)| n.as_str() == name).map(|(_, c)| c.times_raw().to_vec())
}

/// Frame numbers of a camera's chunk: its own timeline, else the shared `frame`.
fn frame_numbers(chunk: &re_chunk::Chunk, camera: &str) -> Option<Vec<i64>> {
    times(chunk, &format!("frame/{camera}")).or_else(|| times(chunk, "frame"))
}

/// An arrow buffer as [`Bytes`], without a copy.
struct ArrowBytes(rerun::external::arrow::buffer::ScalarBuffer<u8>);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The layout of a logged image, when it is one a frame can be (8-bit RGB, BGR, L, NV12).
fn layout_of(format: &ImageFormat) -> Option<FrameLayout> {
    let f = &format.0;
    let pixel = match (f.pixel_format, f.color_model, f.channel_datatype) {
        (Some(rerun::datatypes::PixelFormat::NV12), _, _) => PixelFormat::Nv12,
        (None, Some(ColorModel::RGB), Some(ChannelDatatype::U8)) => PixelFormat::Rgb,
        (None, Some(ColorModel::BGR), Some(ChannelDatatype::U8)) => PixelFormat::Bgr,
        (None, Some(ColorModel::L), Some(ChannelDatatype::U8)) => PixelFormat::Gray8,
        _ => return None,
    };
    Some(FrameLayout::packed(pixel, f.width as usize, f.height as usize))
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> ReplayError {
    ReplayError::Read { path: path.to_path_buf(), message: e.to_string() }
}

/// Streams the image chunks of a recording: `f(camera, chunk)` for each.
fn for_each_image_chunk(path: &Path, mut f: impl FnMut(&str, &re_chunk::Chunk) -> bool) -> Result<(), ReplayError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    for msg in re_log_encoding::DecoderApp::decode_lazy(std::io::BufReader::new(file)) {
        let re_log_types::LogMsg::ArrowMsg(_, arrow) = msg.map_err(|e| read_error(path, e))? else { continue };
        let chunk = re_chunk::Chunk::from_arrow_msg(&arrow).map_err(|e| read_error(path, e))?;
        if chunk.is_static() {
            continue;
        }
        let entity = chunk.entity_path().to_string();
        if let Some(camera) = camera_of_image(&entity)
            && !f(camera, &chunk)
        {
            break;
        }
    }
    Ok(())
}

/// Reads which cameras a recording holds and how many images each.
pub fn index(path: &Path) -> Result<RecordingIndex, ReplayError> {
    let mut index = RecordingIndex::default();
    let buffer = rerun::Image::descriptor_buffer().component;
    for_each_image_chunk(path, |camera, chunk| {
        let captures = times(chunk, "capture_time");
        let entry =
            index.cameras.entry(camera.to_owned()).or_insert(CameraRecord { frames: 0, first_capture_ns: None });
        for (row, buffers) in chunk.iter_component::<ImageBuffer>(buffer).enumerate() {
            if buffers.is_empty() {
                continue;
            }
            entry.frames += 1;
            if let Some(c) = captures.as_ref().and_then(|c| c.get(row)) {
                entry.first_capture_ns = Some(entry.first_capture_ns.map_or(*c, |f: i64| f.min(*c)));
            }
        }
        true
    })?;
    Ok(index)
}

/// The frames of one chunk, in frame order; rows that are no frame are counted in `skipped`.
fn rows_of(chunk: &re_chunk::Chunk, camera: &str, skipped: &mut u64) -> Vec<Row> {
    let (buffer, format) = (rerun::Image::descriptor_buffer().component, rerun::Image::descriptor_format().component);
    let seqs = frame_numbers(chunk, camera);
    let captures = times(chunk, "capture_time");
    let formats: Vec<Option<ImageFormat>> =
        chunk.iter_component::<ImageFormat>(format).map(|f| f.first().cloned()).collect();
    let mut rows = Vec::new();
    for (row, buffers) in chunk.iter_component::<ImageBuffer>(buffer).enumerate() {
        let Some(data) = buffers.first() else { continue };
        let seq = seqs.as_ref().and_then(|s| s.get(row)).and_then(|s| u64::try_from(*s).ok());
        let layout = formats.get(row).and_then(Option::as_ref).and_then(layout_of);
        let (Some(seq), Some(layout)) = (seq, layout) else {
            *skipped += 1;
            continue;
        };
        let pixels = Bytes::from_owner(ArrowBytes(data.0.0.clone()));
        if layout.validate(pixels.len()).is_err() {
            *skipped += 1;
            continue;
        }
        rows.push(Row { seq, capture_ns: captures.as_ref().and_then(|c| c.get(row).copied()), layout, pixels });
    }
    rows.sort_by_key(|r| r.seq);
    rows
}

/// Sleeps until wall time `due_ns`, in short steps so that a closed source stops soon.
fn sleep_until(due_ns: i64, outputs: &SourceOutputs) {
    loop {
        let left = due_ns - now_ns();
        if left <= 0 || outputs.is_closed() {
            return;
        }
        std::thread::sleep(Duration::from_nanos(left.min(50_000_000) as u64));
    }
}

/// Runs the source on a new thread until the recording ends or the outputs close.
pub fn spawn(spec: ReplaySpec, outputs: SourceOutputs) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("source:{}", outputs.name)).spawn(move || {
        let name = outputs.name.clone();
        let (mut sent, mut skipped) = (0u64, 0u64);
        let result = for_each_image_chunk(&spec.recording, |camera, chunk| {
            if camera != spec.camera {
                return true;
            }
            for row in rows_of(chunk, camera, &mut skipped) {
                let capture_ns = match (spec.timing, row.capture_ns) {
                    (ReplayTiming::Realtime, Some(recorded)) => {
                        let due = spec.clock.due_ns(recorded);
                        sleep_until(due, &outputs);
                        due
                    }
                    _ => now_ns(),
                };
                let meta = FrameMeta { camera: name.clone(), seq: row.seq, capture_ns };
                match Frame::new(meta, row.layout, row.pixels) {
                    Ok(frame) => {
                        if !outputs.emit(Packet::Frame(frame)) {
                            return false;
                        }
                        sent += 1;
                    }
                    Err(e) => {
                        warn!(source = %name, seq = row.seq, error = %e, "skipped a recorded image");
                        skipped += 1;
                    }
                }
            }
            true
        });
        for _ in 0..skipped {
            outputs.metrics.record_skipped();
        }
        match result {
            Ok(()) => {
                info!(source = %name, recording = %spec.recording.display(), sent, skipped, "replay ended");
                outputs.close(None);
            }
            Err(e) => {
                warn!(source = %name, error = %e, "replay failed");
                outputs.close(Some(e.to_string()));
            }
        }
    })
}
