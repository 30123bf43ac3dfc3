//! Node kinds as a pipeline file names them (`kind = "sam2"`).
//!
//! Each kind owns its configuration: its own keys (a serde struct with
//! `deny_unknown_fields`, and a JSON Schema for editors), their defaults and their validation,
//! its ports, and how it builds its node. The keys every kind shares — `name`, `kind`, the
//! wiring (`inputs`, `edge`) and the model keys (`model`, `weights`, `allow_random_weights`,
//! `seed`, `device`, `dtype`) — are parsed once by the pipeline's configuration and handed to
//! the kind as [`Common`]. The pipelines crate keeps one table of kinds; nothing here or there
//! grows when a kind is added.
//!
//! Validation reports an [`Issue`]: a message and the key path inside the entry, which the
//! configuration turns into the file, the full key path and the line. Nothing is opened,
//! read or resolved while validating (weights, zenoh configuration files, environment
//! variables and secrets are read when the node starts).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use ocellus_kernels::DType;
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::control::{ControlReceiver, ControlSender, control_channel};
use crate::node::StageFactory;
use crate::port::Ports;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// What is wrong with an entry, and where inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Key path relative to the entry (empty: the entry itself).
    pub path: Vec<Seg>,
    /// What is wrong.
    pub message: String,
}

impl Issue {
    /// An issue with the entry as a whole.
    pub fn here(message: impl Into<String>) -> Self {
        Self { path: Vec::new(), message: message.into() }
    }

    /// An issue with key `key` of the entry.
    pub fn at(key: &str, message: impl Into<String>) -> Self {
        Self { path: vec![Seg::Key(key.to_owned())], message: message.into() }
    }

    /// The same issue one level down: inside `key` (issues of a nested table).
    pub fn inside(mut self, key: &str) -> Self {
        self.path.insert(0, Seg::Key(key.to_owned()));
        self
    }

    /// The same issue at element `index` of what its path names.
    pub fn index(mut self, index: usize) -> Self {
        self.path.push(Seg::Index(index));
        self
    }

    /// The same issue at `key` below what its path names.
    pub fn key(mut self, key: &str) -> Self {
        self.path.push(Seg::Key(key.to_owned()));
        self
    }
}

/// Deserializes `value` into `T`, an error naming the exact key path (an unknown key is
/// named itself, not its table).
pub fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Issue> {
    typed_from(value)
}

/// [`typed`] from any deserializer (a TOML value, say).
pub fn typed_from<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(value: D) -> Result<T, Issue>
where
    D::Error: std::fmt::Display,
{
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = Vec::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => path.push(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => path.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let message = e.into_inner().to_string();
        // TOML's errors end with the path they were found at; the key path says it already.
        let message = message.split("\nin `").next().unwrap_or_default().to_owned();
        let unknown = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
        if let Some(key) = unknown.map(|k| Seg::Key(k.to_owned())).filter(|k| path.last() != Some(k)) {
            path.push(key);
        }
        Issue { path, message: message.trim_end().to_owned() }
    })
}

/// A duration written like `"500ms"` or `"2s"`, at `key`.
pub fn duration(key: &str, text: &str) -> Result<std::time::Duration, Issue> {
    humantime::parse_duration(text)
        .map_err(|e| Issue::at(key, format!("{text:?} is not a duration like \"500ms\" or \"2s\": {e}")))
}

/// Whether a kind takes the model keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelUse {
    /// It runs no model: the model keys are errors.
    None,
    /// It runs a model: `model` is required, and `weights` (or `allow_random_weights`).
    Required,
    /// It may run a model (an inpainter that blurs needs none).
    Optional,
}

/// Where a node's weights come from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsKeys {
    /// A safetensors file under the official key names.
    File(PathBuf),
    /// Seeded random weights (`allow_random_weights = true`; demos and tests).
    Random {
        /// Seed.
        seed: i64,
    },
}

