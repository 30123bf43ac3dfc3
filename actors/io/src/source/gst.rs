//! The GStreamer source.
//!
//! Any `gst-launch` description works; when it has no `appsink`, one is appended behind a
//! `videoconvert` to the requested pixel format. The source thread pulls samples from the
//! appsink (at most two wait in it: when the pipeline is slower than the camera, the camera's
//! own buffering decides what is lost, and the edges' policies after that) and pushes them
//! into the bounded edges without a copy: the frame's pixels are the mapped GStreamer buffer
//! itself. Between samples it reads the pipeline's bus: EOS ends the stream cleanly, an error
//! names the element that failed. A request to end (Ctrl-C) sends EOS into the pipeline, so
//! what is in flight is still delivered.
//!
//! Surviving: with a [`Reconnect`] policy (on by default for RTSP), an error, the end of a
//! live stream, or the stall watchdog (no frame for `stall`) tears the pipeline down and
//! builds it again after an exponential backoff (`initial`, doubling up to `max`, back to
//! `initial` once frames flow again). Frame numbers go on across reconnections. The
//! source's `restarts` counts reconnections, `stalls` the watchdog's firings. A non-live
//! pipeline (a file) still ends at its EOS. V4L2 cameras ([`V4l2Request`]) are probed
//! first: the requested size and rate when the device offers them, else its nearest mode
//! (raw preferred over MJPEG), with a warning naming the device and what it offers.
//!
//! Capture time: for a live pipeline (cameras, RTSP) it is the buffer's PTS as a running time,
//! plus the pipeline's base time, mapped from the pipeline clock to wall time. A non-live
//! pipeline (a file, an unpaced test pattern) has no capture instant: its frames are stamped
//! when they leave the pipeline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use ocellus_runtime::node::{Flow, Source, SourceContext};
use ocellus_runtime::{Frame, FrameMeta, Packet, RuntimeError, now_ns};
use ocellus_wire::{FrameLayout, PixelFormat, YuvMatrix};
use tracing::{debug, info, warn};

use crate::{IoError, Result};

/// Name of the appsink Ocellus appends (or looks for first).
pub const APPSINK_NAME: &str = "ocellus_sink";
/// Samples the appsink holds before it makes the pipeline wait.
const APPSINK_BUFFERS: u32 = 2;
/// How long the source waits for a sample before it looks at the bus and its requests.
const PULL_TIMEOUT: Duration = Duration::from_millis(50);

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
    /// A media file, decoded by `decodebin`; or an image sequence (`frames/%05d.jpg`, JPEG or
    /// PNG) read by `multifilesrc` at `fps`.
    File {
        /// Path of the file, or the printf pattern of a sequence's frames.
        path: String,
        /// A sequence's frame rate.
        fps: u32,
        /// A sequence's frames (all until the first missing when absent).
        frames: Option<u64>,
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
        /// User name for the camera's authentication.
        user: Option<String>,
        /// The environment variable holding the password (read when the source starts, never
        /// written into the launch description or a log).
        password_env: Option<String>,
    },
}

/// The name of an RTSP source element whose password is set from the environment.
pub const RTSP_SOURCE_NAME: &str = "ocellus_rtsp";

/// Quotes a value for a launch description.
/// Whether a file preset's path is an image sequence's printf pattern (`%05d`, `%d`).
pub fn is_sequence(path: &str) -> bool {
    path.split('%').skip(1).any(|rest| rest.trim_start_matches(|c: char| c.is_ascii_digit()).starts_with('d'))
}

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
            Self::File { path, fps, frames } if is_sequence(path) => {
                let media = if path.to_lowercase().ends_with(".png") { "image/png" } else { "image/jpeg" };
                let stop = frames.map_or_else(String::new, |n| format!(" stop-index={}", n.saturating_sub(1)));
                format!(
                    "multifilesrc location={} index=0{stop} caps=\"{media},framerate={fps}/1\" ! decodebin",
                    quoted(path)
                )
            }
            Self::File { path, .. } => format!("filesrc location={} ! decodebin", quoted(path)),
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
            Self::Rtsp { url, latency_ms, user, password_env } => {
                let user = user.as_ref().map(|u| format!(" user-id={}", quoted(u))).unwrap_or_default();
                // The password itself is set on the element when the source starts.
                let credentials =
                    password_env.as_ref().map(|_| format!(" name={RTSP_SOURCE_NAME}")).unwrap_or_default();
                format!(
                    "rtspsrc location={} latency={latency_ms} protocols=tcp{user}{credentials} ! decodebin",
                    quoted(url)
                )
            }
        }
    }
}

