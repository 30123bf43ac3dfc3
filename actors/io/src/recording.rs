//! Everything about Rerun recordings in one place: the entity paths and timelines Ocellus
//! logs to, and reading `.rrd` files back (replays, curation, tests) with Rerun's own decoder.
//!
//! | entity | what |
//! |---|---|
//! | `world/<camera>/image` | the frame |
//! | `world/<camera>/motion` | motion mask (segmentation image; annotation context static) |
//! | `world/<camera>/tracks` (+ `/boxes`) | tracks: label image with track ids, boxes labelled by track and class |
//! | `world/<camera>/discovery` (+ `/boxes`) | candidates found without prompts: label image by rank, boxes with predicted IoU |
//! | `world/<camera>/inpainted` | the frame with tracks painted out |
//! | `agent/caption` (+ `/<camera>`) | the caption (text; markdown with phrases and track ids) |
//! | `agent/decisions`, `agent/alerts` | text logs |
//! | `agent/inbox` | what reached the agent from outside (JSON), on the frame it acted on |
//! | `agent/published/<topic>` | text of the `publish` tool |
//! | `metrics/<node>/{fps,latency_ms,latency_p99_ms,dropped}` | scalars |
//!
//! Timelines: `frame/<camera>` (that camera's own sequence: cameras never share frame
//! numbers), `frame` (the same number on one timeline for every camera, convenient with a
//! single camera) and `capture_time` (sensor time, common to all cameras).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ocellus_runtime::message::InboxMessage;
use ocellus_wire::{FrameLayout, PixelFormat};
use rerun::components::{ImageBuffer, ImageFormat};
use rerun::datatypes::{ChannelDatatype, ColorModel};

use crate::IoError;

/// Timeline of per-camera frame numbers (shared by every camera; see [`camera_timeline`]).
pub const TIMELINE_FRAME: &str = "frame";
/// Timeline of capture times.
pub const TIMELINE_CAPTURE: &str = "capture_time";

/// The timeline of one camera's frame numbers: `frame/<camera>`.
pub fn camera_timeline(camera: &str) -> String {
    format!("{TIMELINE_FRAME}/{camera}")
}

/// Entity paths.
pub mod path {
    /// `world/<camera>/image`.
    pub fn image(camera: &str) -> String {
        format!("world/{camera}/image")
    }
    /// `world/<camera>/motion`.
    pub fn motion(camera: &str) -> String {
        format!("world/{camera}/motion")
    }
    /// `world/<camera>/tracks`.
    pub fn tracks(camera: &str) -> String {
        format!("world/{camera}/tracks")
    }
    /// `world/<camera>/tracks/boxes`.
    pub fn boxes(camera: &str) -> String {
        format!("world/{camera}/tracks/boxes")
    }
    /// `world/<camera>/people/<track id>`: a person's 3D joints and skeleton, in the space of
    /// the camera (whose pinhole is logged with its image).
    pub fn person(camera: &str, id: u32) -> String {
        format!("world/{camera}/people/{id}")
    }
    /// `world/<camera>/actions`: every person's actions on a key frame, one line each.
    pub fn actions(camera: &str) -> String {
        format!("world/{camera}/actions")
    }
    /// `world/<camera>/people/<track id>/actions`: a person's actions (markdown list).
    pub fn person_actions(camera: &str, id: u32) -> String {
        format!("world/{camera}/people/{id}/actions")
    }
    /// `world/<camera>/discovery`.
    pub fn discovery(camera: &str) -> String {
        format!("world/{camera}/discovery")
    }
    /// `world/<camera>/discovery/boxes`.
    pub fn discovery_boxes(camera: &str) -> String {
        format!("world/{camera}/discovery/boxes")
    }
    /// `world/<camera>/inpainted`.
    pub fn inpainted(camera: &str) -> String {
        format!("world/{camera}/inpainted")
    }
    /// `notices`: what the run substituted (seeded weights, a fallback source), a warning
    /// logged once, before everything else.
    pub const NOTICES: &str = "notices";
    /// `agent/caption`: the latest caption of any camera, as text.
    pub const CAPTION: &str = "agent/caption";
    /// `agent/caption/<camera>`: a camera's caption with its phrases and tracks (markdown).
    pub fn caption_of(camera: &str) -> String {
        format!("agent/caption/{camera}")
    }
    /// `agent/decisions`.
    pub const DECISIONS: &str = "agent/decisions";
    /// `agent/alerts`.
    pub const ALERTS: &str = "agent/alerts";
    /// `agent/inbox`.
    pub const INBOX: &str = "agent/inbox";
    /// `agent/published/<topic>`.
    pub fn published(topic: &str) -> String {
        format!("agent/published/{topic}")
    }
    /// `metrics/<node>/<figure>`.
    pub fn metric(node: &str, figure: &str) -> String {
        format!("metrics/{node}/{figure}")
    }
}