/// The keys every entry shares, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    /// The node's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// `model`, when given.
    pub model: Option<String>,
    /// The weights, when a model is given.
    pub weights: Option<WeightsKeys>,
    /// The device: the entry's `device`, else `[runtime].device`.
    pub device: tch::Device,
    /// The precision: the entry's `dtype`, else `[runtime].dtype`.
    pub dtype: DType,
    /// A quantized weight format the entry's `dtype` names (`int8`, `int4`, `int4:<group>`;
    /// kinds with [`NodeKind::QUANTIZED_WEIGHTS`] only): the activations stay in `dtype`.
    pub weight_format: Option<String>,
}

impl Common {
    /// The model name, which kinds with [`ModelUse::Required`] always have.
    pub fn model_name(&self) -> Result<&str, Issue> {
        self.model.as_deref().ok_or_else(|| Issue::here("missing field `model`"))
    }

    /// The weights of the model, which kinds with a model always have.
    pub fn weights(&self) -> Result<&WeightsKeys, Issue> {
        self.weights.as_ref().ok_or_else(|| {
            let model = self.model.as_deref().unwrap_or("its model");
            Issue::here(format!(
                "needs `weights` (from `ocellus weights import --model {model}`) or `allow_random_weights = true`"
            ))
        })
    }
}

/// What a kind sees of the rest of the pipeline while it validates: the kind of every node
/// and the nodes this one reads from.
#[derive(Debug, Clone, Default)]
pub struct PipelineView {
    /// Node name → kind (`source` for sources).
    pub kinds: HashMap<String, String>,
    /// The nodes this entry's inputs read from.
    pub upstream: Vec<String>,
}

impl PipelineView {
    /// The node of kind `kind` that key `key` names (`given`); when absent, one of this
    /// node's upstreams of that kind, else the pipeline's only one. `what` names the kind in
    /// errors ("a sam2 actor").
    pub fn resolve(&self, key: &str, given: Option<&str>, kind: &str, what: &str) -> Result<Option<String>, Issue> {
        let of_kind = |n: &str| self.kinds.get(n).is_some_and(|k| k == kind);
        match given {
            Some(n) if of_kind(n) => Ok(Some(n.to_owned())),
            Some(n) => Err(Issue::at(key, format!("{n:?} is not {what}"))),
            None => {
                if let Some(up) = self.upstream.iter().find(|u| of_kind(u)) {
                    return Ok(Some(up.clone()));
                }
                let all: Vec<&String> = self.kinds.iter().filter(|(_, k)| *k == kind).map(|(n, _)| n).collect();
                Ok(if all.len() == 1 { all.first().map(|n| (*n).clone()) } else { None })
            }
        }
    }
}

/// A node as configured: its ports, and how to build it.
pub trait ConfiguredNode: Send + Sync + std::fmt::Debug {
    /// Its ports (they may depend on the configuration).
    fn ports(&self) -> Ports;

    /// A factory of the node; channels to other nodes come from `ctx`. Called when the
    /// pipeline is built (nothing is opened until the node starts).
    fn build(&self, ctx: &mut BuildContext) -> crate::Result<StageFactory>;

    /// The configuration as its concrete type (tests, tools).
    fn as_any(&self) -> &dyn Any;

    /// Whether the pipeline's metrics reports go to this node (a Rerun sink that logs them).
    fn takes_metrics(&self) -> bool {
        false
    }
}

/// A kind of node.
pub trait NodeKind: 'static {
    /// Its name in `kind = "..."`.
    const NAME: &'static str;
    /// What it is, in one line (the JSON Schema's description).
    const DOC: &'static str;
    /// Whether it takes the model keys.
    const MODEL: ModelUse;
    /// Whether its model runs quantized weights (`dtype = "int8" | "int4" | "int4:<group>"`).
    const QUANTIZED_WEIGHTS: bool = false;
    /// Its own keys.
    type Config: DeserializeOwned + schemars::JsonSchema;

    /// Validates its keys (and the model keys in `common`) into a configured node.
    fn configure(common: &Common, config: Self::Config, view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue>;
}

/// A kind, type-erased for the table of kinds.
pub trait ErasedKind: Send + Sync {
    /// [`NodeKind::NAME`].
    fn name(&self) -> &'static str;
    /// [`NodeKind::DOC`].
    fn doc(&self) -> &'static str;
    /// [`NodeKind::MODEL`].
    fn model_use(&self) -> ModelUse;
    /// [`NodeKind::QUANTIZED_WEIGHTS`].
    fn quantized_weights(&self) -> bool;
    /// Deserializes the kind's own keys and validates them.
    fn configure(
        &self,
        common: &Common,
        keys: serde_json::Value,
        view: &PipelineView,
    ) -> Result<Arc<dyn ConfiguredNode>, Issue>;
    /// The JSON Schema of its own keys, inline (what it refers to is in `generator`'s
    /// definitions).
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
}

