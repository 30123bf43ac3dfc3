//! The GStreamer source actor.
//!
//! Any `gst-launch` description works; when it has no `appsink`, one is appended behind a
//! `videoconvert` to the requested pixel format. Samples are taken on GStreamer's streaming
//! thread (appsink callback) and pushed into the bounded edges without a copy: the frame's
//! pixels are the mapped GStreamer buffer itself. The actor, on its own actix arbiter, owns
//! the pipeline and consumes its bus: EOS closes the outputs cleanly, an error names the
//! element that failed.
//!
//! Capture time: for a live pipeline (cameras, RTSP) it is the buffer's PTS as a running time,
//! plus the pipeline's base time, mapped from the pipeline clock to wall time. A non-live
//! pipeline (a file, an unpaced test pattern) has no capture instant: its frames are stamped
//! when they leave the pipeline.

use actix::prelude::*;
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use ocellus_kernels::{FrameLayout, PixelFormat, YuvMatrix};
use tracing::{debug, error, info, warn};

use super::SourceOutputs;
use crate::frame::{Frame, FrameMeta, Packet};
use crate::{ActorError, Result, now_ns};

/// Name of the appsink Ocellus appends (or looks for first).
pub const APPSINK_NAME: &str = "ocellus_sink";

/// Pixel format a source delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Packed RGB (what the models take).
    #[default]
    Rgb,
    /// Packed BGR.
    Bgr,
    /// 8-bit grey.
    Gray8,
    /// NV12 (no conversion for most decoders and cameras).
    Nv12,
    /// Whichever of the four the pipeline produces with the least conversion.
    Native,
}

impl OutputFormat {
    /// The format as GStreamer caps write it.
    fn caps_format(self) -> &'static str {
        match self {
            Self::Rgb => "RGB",
            Self::Bgr => "BGR",
            Self::Gray8 => "GRAY8",
            Self::Nv12 => "NV12",
            Self::Native => "{ NV12, RGB, BGR, GRAY8 }",
        }
    }
}

/// Ready-made launch descriptions for common sources.
#[derive(Debug, Clone, PartialEq)]
pub enum Preset {
    /// `videotestsrc` (the `ball` pattern moves).
    TestPattern {
        /// videotestsrc pattern name (`ball`, `smpte`, `snow`, ...).
        pattern: String,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// Frames per second.
        fps: u32,
        /// Frames before EOS (`None`: endless).
        frames: Option<u64>,
        /// Pace frames in real time like a camera.
        live: bool,
    },
    /// A media file, decoded by `decodebin`.
    File {
        /// Path of the file.
        path: String,
    },
    /// A V4L2 camera.
    V4l2 {
        /// Device node, e.g. `/dev/video0`.
        device: String,
        /// Requested width (caps negotiation picks the closest mode when absent).
        width: Option<u32>,
        /// Requested height.
        height: Option<u32>,
        /// Requested frames per second.
        fps: Option<u32>,
    },
    /// An RTSP stream over TCP.
    Rtsp {
        /// `rtsp://` URL.
        url: String,
        /// Jitter-buffer latency in ms.
        latency_ms: u32,
    },
}

/// Quotes a value for a launch description.
fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Preset {
    /// The launch description of this preset.
    pub fn launch(&self) -> String {
        match self {
            Self::TestPattern { pattern, width, height, fps, frames, live } => {
                let frames = frames.map(|n| format!(" num-buffers={n}")).unwrap_or_default();
                format!(
                    "videotestsrc pattern={pattern} is-live={live}{frames} ! video/x-raw,width={width},height={height},framerate={fps}/1"
                )
            }
            Self::File { path } => format!("filesrc location={} ! decodebin", quoted(path)),
            Self::V4l2 { device, width, height, fps } => {
                let mut caps = String::from("video/x-raw");
                if let Some(w) = width {
                    caps += &format!(",width={w}");
                }
                if let Some(h) = height {
                    caps += &format!(",height={h}");
                }
                if let Some(f) = fps {
                    caps += &format!(",framerate={f}/1");
                }
                format!("v4l2src device={} ! {caps}", quoted(device))
            }
            Self::Rtsp { url, latency_ms } => {
                format!("rtspsrc location={} latency={latency_ms} protocols=tcp ! decodebin", quoted(url))
            }
        }
    }
}

