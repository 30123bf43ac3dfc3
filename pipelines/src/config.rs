//! Pipeline configuration (TOML): schema, parsing and validation with precise errors.
//!
//! Every error names the file, the key path (`actor[1].edge.depth`) and the line. Unknown
//! keys are errors. Parsing goes in two steps so that the key path is exact everywhere: the
//! file is read into TOML values, then each table is deserialized into its typed struct
//! through `serde_path_to_error`; `actor` and `sink` entries are dispatched on their `kind`
//! by hand rather than through serde's internally tagged enums (which buffer their content
//! and would lose the path). Lines come from the path, located in a span-preserving parse of
//! the same text (`toml_edit`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus_actors::edge::{DEFAULT_BLOCK_DEPTH, DropPolicy, EdgePolicy};
use ocellus_actors::runtime::SourceKind;
use ocellus_actors::sink::{KeyStyle, ZenohSinkSpec};
use ocellus_actors::source::{GstSourceSpec, OutputFormat, Preset, Reconnect, V4l2Request, ZenohSourceSpec};
use ocellus_actors::transport::ros2::{MsgType, TypeHashes};
use ocellus_actors::transport::{SessionMode, SessionSpec, WireFormat};
use ocellus_kernels::{DType, parse_device};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A key path such as `actor[1].edge.depth`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// This path extended by key `k`.
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_owned()));
        p
    }

    /// This path extended by index `i`.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// The path of top-level key `k`.
    pub fn root(k: &str) -> Self {
        Self(vec![Seg::Key(k.to_owned())])
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A configuration error: file, key path, line and column, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The key path the error is about.
    pub path: KeyPath,
    /// 1-based line, when the key (or its nearest existing parent) is in the file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}: {}", self.path, self.message)
    }
}

/// Resolves key paths to lines in the text of one file.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
}

impl<'a> Locator<'a> {
    fn new(file: &'a Path, text: &'a str) -> Self {
        Self { file, text, doc: toml_edit::Document::parse(text).ok() }
    }

    /// Span of the deepest part of `path` present in the file.
    fn span(&self, path: &KeyPath) -> Option<std::ops::Range<usize>> {
        use toml_edit::{Item, TableLike, Value};
        enum Node<'d> {
            Table(&'d dyn TableLike),
            Item(&'d Item),
            Value(&'d Value),
        }
        let doc = self.doc.as_ref()?;
        let mut node = Node::Table(doc.as_table());
        let mut best = None;
        for seg in &path.0 {
            let table: Option<&dyn TableLike> = match &node {
                Node::Table(t) => Some(*t),
                Node::Item(it) => it.as_table_like(),
                Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
            };
            node = match seg {
                Seg::Key(k) => {
                    let Some((key, item)) = table.and_then(|t| t.get_key_value(k)) else { break };
                    best = key.span().or(best);
                    Node::Item(item)
                }
                Seg::Index(i) => match node {
                    Node::Item(Item::ArrayOfTables(aot)) => {
                        let Some(t) = aot.get(*i) else { break };
                        best = t.span().or(best);
                        Node::Table(t)
                    }
                    Node::Item(Item::Value(v)) | Node::Value(v) => {
                        let Some(next) = v.as_array().and_then(|a| a.get(*i)) else { break };
                        best = next.span().or(best);
                        Node::Value(next)
                    }
                    _ => break,
                },
            };
        }
        best
    }

    fn error(&self, path: KeyPath, message: impl Into<String>) -> ConfigError {
        let span = self.span(&path);
        self.error_at(path, span, message)
    }

    fn error_at(&self, path: KeyPath, span: Option<std::ops::Range<usize>>, message: impl Into<String>) -> ConfigError {
        let (line, column) = match span {
            Some(s) => {
                let before = self.text.get(..s.start).unwrap_or("");
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError { file: self.file.to_path_buf(), path, line, column, message: message.into() }
    }

    /// Deserializes `value` (found at `at`) into `T`, with the exact key path of any error.
    fn typed<T: DeserializeOwned>(&self, at: &KeyPath, value: toml::Value) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let mut path = at.clone();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => path.0.push(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => path.0.push(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
                }
            }
            let message = e.into_inner().to_string();
            // serde names an unknown key only in its message: point at the key itself.
            let unknown = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
            if let Some(key) = unknown.map(|k| Seg::Key(k.to_owned())).filter(|k| path.0.last() != Some(k)) {
                path.0.push(key);
            }
            self.error(path, message.trim_end().to_owned())
        })
    }
}

// --- Schema ------------------------------------------------------------------------------

fn default_device() -> String {
    "cpu".to_owned()
}
fn default_dtype() -> String {
    "f32".to_owned()
}
fn default_metrics_every() -> String {
    "1s".to_owned()
}

/// `[runtime]`: where models run and how stages are supervised.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `"cpu"`, `"cuda"` or `"cuda:N"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `"f32"`, `"bf16"` or `"f16"`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Metrics period, e.g. `"1s"`.
    #[serde(default = "default_metrics_every")]
    pub metrics_every: String,
    /// Supervisor settings.
    #[serde(default)]
    pub restart: RestartConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            device: default_device(),
            dtype: default_dtype(),
            metrics_every: default_metrics_every(),
            restart: RestartConfig::default(),
        }
    }
}

/// `[runtime.restart]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Consecutive failures tolerated before a stage gives up.
    #[serde(default = "RestartConfig::default_max_restarts")]
    pub max_restarts: u32,
    /// First backoff, e.g. `"100ms"`.
    #[serde(default = "RestartConfig::default_initial")]
    pub initial_backoff: String,
    /// Longest backoff, e.g. `"5s"`.
    #[serde(default = "RestartConfig::default_max")]
    pub max_backoff: String,
}

impl RestartConfig {
    fn default_max_restarts() -> u32 {
        5
    }
    fn default_initial() -> String {
        "100ms".to_owned()
    }
    fn default_max() -> String {
        "5s".to_owned()
    }
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            max_restarts: Self::default_max_restarts(),
            initial_backoff: Self::default_initial(),
            max_backoff: Self::default_max(),
        }
    }
}

/// `[[source]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceEntry {
    name: String,
    gstreamer: Option<String>,
    preset: Option<toml::Value>,
    zenoh: Option<toml::Value>,
    format: Option<FormatName>,
    reconnect: Option<toml::Value>,
}

/// `[[source]] reconnect = { initial = "500ms", max = "10s", stall = "5s" }` (or `true`,
/// `false`); `stall = "0s"` turns the watchdog off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconnectEntry {
    initial: Option<String>,
    max: Option<String>,
    stall: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeName {
    Peer,
    Client,
}

/// Gathers the zenoh session keys of a config entry.
macro_rules! session_fields {
    ($e:expr) => {
        SessionFields {
            mode: $e.mode,
            connect: $e.connect,
            listen: $e.listen,
            config: $e.config,
            multicast_scouting: $e.multicast_scouting,
            shared_memory: $e.shared_memory,
        }
    };
}

/// The session settings shared by every zenoh user (sources, sinks, the agent's inbox, a
/// tracker's prompt topic). serde's `flatten` does not combine with `deny_unknown_fields`, so
/// each entry repeats these keys and `session_fields!` gathers them.
#[derive(Debug, Clone, Default)]
struct SessionFields {
    mode: Option<ModeName>,
    connect: Vec<String>,
    listen: Vec<String>,
    config: Option<PathBuf>,
    multicast_scouting: Option<bool>,
    shared_memory: Option<bool>,
}

/// `[[source]] zenoh = { key = "...", encoding = "...", ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZenohSourceEntry {
    key: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    domain: u32,
    encoding: String,
    frames: Option<u64>,
    idle_timeout: Option<String>,
    intake: Option<toml::Value>,
    mode: Option<ModeName>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
    config: Option<PathBuf>,
    multicast_scouting: Option<bool>,
    shared_memory: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    #[default]
    Rgb,
    Bgr,
    Gray8,
    Nv12,
    Native,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestPatternPreset {
    #[serde(default = "TestPatternPreset::default_pattern")]
    pattern: String,
    #[serde(default = "TestPatternPreset::default_width")]
    width: u32,
    #[serde(default = "TestPatternPreset::default_height")]
    height: u32,
    #[serde(default = "TestPatternPreset::default_fps")]
    fps: u32,
    frames: Option<u64>,
    #[serde(default)]
    live: bool,
}

