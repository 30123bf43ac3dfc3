//! Pipeline configuration (TOML): the keys every entry shares, the table of node kinds, the
//! wiring of typed ports, and errors that name the file, the key path and the line.
//!
//! Each `[[actor]]` and `[[sink]]` table is split in two: the keys every kind shares (`name`,
//! `kind`, `inputs`, `edge`, `model`, `weights`, `allow_random_weights`, `seed`, `device`,
//! `dtype`) are parsed here once; the rest goes to the kind, which owns its keys, their
//! defaults and their validation ([`ocellus_runtime::kind::NodeKind`]). Unknown keys are errors.
//! Every value is deserialized through `serde_path_to_error`, so the key path is exact; the
//! line comes from the path, located in a span-preserving parse of the same text
//! (`toml_edit`). Nothing is opened or read while validating, except that named files are
//! checked to exist.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use ocellus_io::kinds::{ConfiguredSource, SourceEntry};
use ocellus_kernels::{DType, parse_device};
use ocellus_runtime::edge::{EdgeConfig, EdgePolicy};
use ocellus_runtime::kind::{Common, ConfiguredNode, ErasedKind, Issue, ModelUse, PipelineView, WeightsKeys};
use ocellus_runtime::port::{InputPort, Ports, Upstream, Wire};
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub mod official;
pub mod schema;
pub mod sessions;

pub use official::{Fetching, Notice};

pub use ocellus_runtime::kind::Seg;

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

/// Calls `f` on every table of the `[[source]]`, `[[actor]]` and `[[sink]]` entries and on the
/// tables inside them (a parent before its children), with each table's key path.
fn each_table(
    root: &mut toml::Table,
    f: &mut dyn FnMut(&mut toml::Table, &KeyPath) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    fn walk(
        t: &mut toml::Table,
        at: &KeyPath,
        f: &mut dyn FnMut(&mut toml::Table, &KeyPath) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        f(t, at)?;
        for (k, v) in t.iter_mut() {
            if let toml::Value::Table(inner) = v {
                walk(inner, &at.key(k), f)?;
            }
        }
        Ok(())
    }
    for section in ["source", "actor", "sink"] {
        if let Some(toml::Value::Array(entries)) = root.get_mut(section) {
            for (i, entry) in entries.iter_mut().enumerate() {
                if let toml::Value::Table(t) = entry {
                    walk(t, &KeyPath::root(section).index(i), f)?;
                }
            }
        }
    }
    Ok(())
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
        ocellus_runtime::kind::typed_from(value).map_err(|i| self.issue(at, i))
    }

    /// An [`Issue`] of the entry at `at`, as an error with its line.
    fn issue(&self, at: &KeyPath, issue: Issue) -> ConfigError {
        let mut path = at.clone();
        path.0.extend(issue.path);
        self.error(path, issue.message)
    }
}

// --- The file ---------------------------------------------------------------------------

fn default_device() -> String {
    "cpu".to_owned()
}
fn default_dtype() -> String {
    "f32".to_owned()
}
fn default_metrics_every() -> String {
    "1s".to_owned()
}

/// `[runtime]`: where models run and how nodes are supervised.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeEntry {
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
    pub restart: RestartEntry,
}

/// `[runtime.restart]`.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartEntry {
    /// Consecutive failures tolerated before a node gives up.
    #[serde(default = "RestartEntry::default_max_restarts")]
    pub max_restarts: u32,
    /// First backoff, e.g. `"100ms"`.
    #[serde(default = "RestartEntry::default_initial")]
    pub initial_backoff: String,
    /// Longest backoff, e.g. `"5s"`.
    #[serde(default = "RestartEntry::default_max")]
    pub max_backoff: String,
}

