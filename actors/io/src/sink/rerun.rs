//! The Rerun sink: records to `.rrd`, streams to a viewer, or serves over gRPC.
//!
//! The entity paths and timelines are those of [`crate::recording`]. Rerun's time cursor is
//! per thread: the sink runs on its own stage thread and sets time right before each log. The
//! recording opens when the sink first starts and is kept across restarts (a restarted sink
//! goes on writing to the same file).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ocellus_runtime::message::{AgentEvent, AgentOutput, MetricsReport, Outcome};
use ocellus_runtime::node::{Context, Input, Stage};
use ocellus_runtime::{Actions, Frame, FrameMeta, Mask, MaskKind, Packet, Poses, RuntimeError, Track, Tracks};
use ocellus_wire::PixelFormat;
use rerun::datatypes::{ChannelDatatype, ColorModel, ImageFormat};
use rerun::{
    AnnotationContext, Boxes2D, Image, LineStrips3D, Mesh3D, Pinhole, Points3D, RecordingStream,
    RecordingStreamBuilder, Rgba32, Scalars, SegmentationImage, TimeCell,
};
use tracing::trace_span;

use crate::recording::{TIMELINE_CAPTURE, TIMELINE_FRAME, camera_timeline, path};
use crate::{IoError, Result};

/// Radius of a logged 3D joint (scene units, metres).
const JOINT_RADIUS: f32 = 0.02;
/// The bones of OpenPose's BODY_25 skeleton, by joint index (the first 25 of the 45 joints).
const OPENPOSE_BONES: [(usize, usize); 24] = [
    (1, 8),
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (8, 9),
    (9, 10),
    (10, 11),
    (8, 12),
    (12, 13),
    (13, 14),
    (1, 0),
    (0, 15),
    (15, 17),
    (0, 16),
    (16, 18),
    (14, 19),
    (19, 20),
    (14, 21),
    (11, 22),
    (22, 23),
    (11, 24),
];

/// How often a sink writing a file checks that the writer still takes data (a flush: the
/// Rerun file writer stops at its first failed write, e.g. when the disk is full).
const WRITE_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long that flush may wait for a slow disk before the check is left for the next time.
const WRITE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// Free bytes (or bytes under the size limit) below which a stopped writer is put down to a
/// full disk (or the limit): more than one logged camera frame.
const FULL_MARGIN: u64 = 8 << 20;

/// Class ids of motion masks.
const MOTION_CLASSES: [(u16, &str, [u8; 3]); 2] = [(0, "static", [0, 0, 0]), (1, "moving", [255, 64, 32])];

/// Where the recording goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunTarget {
    /// Write an `.rrd` file.
    Save(PathBuf),
    /// Stream to a viewer, e.g. `rerun+http://127.0.0.1:9876/proxy`.
    Connect(String),
    /// Start a viewer (the bootstrap's, else `rerun` on the `PATH`) unless one already listens
    /// on `port`, and stream to it.
    Spawn {
        /// The viewer's port.
        port: u16,
        /// The viewer's memory limit (`"75%"`, `"8GB"`): it drops the oldest data beyond it.
        memory_limit: String,
        /// No window (a viewer that only serves).
        headless: bool,
    },
    /// Host a gRPC server viewers connect to.
    Serve {
        /// Address to bind.
        bind: String,
        /// Port to bind.
        port: u16,
        /// How long the server stays up after the stream ends, for viewers still catching up.
        linger: std::time::Duration,
    },
}

/// Opens a recording stream for `target`.
pub fn open_recording(app_id: &str, target: &RerunTarget) -> Result<RecordingStream> {
    let app_id =
        rerun::ApplicationId::try_new(app_id).map_err(|e| IoError::Rerun(format!("application id {app_id:?}: {e}")))?;
    let builder = RecordingStreamBuilder::new(app_id);
    let rec = match target {
        RerunTarget::Save(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| IoError::Rerun(format!("creating {}: {e}", dir.display())))?;
            }
            builder.save(path)
        }
        RerunTarget::Connect(url) => builder.connect_grpc_opts(url.clone()),
        RerunTarget::Spawn { port, memory_limit, headless } => {
            let opts = rerun::SpawnOptions {
                port: *port,
                memory_limit: memory_limit.clone(),
                executable_path: bootstrap_viewer().map(|p| p.to_string_lossy().into_owned()),
                headless: *headless,
                ..Default::default()
            };
            builder.spawn_opts(&opts)
        }
        RerunTarget::Serve { bind, port, .. } => builder.serve_grpc_opts(bind, *port, rerun::ServerOptions::default()),
    };
    rec.map_err(|e| IoError::Rerun(e.to_string()))
}