impl TestPatternPreset {
    fn default_pattern() -> String {
        "ball".to_owned()
    }
    fn default_width() -> u32 {
        640
    }
    fn default_height() -> u32 {
        480
    }
    fn default_fps() -> u32 {
        30
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePreset {
    path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct V4l2Preset {
    #[serde(default = "V4l2Preset::default_device")]
    device: String,
    width: Option<u32>,
    height: Option<u32>,
    fps: Option<u32>,
}

impl V4l2Preset {
    fn default_device() -> String {
        "/dev/video0".to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RtspPreset {
    url: String,
    #[serde(default = "RtspPreset::default_latency")]
    latency_ms: u32,
}

impl RtspPreset {
    fn default_latency() -> u32 {
        200
    }
}

/// `edge = { policy = "...", depth = N, drop = "oldest" | "newest" }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeEntry {
    policy: PolicyName,
    depth: Option<usize>,
    drop: Option<DropPolicy>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PolicyName {
    Latest,
    Queue,
    Block,
}

/// `[[actor]] kind = "motion"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MotionEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    #[serde(default = "MotionEntry::default_threshold")]
    threshold: f64,
    #[serde(default = "MotionEntry::default_blur")]
    blur: i64,
    #[serde(default = "MotionEntry::default_dilate")]
    dilate: i64,
}

impl MotionEntry {
    fn default_threshold() -> f64 {
        ocellus_perception::motion::MotionConfig::default().threshold
    }
    fn default_blur() -> i64 {
        ocellus_perception::motion::MotionConfig::default().blur
    }
    fn default_dilate() -> i64 {
        ocellus_perception::motion::MotionConfig::default().dilate
    }
}

/// `[[actor]] kind = "backbone"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackboneEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    model: String,
    weights: Option<PathBuf>,
    #[serde(default)]
    allow_random_weights: bool,
    #[serde(default)]
    seed: i64,
    resolution: Option<[i64; 2]>,
    #[serde(default)]
    resize: ResizeName,
}

/// `resize = "exact" | "fast"`: the model's official preprocessing, or bilinear on the device.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ResizeName {
    #[default]
    Exact,
    Fast,
}

impl From<ResizeName> for ocellus_kernels::ResizeMode {
    fn from(r: ResizeName) -> Self {
        match r {
            ResizeName::Exact => Self::Exact,
            ResizeName::Fast => Self::Fast,
        }
    }
}

/// `[[actor]] kind = "sam2"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sam2Entry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    model: String,
    weights: Option<PathBuf>,
    #[serde(default)]
    allow_random_weights: bool,
    #[serde(default)]
    seed: i64,
    #[serde(default)]
    prompts: Vec<PromptEntry>,
    #[serde(default = "Sam2Entry::default_max_cond_frames")]
    max_cond_frames: usize,
    prompt_topic: Option<PromptTopicEntry>,
    image_size: Option<i64>,
    #[serde(default)]
    resize: ResizeName,
}

/// `prompt_topic = { key = "robot/front/prompts", connect = [...] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptTopicEntry {
    key: String,
    mode: Option<ModeName>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
    config: Option<PathBuf>,
    multicast_scouting: Option<bool>,
    shared_memory: Option<bool>,
}

impl Sam2Entry {
    fn default_max_cond_frames() -> usize {
        4
    }
}

/// `[[actor]] kind = "labeler"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelerEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    model: String,
    weights: Option<PathBuf>,
    #[serde(default)]
    allow_random_weights: bool,
    #[serde(default)]
    seed: i64,
    vocabulary: Vec<String>,
    templates: Option<toml::Value>,
    bpe: Option<PathBuf>,
    #[serde(default = "LabelerEntry::default_smoothing")]
    smoothing: f64,
    #[serde(default = "LabelerEntry::default_padding")]
    padding: f64,
}

impl LabelerEntry {
    fn default_smoothing() -> f64 {
        0.3
    }
    fn default_padding() -> f64 {
        0.1
    }
}

/// Sampling steps of DiffMAE unless `steps` says otherwise.
const DEFAULT_INPAINT_STEPS: usize = 10;
/// Blur radius (pixels) unless `blur_radius` says otherwise.
const DEFAULT_BLUR_RADIUS: u32 = 16;
/// Largest blur radius and mask growth (pixels).
const MAX_BLUR_RADIUS: u32 = 256;

/// The names of the actors of each kind an agent can act on.
struct ActorNames<'a> {
    sam2: &'a HashSet<String>,
    labeler: &'a HashSet<String>,
    inpainter: &'a HashSet<String>,
}

/// The actor of kind `what` (with its article: "a sam2") that an agent's `key` names; when
/// absent, one of its inputs, else the pipeline's only one.
fn resolve_actor(
    loc: &Locator<'_>,
    at: &KeyPath,
    key: &str,
    given: Option<String>,
    names: &HashSet<String>,
    inputs: &[String],
    what: &str,
) -> Result<Option<String>, ConfigError> {
    match given {
        Some(n) if names.contains(&n) => Ok(Some(n)),
        Some(n) => Err(loc.error(at.key(key), format!("{n:?} is not {what} actor"))),
        None => Ok(inputs
            .iter()
            .find(|i| names.contains(*i))
            .cloned()
            .or_else(|| if names.len() == 1 { names.iter().next().cloned() } else { None })),
    }
}

/// `[[actor]] kind = "inpainter"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InpainterEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    #[serde(default = "InpainterEntry::default_method")]
    method: String,
    model: Option<String>,
    weights: Option<PathBuf>,
    #[serde(default)]
    allow_random_weights: bool,
    #[serde(default)]
    seed: i64,
    steps: Option<usize>,
    noise_seed: Option<i64>,
    blur_radius: Option<u32>,
    #[serde(default)]
    tracks: Vec<u32>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default = "InpainterEntry::default_dilate")]
    dilate: u32,
}

impl InpainterEntry {
    fn default_method() -> String {
        "diffmae".into()
    }
    fn default_dilate() -> u32 {
        4
    }
}

/// `prompts = [{ box = [x0, y0, x1, y1] }, { points = [[x, y]], labels = [1] }]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptEntry {
    id: Option<u32>,
    #[serde(rename = "box")]
    bbox: Option<[f64; 4]>,
    points: Option<Vec<[f64; 2]>>,
    labels: Option<Vec<i32>>,
}

/// `[[actor]] kind = "agent"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentEntry {
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    model: Option<String>,
    weights: Option<PathBuf>,
    #[serde(default)]
    allow_random_weights: bool,
    #[serde(default)]
    seed: i64,
    tokenizer: Option<PathBuf>,
    context: Option<i64>,
    server: Option<ServerEntry>,
    guard: Option<GuardEntry>,
    caption_every: Option<String>,
    #[serde(default)]
    descriptions: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    tools: Vec<String>,
    rate_limit: Option<u32>,
    max_tokens: Option<usize>,
    tracker: Option<String>,
    labeler: Option<String>,
    inpainter: Option<String>,
    inbox: Option<InboxEntry>,
}

/// An OpenAI-compatible server: `{ url = "http://127.0.0.1:8080/v1", model = "llama3.2" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerEntry {
    url: String,
    model: String,
    api_key_env: Option<String>,
    timeout: Option<String>,
    attempts: Option<u32>,
}

/// `guard = { model = "llama-guard-3-1b", weights = "...", threshold = 0.5, exclude = ["S6"] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardEntry {
    model: Option<String>,
    weights: Option<PathBuf>,
    #[serde(default)]
    allow_random_weights: bool,
    #[serde(default)]
    seed: i64,
    server: Option<ServerEntry>,
    threshold: Option<f32>,
    #[serde(default)]
    exclude: Vec<String>,
}

/// `inbox = { operator_key = "robot/operator", alt_text_key = "robot/alt_text", connect = [...] }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InboxEntry {
    operator_key: Option<String>,
    alt_text_key: Option<String>,
    mode: Option<ModeName>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
    config: Option<PathBuf>,
    multicast_scouting: Option<bool>,
    shared_memory: Option<bool>,
}

enum ActorEntry {
    Agent(Box<AgentEntry>),
    Motion(MotionEntry),
    Backbone(BackboneEntry),
    Sam2(Sam2Entry),
    Labeler(LabelerEntry),
    Inpainter(InpainterEntry),
}

impl ActorEntry {
    fn name(&self) -> &str {
        match self {
            Self::Motion(m) => &m.name,
            Self::Backbone(b) => &b.name,
            Self::Sam2(t) => &t.name,
            Self::Agent(a) => &a.name,
            Self::Labeler(l) => &l.name,
            Self::Inpainter(i) => &i.name,
        }
    }

    fn inputs(&self) -> &[String] {
        match self {
            Self::Motion(m) => &m.inputs,
            Self::Backbone(b) => &b.inputs,
            Self::Sam2(t) => &t.inputs,
            Self::Agent(a) => &a.inputs,
            Self::Labeler(l) => &l.inputs,
            Self::Inpainter(i) => &i.inputs,
        }
    }
}

/// `[[sink]] kind = "rerun"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RerunEntry {
    #[serde(default = "RerunEntry::default_name")]
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    save: Option<PathBuf>,
    connect: Option<String>,
    serve: Option<ServeEntry>,
    #[serde(default = "RerunEntry::default_metrics")]
    metrics: bool,
    #[serde(default = "RerunEntry::default_app_id")]
    app_id: String,
}