impl RestartEntry {
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

impl Default for RestartEntry {
    fn default() -> Self {
        Self {
            max_restarts: Self::default_max_restarts(),
            initial_backoff: Self::default_initial(),
            max_backoff: Self::default_max(),
        }
    }
}

/// The top level of a pipeline file.
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

/// The keys every `[[actor]]` and `[[sink]]` shares; the rest belongs to the kind.
pub const COMMON_KEYS: [&str; 10] =
    ["name", "kind", "inputs", "edge", "model", "weights", "allow_random_weights", "seed", "device", "dtype"];

/// The common keys as written.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommonEntry {
    /// The node's name (sinks: the kind's name when absent).
    pub name: Option<String>,
    /// Its kind.
    pub kind: String,
    /// What it reads: `["front"]` (a node with one input), or per input
    /// `{ frames = "front", tracks = { from = "tracker", edge = { policy = "queue", depth = 8 } } }`.
    #[schemars(with = "Option<serde_json::Value>")]
    pub inputs: Option<toml::Value>,
    /// The edge of every input that does not give its own.
    pub edge: Option<EdgeConfig>,
    /// The model (kinds that run one).
    pub model: Option<String>,
    /// Its weights, a safetensors file (`ocellus weights import`).
    pub weights: Option<PathBuf>,
    /// Seeded random weights instead (demos and tests).
    #[serde(default)]
    pub allow_random_weights: bool,
    /// The seed of random weights.
    #[serde(default)]
    pub seed: i64,
    /// The device of this node (default `[runtime].device`).
    pub device: Option<String>,
    /// Its precision (default `[runtime].dtype`); the agent's Llama also takes quantized weights:
    /// `"int8"`, `"int4"` (groups of 128) or `"int4:<32|64|128|256>"`.
    pub dtype: Option<String>,
}

/// One input written as a table: `{ from = "tracker" | ["a", "b"], edge = { ... } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WiredEntry {
    from: toml::Value,
    edge: Option<EdgeConfig>,
}

/// One input of `inputs` as written: its port, its upstreams (with the key path of each), its
/// edge, and where it is written.
struct WrittenInput {
    port: String,
    upstreams: Vec<(String, KeyPath)>,
    edge: Option<EdgePolicy>,
    at: KeyPath,
}

/// Node names written as one string or a list of strings (at `at`), with the path of each.
fn names_at(loc: &Locator<'_>, at: &KeyPath, value: &toml::Value) -> Result<Vec<(String, KeyPath)>, ConfigError> {
    match value {
        toml::Value::String(s) => Ok(vec![(s.clone(), at.clone())]),
        toml::Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_str() {
                Some(s) => Ok((s.to_owned(), at.index(i))),
                None => Err(loc.error(at.index(i), format!("expected a node name, found {}", v.type_str()))),
            })
            .collect(),
        other => {
            Err(loc.error(at.clone(), format!("expected a node name or a list of them, found {}", other.type_str())))
        }
    }
}

/// A validated source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Camera name (entity path part in Rerun).
    pub name: String,
    /// What it runs.
    pub kind: ConfiguredSource,
    /// Where it is declared.
    pub path: KeyPath,
    /// The key that describes it (`gstreamer`, `preset` or `zenoh`), for errors found later
    /// (by GStreamer, say).
    pub described_at: KeyPath,
}

/// A validated actor or sink.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Its inputs, wired.
    pub wires: Vec<Wire>,
    /// The node as its kind configured it.
    pub node: Arc<dyn ConfiguredNode>,
    /// Where it is declared.
    pub path: KeyPath,
}

impl NodeConfig {
    /// The node's configuration as its concrete type.
    pub fn spec<T: 'static>(&self) -> Option<&T> {
        self.node.as_any().downcast_ref::<T>()
    }

    /// The names of the nodes it reads from.
    pub fn upstream(&self) -> impl Iterator<Item = &str> {
        self.wires.iter().flat_map(|w| w.from.iter().map(|u| &*u.node))
    }
}

/// Parsed `[runtime]`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Default device.
    pub device: tch::Device,
    /// Default precision.
    pub dtype: DType,
    /// Metrics period.
    pub metrics_every: Duration,
    /// Supervision.
    pub restart: ocellus_runtime::RestartPolicy,
}

/// A validated pipeline configuration.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// `[runtime]`.
    pub runtime: RuntimeConfig,
    /// `[[source]]` entries.
    pub sources: Vec<SourceConfig>,
    /// `[[actor]]` entries.
    pub actors: Vec<NodeConfig>,
    /// `[[sink]]` entries.
    pub sinks: Vec<NodeConfig>,
    /// What runs in place of what could not be had (seeded weights, a fallback source).
    pub notices: Vec<Notice>,
    /// The text it was parsed from (to locate errors found later).
    text: String,
}

/// The kinds an `[[actor]]` may name.
pub fn actor_kinds() -> Vec<&'static dyn ErasedKind> {
    let mut kinds = ocellus_model_actors::kinds();
    kinds.push(ocellus_runtime::kind::kind::<ocellus_agent::config::AgentKind>());
    kinds
}