/// How a source reconnects after an error, the end of a live stream or a stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// First backoff.
    pub initial: Duration,
    /// Longest backoff (the backoff doubles up to it).
    pub max: Duration,
    /// Reconnect when no frame came for this long (`None`: no watchdog).
    pub stall: Option<Duration>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { initial: Duration::from_millis(500), max: Duration::from_secs(10), stall: Some(Duration::from_secs(5)) }
    }
}

/// A V4L2 camera and the mode asked of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct V4l2Request {
    /// Device node, e.g. `/dev/video0`.
    pub device: String,
    /// Requested width.
    pub width: Option<u32>,
    /// Requested height.
    pub height: Option<u32>,
    /// Requested frames per second.
    pub fps: Option<u32>,
}

/// A GStreamer source: a launch description and the format to deliver.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GstSourceSpec {
    /// `gst-launch` description; an appsink is appended when absent.
    pub launch: String,
    /// Pixel format delivered (used when Ocellus appends the appsink).
    pub format: OutputFormat,
    /// Reconnect on errors, EOS of a live stream and stalls (`None`: an error ends the source).
    pub reconnect: Option<Reconnect>,
    /// A V4L2 camera whose modes are probed when the source starts: the launch description
    /// is then `v4l2src` with the mode chosen (`launch` is what `check` builds).
    pub v4l2: Option<V4l2Request>,
    /// The environment variable whose value is set as the RTSP source's password
    /// (`user-pw` of the element named [`RTSP_SOURCE_NAME`]) when the source starts.
    pub password_env: Option<String>,
}

impl GstSourceSpec {
    /// A source running `launch` and delivering `format` (no reconnection, no probing).
    pub fn new(launch: impl Into<String>, format: OutputFormat) -> Self {
        Self { launch: launch.into(), format, ..Self::default() }
    }
}