impl RerunEntry {
    fn default_name() -> String {
        "rerun".to_owned()
    }
    fn default_metrics() -> bool {
        true
    }
    fn default_app_id() -> String {
        "ocellus".to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeEntry {
    #[serde(default = "ServeEntry::default_bind")]
    bind: String,
    #[serde(default = "ServeEntry::default_port")]
    port: u16,
}

impl ServeEntry {
    fn default_bind() -> String {
        "0.0.0.0".to_owned()
    }
    fn default_port() -> u16 {
        9876
    }
}

/// `[[sink]] kind = "null"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NullEntry {
    #[serde(default = "NullEntry::default_name")]
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
}

/// `[[sink]] kind = "zenoh"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZenohSinkEntry {
    #[serde(default = "ZenohSinkEntry::default_name")]
    name: String,
    #[allow(dead_code)]
    kind: String,
    inputs: Vec<String>,
    edge: Option<toml::Value>,
    #[serde(default)]
    keys: KeysName,
    prefix: Option<String>,
    domain: Option<u32>,
    namespace: Option<String>,
    node: Option<String>,
    type_hash: Option<TypeHashName>,
    bridge_namespace: Option<String>,
    #[serde(default)]
    frames: bool,
    #[serde(default)]
    congestion: CongestionName,
    shm_pool_mib: Option<usize>,
    mode: Option<ModeName>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    listen: Vec<String>,
    config: Option<PathBuf>,
    multicast_scouting: Option<bool>,
    shared_memory: Option<bool>,
}

impl ZenohSinkEntry {
    fn default_name() -> String {
        "zenoh".to_owned()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KeysName {
    #[default]
    Zenoh,
    Ros2,
    Ros2dds,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TypeHashName {
    Rihs01,
    Humble,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CongestionName {
    #[default]
    Block,
    Drop,
}

impl NullEntry {
    fn default_name() -> String {
        "null".to_owned()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    runtime: Option<toml::Value>,
    #[serde(default)]
    source: Vec<toml::Value>,
    #[serde(default)]
    actor: Vec<toml::Value>,
    #[serde(default)]
    sink: Vec<toml::Value>,
}

// --- Validated configuration ------------------------------------------------------------

/// A validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Camera name (entity path part in Rerun).
    pub name: String,
    /// What to run: a GStreamer pipeline or a zenoh subscription.
    pub kind: SourceKind,
    /// Where it is declared (for errors found later, e.g. by GStreamer).
    pub path: KeyPath,
}

/// What a processing actor does.
#[derive(Debug, Clone, PartialEq)]
pub enum ActorKind {
    /// Motion segmentation.
    Motion(ocellus_perception::motion::MotionConfig),
    /// SAM 2 streaming segmentation and tracking.
    Sam2 {
        /// Model name.
        model: String,
        /// Weights.
        weights: ocellus_actors::backbone::WeightsSource,
        /// Objects to track from the first frame: (track id, prompt in frame pixels).
        prompts: Vec<(u32, ocellus_actors::tracker::FramePrompt)>,
        /// Conditioning frames kept per object.
        max_cond_frames: usize,
        /// Prompts from a zenoh topic (JSON: `{"id": 5, "box": [...]}`, `{"remove": 5}`).
        prompt_topic: Option<ocellus_actors::control::PromptTopicSpec>,
        /// Input side, when not the model's `image_size`.
        image_size: Option<i64>,
        /// Official preprocessing or the fast path.
        resize: ocellus_kernels::ResizeMode,
    },
    /// The agent (its spec without the runtime channels, which the graph adds).
    Agent(Box<AgentConfig>),
    /// A vision backbone.
    Backbone {
        /// Model name.
        model: String,
        /// Weights.
        weights: ocellus_actors::backbone::WeightsSource,
        /// Input resolution, when not the model's own.
        resolution: Option<(i64, i64)>,
        /// Official preprocessing or the fast path.
        resize: ocellus_kernels::ResizeMode,
    },
    /// MetaCLIP zero-shot labels for tracks.
    Labeler {
        /// open_clip model name.
        model: String,
        /// Weights.
        weights: ocellus_actors::backbone::WeightsSource,
        /// Class names.
        vocabulary: Vec<String>,
        /// Prompt templates (`{}` = class name).
        templates: Vec<String>,
        /// The BPE vocabulary file (the venv's open_clip copy when absent).
        bpe: Option<PathBuf>,
        /// Weight of new probabilities in the per-track moving average.
        smoothing: f64,
        /// Box padding per side, fraction of the longer side.
        padding: f64,
    },
    /// Tracks painted out of frames (privacy).
    Inpainter {
        /// How regions are filled.
        method: ocellus_actors::inpainter::InpaintMethod,
        /// Track ids always removed.
        tracks: Vec<u32>,
        /// Labels always removed.
        labels: Vec<String>,
        /// Mask growth in pixels.
        dilate: u32,
    },
}

/// A validated agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Its language model.
    pub backend: ocellus_actors::agent::BackendSpec,
    /// Llama Guard.
    pub guard: Option<ocellus_actors::agent::GuardSpec>,
    /// Allowed tools.
    pub tools: Vec<ocellus_actors::agent::tools::ToolKind>,
    /// Calls per tool per minute.
    pub rate_limit: u32,
    /// Caption period.
    pub caption_every: Duration,
    /// Camera descriptions.
    pub descriptions: HashMap<String, String>,
    /// Tokens per answer.
    pub max_tokens: usize,
    /// The SAM 2 actor `track` / `untrack` act on.
    pub tracker: Option<String>,
    /// The labeler `label` acts on.
    pub labeler: Option<String>,
    /// The inpainter `inpaint` acts on.
    pub inpainter: Option<String>,
    /// Operator instructions and alt-texts on zenoh.
    pub inbox: Option<ocellus_actors::agent::inbox::InboxSpec>,
}

/// A validated processing actor.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorConfig {
    /// Actor name.
    pub name: String,
    /// Nodes it reads.
    pub inputs: Vec<String>,
    /// Its input edge.
    pub edge: EdgePolicy,
    /// What it does.
    pub kind: ActorKind,
}

/// What a sink does.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// Rerun recording or stream.
    Rerun {
        /// Where to.
        target: ocellus_actors::sink::RerunTarget,
        /// Also log every node's metrics.
        metrics: bool,
        /// Rerun application id.
        app_id: String,
    },
    /// Counts and drops everything.
    Null,
    /// Publishes on zenoh (Ocellus keys, or ROS 2).
    Zenoh(ZenohSinkSpec),
}

/// A validated sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Sink name.
    pub name: String,
    /// Nodes it reads.
    pub inputs: Vec<String>,
    /// Its input edge.
    pub edge: EdgePolicy,
    /// What it does.
    pub kind: SinkKind,
}

/// A validated pipeline configuration.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// Parsed `runtime.device`.
    pub device: tch::Device,
    /// Parsed `runtime.dtype`.
    pub dtype: DType,
    /// Parsed `runtime.metrics_every`.
    pub metrics_every: Duration,
    /// Parsed `runtime.restart`.
    pub restart: ocellus_actors::RestartPolicy,
    /// `[[source]]` entries.
    pub sources: Vec<SourceConfig>,
    /// `[[actor]]` entries.
    pub actors: Vec<ActorConfig>,
    /// `[[sink]]` entries.
    pub sinks: Vec<SinkConfig>,
    /// The text it was parsed from (to locate errors found later).
    text: String,
}

/// Node names become Rerun entity path parts and metric keys: keep them plain.
fn check_name(
    loc: &Locator<'_>,
    path: KeyPath,
    name: &str,
    seen: &mut HashMap<String, KeyPath>,
) -> Result<(), ConfigError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(
            loc.error(path, format!("name {name:?} must be non-empty and use only letters, digits, '_', '-' and '.'"))
        );
    }
    if let Some(first) = seen.get(name) {
        return Err(loc.error(path, format!("name {name:?} is already used by {first}")));
    }
    seen.insert(name.to_owned(), path);
    Ok(())
}

/// llama-models' `tokenizer.model` in the bootstrap venv (the real Llama 3 tokenizer).
pub fn default_llama_tokenizer() -> Option<PathBuf> {
    let python = ocellus_perception::weights::venv_python()?;
    let lib = python.parent()?.parent()?.join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/llama_models/llama3/tokenizer.model"))
        .find(|p| p.exists())
}

fn parse_duration(loc: &Locator<'_>, path: KeyPath, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text)
        .map_err(|e| loc.error(path, format!("{text:?} is not a duration like \"500ms\" or \"2s\": {e}")))
}