/// The kinds a `[[sink]]` may name.
pub fn sink_kinds() -> Vec<&'static dyn ErasedKind> {
    use ocellus_io::kinds::{NullKind, RerunKind, ZenohSinkKind};
    use ocellus_runtime::kind::kind;
    vec![kind::<RerunKind>(), kind::<ZenohSinkKind>(), kind::<NullKind>()]
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

fn parse_duration(loc: &Locator<'_>, path: KeyPath, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text)
        .map_err(|e| loc.error(path, format!("{text:?} is not a duration like \"500ms\" or \"2s\": {e}")))
}

/// A table entry split: its common keys, and its kind's own keys (as JSON).
struct Split {
    common: CommonEntry,
    own: serde_json::Value,
}

/// An entry of `[[actor]]` or `[[sink]]` read in its first pass: its name, kind and keys.
struct Pending {
    at: KeyPath,
    kind: &'static dyn ErasedKind,
    name: String,
    split: Split,
}

impl PipelineConfig {
    /// Reads and validates `file`, fetching nothing ([`Fetching::Offline`]).
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with(file, Fetching::Offline)
    }

    /// Reads `file`, resolves what it asks to be fetched (`mode`), and validates it.
    pub fn load_with(file: &Path, mode: Fetching) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            path: KeyPath::default(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with(file, &text, mode)
    }

    /// Validates the text of a configuration, fetching nothing; `file` is used in errors.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(file, text, Fetching::Offline)
    }

    /// Validates the text of a configuration after resolving what it asks to be fetched
    /// ([`official`]); `file` is used in errors.
    pub fn parse_with(file: &Path, text: &str, mode: Fetching) -> Result<Self, ConfigError> {
        let loc = Locator::new(file, text);
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            loc.error_at(KeyPath::default(), e.span(), format!("invalid TOML: {}", e.message()))
        })?;
        sessions::resolve(&mut table, &loc)?;
        let notices = official::resolve(&mut table, mode, &loc)?;
        let top: FileEntry = loc.typed(&KeyPath::default(), toml::Value::Table(table))?;
        let runtime = Self::runtime(&loc, top.runtime)?;

        let mut names = HashMap::new();
        let mut sources = Vec::new();
        for (i, value) in top.source.into_iter().enumerate() {
            let at = KeyPath::root("source").index(i);
            let entry: SourceEntry = loc.typed(&at, value)?;
            check_name(&loc, at.key("name"), &entry.name, &mut names)?;
            let kind = ConfiguredSource::configure(&entry).map_err(|i| loc.issue(&at, i))?;
            let key = if entry.gstreamer.is_some() {
                "gstreamer"
            } else if entry.preset.is_some() {
                "preset"
            } else {
                "zenoh"
            };
            sources.push(SourceConfig { name: entry.name, kind, described_at: at.key(key), path: at });
        }

        // First pass: names and kinds (an actor may read from one declared after it).
        let actor_kinds = actor_kinds();
        let sink_kinds = sink_kinds();
        let mut pending = Vec::new();
        for (section, values, kinds) in [("actor", top.actor, &actor_kinds), ("sink", top.sink, &sink_kinds)] {
            for (i, value) in values.into_iter().enumerate() {
                let at = KeyPath::root(section).index(i);
                let split = Self::split(&loc, &at, value)?;
                let Some(kind) = kinds.iter().copied().find(|k| k.name() == split.common.kind) else {
                    let known: Vec<String> = kinds.iter().map(|k| format!("`{}`", k.name())).collect();
                    return Err(loc.error(
                        at.key("kind"),
                        format!("unknown kind {:?} ({section} kinds: {})", split.common.kind, known.join(", ")),
                    ));
                };
                let name = match (&split.common.name, section) {
                    (Some(n), _) => n.clone(),
                    (None, "sink") => kind.name().to_owned(),
                    (None, _) => return Err(loc.error(at.clone(), "missing field `name`")),
                };
                check_name(&loc, at.key("name"), &name, &mut names)?;
                pending.push(Pending { at, kind, name, split });
            }
        }
        Self::check_cycles(&loc, &pending)?;
        let mut kinds_of: HashMap<String, String> =
            sources.iter().map(|s| (s.name.clone(), "source".to_owned())).collect();
        kinds_of.extend(pending.iter().map(|p| (p.name.clone(), p.kind.name().to_owned())));

        // Second pass: each kind validates its keys, then the wiring is checked against the
        // ports of both ends.
        let mut nodes = Vec::new();
        for p in pending {
            let upstream = Self::upstream_names(&p.split.common.inputs);
            let view = PipelineView { kinds: kinds_of.clone(), upstream };
            let common = Self::common(&loc, &p.at, &p.split.common, p.kind, &p.name, &runtime)?;
            let node = p.kind.configure(&common, p.split.own, &view).map_err(|i| loc.issue(&p.at, i))?;
            nodes.push((p.at, p.kind.name(), p.name, p.split.common, node));
        }
        let ports_of: HashMap<String, Ports> = sources
            .iter()
            .map(|s| (s.name.clone(), Ports::source()))
            .chain(nodes.iter().map(|(_, _, name, _, node)| (name.clone(), node.ports())))
            .collect();
        let mut actors = Vec::new();
        let mut sinks = Vec::new();
        for (at, kind, name, common, node) in nodes {
            let ports = node.ports();
            let wires = Self::wires(&loc, &at, &common, &ports, &ports_of)?;
            let config = NodeConfig { name, kind, wires, node, path: at.clone() };
            match at.0.first() {
                Some(Seg::Key(k)) if k == "sink" => sinks.push(config),
                _ => actors.push(config),
            }
        }
        Ok(Self { file: file.to_path_buf(), runtime, sources, actors, sinks, notices, text: text.to_owned() })
    }

    fn runtime(loc: &Locator<'_>, value: Option<toml::Value>) -> Result<RuntimeConfig, ConfigError> {
        let rt = KeyPath::root("runtime");
        let value = value.unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        let e: RuntimeEntry = loc.typed(&rt, value)?;
        let device = parse_device(&e.device).map_err(|err| loc.error(rt.key("device"), err.to_string()))?;
        let dtype = DType::parse(&e.dtype).map_err(|err| loc.error(rt.key("dtype"), err.to_string()))?;
        if device == tch::Device::Cpu && dtype != DType::F32 {
            return Err(
                loc.error(rt.key("dtype"), format!("{:?} needs a CUDA device; use \"f32\" on the CPU", e.dtype))
            );
        }
        let metrics_every = parse_duration(loc, rt.key("metrics_every"), &e.metrics_every)?;
        if metrics_every.is_zero() {
            return Err(loc.error(rt.key("metrics_every"), "must be longer than zero"));
        }
        let rs = rt.key("restart");
        let restart = ocellus_runtime::RestartPolicy {
            max_restarts: e.restart.max_restarts,
            initial_backoff: parse_duration(loc, rs.key("initial_backoff"), &e.restart.initial_backoff)?,
            max_backoff: parse_duration(loc, rs.key("max_backoff"), &e.restart.max_backoff)?,
        };
        Ok(RuntimeConfig { device, dtype, metrics_every, restart })
    }

    /// Splits an entry into its common keys and its kind's own keys.
    fn split(loc: &Locator<'_>, at: &KeyPath, value: toml::Value) -> Result<Split, ConfigError> {
        let toml::Value::Table(mut table) = value else {
            return Err(loc.error(at.clone(), "expected a table"));
        };
        let mut common = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = table.remove(key) {
                common.insert(key.to_owned(), v);
            }
        }
        let common: CommonEntry = loc.typed(at, toml::Value::Table(common))?;
        let own = serde_json::to_value(toml::Value::Table(table)).map_err(|e| loc.error(at.clone(), e.to_string()))?;
        Ok(Split { common, own })
    }

    /// The common keys, checked against what the kind takes.
    fn common(
        loc: &Locator<'_>,
        at: &KeyPath,
        e: &CommonEntry,
        kind: &dyn ErasedKind,
        name: &str,
        runtime: &RuntimeConfig,
    ) -> Result<Common, ConfigError> {
        let device = match &e.device {
            Some(d) => parse_device(d).map_err(|err| loc.error(at.key("device"), err.to_string()))?,
            None => runtime.device,
        };
        // `int8` / `int4[:group]`: quantized weights, activations in the runtime's precision.
        let weight_format = e.dtype.as_ref().filter(|d| d.starts_with("int")).cloned();
        if weight_format.is_some() && !kind.quantized_weights() {
            return Err(loc.error(
                at.key("dtype"),
                format!("a {} node runs no quantized model (int8 and int4 are for Llama: the agent)", kind.name()),
            ));
        }
        let dtype = match e.dtype.as_ref().filter(|_| weight_format.is_none()) {
            Some(d) => DType::parse(d).map_err(|err| loc.error(at.key("dtype"), err.to_string()))?,
            None => runtime.dtype,
        };
        if device == tch::Device::Cpu && dtype != DType::F32 {
            return Err(loc.error(at.key("dtype"), "bf16 and f16 need a CUDA device; use \"f32\" on the CPU"));
        }
        let model_keys = [
            ("model", e.model.is_some()),
            ("weights", e.weights.is_some()),
            ("allow_random_weights", e.allow_random_weights),
            ("seed", e.seed != 0),
        ];
        if kind.model_use() == ModelUse::None
            && let Some((key, _)) = model_keys.iter().find(|(_, given)| *given)
        {
            return Err(loc.error(at.key(key), format!("a {} node runs no model: `{key}` does not apply", kind.name())));
        }
        let model = e.model.as_deref().unwrap_or("its model");
        let weights = match (&e.weights, e.allow_random_weights) {
            (Some(path), false) if path.exists() => Some(WeightsKeys::File(path.clone())),
            (Some(path), false) => {
                return Err(loc.error(
                    at.key("weights"),
                    format!(
                        "{} not found (convert an official checkpoint with `ocellus weights import --model {model}`)",
                        path.display()
                    ),
                ));
            }
            (None, true) => Some(WeightsKeys::Random { seed: e.seed }),
            (Some(_), true) => {
                return Err(loc.error(
                    at.key("allow_random_weights"),
                    "give either `weights` or `allow_random_weights`, not both",
                ));
            }
            (None, false) => None,
        };
        if kind.model_use() == ModelUse::Required {
            if e.model.is_none() {
                return Err(loc.error(at.clone(), "missing field `model`"));
            }
            if weights.is_none() {
                return Err(loc.error(
                    at.clone(),
                    format!("needs `weights` (from `ocellus weights import --model {model}`) or `allow_random_weights = true`"),
                ));
            }
        }
        Ok(Common {
            name: name.to_owned(),
            kind: kind.name().to_owned(),
            model: e.model.clone(),
            weights,
            device,
            dtype,
            weight_format,
        })
    }

    /// The node names `inputs` mentions, as written (checked later).
    fn upstream_names(inputs: &Option<toml::Value>) -> Vec<String> {
        let names = |v: &toml::Value| -> Vec<String> {
            match v {
                toml::Value::String(s) => vec![Upstream::parse(s).node.to_string()],
                toml::Value::Array(a) => {
                    a.iter().filter_map(|x| x.as_str()).map(|s| Upstream::parse(s).node.to_string()).collect()
                }
                toml::Value::Table(t) => t
                    .get("from")
                    .map(|f| match f {
                        toml::Value::String(s) => vec![Upstream::parse(s).node.to_string()],
                        toml::Value::Array(a) => {
                            a.iter().filter_map(|x| x.as_str()).map(|s| Upstream::parse(s).node.to_string()).collect()
                        }
                        _ => Vec::new(),
                    })
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        };
        match inputs {
            Some(toml::Value::Table(t)) => t.values().flat_map(names).collect(),
            Some(v) => names(v),
            None => Vec::new(),
        }
    }

    /// The wiring of a node's inputs, each upstream checked to exist and to emit what the
    /// input takes, every required input wired.
    fn wires(
        loc: &Locator<'_>,
        at: &KeyPath,
        common: &CommonEntry,
        ports: &Ports,
        ports_of: &HashMap<String, Ports>,
    ) -> Result<Vec<Wire>, ConfigError> {
        let inputs_at = at.key("inputs");
        let default_edge = match &common.edge {
            Some(e) => Some(e.policy().map_err(|i| loc.issue(&at.key("edge"), i))?),
            None => None,
        };
        let mut written: Vec<WrittenInput> = Vec::new();
        match &common.inputs {
            None => {}
            Some(toml::Value::Array(list)) => {
                // A list wires the node's one input, or its one required input when the
                // others are optional (the agent's `actions`).
                let required: Vec<&InputPort> = ports.inputs.iter().filter(|p| p.required).collect();
                let only = match (ports.inputs.as_slice(), required.as_slice()) {
                    ([only], _) => Some(only),
                    (_, [only]) => Some(*only),
                    _ => None,
                };
                let Some(only) = only else {
                    let names: Vec<&str> = ports.inputs.iter().map(|p| p.name).collect();
                    return Err(loc.error(
                        inputs_at,
                        format!(
                            "this node has several inputs: wire them by name, like {{ {} = \"...\" }}",
                            names.join(" = \"...\", ")
                        ),
                    ));
                };
                let upstreams = names_at(loc, &inputs_at, &toml::Value::Array(list.clone()))?;
                written.push(WrittenInput { port: only.name.to_owned(), upstreams, edge: None, at: inputs_at.clone() });
            }
            Some(toml::Value::Table(table)) => {
                for (port, value) in table {
                    let pat = inputs_at.key(port);
                    let (ups, edge) = match value {
                        toml::Value::Table(_) => {
                            let wired: WiredEntry = loc.typed(&pat, value.clone())?;
                            let edge = match wired.edge {
                                Some(e) => Some(e.policy().map_err(|i| loc.issue(&pat.key("edge"), i))?),
                                None => None,
                            };
                            (names_at(loc, &pat.key("from"), &wired.from)?, edge)
                        }
                        other => (names_at(loc, &pat, other)?, None),
                    };
                    written.push(WrittenInput { port: port.clone(), upstreams: ups, edge, at: pat });
                }
            }
            Some(other) => {
                return Err(loc.error(
                    inputs_at,
                    format!("expected a list of nodes or a table of inputs, found {}", other.type_str()),
                ));
            }
        }
        let mut wires = Vec::new();
        for WrittenInput { port, upstreams: ups, edge, at: pat } in written {
            let Some((_, input)) = ports.input(&port) else {
                let names: Vec<&str> = ports.inputs.iter().map(|p| p.name).collect();
                return Err(loc.error(pat, format!("no input `{port}` (inputs: {})", names.join(", "))));
            };
            if ups.is_empty() {
                return Err(loc.error(pat, "reads from nothing"));
            }
            let mut from = Vec::new();
            for (text, path) in ups {
                let up = Upstream::parse(&text);
                let Some(up_ports) = ports_of.get(&*up.node) else {
                    let mut known: Vec<&str> = ports_of.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(loc.error(path, format!("unknown node {:?} (known: {})", up.node, known.join(", "))));
                };
                let (_, out) = up_ports
                    .output(up.port.as_deref())
                    .map_err(|e| loc.error(path.clone(), format!("{text:?} {e}")))?;
                if !input.takes(out.ty) {
                    return Err(loc.error(
                        path,
                        format!("input `{port}` takes {}, but {text:?} emits {}", input.accepts_text(), out.ty),
                    ));
                }
                from.push(up);
            }
            wires.push(Wire { port: input.name, from, edge: edge.or(default_edge).unwrap_or(input.default_edge) });
        }
        for input in ports.inputs.iter().filter(|p| p.required) {
            if !wires.iter().any(|w| w.port == input.name) {
                return Err(loc.error(
                    inputs_at.clone(),
                    format!("input `{}` ({}) is not wired", input.name, input.accepts_text()),
                ));
            }
        }
        Ok(wires)
    }

    /// Refuses cycles among actors, as written (before the types of their wires are checked).
    fn check_cycles(loc: &Locator<'_>, pending: &[Pending]) -> Result<(), ConfigError> {
        let graph: HashMap<&str, Vec<String>> =
            pending.iter().map(|p| (p.name.as_str(), Self::upstream_names(&p.split.common.inputs))).collect();
        for p in pending {
            let mut stack: Vec<&str> = graph.get(p.name.as_str()).into_iter().flatten().map(String::as_str).collect();
            let mut seen = std::collections::HashSet::new();
            while let Some(n) = stack.pop() {
                if n == p.name {
                    return Err(
                        loc.error(p.at.key("inputs"), format!("{:?} reads from itself through a cycle", p.name))
                    );
                }
                if seen.insert(n) {
                    stack.extend(graph.get(n).into_iter().flatten().map(String::as_str));
                }
            }
        }
        Ok(())
    }

    /// An error about `path` in this configuration's file (line looked up again).
    pub fn error_at(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        Locator::new(&self.file, &self.text).error(path.clone(), message)
    }

    /// The actor or sink named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.actors.iter().chain(&self.sinks).find(|n| n.name == name)
    }

    /// Every node kind's name, actors and sinks.
    pub fn kind_names() -> BTreeMap<&'static str, &'static str> {
        actor_kinds().into_iter().chain(sink_kinds()).map(|k| (k.name(), k.doc())).collect()
    }
}