/// The camera of an entity `world/<camera>/...`.
pub fn camera_of(entity: &str) -> Option<&str> {
    let mut parts = entity.trim_start_matches('/').split('/');
    (parts.next() == Some("world")).then(|| parts.next()).flatten()
}

fn read_error(path: &Path, e: impl std::fmt::Display) -> IoError {
    IoError::Recording { path: path.to_path_buf(), message: e.to_string() }
}

/// The chunks of a recording, one at a time (memory stays bounded), static ones included.
pub fn chunks(path: &Path) -> Result<impl Iterator<Item = Result<re_chunk::Chunk, IoError>> + Send + use<>, IoError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    Ok(chunks_from(std::io::BufReader::new(file), path))
}

/// The chunks of a recording read from `reader` (a file wrapped in a progress bar, say);
/// `path` names it in errors.
pub fn chunks_from<R: std::io::BufRead + Send>(
    reader: R,
    path: &Path,
) -> impl Iterator<Item = Result<re_chunk::Chunk, IoError>> + Send + use<R> {
    let path = path.to_path_buf();
    re_log_encoding::DecoderApp::decode_lazy(reader).filter_map(move |msg| match msg {
        Err(e) => Some(Err(read_error(&path, e))),
        Ok(re_log_types::LogMsg::ArrowMsg(_, arrow)) => {
            Some(re_chunk::Chunk::from_arrow_msg(&arrow).map_err(|e| read_error(&path, e)))
        }
        Ok(_) => None,
    })
}

/// A view of the blueprint a recording carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueprintView {
    /// The view's kind (`2D`, `3D`, `TimeSeries`, `TextDocument`, `TextLog`).
    pub class: String,
    /// Its title.
    pub name: String,
    /// The entity it is rooted at (empty when it selects its contents otherwise).
    pub origin: String,
}

/// The views of the blueprint(s) a recording carries, in the order they were logged.
pub fn blueprint_views(path: &Path) -> Result<Vec<BlueprintView>, IoError> {
    let file = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let id = |field: &str| rerun::ComponentIdentifier::try_new(format!("ViewBlueprint:{field}"));
    let (Ok(class), Ok(name), Ok(origin)) = (id("class_identifier"), id("display_name"), id("space_origin")) else {
        return Ok(Vec::new());
    };
    let mut views = Vec::new();
    for msg in re_log_encoding::DecoderApp::decode_lazy(std::io::BufReader::new(file)) {
        let msg = msg.map_err(|e| read_error(path, e))?;
        let re_log_types::LogMsg::ArrowMsg(store, arrow) = msg else { continue };
        if store.kind() != re_log_types::StoreKind::Blueprint {
            continue;
        }
        let chunk = re_chunk::Chunk::from_arrow_msg(&arrow).map_err(|e| read_error(path, e))?;
        if !entity_of(&chunk).starts_with("view/") {
            continue;
        }
        let first = |values: Vec<String>| values.into_iter().next().unwrap_or_default();
        let classes: Vec<String> = chunk
            .iter_component::<rerun::blueprint::components::ViewClass>(class)
            .flat_map(|v| v.iter().map(|c| c.0.as_str().to_owned()).collect::<Vec<_>>())
            .collect();
        if classes.is_empty() {
            continue;
        }
        let names = chunk
            .iter_component::<rerun::components::Name>(name)
            .flat_map(|v| v.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>())
            .collect();
        let origins = chunk
            .iter_component::<rerun::blueprint::components::ViewOrigin>(origin)
            .flat_map(|v| v.iter().map(|o| o.0.to_string()).collect::<Vec<_>>())
            .collect();
        views.push(BlueprintView {
            class: first(classes),
            name: first(names),
            origin: first(origins).trim_start_matches('/').to_owned(),
        });
    }
    Ok(views)
}

/// The entity path of a chunk, without its leading `/`.
pub fn entity_of(chunk: &re_chunk::Chunk) -> String {
    chunk.entity_path().to_string().trim_start_matches('/').to_owned()
}

/// A time column of `chunk`, by timeline name.
pub fn times(chunk: &re_chunk::Chunk, name: &str) -> Option<Vec<i64>> {
    chunk.timelines().iter().find(|(n, _)| n.as_str() == name).map(|(_, c)| c.times_raw().to_vec())
}