/// The viewer `scripts/bootstrap` installed (`$VIRTUAL_ENV/bin/rerun`, else
/// `$OCELLUS_CACHE/venv/bin/rerun`, `~/.cache/ocellus/venv/bin/rerun`), if there is one.
pub fn bootstrap_viewer() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let candidates = [
        env("VIRTUAL_ENV").map(|v| v.join("bin/rerun")),
        env("OCELLUS_CACHE").map(|c| c.join("venv/bin/rerun")),
        env("HOME").map(|h| h.join(".cache/ocellus/venv/bin/rerun")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

/// One recording for a whole run, opened by the first sink start (never while a
/// configuration is read) and shared by every later incarnation of the sink.
#[derive(Debug)]
pub struct SharedRecording {
    app_id: String,
    target: RerunTarget,
    blueprint: Option<super::blueprint::Layout>,
    /// Logged first, as a warning (`notices`).
    notices: Vec<String>,
    stream: OnceLock<RecordingStream>,
}

impl SharedRecording {
    /// A recording of `app_id` to `target`, not opened yet (the viewer lays it out itself).
    pub fn new(app_id: impl Into<String>, target: RerunTarget) -> Arc<Self> {
        Self::with_blueprint(app_id, target, None)
    }

    /// A recording that sends `blueprint`'s layout first, when it opens.
    pub fn with_blueprint(
        app_id: impl Into<String>,
        target: RerunTarget,
        blueprint: Option<super::blueprint::Layout>,
    ) -> Arc<Self> {
        Self::opening(app_id, target, blueprint, Vec::new())
    }

    /// A recording that sends `blueprint`'s layout, then `notices` (what the run substitutes:
    /// seeded weights, a fallback source) as a warning, when it opens.
    pub fn opening(
        app_id: impl Into<String>,
        target: RerunTarget,
        blueprint: Option<super::blueprint::Layout>,
        notices: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(Self { app_id: app_id.into(), target, blueprint, notices, stream: OnceLock::new() })
    }

    /// The stream, opened on first use (and the blueprint sent then).
    pub fn stream(&self) -> Result<RecordingStream> {
        if let Some(rec) = self.stream.get() {
            return Ok(rec.clone());
        }
        let rec = open_recording(&self.app_id, &self.target)?;
        let mut opened = false;
        let rec = self
            .stream
            .get_or_init(|| {
                opened = true;
                rec
            })
            .clone();
        if let (true, Some(layout)) = (opened, &self.blueprint) {
            layout.send(&rec).map_err(|e| IoError::Rerun(format!("sending the blueprint: {e}")))?;
        }
        if opened && !self.notices.is_empty() {
            let text = self.notices.join("\n");
            rec.log_static(path::NOTICES, &rerun::TextLog::new(text).with_level(rerun::TextLogLevel::WARN))
                .map_err(|e| IoError::Rerun(format!("logging the notices: {e}")))?;
        }
        Ok(rec)
    }
}

/// Logs frames, masks, tracks, agent events and metrics to one recording.
pub struct RerunSink {
    recording: Arc<SharedRecording>,
    /// Camera images as JPEG of this quality (`EncodedImage`) instead of raw pixels.
    jpeg: Option<u8>,
    rec: RecordingStream,
    /// When the file writer was last checked.
    checked: Instant,
    annotated: HashSet<Arc<str>>,
    /// Track ids already in each camera's track annotation context.
    track_ids: std::collections::HashMap<Arc<str>, std::collections::BTreeSet<u32>>,
}

/// A distinct colour per track id (golden-angle hues).
fn track_color(id: u32) -> Rgba32 {
    let hue = (f64::from(id) * 137.508) % 360.0;
    let (s, v) = (0.75, 0.95);
    let c = v * s;
    let x = c * (1.0 - ((hue / 60.0) % 2.0 - 1.0).abs());
    let (r, g, b) = match (hue / 60.0) as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let to8 = |f: f64| ((f + m) * 255.0).round() as u8;
    Rgba32::from_rgb(to8(r), to8(g), to8(b))
}

impl RerunSink {
    /// A sink logging to `recording` (opened when the sink starts; restarts keep it).
    pub fn new(recording: Arc<SharedRecording>) -> Self {
        Self {
            recording,
            jpeg: None,
            rec: RecordingStream::disabled(),
            checked: Instant::now(),
            annotated: HashSet::new(),
            track_ids: std::collections::HashMap::new(),
        }
    }

    /// Camera images as JPEG of `quality` (1–100) instead of raw pixels.
    pub fn with_jpeg(mut self, quality: Option<u8>) -> Self {
        self.jpeg = quality;
        self
    }

    /// `agent/caption` (a markdown document: the caption, then each phrase with its track
    /// ids), `agent/decisions` and `agent/alerts` (text logs).
    fn log_agent(&self, a: &AgentEvent) -> Result<()> {
        let err = |e: rerun::RecordingStreamError| IoError::Rerun(e.to_string());
        self.set_frame_time(a.meta.seq, a.meta.capture_ns);
        match &a.output {
            AgentOutput::Caption(c) => {
                let mut md = format!("{}\n\n", c.text());
                for p in &c.phrases {
                    md.push_str(&format!("- {} — tracks {:?}\n", p.text, p.tracks));
                }
                md.push_str(&format!("\n_re-aligned from {:?} by {} in {:.2} s_", c.base, c.model, c.latency_s));
                let doc = rerun::TextDocument::from_markdown(md);
                self.rec.log(path::caption_of(&c.camera), &doc).map_err(err)?;
                self.rec.log(path::CAPTION, &rerun::TextDocument::new(c.text())).map_err(err)
            }
            AgentOutput::Decision(d) => {
                let (level, body) = match &d.outcome {
                    Outcome::Executed(detail) => {
                        (rerun::TextLogLevel::INFO, format!("{}({}) → {detail}", d.tool, d.arguments))
                    }
                    Outcome::Refused(reason) => {
                        (rerun::TextLogLevel::WARN, format!("{}({}) refused: {reason}", d.tool, d.arguments))
                    }
                };
                self.rec.log(path::DECISIONS, &rerun::TextLog::new(body).with_level(level)).map_err(err)
            }
            AgentOutput::Alert(al) => {
                let level = match al.level {
                    1 => rerun::TextLogLevel::INFO,
                    2 => rerun::TextLogLevel::WARN,
                    _ => rerun::TextLogLevel::ERROR,
                };
                let text = format!("[{}] {}", al.source, al.text);
                self.rec.log(path::ALERTS, &rerun::TextLog::new(text).with_level(level)).map_err(err)
            }
            AgentOutput::Publish { topic, text } => {
                self.rec.log(path::published(topic), &rerun::TextLog::new(text.as_str())).map_err(err)
            }
            AgentOutput::Received(message) => {
                // `<camera> <json>`: what a replay hands the agent again on the same frame.
                let json = serde_json::to_string(message).map_err(|e| IoError::Rerun(e.to_string()))?;
                let entry = format!("{} {json}", a.meta.camera);
                self.rec.log(path::INBOX, &rerun::TextLog::new(entry)).map_err(err)
            }
        }
    }

    /// Sets the time cursor to one camera's frame (and only it: the cursor is per thread and
    /// keeps every timeline set before).
    fn set_camera_time(&self, meta: &FrameMeta) {
        self.set_frame_time(meta.seq, meta.capture_ns);
        // Camera names are never empty (the configuration checks them).
        if let Ok(timeline) = rerun::TimelineName::try_new(camera_timeline(&meta.camera)) {
            self.rec.set_time_sequence(timeline, i64::try_from(meta.seq).unwrap_or(i64::MAX));
        }
    }

    fn set_frame_time(&self, seq: u64, capture_ns: i64) {
        self.rec.reset_time();
        self.rec.set_time_sequence(TIMELINE_FRAME, i64::try_from(seq).unwrap_or(i64::MAX));
        self.rec.set_time(TIMELINE_CAPTURE, TimeCell::from_timestamp_nanos_since_epoch(capture_ns));
    }

    /// `frame` at `entity`.
    fn log_image(&self, frame: &Frame, entity: String) -> Result<()> {
        let l = &frame.layout;
        if let Some(quality) = self.jpeg {
            let rgb = l.to_rgb8(&frame.pixels).map_err(|e| IoError::BadInput(e.to_string()))?;
            let jpeg = ocellus_wire::compressed::encode_jpeg(l.width as u32, l.height as u32, &rgb, quality)
                .map_err(|e| IoError::BadInput(e.to_string()))?;
            let image = rerun::EncodedImage::from_file_contents(jpeg).with_media_type(rerun::MediaType::JPEG);
            self.set_camera_time(&frame.meta);
            return self.rec.log(entity, &image).map_err(|e| IoError::Rerun(e.to_string()));
        }
        let packed = l.pack(&frame.pixels).map_err(|e| IoError::BadInput(e.to_string()))?;
        let resolution = [l.width as u32, l.height as u32];
        let image = match l.format {
            PixelFormat::Rgb => Image::from_rgb24(packed, resolution),
            PixelFormat::Bgr => {
                Image::from_color_model_and_bytes(packed, resolution, ColorModel::BGR, ChannelDatatype::U8)
            }
            PixelFormat::Gray8 => Image::from_l8(packed, resolution),
            PixelFormat::Nv12 => Image::from_pixel_format(resolution, rerun::PixelFormat::NV12, packed),
        };
        self.set_camera_time(&frame.meta);
        self.rec.log(entity, &image).map_err(|e| IoError::Rerun(e.to_string()))
    }

    fn log_mask(&mut self, mask: &Mask) -> Result<()> {
        let (entity, classes) = match mask.kind {
            MaskKind::Motion => (path::motion(&mask.meta.camera), MOTION_CLASSES),
        };
        if self.annotated.insert(mask.meta.camera.clone()) {
            let context =
                AnnotationContext::new(classes.map(|(id, label, [r, g, b])| (id, label, Rgba32::from_rgb(r, g, b))));
            self.rec.log_static(entity.as_str(), &context).map_err(|e| IoError::Rerun(e.to_string()))?;
        }
        let expected = mask.width as usize * mask.height as usize;
        if mask.data.len() != expected {
            return Err(IoError::BadInput(format!(
                "mask of {} bytes for {}x{}",
                mask.data.len(),
                mask.width,
                mask.height
            )));
        }
        let format = ImageFormat::segmentation([mask.width, mask.height], ChannelDatatype::U8);
        let image = SegmentationImage::new(mask.data.to_vec(), format);
        self.set_camera_time(&mask.meta);
        self.rec.log(entity, &image).map_err(|e| IoError::Rerun(e.to_string()))
    }

    fn log_tracks(&mut self, t: &Tracks) -> Result<()> {
        let entity = path::tracks(&t.meta.camera);
        let known = self.track_ids.entry(t.meta.camera.clone()).or_default();
        if t.tracks.iter().any(|tr| !known.contains(&tr.id)) {
            known.extend(t.tracks.iter().map(|tr| tr.id));
            let classes: Vec<(u16, String, Rgba32)> =
                known.iter().map(|&id| (id as u16, format!("track {id}"), track_color(id))).collect();
            let context = AnnotationContext::new(classes.iter().map(|(id, label, c)| (*id, label.as_str(), *c)));
            self.rec.log_static(entity.as_str(), &context).map_err(|e| IoError::Rerun(e.to_string()))?;
        }
        // `person 0.91 (track 2001, discovery)`: the label, the id and how the track started.
        let label = |tr: &Track| {
            let origin = tr.origin.map_or(String::new(), |o| format!(", {}", o.name()));
            match &tr.label {
                Some(l) => format!("{} {:.2} (track {}{origin})", l.name, l.score, tr.id),
                None => format!("track {} ({:.2}{origin})", tr.id, tr.score),
            }
        };
        self.log_labels_and_boxes(t, &entity, &path::boxes(&t.meta.camera), label)
    }

    /// Candidates of discovery: a label image by rank and boxes with the predicted IoU, on
    /// their own layer so that they are not mistaken for tracks.
    fn log_candidates(&mut self, t: &Tracks) -> Result<()> {
        let label = |c: &Track| match &c.label {
            Some(l) => format!("{} {:.2} (candidate {}, IoU {:.2})", l.name, l.score, c.id, c.score),
            None => format!("candidate {} (IoU {:.2})", c.id, c.score),
        };
        let camera = &t.meta.camera;
        self.log_labels_and_boxes(t, &path::discovery(camera), &path::discovery_boxes(camera), label)
    }

    /// 3D people: the frame camera as a pinhole on the camera's image (so that the people
    /// overlay it in 2D views), and per person its joints and the OpenPose skeleton, or its
    /// root position when there is no body model, at `world/<camera>/people/<id>`.
    fn log_poses(&mut self, p: &Poses) -> Result<()> {
        let camera = &p.meta.camera;
        self.set_camera_time(&p.meta);
        let pinhole = Pinhole::from_focal_length_and_resolution(
            [p.focal_length as f32, p.focal_length as f32],
            [p.width as f32, p.height as f32],
        )
        .with_principal_point([p.principal_point[0] as f32, p.principal_point[1] as f32]);
        self.rec.log(path::image(camera), &pinhole).map_err(|e| IoError::Rerun(e.to_string()))?;
        for person in &p.people {
            let entity = path::person(camera, person.id);
            let color = track_color(person.id);
            let (points, label) = match &person.joints {
                Some(joints) => (joints.clone(), format!("track {}", person.id)),
                None => (vec![person.translation], format!("track {} (no body model: joints unavailable)", person.id)),
            };
            self.rec
                .log(
                    entity.as_str(),
                    &Points3D::new(points.iter().copied())
                        .with_colors([color])
                        .with_radii([JOINT_RADIUS])
                        .with_labels([label]),
                )
                .map_err(|e| IoError::Rerun(e.to_string()))?;
            if let (Some(vertices), Some(faces)) = (&person.vertices, &p.faces) {
                let mesh = Mesh3D::new(vertices.iter().copied())
                    .with_triangle_indices(faces.iter().copied())
                    .with_albedo_factor(color);
                self.rec.log(format!("{entity}/mesh"), &mesh).map_err(|e| IoError::Rerun(e.to_string()))?;
            }
            if let Some(joints) = &person.joints {
                let bones = OPENPOSE_BONES.iter().filter_map(|&(a, b)| Some([*joints.get(a)?, *joints.get(b)?]));
                self.rec
                    .log(format!("{entity}/skeleton"), &LineStrips3D::new(bones).with_colors([color]))
                    .map_err(|e| IoError::Rerun(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Actions on their key frame: one line per person at `world/<camera>/actions`, and each
    /// person's list at `world/<camera>/people/<id>/actions`.
    fn log_actions(&mut self, a: &Actions) -> Result<()> {
        let err = |e: rerun::RecordingStreamError| IoError::Rerun(e.to_string());
        let camera = &a.meta.camera;
        self.set_camera_time(&a.meta);
        for person in &a.people {
            let mut md = format!("**track {}**{}\n\n", person.id, if person.detected { "" } else { " (not detected)" });
            for s in &person.actions {
                md.push_str(&format!("- {} ({:.2})\n", s.name, s.score));
            }
            self.rec
                .log(path::person_actions(camera, person.id), &rerun::TextDocument::from_markdown(md))
                .map_err(err)?;
            self.rec.log(path::actions(camera), &rerun::TextLog::new(actions_line(person))).map_err(err)?;
        }
        Ok(())
    }

    /// A label image (u16 ids) at `entity` and the boxes of its visible entries at `boxes_at`,
    /// each labelled by `label`.
    fn log_labels_and_boxes(
        &mut self,
        t: &Tracks,
        entity: &str,
        boxes_at: &str,
        label: impl Fn(&Track) -> String,
    ) -> Result<()> {
        let expected = 2 * t.width as usize * t.height as usize;
        if t.labels.len() != expected {
            return Err(IoError::BadInput(format!(
                "{entity}: labels of {} bytes for {}x{}",
                t.labels.len(),
                t.width,
                t.height
            )));
        }
        let format = ImageFormat::segmentation([t.width, t.height], ChannelDatatype::U16);
        self.set_camera_time(&t.meta);
        self.rec
            .log(entity, &SegmentationImage::new(t.labels.to_vec(), format))
            .map_err(|e| IoError::Rerun(e.to_string()))?;
        let visible: Vec<_> = t.tracks.iter().filter_map(|tr| tr.bbox.map(|b| (tr, b))).collect();
        let boxes = Boxes2D::from_mins_and_sizes(
            visible.iter().map(|(_, b)| (b.x0 as f32, b.y0 as f32)),
            visible.iter().map(|(_, b)| ((b.x1 - b.x0) as f32, (b.y1 - b.y0) as f32)),
        )
        .with_class_ids(visible.iter().map(|(tr, _)| tr.id as u16))
        .with_labels(visible.iter().map(|(tr, _)| label(tr)));
        self.rec.log(boxes_at, &boxes).map_err(|e| IoError::Rerun(e.to_string()))
    }

    fn log_metrics(&self, report: &MetricsReport) -> Result<()> {
        let s = &report.snapshot;
        self.rec.reset_time();
        self.rec.set_time(TIMELINE_CAPTURE, TimeCell::from_timestamp_nanos_since_epoch(report.at_ns));
        for (name, value) in [
            ("fps", s.fps),
            ("latency_ms", s.latency_p50_ms),
            ("latency_p99_ms", s.latency_p99_ms),
            ("dropped", s.input.dropped as f64),
        ] {
            self.rec
                .log(path::metric(&report.stage, name), &Scalars::single(value))
                .map_err(|e| IoError::Rerun(e.to_string()))?;
        }
        Ok(())
    }

    /// Flushes the stream; for a file, a failed flush means its writer has stopped (a full
    /// disk, a file size limit), said with what can be told of why. A flush that only times
    /// out (a slow disk) is not a failure.
    fn flush(&self, timeout: Duration) -> Result<()> {
        match (self.rec.flush_with_timeout(timeout), &self.recording.target) {
            (Ok(()) | Err(rerun::sink::SinkFlushError::Timeout), _) => Ok(()),
            (Err(e), RerunTarget::Save(path)) => Err(write_failure(path, &e.to_string())),
            (Err(e), _) => Err(IoError::Rerun(e.to_string())),
        }
    }
}

/// Why the file writer of `path` stopped, as far as the file system and the process's
/// limits tell.
fn write_failure(path: &Path, error: &str) -> IoError {
    let written = std::fs::metadata(path).map_or(0, |m| m.len());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let free = nix::sys::statvfs::statvfs(dir).ok().map(|s| s.blocks_available() * s.fragment_size());
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE).ok().map(|(soft, _)| soft);
    let reason = match (free, limit) {
        (_, Some(l)) if l != nix::sys::resource::RLIM_INFINITY && written >= l.saturating_sub(FULL_MARGIN) => {
            format!("the process's file size limit ({l} bytes, `ulimit -f`) is reached")
        }
        (Some(f), _) if f < FULL_MARGIN => format!("no space left on the device of {} ({f} bytes free)", dir.display()),
        _ => format!("the file writer stopped ({error}; the log above has the system's reason)"),
    };
    IoError::RecordingWrite { path: path.to_path_buf(), written, reason }
}

impl Stage for RerunSink {
    fn start(&mut self, _ctx: &mut Context) -> ocellus_runtime::Result<()> {
        self.rec = self.recording.stream()?;
        self.checked = Instant::now();
        Ok(())
    }

    fn process(&mut self, input: Input, ctx: &mut Context) -> ocellus_runtime::Result<()> {
        let _span = trace_span!("rerun_log").entered();
        let packet = input.packet;
        match &packet {
            Packet::Frame(f) => self.log_image(f, path::image(&f.meta.camera))?,
            Packet::Mask(m) => self.log_mask(m)?,
            Packet::Metrics(r) => self.log_metrics(r)?,
            Packet::Tracks(t) => self.log_tracks(t)?,
            Packet::Candidates(t) => self.log_candidates(t)?,
            Packet::Agent(a) => self.log_agent(a)?,
            Packet::Inpainted(i) => self.log_image(&i.frame, path::inpainted(&i.frame.meta.camera))?,
            Packet::Poses(p) => self.log_poses(p)?,
            Packet::Actions(a) => self.log_actions(a)?,
            Packet::Features(_) => {
                return Err(RuntimeError::BadInput("feature maps are not logged (wire them to a model)".into()));
            }
        }
        ctx.record_consumed(packet.meta().map(|m| m.capture_ns));
        if matches!(self.recording.target, RerunTarget::Save(_)) && self.checked.elapsed() >= WRITE_CHECK_EVERY {
            self.checked = Instant::now();
            self.flush(WRITE_CHECK_TIMEOUT)?;
        }
        Ok(())
    }

    fn stop(&mut self, _ctx: &mut Context) -> ocellus_runtime::Result<()> {
        self.flush(Duration::MAX)?;
        // A served stream ends with the run: viewers still pulling its history get `linger`.
        if let RerunTarget::Serve { linger, .. } = &self.recording.target {
            std::thread::sleep(*linger);
        }
        Ok(())
    }
}

/// One person's actions as a line: `track 3: stand 0.91, watch (a person) 0.55`.
pub fn actions_line(person: &ocellus_runtime::PersonActions) -> String {
    let list: Vec<String> = person.actions.iter().map(|s| format!("{} {:.2}", s.name, s.score)).collect();
    format!("track {}: {}", person.id, list.join(", "))
}
