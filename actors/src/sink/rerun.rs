//! The Rerun sink: records to `.rrd`, streams to a viewer, or serves over gRPC.
//!
//! Layout (see `ARCHITECTURE.md`): `world/<camera>/image` (the frame),
//! `world/<camera>/motion` (segmentation image; its annotation context is logged static on the
//! same path), `metrics/<stage>/{fps,latency_ms,latency_p99_ms,dropped}`. Timelines: `frame`
//! (per-camera sequence) and `capture_time` (sensor time). Rerun's time cursor is per thread:
//! the sink runs on its own stage thread and sets time right before each log.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use rerun::datatypes::{ChannelDatatype, ColorModel, ImageFormat};
use rerun::{
    AnnotationContext, Image, RecordingStream, RecordingStreamBuilder, Rgba32, Scalars, SegmentationImage, TimeCell,
};
use tracing::trace_span;

use crate::frame::{Frame, Mask, MaskKind, MetricsReport, Packet, PixelFormat};
use crate::stage::{Outputs, Processor};
use crate::{ActorError, Result};

/// Timeline of per-camera frame numbers.
pub const TIMELINE_FRAME: &str = "frame";
/// Timeline of capture times.
pub const TIMELINE_CAPTURE: &str = "capture_time";

/// Class ids of motion masks.
const MOTION_CLASSES: [(u16, &str, [u8; 3]); 2] = [(0, "static", [0, 0, 0]), (1, "moving", [255, 64, 32])];

/// Where the recording goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunTarget {
    /// Write an `.rrd` file.
    Save(PathBuf),
    /// Stream to a viewer, e.g. `rerun+http://127.0.0.1:9876/proxy`.
    Connect(String),
    /// Host a gRPC server viewers connect to.
    Serve {
        /// Address to bind.
        bind: String,
        /// Port to bind.
        port: u16,
    },
}

/// Opens a recording stream for `target`.
pub fn open_recording(app_id: &str, target: &RerunTarget) -> Result<RecordingStream> {
    let app_id = rerun::ApplicationId::try_new(app_id)
        .map_err(|e| ActorError::Rerun(format!("application id {app_id:?}: {e}")))?;
    let builder = RecordingStreamBuilder::new(app_id);
    let rec = match target {
        RerunTarget::Save(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| ActorError::Rerun(format!("creating {}: {e}", dir.display())))?;
            }
            builder.save(path)
        }
        RerunTarget::Connect(url) => builder.connect_grpc_opts(url.clone()),
        RerunTarget::Serve { bind, port } => builder.serve_grpc_opts(bind, *port, rerun::ServerOptions::default()),
    };
    rec.map_err(|e| ActorError::Rerun(e.to_string()))
}

/// Logs frames, masks and metrics to one recording.
pub struct RerunSink {
    rec: RecordingStream,
    annotated: HashSet<Arc<str>>,
}

impl RerunSink {
    /// A sink logging to `rec` (a clone of the pipeline's stream: restarts keep the file).
    pub fn new(rec: RecordingStream) -> Self {
        Self { rec, annotated: HashSet::new() }
    }

    fn set_frame_time(&self, seq: u64, capture_ns: i64) {
        self.rec.set_time_sequence(TIMELINE_FRAME, i64::try_from(seq).unwrap_or(i64::MAX));
        self.rec.set_time(TIMELINE_CAPTURE, TimeCell::from_timestamp_nanos_since_epoch(capture_ns));
    }

    fn log_frame(&self, frame: &Frame) -> Result<()> {
        let l = &frame.layout;
        let packed = l.pack(&frame.pixels).map_err(|e| ActorError::BadInput(e.to_string()))?;
        let resolution = [l.width as u32, l.height as u32];
        let image = match l.format {
            PixelFormat::Rgb => Image::from_rgb24(packed, resolution),
            PixelFormat::Bgr => {
                Image::from_color_model_and_bytes(packed, resolution, ColorModel::BGR, ChannelDatatype::U8)
            }
            PixelFormat::Gray8 => Image::from_l8(packed, resolution),
            PixelFormat::Nv12 => Image::from_pixel_format(resolution, rerun::PixelFormat::NV12, packed),
        };
        self.set_frame_time(frame.meta.seq, frame.meta.capture_ns);
        self.rec.log(format!("world/{}/image", frame.meta.camera), &image).map_err(|e| ActorError::Rerun(e.to_string()))
    }

    fn log_mask(&mut self, mask: &Mask) -> Result<()> {
        let (name, classes) = match mask.kind {
            MaskKind::Motion => ("motion", MOTION_CLASSES),
        };
        let path = format!("world/{}/{name}", mask.meta.camera);
        if self.annotated.insert(mask.meta.camera.clone()) {
            let context =
                AnnotationContext::new(classes.map(|(id, label, [r, g, b])| (id, label, Rgba32::from_rgb(r, g, b))));
            self.rec.log_static(path.as_str(), &context).map_err(|e| ActorError::Rerun(e.to_string()))?;
        }
        let expected = mask.width as usize * mask.height as usize;
        if mask.data.len() != expected {
            return Err(ActorError::BadInput(format!(
                "mask of {} bytes for {}x{}",
                mask.data.len(),
                mask.width,
                mask.height
            )));
        }
        let format = ImageFormat::segmentation([mask.width, mask.height], ChannelDatatype::U8);
        let image = SegmentationImage::new(mask.data.to_vec(), format);
        self.set_frame_time(mask.meta.seq, mask.meta.capture_ns);
        self.rec.log(path, &image).map_err(|e| ActorError::Rerun(e.to_string()))
    }

    fn log_metrics(&self, report: &MetricsReport) -> Result<()> {
        let s = &report.snapshot;
        self.rec.reset_time();
        self.rec.set_time(TIMELINE_CAPTURE, TimeCell::from_timestamp_nanos_since_epoch(report.at_ns));
        let base = format!("metrics/{}", report.stage);
        for (name, value) in [
            ("fps", s.fps),
            ("latency_ms", s.latency_p50_ms),
            ("latency_p99_ms", s.latency_p99_ms),
            ("dropped", s.input.dropped as f64),
        ] {
            self.rec
                .log(format!("{base}/{name}"), &Scalars::single(value))
                .map_err(|e| ActorError::Rerun(e.to_string()))?;
        }
        Ok(())
    }
}

impl Processor for RerunSink {
    fn process(&mut self, input: Packet, out: &mut Outputs) -> Result<()> {
        let _span = trace_span!("rerun_log").entered();
        match &input {
            Packet::Frame(f) => self.log_frame(f)?,
            Packet::Mask(m) => self.log_mask(m)?,
            Packet::Metrics(r) => self.log_metrics(r)?,
            // Feature maps are for models downstream; the recording shows their metrics.
            Packet::Features(_) => {}
        }
        out.record_consumed(input.meta().map(|m| m.capture_ns));
        Ok(())
    }

    fn finish(&mut self, _out: &mut Outputs) -> Result<()> {
        self.rec.flush_blocking().map_err(|e| ActorError::Rerun(e.to_string()))
    }
}