fn parse_edge(
    loc: &Locator<'_>,
    at: &KeyPath,
    value: Option<toml::Value>,
    default: EdgePolicy,
) -> Result<EdgePolicy, ConfigError> {
    parse_edge_at(loc, at.key("edge"), value, default)
}

/// An edge policy written at `path`.
fn parse_edge_at(
    loc: &Locator<'_>,
    path: KeyPath,
    value: Option<toml::Value>,
    default: EdgePolicy,
) -> Result<EdgePolicy, ConfigError> {
    let Some(value) = value else { return Ok(default) };
    let e: EdgeEntry = loc.typed(&path, value)?;
    if e.depth == Some(0) {
        return Err(loc.error(path.key("depth"), "depth must be at least 1"));
    }
    match e.policy {
        PolicyName::Latest => {
            if let Some(key) = e.depth.map(|_| "depth").or(e.drop.map(|_| "drop")) {
                return Err(
                    loc.error(path.key(key), "the `latest` policy keeps exactly one item and takes no depth or drop")
                );
            }
            Ok(EdgePolicy::Latest)
        }
        PolicyName::Queue => {
            let Some(depth) = e.depth else {
                return Err(loc.error(path.key("policy"), "the `queue` policy needs a depth"));
            };
            Ok(EdgePolicy::Queue { depth, drop: e.drop.unwrap_or_default() })
        }
        PolicyName::Block => {
            if e.drop.is_some() {
                return Err(loc.error(path.key("drop"), "the `block` policy never drops"));
            }
            Ok(EdgePolicy::Block { depth: e.depth.unwrap_or(DEFAULT_BLOCK_DEPTH) })
        }
    }
}

fn kind_of(loc: &Locator<'_>, at: &KeyPath, value: &toml::Value, known: &[&str]) -> Result<String, ConfigError> {
    let expected = known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    match value.get("kind") {
        None => Err(loc.error(at.clone(), format!("missing field `kind` (one of {expected})"))),
        Some(toml::Value::String(k)) if known.contains(&k.as_str()) => Ok(k.clone()),
        Some(other) => Err(loc.error(at.key("kind"), format!("unknown kind {other}, expected one of {expected}"))),
    }
}

fn check_inputs(
    loc: &Locator<'_>,
    at: &KeyPath,
    inputs: &[String],
    names: &HashMap<String, KeyPath>,
) -> Result<(), ConfigError> {
    if inputs.is_empty() {
        return Err(loc.error(at.key("inputs"), "needs at least one input"));
    }
    for (i, input) in inputs.iter().enumerate() {
        if !names.contains_key(input) {
            let mut known: Vec<&str> = names.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(
                loc.error(at.key("inputs").index(i), format!("unknown node {input:?} (known: {})", known.join(", ")))
            );
        }
    }
    Ok(())
}

impl PipelineConfig {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            path: KeyPath::default(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(file, &text)
    }