/// Frame numbers of a chunk: its camera's own timeline, else the shared `frame`.
pub fn frame_numbers(chunk: &re_chunk::Chunk) -> Option<Vec<i64>> {
    let entity = entity_of(chunk);
    camera_of(&entity).and_then(|c| times(chunk, &camera_timeline(c))).or_else(|| times(chunk, TIMELINE_FRAME))
}

/// The instances of `component` logged at `entity`, by frame number (the camera's own
/// timeline, else `frame`): every row of a frame, in the order logged.
pub fn components_of<C: rerun::Component>(
    path: &Path,
    entity: &str,
    component: rerun::ComponentIdentifier,
) -> Result<BTreeMap<i64, Vec<C>>, IoError> {
    let mut out = BTreeMap::new();
    for chunk in chunks(path)? {
        let chunk = chunk?;
        if chunk.is_static() || entity_of(&chunk) != entity {
            continue;
        }
        let frames = frame_numbers(&chunk);
        for (row, values) in chunk.iter_component::<C>(component).enumerate() {
            if let Some(frame) = frames.as_ref().and_then(|f| f.get(row)) {
                out.entry(*frame).or_insert_with(Vec::new).extend(values.iter().cloned());
            }
        }
    }
    Ok(out)
}

/// The static texts logged at `entity` (the run's `notices`).
pub fn static_texts_of(path: &Path, entity: &str) -> Result<Vec<String>, IoError> {
    let component = rerun::TextLog::descriptor_text().component;
    let mut out = Vec::new();
    for chunk in chunks(path)? {
        let chunk = chunk?;
        if !chunk.is_static() || entity_of(&chunk) != entity {
            continue;
        }
        for values in chunk.iter_component::<rerun::components::Text>(component) {
            out.extend(values.iter().map(|t| t.as_str().to_owned()));
        }
    }
    Ok(out)
}

/// The bytes of an image's (or segmentation image's) buffer at `entity`, by frame number.
pub fn buffers_of(
    path: &Path,
    entity: &str,
    component: rerun::ComponentIdentifier,
) -> Result<BTreeMap<i64, Vec<u8>>, IoError> {
    Ok(components_of::<ImageBuffer>(path, entity, component)?
        .into_iter()
        .filter_map(|(frame, buffers)| buffers.first().map(|b| (frame, b.0.0.to_vec())))
        .collect())
}

/// The texts (text logs, text documents) logged at `entity`, by frame number.
pub fn texts_of(path: &Path, entity: &str) -> Result<BTreeMap<i64, Vec<String>>, IoError> {
    let log = rerun::TextLog::descriptor_text().component;
    let doc = rerun::TextDocument::descriptor_text().component;
    let mut out: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for component in [log, doc] {
        for (frame, texts) in components_of::<rerun::components::Text>(path, entity, component)? {
            out.entry(frame).or_default().extend(texts.iter().map(|t| t.as_str().to_owned()));
        }
    }
    Ok(out)
}

/// One box of a `Boxes2D` read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedBox {
    /// `[x0, y0, x1, y1]`.
    pub corners: [f32; 4],
    /// Class id (the track id).
    pub class_id: Option<u16>,
    /// Label text.
    pub label: Option<String>,
}

/// The boxes logged at `entity`, by frame number.
pub fn boxes_of(path: &Path, entity: &str) -> Result<BTreeMap<i64, Vec<LoggedBox>>, IoError> {
    use rerun::components::{ClassId, HalfSize2D, Position2D, Text};
    let centers = components_of::<Position2D>(path, entity, rerun::Boxes2D::descriptor_centers().component)?;
    let halves = components_of::<HalfSize2D>(path, entity, rerun::Boxes2D::descriptor_half_sizes().component)?;
    let classes = components_of::<ClassId>(path, entity, rerun::Boxes2D::descriptor_class_ids().component)?;
    let labels = components_of::<Text>(path, entity, rerun::Boxes2D::descriptor_labels().component)?;
    let mut out = BTreeMap::new();
    for (frame, halves) in halves {
        let centers = centers.get(&frame).cloned().unwrap_or_default();
        let boxes = halves
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let c = centers.get(i).map_or([0.0, 0.0], |c| [c.x(), c.y()]);
                LoggedBox {
                    corners: [c[0] - h.x(), c[1] - h.y(), c[0] + h.x(), c[1] + h.y()],
                    class_id: classes.get(&frame).and_then(|v| v.get(i)).map(|c| c.0.0),
                    label: labels.get(&frame).and_then(|v| v.get(i)).map(|t| t.as_str().to_owned()),
                }
            })
            .collect();
        out.insert(frame, boxes);
    }
    Ok(out)
}