/// A GStreamer source: a launch description and the format to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct GstSourceSpec {
    /// `gst-launch` description; an appsink is appended when absent.
    pub launch: String,
    /// Pixel format delivered (used when Ocellus appends the appsink).
    pub format: OutputFormat,
}

/// Initializes GStreamer once.
pub fn init() -> Result<()> {
    gst::init().map_err(|e| ActorError::Gstreamer { element: "gstreamer".into(), message: e.to_string(), debug: None })
}

/// The full description, with `videoconvert ! <caps> ! appsink` appended when the user's
/// description has no appsink.
pub fn full_launch(spec: &GstSourceSpec) -> String {
    if spec.launch.contains("appsink") {
        spec.launch.clone()
    } else {
        format!(
            "{} ! videoconvert ! video/x-raw,format={} ! appsink name={APPSINK_NAME}",
            spec.launch.trim().trim_end_matches('!').trim(),
            spec.format.caps_format()
        )
    }
}

/// Parses the description into a pipeline and finds its appsink (named [`APPSINK_NAME`], or
/// the first one). Errors name the element or the part of the description that failed.
pub fn build_pipeline(spec: &GstSourceSpec) -> Result<(gst::Pipeline, gst_app::AppSink)> {
    init()?;
    let launch = full_launch(spec);
    let parse_error = |e: gst::glib::Error| ActorError::Gstreamer {
        element: "launch description".into(),
        message: e.to_string(),
        debug: Some(launch.clone()),
    };
    let element = gst::parse::launch_full(&launch, None, gst::ParseFlags::FATAL_ERRORS).map_err(parse_error)?;
    let pipeline = match element.downcast::<gst::Pipeline>() {
        Ok(p) => p,
        Err(element) => {
            let p = gst::Pipeline::new();
            p.add(&element).map_err(|e| ActorError::Gstreamer {
                element: element.name().to_string(),
                message: e.to_string(),
                debug: None,
            })?;
            p
        }
    };
    let appsink = pipeline
        .by_name(APPSINK_NAME)
        .or_else(|| {
            pipeline
                .iterate_recurse()
                .into_iter()
                .flatten()
                .find(|e| e.factory().is_some_and(|f| f.name() == "appsink"))
        })
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| ActorError::Gstreamer {
            element: "appsink".into(),
            message: "the description has an appsink that could not be found".into(),
            debug: Some(launch.clone()),
        })?;
    Ok((pipeline, appsink))
}

/// Maps a sample's caps to a [`FrameLayout`] (stride and offsets from the buffer's video meta
/// when it has one, else from the caps).
fn layout_of(info: &gst_video::VideoInfo, buffer: &gst::BufferRef) -> Option<FrameLayout> {
    let format = match info.format() {
        gst_video::VideoFormat::Rgb => PixelFormat::Rgb,
        gst_video::VideoFormat::Bgr => PixelFormat::Bgr,
        gst_video::VideoFormat::Gray8 => PixelFormat::Gray8,
        gst_video::VideoFormat::Nv12 => PixelFormat::Nv12,
        _ => return None,
    };
    let (strides, offsets): (Vec<i32>, Vec<usize>) = match buffer.meta::<gst_video::VideoMeta>() {
        Some(meta) => (meta.stride().to_vec(), meta.offset().to_vec()),
        None => (info.stride().to_vec(), info.offset().to_vec()),
    };
    let plane = |i: usize| -> (usize, usize) {
        (strides.get(i).map_or(0, |s| usize::try_from(*s).unwrap_or(0)), offsets.get(i).copied().unwrap_or(0))
    };
    let (s0, o0) = plane(0);
    let (s1, o1) = if format.planes() == 2 { plane(1) } else { (0, 0) };
    let yuv_matrix = if info.colorimetry().matrix() == gst_video::VideoColorMatrix::Bt709 {
        YuvMatrix::Bt709
    } else {
        YuvMatrix::Bt601
    };
    Some(FrameLayout {
        format,
        width: info.width() as usize,
        height: info.height() as usize,
        strides: [s0, s1],
        offsets: [o0, o1],
        yuv_matrix,
    })
}