    /// Validates the text of a configuration; `file` is used in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let loc = Locator::new(file, text);
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            loc.error_at(KeyPath::default(), e.span(), format!("invalid TOML: {}", e.message()))
        })?;
        let top: FileEntry = loc.typed(&KeyPath::default(), toml::Value::Table(table))?;

        let runtime_value = top.runtime.unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        let runtime: RuntimeConfig = loc.typed(&KeyPath::root("runtime"), runtime_value)?;
        let rt = KeyPath::root("runtime");
        let device = parse_device(&runtime.device).map_err(|e| loc.error(rt.key("device"), e.to_string()))?;
        let dtype = DType::parse(&runtime.dtype).map_err(|e| loc.error(rt.key("dtype"), e.to_string()))?;
        if device == tch::Device::Cpu && dtype != DType::F32 {
            return Err(
                loc.error(rt.key("dtype"), format!("{:?} needs a CUDA device; use \"f32\" on the CPU", runtime.dtype))
            );
        }
        let metrics_every = parse_duration(&loc, rt.key("metrics_every"), &runtime.metrics_every)?;
        if metrics_every.is_zero() {
            return Err(loc.error(rt.key("metrics_every"), "must be longer than zero"));
        }
        let rs = rt.key("restart");
        let restart = ocellus_actors::RestartPolicy {
            max_restarts: runtime.restart.max_restarts,
            initial_backoff: parse_duration(&loc, rs.key("initial_backoff"), &runtime.restart.initial_backoff)?,
            max_backoff: parse_duration(&loc, rs.key("max_backoff"), &runtime.restart.max_backoff)?,
        };

        let mut names = HashMap::new();
        let mut sources = Vec::new();
        for (i, value) in top.source.into_iter().enumerate() {
            let at = KeyPath::root("source").index(i);
            let entry: SourceEntry = loc.typed(&at, value)?;
            check_name(&loc, at.key("name"), &entry.name, &mut names)?;
            if let Some(zenoh) = entry.zenoh {
                let other = [("gstreamer", entry.gstreamer.is_some()), ("preset", entry.preset.is_some())];
                if let Some((key, _)) = other.iter().find(|(_, given)| *given) {
                    return Err(loc.error(at.key(key), "give one of `gstreamer`, `preset` or `zenoh`"));
                }
                if entry.reconnect.is_some() {
                    return Err(loc.error(
                        at.key("reconnect"),
                        "a zenoh source waits for publishers by itself (`reconnect` is for GStreamer sources)",
                    ));
                }
                if entry.format.is_some() {
                    return Err(loc.error(
                        at.key("format"),
                        "a zenoh source delivers frames as they arrive (`format` is for GStreamer sources)",
                    ));
                }
                let spec = Self::zenoh_source(&loc, &at.key("zenoh"), zenoh)?;
                sources.push(SourceConfig { name: entry.name, kind: SourceKind::Zenoh(spec), path: at });
                continue;
            }
            let mut preset_kind = None;
            let launch = match (entry.gstreamer, entry.preset) {
                (Some(launch), None) if !launch.trim().is_empty() => launch,
                (Some(_), None) => return Err(loc.error(at.key("gstreamer"), "empty launch description")),
                (None, Some(preset)) => {
                    let preset = Self::preset(&loc, &at.key("preset"), preset)?;
                    let launch = preset.launch();
                    preset_kind = Some(preset);
                    launch
                }
                (Some(_), Some(_)) => {
                    return Err(loc.error(at.key("preset"), "give either `gstreamer` or `preset`, not both"));
                }
                (None, None) => {
                    return Err(loc.error(at.clone(), "needs `gstreamer` (a launch description), `preset` or `zenoh`"));
                }
            };
            let format = match entry.format.unwrap_or_default() {
                FormatName::Rgb => OutputFormat::Rgb,
                FormatName::Bgr => OutputFormat::Bgr,
                FormatName::Gray8 => OutputFormat::Gray8,
                FormatName::Nv12 => OutputFormat::Nv12,
                FormatName::Native => OutputFormat::Native,
            };
            // RTSP cameras reconnect unless told not to; other sources when told to.
            let rtsp = matches!(preset_kind, Some(Preset::Rtsp { .. }));
            let reconnect = Self::reconnect(&loc, &at.key("reconnect"), entry.reconnect, rtsp)?;
            let v4l2 = match preset_kind {
                Some(Preset::V4l2 { device, width, height, fps }) => Some(V4l2Request { device, width, height, fps }),
                _ => None,
            };
            let spec = GstSourceSpec { launch, format, reconnect, v4l2 };
            sources.push(SourceConfig { name: entry.name, kind: SourceKind::Gstreamer(spec), path: at });
        }

        // Names first (an actor may read from one declared after it), then everything else.
        let mut actor_entries = Vec::new();
        for (i, value) in top.actor.into_iter().enumerate() {
            let at = KeyPath::root("actor").index(i);
            let entry =
                match kind_of(&loc, &at, &value, &["motion", "backbone", "sam2", "agent", "labeler", "inpainter"])?
                    .as_str()
                {
                    "motion" => ActorEntry::Motion(loc.typed(&at, value)?),
                    "backbone" => ActorEntry::Backbone(loc.typed(&at, value)?),
                    "agent" => ActorEntry::Agent(Box::new(loc.typed(&at, value)?)),
                    "labeler" => ActorEntry::Labeler(loc.typed(&at, value)?),
                    "inpainter" => ActorEntry::Inpainter(loc.typed(&at, value)?),
                    _ => ActorEntry::Sam2(loc.typed(&at, value)?),
                };
            check_name(&loc, at.key("name"), entry.name(), &mut names)?;
            actor_entries.push((at, entry));
        }
        let mut sink_entries = Vec::new();
        for (i, value) in top.sink.into_iter().enumerate() {
            let at = KeyPath::root("sink").index(i);
            let entry = match kind_of(&loc, &at, &value, &["rerun", "null", "zenoh"])?.as_str() {
                "rerun" => SinkEntry::Rerun(loc.typed(&at, value)?),
                "zenoh" => SinkEntry::Zenoh(Box::new(loc.typed(&at, value)?)),
                _ => SinkEntry::Null(loc.typed(&at, value)?),
            };
            check_name(&loc, at.key("name"), entry.name(), &mut names)?;
            sink_entries.push((at, entry));
        }
        let sink_names: HashSet<String> = sink_entries.iter().map(|(_, e)| e.name().to_owned()).collect();

        let sam2_names: HashSet<String> = actor_entries
            .iter()
            .filter_map(|(_, e)| if let ActorEntry::Sam2(t) = e { Some(t.name.clone()) } else { None })
            .collect();
        let labeler_names: HashSet<String> = actor_entries
            .iter()
            .filter_map(|(_, e)| if let ActorEntry::Labeler(l) = e { Some(l.name.clone()) } else { None })
            .collect();
        let inpainter_names: HashSet<String> = actor_entries
            .iter()
            .filter_map(|(_, e)| if let ActorEntry::Inpainter(i) = e { Some(i.name.clone()) } else { None })
            .collect();
        let kinds = ActorNames { sam2: &sam2_names, labeler: &labeler_names, inpainter: &inpainter_names };
        let mut actors = Vec::new();
        for (at, e) in actor_entries {
            let inputs = e.inputs().to_vec();
            check_inputs(&loc, &at, &inputs, &names)?;
            if let Some(i) = inputs.iter().position(|n| sink_names.contains(n)) {
                return Err(
                    loc.error(at.key("inputs").index(i), format!("{:?} is a sink: sinks have no outputs", inputs[i]))
                );
            }
            let (name, edge, kind) = match e {
                ActorEntry::Motion(m) => {
                    (m.name.clone(), m.edge.clone(), ActorKind::Motion(Self::motion(&loc, &at, &m)?))
                }
                ActorEntry::Backbone(b) => (b.name.clone(), b.edge.clone(), Self::backbone(&loc, &at, b)?),
                ActorEntry::Sam2(t) => (t.name.clone(), t.edge.clone(), Self::sam2(&loc, &at, t)?),
                ActorEntry::Agent(a) => (a.name.clone(), a.edge.clone(), Self::agent(&loc, &at, *a, &kinds)?),
                ActorEntry::Labeler(l) => (l.name.clone(), l.edge.clone(), Self::labeler(&loc, &at, l)?),
                ActorEntry::Inpainter(i) => (i.name.clone(), i.edge.clone(), Self::inpainter(&loc, &at, i)?),
            };
            // Labelers and inpainters pair frames with their tracks: `latest` would drop one
            // for the other.
            let default_edge = match &kind {
                ActorKind::Labeler { .. } | ActorKind::Inpainter { .. } => {
                    EdgePolicy::Queue { depth: 16, drop: DropPolicy::Oldest }
                }
                _ => EdgePolicy::Latest,
            };
            let edge = parse_edge(&loc, &at, edge, default_edge)?;
            actors.push(ActorConfig { name, inputs, edge, kind });
        }

        let mut sinks = Vec::new();
        for (at, e) in sink_entries {
            let (name, inputs, edge, kind) = match e {
                SinkEntry::Rerun(r) => {
                    let target = match (r.save, r.connect, r.serve) {
                        (Some(path), None, None) => ocellus_actors::sink::RerunTarget::Save(path),
                        (None, Some(url), None) => ocellus_actors::sink::RerunTarget::Connect(url),
                        (None, None, Some(s)) => {
                            ocellus_actors::sink::RerunTarget::Serve { bind: s.bind, port: s.port }
                        }
                        _ => {
                            return Err(
                                loc.error(at.clone(), "a rerun sink needs exactly one of `save`, `connect` or `serve`")
                            );
                        }
                    };
                    let default_edge = EdgePolicy::Queue { depth: 64, drop: DropPolicy::Oldest };
                    let edge = parse_edge(&loc, &at, r.edge, default_edge)?;
                    (r.name, r.inputs, edge, SinkKind::Rerun { target, metrics: r.metrics, app_id: r.app_id })
                }
                SinkEntry::Null(n) => {
                    let edge = parse_edge(&loc, &at, n.edge, EdgePolicy::Latest)?;
                    (n.name, n.inputs, edge, SinkKind::Null)
                }
                SinkEntry::Zenoh(z) => {
                    let default_edge = EdgePolicy::Queue { depth: 16, drop: DropPolicy::Oldest };
                    let edge = parse_edge(&loc, &at, z.edge.clone(), default_edge)?;
                    let (name, inputs) = (z.name.clone(), z.inputs.clone());
                    (name, inputs, edge, SinkKind::Zenoh(Self::zenoh_sink(&loc, &at, *z)?))
                }
            };
            check_inputs(&loc, &at, &inputs, &names)?;
            if let Some(i) = inputs.iter().position(|n| sink_names.contains(n)) {
                return Err(
                    loc.error(at.key("inputs").index(i), format!("{:?} is a sink: sinks have no outputs", inputs[i]))
                );
            }
            sinks.push(SinkConfig { name, inputs, edge, kind });
        }

        // Cycles among actors.
        let graph: HashMap<&str, &[String]> = actors.iter().map(|a| (a.name.as_str(), a.inputs.as_slice())).collect();
        for (i, a) in actors.iter().enumerate() {
            let mut stack: Vec<&str> = a.inputs.iter().map(String::as_str).collect();
            let mut seen = HashSet::new();
            while let Some(n) = stack.pop() {
                if n == a.name {
                    return Err(loc.error(
                        KeyPath::root("actor").index(i).key("inputs"),
                        format!("actor {:?} reads its own output (a cycle)", a.name),
                    ));
                }
                if seen.insert(n) {
                    stack.extend(graph.get(n).into_iter().flat_map(|ins| ins.iter().map(String::as_str)));
                }
            }
        }
        if sources.is_empty() {
            return Err(loc.error(KeyPath::root("source"), "a pipeline needs at least one [[source]]"));
        }

        Ok(Self {
            file: file.to_path_buf(),
            runtime,
            device,
            dtype,
            metrics_every,
            restart,
            sources,
            actors,
            sinks,
            text: text.to_owned(),
        })
    }

    fn motion(
        loc: &Locator<'_>,
        at: &KeyPath,
        e: &MotionEntry,
    ) -> Result<ocellus_perception::motion::MotionConfig, ConfigError> {
        let config =
            ocellus_perception::motion::MotionConfig { threshold: e.threshold, blur: e.blur, dilate: e.dilate };
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(loc.error(at.key("threshold"), format!("{} is outside [0, 1]", config.threshold)));
        }
        for (key, v) in [("blur", config.blur), ("dilate", config.dilate)] {
            if v < 1 || v % 2 == 0 {
                return Err(loc.error(at.key(key), format!("{v} must be odd and at least 1")));
            }
        }
        Ok(config)
    }

    fn weights_source(
        loc: &Locator<'_>,
        at: &KeyPath,
        model: &str,
        weights: Option<PathBuf>,
        allow_random: bool,
        seed: i64,
    ) -> Result<ocellus_actors::backbone::WeightsSource, ConfigError> {
        match (weights, allow_random) {
            (Some(path), false) if path.exists() => Ok(ocellus_actors::backbone::WeightsSource::File(path)),
            (Some(path), false) => Err(loc.error(
                at.key("weights"),
                format!(
                    "{} not found (convert an official checkpoint with `ocellus weights import --model {model}`)",
                    path.display()
                ),
            )),
            (None, true) => Ok(ocellus_actors::backbone::WeightsSource::Random { seed }),
            (Some(_), true) => {
                Err(loc
                    .error(at.key("allow_random_weights"), "give either `weights` or `allow_random_weights`, not both"))
            }
            (None, false) => Err(loc.error(
                at.clone(),
                format!(
                    "needs `weights` (from `ocellus weights import --model {model}`) or `allow_random_weights = true`"
                ),
            )),
        }
    }

    fn server(
        loc: &Locator<'_>,
        at: &KeyPath,
        e: ServerEntry,
    ) -> Result<ocellus_language::openai::OpenAiConfig, ConfigError> {
        if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
            return Err(loc.error(at.key("url"), format!("{:?} is not an http(s) URL", e.url)));
        }
        let mut c = ocellus_language::openai::OpenAiConfig::new(&e.url, &e.model);
        if let Some(t) = &e.timeout {
            c.timeout = parse_duration(loc, at.key("timeout"), t)?;
        }
        if let Some(a) = e.attempts {
            if a == 0 {
                return Err(loc.error(at.key("attempts"), "must be at least 1"));
            }
            c.attempts = a;
        }
        if let Some(var) = &e.api_key_env {
            let key = std::env::var(var)
                .map_err(|_| loc.error(at.key("api_key_env"), format!("environment variable {var} is not set")))?;
            c.api_key = Some(key);
        }
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn native_backend(
        loc: &Locator<'_>,
        at: &KeyPath,
        model: &str,
        weights: Option<PathBuf>,
        allow_random: bool,
        seed: i64,
        tokenizer: Option<PathBuf>,
        context: i64,
    ) -> Result<ocellus_actors::agent::BackendSpec, ConfigError> {
        if ocellus_language::config::LlamaConfig::by_name(model).is_err() {
            return Err(loc.error(
                at.key("model"),
                format!("unknown Llama model {model:?} (known: {})", ocellus_language::config::NAMES.join(", ")),
            ));
        }
        let weights = Self::weights_source(loc, at, model, weights, allow_random, seed)?;
        let tokenizer = match tokenizer {
            Some(t) if t.exists() => t,
            Some(t) => return Err(loc.error(at.key("tokenizer"), format!("{} not found", t.display()))),
            None => default_llama_tokenizer().ok_or_else(|| {
                loc.error(
                    at.key("tokenizer"),
                    "no tokenizer given and llama-models' tokenizer.model is not in the venv",
                )
            })?,
        };
        Ok(ocellus_actors::agent::BackendSpec::Native {
            model: model.to_owned(),
            weights,
            tokenizer,
            context,
            device: tch::Device::Cpu,
        })
    }

    fn agent(loc: &Locator<'_>, at: &KeyPath, e: AgentEntry, kinds: &ActorNames<'_>) -> Result<ActorKind, ConfigError> {
        use ocellus_actors::agent::BackendSpec;
        use ocellus_actors::agent::tools::ToolKind;
        use ocellus_language::guard::GuardModel;
        let context = e.context.unwrap_or(4096);
        if context < 256 {
            return Err(loc.error(at.key("context"), "must be at least 256 tokens"));
        }
        let backend = match (e.server, e.model) {
            (Some(server), None) => BackendSpec::OpenAi(Self::server(loc, &at.key("server"), server)?),
            (None, Some(model)) => Self::native_backend(
                loc,
                at,
                &model,
                e.weights,
                e.allow_random_weights,
                e.seed,
                e.tokenizer.clone(),
                context,
            )?,
            (Some(_), Some(_)) => {
                return Err(loc.error(at.key("server"), "give either `model` (native) or `server`, not both"));
            }
            (None, None) => {
                return Err(loc.error(at.clone(), "needs `model` (native Llama 3) or `server` (OpenAI-compatible)"));
            }
        };
        let guard = match e.guard {
            None => None,
            Some(g) => {
                let gat = at.key("guard");
                let model_name = g.model.clone().unwrap_or_else(|| "llama-guard-3-1b".to_owned());
                let model = match model_name.as_str() {
                    "llama-guard-3-1b" => GuardModel::Guard3_1B,
                    "llama-guard-3-8b" => GuardModel::Guard3_8B,
                    other => {
                        return Err(loc.error(
                            gat.key("model"),
                            format!("unknown guard {other:?} (known: llama-guard-3-1b, llama-guard-3-8b)"),
                        ));
                    }
                };
                let backend = match g.server {
                    Some(server) => BackendSpec::OpenAi(Self::server(loc, &gat.key("server"), server)?),
                    None => Self::native_backend(
                        loc,
                        &gat,
                        &model_name,
                        g.weights,
                        g.allow_random_weights,
                        g.seed,
                        e.tokenizer,
                        2048,
                    )?,
                };
                let n = model.num_categories();
                for (i, key) in g.exclude.iter().enumerate() {
                    let ok = key
                        .strip_prefix('S')
                        .and_then(|k| k.parse::<usize>().ok())
                        .is_some_and(|k| (1..=n).contains(&k));
                    if !ok {
                        return Err(
                            loc.error(gat.key("exclude").index(i), format!("{key:?} is not a category S1..S{n}"))
                        );
                    }
                }
                let threshold = g.threshold.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&threshold) {
                    return Err(loc.error(gat.key("threshold"), "must be in [0, 1]"));
                }
                Some(ocellus_actors::agent::GuardSpec { backend, model, excluded: g.exclude, threshold })
            }
        };
        let mut tools = Vec::new();
        for (i, name) in e.tools.iter().enumerate() {
            let Some(tool) = ToolKind::from_name(name) else {
                let known: Vec<&str> = ToolKind::ALL.iter().map(|t| t.name()).collect();
                return Err(
                    loc.error(at.key("tools").index(i), format!("unknown tool {name:?} (known: {})", known.join(", ")))
                );
            };
            tools.push(tool);
        }
        let tracker = resolve_actor(loc, at, "tracker", e.tracker.clone(), kinds.sam2, &e.inputs, "a sam2")?;
        let labeler = resolve_actor(loc, at, "labeler", e.labeler.clone(), kinds.labeler, &e.inputs, "a labeler")?;
        let inpainter =
            resolve_actor(loc, at, "inpainter", e.inpainter.clone(), kinds.inpainter, &e.inputs, "an inpainter")?;
        if tools.contains(&ToolKind::Inpaint) && inpainter.is_none() {
            return Err(loc.error(at.key("tools"), "`inpaint` needs an inpainter actor (`inpainter`)"));
        }
        if tools.contains(&ToolKind::Label) && labeler.is_none() {
            return Err(loc.error(at.key("tools"), "`label` needs a labeler actor (in `inputs` or `labeler`)"));
        }
        if tools.iter().any(|t| matches!(t, ToolKind::Track | ToolKind::Untrack)) && tracker.is_none() {
            return Err(
                loc.error(at.key("tools"), "`track` and `untrack` need a sam2 actor (in `inputs` or `tracker`)")
            );
        }
        let caption_every = match &e.caption_every {
            Some(t) => parse_duration(loc, at.key("caption_every"), t)?,
            None => Duration::from_secs(2),
        };
        let inbox = match e.inbox {
            None => None,
            Some(i) => {
                let iat = at.key("inbox");
                for (k, v) in [("operator_key", &i.operator_key), ("alt_text_key", &i.alt_text_key)] {
                    if let Some(key) = v {
                        ocellus_actors::transport::check_key_expr(key).map_err(|m| loc.error(iat.key(k), m))?;
                    }
                }
                let fields = session_fields!(i);
                let session = session_spec(loc, &iat, fields)?;
                Some(ocellus_actors::agent::inbox::InboxSpec {
                    session,
                    operator_key: i.operator_key,
                    alt_text_key: i.alt_text_key,
                })
            }
        };
        Ok(ActorKind::Agent(Box::new(AgentConfig {
            backend,
            guard,
            tools,
            rate_limit: e.rate_limit.unwrap_or(10).max(1),
            caption_every,
            descriptions: e.descriptions.into_iter().collect(),
            max_tokens: e.max_tokens.unwrap_or(128).max(1),
            tracker,
            labeler,
            inpainter,
            inbox,
        })))
    }

    fn inpainter(loc: &Locator<'_>, at: &KeyPath, e: InpainterEntry) -> Result<ActorKind, ConfigError> {
        use ocellus_actors::inpainter::InpaintMethod;
        use ocellus_perception::diffmae::DiffMaeConfig;
        let method = match e.method.as_str() {
            "diffmae" => {
                if e.blur_radius.is_some() {
                    return Err(loc.error(at.key("blur_radius"), "only for `method = \"blur\"`"));
                }
                let model = e.model.unwrap_or_else(|| DiffMaeConfig::NAMES[0].to_owned());
                let Some(config) = DiffMaeConfig::by_name(&model) else {
                    return Err(loc.error(
                        at.key("model"),
                        format!("unknown DiffMAE model {model:?} (known: {})", DiffMaeConfig::NAMES.join(", ")),
                    ));
                };
                let weights = Self::weights_source(loc, at, &model, e.weights, e.allow_random_weights, e.seed)?;
                let steps = e.steps.unwrap_or(DEFAULT_INPAINT_STEPS);
                if steps == 0 || steps > config.num_timesteps {
                    return Err(loc.error(at.key("steps"), format!("{steps}: must be in 1..={}", config.num_timesteps)));
                }
                InpaintMethod::DiffMae { model, weights, steps, seed: e.noise_seed.unwrap_or(0) }
            }
            "blur" => {
                for (key, given) in [
                    ("model", e.model.is_some()),
                    ("weights", e.weights.is_some()),
                    ("allow_random_weights", e.allow_random_weights),
                    ("steps", e.steps.is_some()),
                    ("noise_seed", e.noise_seed.is_some()),
                ] {
                    if given {
                        return Err(loc.error(at.key(key), "only for `method = \"diffmae\"`"));
                    }
                }
                let radius = e.blur_radius.unwrap_or(DEFAULT_BLUR_RADIUS);
                if !(1..=MAX_BLUR_RADIUS).contains(&radius) {
                    return Err(loc.error(at.key("blur_radius"), format!("{radius}: must be in 1..={MAX_BLUR_RADIUS}")));
                }
                InpaintMethod::Blur { radius }
            }
            other => {
                return Err(loc.error(at.key("method"), format!("unknown method {other:?} (known: diffmae, blur)")));
            }
        };
        if e.dilate > MAX_BLUR_RADIUS {
            return Err(loc.error(at.key("dilate"), format!("{}: must be at most {MAX_BLUR_RADIUS}", e.dilate)));
        }
        for (i, label) in e.labels.iter().enumerate() {
            if label.trim().is_empty() {
                return Err(loc.error(at.key("labels").index(i), "labels are non-empty class names"));
            }
        }
        Ok(ActorKind::Inpainter { method, tracks: e.tracks, labels: e.labels, dilate: e.dilate })
    }

    fn sam2(loc: &Locator<'_>, at: &KeyPath, e: Sam2Entry) -> Result<ActorKind, ConfigError> {
        use ocellus_actors::tracker::FramePrompt;
        let names = ocellus_perception::hieradet::ImageEncoderConfig::NAMES;
        if !names.contains(&e.model.as_str()) {
            return Err(
                loc.error(at.key("model"), format!("unknown SAM 2 model {:?} (known: {})", e.model, names.join(", ")))
            );
        }
        let weights = Self::weights_source(loc, at, &e.model, e.weights, e.allow_random_weights, e.seed)?;
        if e.max_cond_frames == 0 {
            return Err(loc.error(at.key("max_cond_frames"), "must be at least 1"));
        }
        let mut prompts = Vec::new();
        let mut ids = HashSet::new();
        for (i, p) in e.prompts.into_iter().enumerate() {
            let pat = at.key("prompts").index(i);
            let id = p.id.unwrap_or(i as u32 + 1);
            if id == 0 || !ids.insert(id) {
                return Err(loc.error(pat.key("id"), format!("track id {id} must be unique and non-zero")));
            }
            let prompt = match (p.bbox, p.points, p.labels) {
                (Some([x0, y0, x1, y1]), None, None) => {
                    if !(x0 < x1 && y0 < y1) {
                        return Err(loc.error(pat.key("box"), "needs x0 < x1 and y0 < y1"));
                    }
                    FramePrompt::Box([x0, y0, x1, y1])
                }
                (None, Some(points), labels) => {
                    let labels = labels.unwrap_or_else(|| vec![1; points.len()]);
                    if points.is_empty() || labels.len() != points.len() {
                        return Err(loc.error(pat.key("labels"), "needs one label per point (1 positive, 0 negative)"));
                    }
                    if labels.iter().any(|l| !matches!(l, 0 | 1)) {
                        return Err(loc.error(pat.key("labels"), "labels are 1 (positive) or 0 (negative)"));
                    }
                    FramePrompt::Points(points, labels)
                }
                _ => return Err(loc.error(pat, "give either `box` or `points` (with optional `labels`)")),
            };
            prompts.push((id, prompt));
        }
        let prompt_topic = match e.prompt_topic {
            None => None,
            Some(t) => {
                let tat = at.key("prompt_topic");
                ocellus_actors::transport::check_key_expr(&t.key).map_err(|m| loc.error(tat.key("key"), m))?;
                let fields = session_fields!(t);
                let session = session_spec(loc, &tat, fields)?;
                Some(ocellus_actors::control::PromptTopicSpec { session, key: t.key })
            }
        };
        if let Some(side) = e.image_size.filter(|s| *s <= 0 || s % 32 != 0) {
            return Err(loc.error(at.key("image_size"), format!("{side}: SAM 2 needs a positive multiple of 32")));
        }
        Ok(ActorKind::Sam2 {
            model: e.model,
            weights,
            prompts,
            max_cond_frames: e.max_cond_frames,
            prompt_topic,
            image_size: e.image_size,
            resize: e.resize.into(),
        })
    }

    fn labeler(loc: &Locator<'_>, at: &KeyPath, e: LabelerEntry) -> Result<ActorKind, ConfigError> {
        use ocellus_perception::clip::ClipConfig;
        if ClipConfig::by_name(&e.model).is_none() {
            return Err(loc.error(
                at.key("model"),
                format!("unknown CLIP model {:?} (known: {})", e.model, ClipConfig::NAMES.join(", ")),
            ));
        }
        let weights = Self::weights_source(loc, at, &e.model, e.weights, e.allow_random_weights, e.seed)?;
        if e.vocabulary.is_empty() {
            return Err(loc.error(at.key("vocabulary"), "needs at least one class name"));
        }
        let mut seen = HashSet::new();
        for (i, class) in e.vocabulary.iter().enumerate() {
            if class.trim().is_empty() || !seen.insert(class.as_str()) {
                return Err(loc
                    .error(at.key("vocabulary").index(i), format!("{class:?}: class names are unique and non-empty")));
            }
        }
        let templates = match e.templates {
            None => ocellus_actors::labeler::LabelerSpec::openai_templates(),
            Some(toml::Value::String(s)) if s == "openai" => ocellus_actors::labeler::LabelerSpec::openai_templates(),
            Some(toml::Value::Array(items)) if !items.is_empty() => {
                let mut templates = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(t) if t.contains("{}") => templates.push(t.to_owned()),
                        _ => {
                            return Err(loc.error(
                                at.key("templates").index(i),
                                "a template is a string with `{}` where the class name goes",
                            ));
                        }
                    }
                }
                templates
            }
            Some(_) => {
                return Err(loc.error(
                    at.key("templates"),
                    "\"openai\" (the 80 ImageNet templates) or a non-empty list like [\"a photo of a {}.\"]",
                ));
            }
        };
        if !(e.smoothing > 0.0 && e.smoothing <= 1.0) {
            return Err(
                loc.error(at.key("smoothing"), format!("{}: must be in (0, 1] (1 = no smoothing)", e.smoothing))
            );
        }
        if !(0.0..=1.0).contains(&e.padding) {
            return Err(loc.error(at.key("padding"), format!("{}: must be in [0, 1]", e.padding)));
        }
        if let Some(bpe) = e.bpe.as_ref().filter(|p| !p.exists()) {
            return Err(loc.error(at.key("bpe"), format!("{} not found", bpe.display())));
        }
        Ok(ActorKind::Labeler {
            model: e.model,
            weights,
            vocabulary: e.vocabulary,
            templates,
            bpe: e.bpe,
            smoothing: e.smoothing,
            padding: e.padding,
        })
    }

    fn backbone(loc: &Locator<'_>, at: &KeyPath, e: BackboneEntry) -> Result<ActorKind, ConfigError> {
        use ocellus_perception::hiera::HieraConfig;
        let names = ocellus_perception::backbone::names();
        if !names.contains(&e.model.as_str()) {
            return Err(
                loc.error(at.key("model"), format!("unknown model {:?} (known: {})", e.model, names.join(", ")))
            );
        }
        let weights = Self::weights_source(loc, at, &e.model, e.weights, e.allow_random_weights, e.seed)?;
        let resolution = match (e.resolution, HieraConfig::by_name(&e.model)) {
            (None, _) => None,
            (Some([h, w]), Some(hiera)) => {
                let own = &hiera.input_size[hiera.input_size.len() - 2..];
                if own != [h, w] {
                    return Err(loc.error(
                        at.key("resolution"),
                        format!("{} runs at {own:?} only (its position embedding is fixed)", e.model),
                    ));
                }
                Some((h, w))
            }
            (Some([h, w]), None) => {
                if h <= 0 || w <= 0 || h % 32 != 0 || w % 32 != 0 {
                    return Err(loc.error(
                        at.key("resolution"),
                        format!("[{h}, {w}]: SAM 2 encoders need positive multiples of 32"),
                    ));
                }
                Some((h, w))
            }
        };
        Ok(ActorKind::Backbone { model: e.model, weights, resolution, resize: e.resize.into() })
    }

    fn reconnect(
        loc: &Locator<'_>,
        at: &KeyPath,
        value: Option<toml::Value>,
        default_on: bool,
    ) -> Result<Option<Reconnect>, ConfigError> {
        let entry = match value {
            None if default_on => ReconnectEntry::default(),
            None | Some(toml::Value::Boolean(false)) => return Ok(None),
            Some(toml::Value::Boolean(true)) => ReconnectEntry::default(),
            Some(v @ toml::Value::Table(_)) => loc.typed(at, v)?,
            Some(other) => {
                return Err(loc.error(
                    at.clone(),
                    format!("expected true, false or {{ initial, max, stall }}, found {}", other.type_str()),
                ));
            }
        };
        let defaults = Reconnect::default();
        let duration = |key: &str, text: &Option<String>, default: std::time::Duration| {
            text.as_deref().map_or(Ok(default), |t| parse_duration(loc, at.key(key), t))
        };
        let initial = duration("initial", &entry.initial, defaults.initial)?;
        let max = duration("max", &entry.max, defaults.max)?;
        let stall = duration("stall", &entry.stall, defaults.stall.unwrap_or_default())?;
        if initial.is_zero() {
            return Err(loc.error(at.key("initial"), "must be longer than zero"));
        }
        if max < initial {
            return Err(loc.error(at.key("max"), "must be at least `initial`"));
        }
        Ok(Some(Reconnect { initial, max, stall: (!stall.is_zero()).then_some(stall) }))
    }

    fn preset(loc: &Locator<'_>, at: &KeyPath, value: toml::Value) -> Result<Preset, ConfigError> {
        let kind = kind_of(loc, at, &value, &["test_pattern", "file", "v4l2", "rtsp"])?;
        let mut value = value;
        if let toml::Value::Table(t) = &mut value {
            t.remove("kind");
        }
        Ok(match kind.as_str() {
            "test_pattern" => {
                let p: TestPatternPreset = loc.typed(at, value)?;
                if p.width == 0 || p.height == 0 || p.fps == 0 {
                    return Err(loc.error(at.clone(), "width, height and fps must be positive"));
                }
                Preset::TestPattern {
                    pattern: p.pattern,
                    width: p.width,
                    height: p.height,
                    fps: p.fps,
                    frames: p.frames,
                    live: p.live,
                }
            }
            "file" => Preset::File { path: loc.typed::<FilePreset>(at, value)?.path },
            "v4l2" => {
                let p: V4l2Preset = loc.typed(at, value)?;
                Preset::V4l2 { device: p.device, width: p.width, height: p.height, fps: p.fps }
            }
            _ => {
                let p: RtspPreset = loc.typed(at, value)?;
                Preset::Rtsp { url: p.url, latency_ms: p.latency_ms }
            }
        })
    }

    /// An error about `path` in this configuration's file (line looked up again).
    pub fn error_at(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        Locator::new(&self.file, &self.text).error(path.clone(), message)
    }
}