/// One logged row of an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Value on the `frame` timeline.
    pub frame: Option<i64>,
    /// Value on the camera's own timeline `frame/<camera>` (entities `world/<camera>/...`).
    pub camera_frame: Option<i64>,
    /// Value on the `capture_time` timeline (ns).
    pub capture_ns: Option<i64>,
    /// Component names of the chunk.
    pub components: Vec<String>,
    /// Timelines of the chunk.
    pub timelines: Vec<String>,
}

/// What a recording holds, per entity path.
#[derive(Debug, Default)]
pub struct Summary {
    /// Temporal rows per entity.
    pub rows: BTreeMap<String, Vec<Row>>,
    /// Components logged static per entity.
    pub statics: BTreeMap<String, Vec<String>>,
}

impl Summary {
    /// Rows of `entity` (empty if none).
    pub fn rows_of(&self, entity: &str) -> &[Row] {
        self.rows.get(entity).map_or(&[], Vec::as_slice)
    }
}

/// What a recording holds.
pub fn summary(path: &Path) -> Result<Summary, IoError> {
    let mut summary = Summary::default();
    for chunk in chunks(path)? {
        let chunk = chunk?;
        let entity = entity_of(&chunk);
        let components: Vec<String> = chunk.component_descriptors().map(|d| d.display_name().to_owned()).collect();
        if chunk.is_static() {
            summary.statics.entry(entity).or_default().extend(components);
            continue;
        }
        let (frames, captures) = (times(&chunk, TIMELINE_FRAME), times(&chunk, TIMELINE_CAPTURE));
        let camera_frames = camera_of(&entity).and_then(|c| times(&chunk, &camera_timeline(c)));
        let timelines: Vec<String> = chunk.timelines().keys().map(|n| n.as_str().to_owned()).collect();
        let rows = summary.rows.entry(entity).or_default();
        for i in 0..chunk.num_rows() {
            rows.push(Row {
                frame: frames.as_ref().and_then(|f| f.get(i).copied()),
                camera_frame: camera_frames.as_ref().and_then(|f| f.get(i).copied()),
                capture_ns: captures.as_ref().and_then(|c| c.get(i).copied()),
                components: components.clone(),
                timelines: timelines.clone(),
            });
        }
    }
    for rows in summary.rows.values_mut() {
        rows.sort_by_key(|r| (r.frame, r.capture_ns));
    }
    Ok(summary)
}

// --- Camera images ----------------------------------------------------------------------

/// One recorded camera image.
#[derive(Debug, Clone)]
pub struct RecordedImage {
    /// Its frame number.
    pub seq: u64,
    /// Its capture time, when recorded.
    pub capture_ns: Option<i64>,
    /// Its layout (packed).
    pub layout: FrameLayout,
    /// Its pixels (sharing the decoded chunk's memory).
    pub pixels: Bytes,
}