struct Erased<K>(PhantomData<fn() -> K>);

impl<K: NodeKind> ErasedKind for Erased<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn doc(&self) -> &'static str {
        K::DOC
    }

    fn model_use(&self) -> ModelUse {
        K::MODEL
    }

    fn quantized_weights(&self) -> bool {
        K::QUANTIZED_WEIGHTS
    }

    fn configure(
        &self,
        common: &Common,
        keys: serde_json::Value,
        view: &PipelineView,
    ) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        K::configure(common, typed(keys)?, view)
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.root_schema_for::<K::Config>()
    }
}

/// Kind `K` as an entry of the table of kinds.
pub fn kind<K: NodeKind>() -> &'static dyn ErasedKind {
    &Erased::<K>(PhantomData)
}

/// What building nodes shares: control channels between nodes (created once per receiving
/// node and command type, whichever side asks first), extensions a tool provides (a replay's
/// recorded inputs), the clock.
#[derive(Default)]
pub struct BuildContext {
    controls: HashMap<(String, TypeId), Box<dyn Any + Send>>,
    extensions: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    /// Where the nodes' logic takes the time from.
    pub clock: Clock,
}

impl std::fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("controls", &self.controls.keys().map(|(node, _)| node).collect::<Vec<_>>())
            .field("extensions", &self.extensions.len())
            .field("clock", &self.clock)
            .finish()
    }
}

impl BuildContext {
    /// A context with the wall clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// The control channel of commands `T` to node `node` (bounded by `capacity`).
    pub fn control<T: Send + 'static>(
        &mut self,
        node: &str,
        capacity: usize,
    ) -> (ControlSender<T>, ControlReceiver<T>) {
        let entry = self
            .controls
            .entry((node.to_owned(), TypeId::of::<T>()))
            .or_insert_with(|| Box::new(control_channel::<T>(capacity)));
        match entry.downcast_ref::<(ControlSender<T>, ControlReceiver<T>)>() {
            Some((tx, rx)) => (tx.clone(), rx.clone()),
            None => control_channel(capacity),
        }
    }

    /// Makes `value` available to every node built after.
    pub fn insert_extension<T: Send + Sync + 'static>(&mut self, value: T) {
        self.extensions.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The extension of type `T`, if a tool provided one.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.extensions.get(&TypeId::of::<T>()).cloned().and_then(|v| v.downcast::<T>().ok())
    }
}

/// What runs in place of what a configuration asked for (seeded weights, a fallback source),
/// one line each: said in the log and written into every recording (a build extension).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notices(pub Vec<String>);

/// A secret (an API key, a password): read when the node starts, never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Keys {
        depth: u32,
        nested: Option<Nested>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        items: Vec<u8>,
    }

    #[test]
    fn issues_name_the_key() {
        let e = typed::<Keys>(serde_json::json!({"depth": 1, "dpth": 2})).unwrap_err();
        assert_eq!(e.path, [Seg::Key("dpth".into())]);
        assert!(e.message.starts_with("unknown field `dpth`"), "{}", e.message);
        let e = typed::<Keys>(serde_json::json!({"depth": 1, "nested": {"items": [1, 300]}})).unwrap_err();
        assert_eq!(e.path, [Seg::Key("nested".into()), Seg::Key("items".into()), Seg::Index(1)]);
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(<redacted>)");
    }

    #[test]
    fn control_channels_are_shared_by_name_and_type() {
        let mut ctx = BuildContext::new();
        let (tx, _) = ctx.control::<u32>("tracker", 4);
        let (_, rx) = ctx.control::<u32>("tracker", 4);
        tx.send(7).unwrap();
        assert_eq!(rx.drain(), [7]);
        let (_, other) = ctx.control::<String>("tracker", 4);
        assert!(other.drain().is_empty());
    }
}