enum SinkEntry {
    Rerun(RerunEntry),
    Null(NullEntry),
    Zenoh(Box<ZenohSinkEntry>),
}

impl SinkEntry {
    fn name(&self) -> &str {
        match self {
            Self::Rerun(r) => &r.name,
            Self::Null(n) => &n.name,
            Self::Zenoh(z) => &z.name,
        }
    }
}

/// Builds and checks a zenoh session spec (the configuration file is read, nothing opens).
fn session_spec(loc: &Locator<'_>, at: &KeyPath, f: SessionFields) -> Result<SessionSpec, ConfigError> {
    let mut spec = SessionSpec {
        config_file: f.config,
        mode: f.mode.map(|m| match m {
            ModeName::Peer => SessionMode::Peer,
            ModeName::Client => SessionMode::Client,
        }),
        ..SessionSpec::default()
    };
    if let Some(file) = spec.config_file.as_ref().filter(|p| !p.exists()) {
        return Err(loc.error(at.key("config"), format!("zenoh configuration {} not found", file.display())));
    }
    spec.to_config().map_err(|e| loc.error(at.key("config"), e))?;
    // Laid over the file one by one, so that an error names the key that caused it.
    for (key, endpoints) in [("connect", f.connect), ("listen", f.listen)] {
        if key == "connect" {
            spec.connect = endpoints;
        } else {
            spec.listen = endpoints;
        }
        spec.to_config().map_err(|e| loc.error(at.key(key), e))?;
    }
    spec.multicast_scouting = f.multicast_scouting;
    spec.shared_memory = f.shared_memory;
    spec.to_config().map_err(|e| loc.error(at.clone(), e))?;
    Ok(spec)
}