/// An arrow buffer as [`Bytes`], without a copy.
struct ArrowBytes(rerun::external::arrow::buffer::ScalarBuffer<u8>);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The layout of a logged image, when it is one a frame can be (8-bit RGB, BGR, L, NV12).
pub fn layout_of(format: &ImageFormat) -> Option<FrameLayout> {
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

/// The camera of an image entity `world/<camera>/image`.
pub fn camera_of_image(entity: &str) -> Option<&str> {
    let rest = entity.trim_start_matches('/').strip_prefix("world/")?;
    let (camera, tail) = rest.split_once('/')?;
    (tail == "image").then_some(camera)
}

/// The images of an image chunk, in frame order; rows that are no frame are counted in
/// `skipped`.
pub fn images_of(chunk: &re_chunk::Chunk, skipped: &mut u64) -> Vec<RecordedImage> {
    let (buffer, format) = (rerun::Image::descriptor_buffer().component, rerun::Image::descriptor_format().component);
    let seqs = frame_numbers(chunk);
    let captures = times(chunk, TIMELINE_CAPTURE);
    let formats: Vec<Option<ImageFormat>> =
        chunk.iter_component::<ImageFormat>(format).map(|f| f.first().cloned()).collect();
    let mut images = Vec::new();
    // The frame number and capture time of a row.
    let seq_of = |row: usize| seqs.as_ref().and_then(|s| s.get(row)).and_then(|s| u64::try_from(*s).ok());
    let capture_of = |row: usize| captures.as_ref().and_then(|c| c.get(row).copied());
    for (row, buffers) in chunk.iter_component::<ImageBuffer>(buffer).enumerate() {
        let Some(data) = buffers.first() else { continue };
        let seq = seq_of(row);
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
        images.push(RecordedImage { seq, capture_ns: capture_of(row), layout, pixels });
    }
    // JPEG or PNG camera images (`EncodedImage`, a sink's `jpeg`), decoded.
    let (blob, media) =
        (rerun::EncodedImage::descriptor_blob().component, rerun::EncodedImage::descriptor_media_type().component);
    let types: Vec<Option<String>> = chunk
        .iter_component::<rerun::components::MediaType>(media)
        .map(|m| m.first().map(|t| t.as_str().to_owned()))
        .collect();
    for (row, blobs) in chunk.iter_component::<rerun::components::Blob>(blob).enumerate() {
        let Some(data) = blobs.first() else { continue };
        let seq = seq_of(row);
        let kind = match types.get(row).cloned().flatten().as_deref() {
            Some("image/png") => ocellus_wire::compressed::Kind::Png,
            _ => ocellus_wire::compressed::Kind::Jpeg,
        };
        let decoded = ocellus_wire::compressed::decode_rgb(kind, &data.0.0);
        let (Some(seq), Ok((layout, pixels))) = (seq, decoded) else {
            *skipped += 1;
            continue;
        };
        images.push(RecordedImage { seq, capture_ns: capture_of(row), layout, pixels });
    }
    images.sort_by_key(|r| r.seq);
    images
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

/// Which cameras a recording holds and how many images each.
pub fn index(path: &Path) -> Result<RecordingIndex, IoError> {
    let mut index = RecordingIndex::default();
    let buffer = rerun::Image::descriptor_buffer().component;
    let blob = rerun::EncodedImage::descriptor_blob().component;
    for chunk in chunks(path)? {
        let chunk = chunk?;
        let entity = entity_of(&chunk);
        let Some(camera) = camera_of_image(&entity).filter(|_| !chunk.is_static()) else { continue };
        let captures = times(&chunk, TIMELINE_CAPTURE);
        let entry =
            index.cameras.entry(camera.to_owned()).or_insert(CameraRecord { frames: 0, first_capture_ns: None });
        let raw = chunk.iter_component::<ImageBuffer>(buffer).map(|b| !b.is_empty());
        let encoded = chunk.iter_component::<rerun::components::Blob>(blob).map(|b| !b.is_empty());
        for (row, present) in raw.chain(encoded).enumerate() {
            if !present {
                continue;
            }
            entry.frames += 1;
            if let Some(c) = captures.as_ref().and_then(|c| c.get(row)) {
                entry.first_capture_ns = Some(entry.first_capture_ns.map_or(*c, |f: i64| f.min(*c)));
            }
        }
    }
    Ok(index)
}

/// What reached the agent from outside during a recording: per camera and frame number,
/// the messages it acted on there (`agent/inbox`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordedInbox {
    /// (camera, frame) → messages, in order.
    pub messages: BTreeMap<(String, u64), Vec<InboxMessage>>,
    /// The recording they were read from.
    pub recording: PathBuf,
}

/// Reads `agent/inbox` back. Entries are logged as `<camera> <json>`.
pub fn inbox(path: &Path) -> Result<RecordedInbox, IoError> {
    let mut recorded = RecordedInbox { recording: path.to_path_buf(), ..Default::default() };
    let text = rerun::TextLog::descriptor_text().component;
    for chunk in chunks(path)? {
        let chunk = chunk?;
        if chunk.is_static() || entity_of(&chunk) != path::INBOX {
            continue;
        }
        let frames = times(&chunk, TIMELINE_FRAME);
        for (row, texts) in chunk.iter_component::<rerun::components::Text>(text).enumerate() {
            let Some(seq) = frames.as_ref().and_then(|f| f.get(row)).and_then(|s| u64::try_from(*s).ok()) else {
                continue;
            };
            for t in texts.iter() {
                let Some((camera, json)) = t.as_str().split_once(' ') else { continue };
                let message: InboxMessage =
                    serde_json::from_str(json).map_err(|e| read_error(path, format!("agent/inbox: {e}")))?;
                recorded.messages.entry((camera.to_owned(), seq)).or_default().push(message);
            }
        }
    }
    Ok(recorded)
}