/// Initializes GStreamer once.
pub fn init() -> Result<()> {
    gst::init().map_err(|e| IoError::Gstreamer { element: "gstreamer".into(), message: e.to_string(), debug: None })
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
    let parse_error = |e: gst::glib::Error| IoError::Gstreamer {
        element: crate::LAUNCH_DESCRIPTION.into(),
        message: e.to_string(),
        debug: Some(launch.clone()),
    };
    let element = gst::parse::launch_full(&launch, None, gst::ParseFlags::FATAL_ERRORS).map_err(parse_error)?;
    let pipeline = match element.downcast::<gst::Pipeline>() {
        Ok(p) => p,
        Err(element) => {
            let p = gst::Pipeline::new();
            p.add(&element).map_err(|e| IoError::Gstreamer {
                element: element.name().to_string(),
                message: e.to_string(),
                debug: None,
            })?;
            p
        }
    };
    if let Some(var) = &spec.password_env {
        let password = std::env::var(var).map_err(|_| IoError::Gstreamer {
            element: RTSP_SOURCE_NAME.into(),
            message: format!("the RTSP password's environment variable {var} is not set"),
            debug: None,
        })?;
        let source = pipeline.by_name(RTSP_SOURCE_NAME).ok_or_else(|| IoError::Gstreamer {
            element: RTSP_SOURCE_NAME.into(),
            message: "no RTSP source to give the password to".into(),
            debug: None,
        })?;
        source.set_property("user-pw", password);
    }
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
        .ok_or_else(|| IoError::Gstreamer {
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

/// An error posted on the bus, with the path of the element that posted it.
fn error_from(err: &gst::message::Error) -> IoError {
    IoError::Gstreamer {
        element: err.src().map_or_else(|| "pipeline".to_owned(), |s| s.path_string().to_string()),
        message: err.error().to_string(),
        debug: err.debug().map(|d| d.to_string()),
    }
}

/// The pipeline playing now.
struct Playing {
    pipeline: gst::Pipeline,
    appsink: gst_app::AppSink,
    bus: gst::Bus,
    caps: Option<(gst::Caps, gst_video::VideoInfo)>,
    /// Wall time minus pipeline-clock time (ns), for live pipelines; decided on the first
    /// sample (`Some(None)`: not live).
    live_offset: Option<Option<i64>>,
    /// Frame number when it started (frames since: the reconnection backoff resets).
    seq_at_start: u64,
    eos_sent: bool,
    /// Set when the pipeline refused the EOS event (it cannot end its stream by itself).
    eos_refused: Arc<AtomicBool>,
}

impl Drop for Playing {
    fn drop(&mut self) {
        if let Err(e) = self.pipeline.set_state(gst::State::Null) {
            warn!(error = %e, "could not stop the pipeline");
        }
    }
}

/// What one turn of the source found on the bus.
enum BusEvent {
    Nothing,
    Eos,
    Error(IoError),
}

/// The GStreamer source.
///
/// Surviving: with a [`Reconnect`] policy (on by default for RTSP), an error, the end of a
/// live stream, or the stall watchdog (no frame for `stall`) tears the pipeline down and
/// builds it again after an exponential backoff (`initial`, doubling up to `max`, back to
/// `initial` once frames flow again). Frame numbers go on across reconnections. The source's
/// `restarts` counts reconnections, `stalls` the watchdog's firings. A non-live pipeline (a
/// file) still ends at its EOS. V4L2 cameras ([`V4l2Request`]) are probed first: the requested
/// size and rate when the device offers them, else its nearest mode (raw preferred over MJPEG),
/// with a warning naming the device and what it offers.
///
/// Capture time: for a live pipeline (cameras, RTSP) it is the buffer's PTS as a running time,
/// plus the pipeline's base time, mapped from the pipeline clock to wall time. A non-live
/// pipeline (a file, an unpaced test pattern) has no capture instant: its frames are stamped
/// when they leave the pipeline.
pub struct GstSource {
    spec: GstSourceSpec,
    playing: Option<Playing>,
    /// Whether the stream is live (its EOS means it broke off).
    live: bool,
    seq: u64,
    last_frame: Instant,
    backoff: Duration,
    /// A reconnection is due at this instant.
    reconnect_at: Option<Instant>,
}

impl GstSource {
    /// A source running `spec` once started.
    pub fn new(spec: GstSourceSpec) -> Self {
        let backoff = spec.reconnect.map_or(Duration::ZERO, |r| r.initial);
        let live = spec.v4l2.is_some() || spec.launch.contains("rtspsrc");
        Self { spec, playing: None, live, seq: 0, last_frame: Instant::now(), backoff, reconnect_at: None }
    }

    /// The spec to build now: a V4L2 camera is probed for the mode to ask.
    fn current_spec(&self) -> Result<GstSourceSpec> {
        match &self.spec.v4l2 {
            Some(request) => Ok(GstSourceSpec { launch: v4l2_launch(request)?, ..self.spec.clone() }),
            None => Ok(self.spec.clone()),
        }
    }

    /// Builds and plays the pipeline.
    fn play(&mut self, name: &str) -> Result<()> {
        let spec = self.current_spec()?;
        let (pipeline, appsink) = build_pipeline(&spec)?;
        appsink.set_property("sync", false);
        appsink.set_max_buffers(APPSINK_BUFFERS);
        appsink.set_drop(false);
        let bus = pipeline.bus().ok_or_else(|| IoError::Gstreamer {
            element: pipeline.name().to_string(),
            message: "pipeline without a bus".into(),
            debug: None,
        })?;
        let playing = Playing {
            pipeline,
            appsink,
            bus,
            caps: None,
            live_offset: None,
            seq_at_start: self.seq,
            eos_sent: false,
            eos_refused: Arc::default(),
        };
        self.last_frame = Instant::now();
        match playing.pipeline.set_state(gst::State::Playing) {
            Ok(gst::StateChangeSuccess::NoPreroll) => self.live = true,
            Ok(_) => {}
            Err(e) => {
                // The element that failed posted an error on the bus: report that one.
                let posted = playing.bus.pop_filtered(&[gst::MessageType::Error]);
                return Err(match posted.as_ref().map(|m| m.view()) {
                    Some(gst::MessageView::Error(err)) => error_from(err),
                    _ => IoError::Gstreamer {
                        element: playing.pipeline.name().to_string(),
                        message: format!("cannot start: {e}"),
                        debug: None,
                    },
                });
            }
        }
        info!(source = %name, launch = %crate::redact(&full_launch(&spec)), live = self.live, "playing");
        self.playing = Some(playing);
        Ok(())
    }

    /// Tears the pipeline down and schedules a new one after the backoff; without a
    /// reconnection policy the source ends with the error (replaying a file from its start
    /// would repeat frames).
    fn reconnect(&mut self, reason: String, ctx: &SourceContext) -> ocellus_runtime::Result<Flow> {
        let Some(policy) = self.spec.reconnect else {
            self.playing = None;
            return Err(RuntimeError::Fatal(reason));
        };
        self.playing = None;
        if ctx.end_requested() {
            return Ok(Flow::End);
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(policy.max);
        self.reconnect_at = Some(Instant::now() + delay);
        ctx.metrics().record_restart();
        let reconnects = ctx.metrics().snapshot(now_ns()).restarts;
        warn!(source = %ctx.name(), %reason, delay_ms = delay.as_millis() as u64, reconnects, "reconnecting");
        Ok(Flow::Continue)
    }

    /// Reads what the bus holds.
    fn bus_event(playing: &Playing, name: &str) -> BusEvent {
        use gst::MessageView;
        while let Some(msg) = playing.bus.pop() {
            match msg.view() {
                MessageView::Eos(..) => return BusEvent::Eos,
                MessageView::Error(err) => return BusEvent::Error(error_from(err)),
                MessageView::Warning(w) => {
                    warn!(source = %name, element = ?w.src().map(|s| s.path_string()), warning = %w.error(), "GStreamer warning");
                }
                _ => debug!(source = %name, kind = ?msg.type_(), "bus message"),
            }
        }
        BusEvent::Nothing
    }

    /// The frame of a sample; `Err(reason)` for a sample that is no usable frame.
    fn frame_of(&mut self, sample: &gst::Sample, camera: &std::sync::Arc<str>) -> std::result::Result<Frame, String> {
        let Some(playing) = self.playing.as_mut() else { return Err("no pipeline".into()) };
        let seq = self.seq;
        self.seq += 1;
        let (Some(caps), Some(buffer)) = (sample.caps_owned(), sample.buffer_owned()) else {
            return Err("sample without caps or buffer".into());
        };
        if playing.caps.as_ref().is_none_or(|(c, _)| *c != caps) {
            let info = gst_video::VideoInfo::from_caps(&caps).map_err(|e| format!("unusable caps {caps}: {e}"))?;
            playing.caps = Some((caps, info));
        }
        let Some((_, info)) = playing.caps.as_ref() else { return Err("no caps".into()) };
        let layout = layout_of(info, &buffer).ok_or_else(|| format!("unsupported format {:?}", info.format()))?;
        let sink = &playing.appsink;
        let offset = *playing.live_offset.get_or_insert_with(|| {
            let mut query = gst::query::Latency::new();
            let live = sink.static_pad("sink").is_some_and(|pad| pad.peer_query(&mut query)) && query.result().0;
            let clock = sink.clock()?;
            live.then(|| now_ns() - i64::try_from(clock.time().nseconds()).unwrap_or(0))
        });
        if offset.is_some() {
            self.live = true;
        }
        let capture_ns = match (offset, buffer.pts(), sample.segment()) {
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
        let mapped = buffer.into_mapped_buffer_readable().map_err(|_| "unreadable buffer".to_owned())?;
        let meta = FrameMeta { camera: camera.clone(), seq, capture_ns, frame_id: None };
        Frame::new(meta, layout, Bytes::from_owner(mapped)).map_err(|e| e.to_string())
    }
}

impl Source for GstSource {
    fn start(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        match self.play(ctx.name()) {
            Ok(()) => Ok(()),
            // A description that does not parse never will: no retry.
            Err(e @ IoError::Gstreamer { .. }) if e.is_launch_error() => Err(RuntimeError::Fatal(e.to_string())),
            Err(e) => self.reconnect(format!("cannot start: {e}"), ctx).map(|_| ()),
        }
    }

    fn process(&mut self, ctx: &mut SourceContext) -> ocellus_runtime::Result<Flow> {
        if let Some(at) = self.reconnect_at {
            if ctx.end_requested() {
                return Ok(Flow::End);
            }
            let now = Instant::now();
            if now < at {
                std::thread::sleep((at - now).min(PULL_TIMEOUT));
                return Ok(Flow::Continue);
            }
            self.reconnect_at = None;
            if let Err(e) = self.play(ctx.name()) {
                return self.reconnect(format!("cannot start: {e}"), ctx);
            }
        }
        let Some(playing) = self.playing.as_mut() else { return Ok(Flow::End) };
        if ctx.end_requested() && !playing.eos_sent {
            playing.eos_sent = true;
            // Sent from GStreamer's thread pool, not this thread: a live source takes its
            // streaming lock to accept EOS, and its streaming thread may be waiting for this
            // thread to pull from a full appsink (a busy pipeline downstream).
            let refused = playing.eos_refused.clone();
            playing.pipeline.call_async(move |pipeline| {
                if !pipeline.send_event(gst::event::Eos::new()) {
                    refused.store(true, Ordering::Release);
                }
            });
            info!(source = %ctx.name(), "EOS requested");
        }
        if playing.eos_refused.load(Ordering::Acquire) {
            return Ok(Flow::End);
        }
        match Self::bus_event(playing, ctx.name()) {
            BusEvent::Nothing => {}
            BusEvent::Eos => {
                // What the appsink still holds comes first.
                if let Some(sample) = playing.appsink.try_pull_sample(gst::ClockTime::ZERO) {
                    self.emit(&sample, ctx);
                    return Ok(Flow::Continue);
                }
                if self.spec.reconnect.is_some() && self.live && !playing.eos_sent {
                    return self.reconnect("end of stream".into(), ctx);
                }
                info!(source = %ctx.name(), "end of stream");
                return Ok(Flow::End);
            }
            BusEvent::Error(e) if !playing.eos_sent => return self.reconnect(e.to_string(), ctx),
            BusEvent::Error(e) => return Err(RuntimeError::Fatal(e.to_string())),
        }
        let timeout = gst::ClockTime::from_nseconds(PULL_TIMEOUT.as_nanos() as u64);
        match playing.appsink.try_pull_sample(timeout) {
            Some(sample) => self.emit(&sample, ctx),
            None => self.watch(ctx)?,
        }
        Ok(if ctx.outputs().is_closed() { Flow::End } else { Flow::Continue })
    }

    fn stop(&mut self, _ctx: &mut SourceContext) -> ocellus_runtime::Result<()> {
        self.playing = None;
        Ok(())
    }
}

impl GstSource {
    /// Emits the frame of `sample`, or counts and skips it.
    fn emit(&mut self, sample: &gst::Sample, ctx: &SourceContext) {
        self.last_frame = Instant::now();
        if let (Some(policy), Some(playing)) = (self.spec.reconnect, &self.playing)
            && self.seq > playing.seq_at_start
        {
            self.backoff = policy.initial;
        }
        match self.frame_of(sample, ctx.name()) {
            Ok(frame) => {
                ctx.emit(Packet::Frame(frame));
            }
            Err(reason) => {
                ctx.metrics().record_skipped();
                warn!(source = %ctx.name(), seq = self.seq.saturating_sub(1), %reason, "skipped a corrupt frame");
            }
        }
    }

    /// The watchdog: a pipeline that has sent no frame for `stall` is rebuilt.
    fn watch(&mut self, ctx: &SourceContext) -> ocellus_runtime::Result<()> {
        let Some(stall) = self.spec.reconnect.and_then(|r| r.stall) else { return Ok(()) };
        let silent = self.last_frame.elapsed();
        if silent <= stall {
            return Ok(());
        }
        if ctx.end_requested() {
            // A stalled stream never delivers its EOS.
            info!(source = %ctx.name(), "end of stream (stalled)");
            self.playing = None;
            return Ok(());
        }
        ctx.metrics().record_stall();
        let stalls = ctx.metrics().snapshot(now_ns()).stalls;
        warn!(source = %ctx.name(), silent_ms = silent.as_millis() as u64, stalls, "stalled");
        self.reconnect(format!("no frame for {} ms", silent.as_millis()), ctx).map(|_| ())
    }
}

/// Builds the pipeline without playing it (for `ocellus check`): unknown elements, bad
/// properties and unlinkable caps are reported with the element that failed.
pub fn check(spec: &GstSourceSpec) -> Result<()> {
    let (pipeline, _sink) = build_pipeline(spec)?;
    drop(pipeline);
    Ok(())
}

/// The GStreamer library version in use.
pub fn version() -> String {
    gst::version_string().to_string()
}

/// A mode a V4L2 device offers, fixed to the values nearest the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4l2Mode {
    /// `video/x-raw` or `image/jpeg`.
    pub media: String,
    /// Raw pixel format (`YUY2`, `NV12`, ...), when raw.
    pub format: Option<String>,
    /// Width.
    pub width: i32,
    /// Height.
    pub height: i32,
    /// Frame rate (numerator, denominator), when the device gives one.
    pub framerate: Option<(i32, i32)>,
}

impl V4l2Mode {
    /// Caps and decoder for a launch description (`image/jpeg,...! jpegdec`).
    pub fn launch_caps(&self) -> String {
        let mut caps = self.media.clone();
        if let Some(f) = &self.format {
            caps += &format!(",format={f}");
        }
        caps += &format!(",width={},height={}", self.width, self.height);
        if let Some((n, d)) = self.framerate {
            caps += &format!(",framerate={n}/{d}");
        }
        if self.media == "image/jpeg" {
            caps += " ! jpegdec";
        }
        caps
    }

    fn fps(&self) -> Option<f64> {
        self.framerate.filter(|(_, d)| *d != 0).map(|(n, d)| f64::from(n) / f64::from(d))
    }
}

impl std::fmt::Display for V4l2Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.media == "image/jpeg" { "MJPEG" } else { self.format.as_deref().unwrap_or("raw") };
        write!(f, "{}x{}", self.width, self.height)?;
        if let Some(fps) = self.fps() {
            write!(f, " at {fps:.4} fps")?;
        }
        write!(f, " {kind}")
    }
}

/// The mode of `offered` (a device's caps) closest to `request`: an exact match when there
/// is one; else the nearest size (then rate); raw before MJPEG at equal distance. `None`
/// when the device offers neither raw video nor JPEG.
pub fn choose_v4l2_mode(offered: &gst::CapsRef, request: &V4l2Request) -> Option<(V4l2Mode, bool)> {
    let mut best: Option<((f64, u8), V4l2Mode)> = None;
    for s in offered.iter() {
        let media = s.name().as_str();
        let jpeg = match media {
            "video/x-raw" => 0,
            "image/jpeg" => 1,
            _ => continue,
        };
        let mut s = s.to_owned();
        if let Some(w) = request.width.and_then(|w| i32::try_from(w).ok()) {
            s.fixate_field_nearest_int("width", w);
        }
        if let Some(h) = request.height.and_then(|h| i32::try_from(h).ok()) {
            s.fixate_field_nearest_int("height", h);
        }
        if let Some(fps) = request.fps.and_then(|f| i32::try_from(f).ok()) {
            s.fixate_field_nearest_fraction("framerate", gst::Fraction::new(fps, 1));
        }
        let mut fixed = gst::Caps::builder_full().structure(s).build();
        fixed.fixate();
        let Some(s) = fixed.structure(0) else { continue };
        let (Ok(width), Ok(height)) = (s.get::<i32>("width"), s.get::<i32>("height")) else { continue };
        let mode = V4l2Mode {
            media: media.to_owned(),
            format: s.get::<String>("format").ok(),
            width,
            height,
            framerate: s.get::<gst::Fraction>("framerate").ok().map(|f| (f.numer(), f.denom())),
        };
        // Relative distance in size, then in rate (a rate miss weighs less than a size miss).
        let rel = |got: f64, want: Option<u32>| want.map_or(0.0, |w| (got - f64::from(w)).abs() / f64::from(w.max(1)));
        let distance = rel(f64::from(width), request.width)
            + rel(f64::from(height), request.height)
            + 0.5 * rel(mode.fps().unwrap_or(0.0), request.fps);
        let key = (distance, jpeg);
        if best.as_ref().is_none_or(|(k, _)| key.0 < k.0 || (key.0 == k.0 && key.1 < k.1)) {
            best = Some((key, mode));
        }
    }
    best.map(|((distance, _), mode)| (mode, distance == 0.0))
}

/// Opens a V4L2 device just long enough to read the modes it offers.
pub fn v4l2_modes(device: &str) -> Result<gst::Caps> {
    init()?;
    let failed = |message: String| IoError::Gstreamer { element: format!("v4l2src {device}"), message, debug: None };
    let src = gst::ElementFactory::make("v4l2src")
        .property("device", device)
        .build()
        .map_err(|e| failed(format!("cannot create v4l2src (gstreamer1.0-plugins-good): {e}")))?;
    let probe = gst::Pipeline::new();
    probe.add(&src).map_err(|e| failed(e.to_string()))?;
    let opened = probe.set_state(gst::State::Ready);
    let caps = src.static_pad("src").map(|pad| pad.query_caps(None));
    let posted = probe.bus().and_then(|bus| bus.pop_filtered(&[gst::MessageType::Error]));
    if probe.set_state(gst::State::Null).is_err() {
        warn!(device, "could not close the device after probing it");
    }
    if opened.is_err() {
        let reason = match posted.as_ref().map(|m| m.view()) {
            Some(gst::MessageView::Error(err)) => {
                format!(
                    "cannot open the device: {}",
                    err.debug().map_or_else(|| err.error().to_string(), |d| d.to_string())
                )
            }
            _ => "cannot open the device".to_owned(),
        };
        return Err(failed(reason));
    }
    caps.ok_or_else(|| failed("v4l2src without a source pad".into()))
}

/// The launch description for a V4L2 camera: its modes are probed, the requested one is
/// used when offered, else the nearest (with a warning naming the device and its modes).
pub fn v4l2_launch(request: &V4l2Request) -> Result<String> {
    let device = &request.device;
    let src = format!("v4l2src device={}", quoted(device));
    if request.width.is_none() && request.height.is_none() && request.fps.is_none() {
        return Ok(src);
    }
    let offered = v4l2_modes(device)?;
    let Some((mode, exact)) = choose_v4l2_mode(&offered, request) else {
        return Err(IoError::Gstreamer {
            element: format!("v4l2src {device}"),
            message: format!("{device} offers neither raw video nor MJPEG (it offers {offered})"),
            debug: None,
        });
    };
    let asked = format!(
        "{}x{} at {} fps",
        request.width.map_or("?".into(), |w| w.to_string()),
        request.height.map_or("?".into(), |h| h.to_string()),
        request.fps.map_or("?".into(), |f| f.to_string())
    );
    if exact {
        info!(device = %device, mode = %mode, "V4L2 mode");
    } else {
        warn!(device = %device, asked = %asked, using = %mode, offered = %offered, "the camera does not offer the mode asked; using its nearest");
    }
    Ok(format!("{src} ! {}", mode.launch_caps()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(width: u32, height: u32, fps: u32) -> V4l2Request {
        V4l2Request { device: "/dev/video9".into(), width: Some(width), height: Some(height), fps: Some(fps) }
    }

    fn caps(text: &str) -> gst::Caps {
        init().expect("gstreamer");
        text.parse().expect("caps")
    }

    const WEBCAM: &str = "video/x-raw, format=(string)YUY2, width=(int)640, height=(int)480, framerate=(fraction){ 30/1, 15/1 }; \
        video/x-raw, format=(string)YUY2, width=(int)1280, height=(int)720, framerate=(fraction)10/1; \
        image/jpeg, width=(int)1280, height=(int)720, framerate=(fraction){ 30/1, 15/1 }; \
        image/jpeg, width=(int)1920, height=(int)1080, framerate=(fraction)30/1; \
        video/x-h264, width=(int)1920, height=(int)1080, framerate=(fraction)30/1";

    #[test]
    fn the_requested_mode_when_offered() {
        let (mode, exact) = choose_v4l2_mode(&caps(WEBCAM), &request(640, 480, 15)).expect("a mode");
        assert!(exact);
        assert_eq!(mode.launch_caps(), "video/x-raw,format=YUY2,width=640,height=480,framerate=15/1");
        let (mode, exact) = choose_v4l2_mode(&caps(WEBCAM), &request(1920, 1080, 30)).expect("a mode");
        assert!(exact, "MJPEG when only MJPEG has it");
        assert_eq!(mode.launch_caps(), "image/jpeg,width=1920,height=1080,framerate=30/1 ! jpegdec");
    }

    #[test]
    fn the_nearest_mode_otherwise() {
        // 1280x720 at 20: MJPEG at 15 or 30, raw at 10 → MJPEG at 15 (the nearest rate).
        let (mode, exact) = choose_v4l2_mode(&caps(WEBCAM), &request(1280, 720, 20)).expect("a mode");
        assert!(!exact);
        assert_eq!(mode.to_string(), "1280x720 at 15.0000 fps MJPEG");
        // 1280x720 at 30: raw only at 10 fps, MJPEG at 30 → MJPEG.
        let (mode, exact) = choose_v4l2_mode(&caps(WEBCAM), &request(1280, 720, 30)).expect("a mode");
        assert!(exact);
        assert_eq!(mode.media, "image/jpeg");
        assert_eq!((mode.width, mode.height, mode.framerate), (1280, 720, Some((30, 1))));
        // 800x600: nearest size is 640x480 raw.
        let (mode, exact) = choose_v4l2_mode(&caps(WEBCAM), &request(800, 600, 30)).expect("a mode");
        assert!(!exact);
        assert_eq!(mode.to_string(), "640x480 at 30.0000 fps YUY2");
        // Ranges (e.g. a virtual camera) fixate to the request.
        let range = caps(
            "video/x-raw, format=(string)NV12, width=(int)[ 16, 4096 ], height=(int)[ 16, 4096 ], framerate=(fraction)[ 0/1, 60/1 ]",
        );
        let (mode, exact) = choose_v4l2_mode(&range, &request(1000, 500, 25)).expect("a mode");
        assert!(exact, "{mode}");
        assert_eq!(mode.launch_caps(), "video/x-raw,format=NV12,width=1000,height=500,framerate=25/1");
    }

    #[test]
    fn no_usable_mode() {
        assert!(
            choose_v4l2_mode(&caps("video/x-h264, width=(int)640, height=(int)480"), &request(640, 480, 30)).is_none()
        );
    }

    #[test]
    fn a_missing_device_is_named() {
        let err = v4l2_launch(&request(640, 480, 30)).expect_err("no such device");
        let text = err.to_string();
        assert!(text.contains("/dev/video9"), "{text}");
    }
}