impl PipelineConfig {
    fn zenoh_source(loc: &Locator<'_>, at: &KeyPath, value: toml::Value) -> Result<ZenohSourceSpec, ConfigError> {
        let e: ZenohSourceEntry = loc.typed(at, value)?;
        let Some(format) = WireFormat::parse(&e.encoding) else {
            return Err(loc.error(
                at.key("encoding"),
                format!("unknown encoding {:?} (known: {})", e.encoding, WireFormat::NAMES.join(", ")),
            ));
        };
        let key = match (e.key, e.topic) {
            (Some(key), None) => key,
            (None, Some(topic)) => {
                let ty = match format {
                    WireFormat::Ros2Image => MsgType::Image,
                    WireFormat::Ros2CompressedImage => MsgType::CompressedImage,
                    _ => {
                        return Err(loc.error(
                            at.key("topic"),
                            "`topic` (a ROS 2 topic on rmw_zenoh) needs a ros2/... encoding; give `key` otherwise",
                        ));
                    }
                };
                ocellus_actors::transport::ros2::rmw_zenoh_key(e.domain, &topic, ty, None)
            }
            (Some(_), Some(_)) => return Err(loc.error(at.key("topic"), "give either `key` or `topic`, not both")),
            (None, None) => {
                return Err(loc.error(at.clone(), "needs `key` (a zenoh key expression) or `topic` (ROS 2)"));
            }
        };
        ocellus_actors::transport::check_key_expr(&key).map_err(|m| loc.error(at.key("key"), m))?;
        let idle_timeout = match &e.idle_timeout {
            Some(t) => Some(parse_duration(loc, at.key("idle_timeout"), t)?),
            None => None,
        };
        if e.frames == Some(0) {
            return Err(loc.error(at.key("frames"), "must be at least 1"));
        }
        let intake = parse_edge_at(loc, at.key("intake"), e.intake, EdgePolicy::Latest)?;
        let session = session_spec(loc, at, session_fields!(e))?;
        Ok(ZenohSourceSpec { session, key, format, intake, frames: e.frames, idle_timeout })
    }