/// Per-stream state of the appsink callback.
struct Capture {
    outputs: SourceOutputs,
    seq: u64,
    caps: Option<(gst::Caps, gst_video::VideoInfo)>,
    /// Wall time minus pipeline-clock time (ns), for live pipelines; decided on the first
    /// buffer (`Some(None)`: not live).
    live_offset: Option<Option<i64>>,
}

impl Capture {
    fn live_offset(&mut self, sink: &gst_app::AppSink) -> Option<i64> {
        *self.live_offset.get_or_insert_with(|| {
            let mut query = gst::query::Latency::new();
            let live = sink.static_pad("sink").is_some_and(|pad| pad.peer_query(&mut query)) && query.result().0;
            let clock = sink.clock()?;
            live.then(|| now_ns() - i64::try_from(clock.time().nseconds()).unwrap_or(0))
        })
    }

    fn on_sample(&mut self, sink: &gst_app::AppSink) -> std::result::Result<gst::FlowSuccess, gst::FlowError> {
        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
        let seq = self.seq;
        self.seq += 1;
        let (Some(caps), Some(buffer)) = (sample.caps_owned(), sample.buffer_owned()) else {
            return self.skip(seq, "sample without caps or buffer");
        };
        if self.caps.as_ref().is_none_or(|(c, _)| *c != caps) {
            match gst_video::VideoInfo::from_caps(&caps) {
                Ok(info) => self.caps = Some((caps, info)),
                Err(e) => return self.skip(seq, &format!("unusable caps {caps}: {e}")),
            }
        }
        let Some((_, info)) = self.caps.as_ref() else { return self.skip(seq, "no caps") };
        let Some(layout) = layout_of(info, &buffer) else {
            return self.skip(seq, &format!("unsupported format {:?}", info.format()));
        };
        let capture_ns = match (self.live_offset(sink), buffer.pts(), sample.segment()) {
            (Some(offset), Some(pts), Some(segment)) => segment
                .downcast_ref::<gst::ClockTime>()
                .and_then(|s| s.to_running_time(pts))
                .map(|running| {
                    let clock_ns = sink.base_time().map_or(0, |b| b.nseconds()) + running.nseconds();
                    offset + i64::try_from(clock_ns).unwrap_or(0)
                })
                .unwrap_or_else(now_ns),
            _ => now_ns(),
        };
        let mapped = buffer.into_mapped_buffer_readable().map_err(|_| gst::FlowError::Error)?;
        let meta = FrameMeta { camera: self.outputs.name.clone(), seq, capture_ns };
        match Frame::new(meta, layout, Bytes::from_owner(mapped)) {
            Ok(frame) => {
                if self.outputs.emit(Packet::Frame(frame)) {
                    Ok(gst::FlowSuccess::Ok)
                } else {
                    Err(gst::FlowError::Flushing)
                }
            }
            Err(e) => self.skip(seq, &e.to_string()),
        }
    }

    fn skip(&self, seq: u64, reason: &str) -> std::result::Result<gst::FlowSuccess, gst::FlowError> {
        self.outputs.metrics.record_skipped();
        warn!(source = %self.outputs.name, seq, %reason, "skipped a corrupt frame");
        Ok(gst::FlowSuccess::Ok)
    }
}

/// An error posted on the bus, with the path of the element that posted it.
fn error_from(err: &gst::message::Error) -> ActorError {
    ActorError::Gstreamer {
        element: err.src().map_or_else(|| "pipeline".to_owned(), |s| s.path_string().to_string()),
        message: err.error().to_string(),
        debug: err.debug().map(|d| d.to_string()),
    }
}

/// Asks a source to end its stream (graceful: EOS flows through the pipeline).
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndOfStream;

/// The GStreamer source actor.
pub struct GstSource {
    spec: GstSourceSpec,
    outputs: SourceOutputs,
    pipeline: Option<gst::Pipeline>,
}

impl GstSource {
    /// A source running `spec` into `outputs` once started.
    pub fn new(spec: GstSourceSpec, outputs: SourceOutputs) -> Self {
        Self { spec, outputs, pipeline: None }
    }