    fn zenoh_sink(loc: &Locator<'_>, at: &KeyPath, e: ZenohSinkEntry) -> Result<ZenohSinkSpec, ConfigError> {
        let misplaced: &[(&str, bool)] = match e.keys {
            KeysName::Zenoh => &[
                ("domain", e.domain.is_some()),
                ("namespace", e.namespace.is_some()),
                ("node", e.node.is_some()),
                ("type_hash", e.type_hash.is_some()),
                ("bridge_namespace", e.bridge_namespace.is_some()),
            ],
            KeysName::Ros2 => &[("prefix", e.prefix.is_some()), ("bridge_namespace", e.bridge_namespace.is_some())],
            KeysName::Ros2dds => &[
                ("prefix", e.prefix.is_some()),
                ("domain", e.domain.is_some()),
                ("node", e.node.is_some()),
                ("type_hash", e.type_hash.is_some()),
            ],
        };
        if let Some((key, _)) = misplaced.iter().find(|(_, given)| *given) {
            let keys = match e.keys {
                KeysName::Zenoh => "zenoh",
                KeysName::Ros2 => "ros2",
                KeysName::Ros2dds => "ros2dds",
            };
            return Err(loc.error(at.key(key), format!("`{key}` does not apply to keys = {keys:?}")));
        }
        let namespace = e.namespace.unwrap_or_else(|| "/ocellus".to_owned());
        let keys = match e.keys {
            KeysName::Zenoh => KeyStyle::Zenoh { prefix: e.prefix.unwrap_or_else(|| "ocellus".to_owned()) },
            KeysName::Ros2 => KeyStyle::Ros2 {
                domain: e.domain.unwrap_or(0),
                namespace,
                node: e.node.unwrap_or_else(|| "ocellus".to_owned()),
                hashes: match e.type_hash {
                    Some(TypeHashName::Humble) => TypeHashes::NotSupported,
                    Some(TypeHashName::Rihs01) | None => TypeHashes::Rihs01,
                },
            },
            KeysName::Ros2dds => KeyStyle::Ros2Dds { bridge_namespace: e.bridge_namespace, namespace },
        };
        // Every key this sink may write must be a valid key expression.
        let probe = ocellus_actors::sink::zenoh::key_of(&keys, "camera/tracks", MsgType::String);
        let path = match e.keys {
            KeysName::Zenoh => at.key("prefix"),
            _ => at.key("namespace"),
        };
        ocellus_actors::transport::check_key_expr(&probe).map_err(|m| loc.error(path, m))?;
        if e.shm_pool_mib == Some(0) {
            return Err(loc.error(at.key("shm_pool_mib"), "must be at least 1 (leave it out for no pool)"));
        }
        if e.shm_pool_mib.is_some() && !e.frames {
            return Err(loc.error(at.key("shm_pool_mib"), "the shared-memory pool is for frames: set `frames = true`"));
        }
        let session = session_spec(loc, at, session_fields!(e))?;
        Ok(ZenohSinkSpec {
            session,
            keys,
            frames: e.frames,
            block_on_congestion: e.congestion == CongestionName::Block,
            shm_pool_bytes: e.shm_pool_mib.map(|m| m << 20),
        })
    }
}