    fn start(&mut self, ctx: &mut Context<Self>) -> Result<()> {
        let (pipeline, appsink) = build_pipeline(&self.spec)?;
        let mut capture = Capture { outputs: self.outputs.clone(), seq: 0, caps: None, live_offset: None };
        appsink.set_property("sync", false);
        appsink.set_callbacks(
            gst_app::AppSinkCallbacks::builder().new_sample(move |sink| capture.on_sample(sink)).build(),
        );
        let bus = pipeline.bus().ok_or_else(|| ActorError::Gstreamer {
            element: pipeline.name().to_string(),
            message: "pipeline without a bus".into(),
            debug: None,
        })?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            // The element that failed posted an error on the bus: report that one.
            let posted = bus.pop_filtered(&[gst::MessageType::Error]);
            let error = match posted.as_ref().map(|m| m.view()) {
                Some(gst::MessageView::Error(err)) => error_from(err),
                _ => ActorError::Gstreamer {
                    element: pipeline.name().to_string(),
                    message: format!("cannot start: {e}"),
                    debug: None,
                },
            };
            if pipeline.set_state(gst::State::Null).is_err() {
                warn!(source = %self.outputs.name, "could not stop the pipeline after a failed start");
            }
            return Err(error);
        }
        ctx.add_stream(bus.stream());
        info!(source = %self.outputs.name, launch = %full_launch(&self.spec), "playing");
        self.pipeline = Some(pipeline);
        Ok(())
    }

    fn stop_pipeline(&mut self, error: Option<String>) {
        if let Some(Err(e)) = self.pipeline.take().map(|p| p.set_state(gst::State::Null)) {
            warn!(source = %self.outputs.name, error = %e, "could not stop the pipeline");
        }
        self.outputs.close(error);
    }
}

impl Actor for GstSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Err(e) = self.start(ctx) {
            error!(source = %self.outputs.name, error = %e, "source failed to start");
            self.stop_pipeline(Some(e.to_string()));
            ctx.stop();
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.pipeline.is_some() {
            self.stop_pipeline(None);
        }
    }
}

impl StreamHandler<gst::Message> for GstSource {
    fn handle(&mut self, msg: gst::Message, ctx: &mut Self::Context) {
        use gst::MessageView;
        match msg.view() {
            MessageView::Eos(..) => {
                info!(source = %self.outputs.name, "end of stream");
                self.stop_pipeline(None);
                ctx.stop();
            }
            MessageView::Error(err) => {
                let e = error_from(err);
                error!(source = %self.outputs.name, error = %e, "source failed");
                self.stop_pipeline(Some(e.to_string()));
                ctx.stop();
            }
            MessageView::Warning(w) => {
                warn!(source = %self.outputs.name, element = ?w.src().map(|s| s.path_string()), warning = %w.error(), "GStreamer warning");
            }
            _ => debug!(source = %self.outputs.name, kind = ?msg.type_(), "bus message"),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The bus stream only ends with the pipeline.
        ctx.stop();
    }
}

impl Handler<EndOfStream> for GstSource {
    type Result = ();

    fn handle(&mut self, _msg: EndOfStream, ctx: &mut Self::Context) {
        match &self.pipeline {
            Some(p) if p.send_event(gst::event::Eos::new()) => info!(source = %self.outputs.name, "EOS requested"),
            _ => {
                self.stop_pipeline(None);
                ctx.stop();
            }
        }
    }
}

/// Builds the pipeline without playing it (for `ocellus check`): unknown elements, bad
/// properties and unlinkable caps are reported with the element that failed.
pub fn check(spec: &GstSourceSpec) -> Result<()> {
    let (pipeline, _sink) = build_pipeline(spec)?;
    drop(pipeline);
    Ok(())
}

/// Spawns the source actor on a new arbiter; returns its address and the arbiter to stop.
pub fn start(spec: GstSourceSpec, outputs: SourceOutputs) -> (Addr<GstSource>, Arbiter) {
    let arbiter = Arbiter::new();
    let addr = GstSource::start_in_arbiter(&arbiter.handle(), move |_| GstSource::new(spec, outputs));
    (addr, arbiter)
}

/// The GStreamer library version in use.
pub fn version() -> String {
    gst::version_string().to_string()
}
