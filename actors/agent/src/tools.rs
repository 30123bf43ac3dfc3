//! The agent's tools: typed arguments whose JSON schemas are generated from the Rust types,
//! an allow-list per pipeline, a rate limit per tool, and validation of every call against
//! the schema and the current world (frame bounds, known tracks) before anything runs.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use ocellus_language::backend::ToolSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::untrusted::hidden_character;
use crate::world::WorldState;

/// Longest text a tool accepts.
pub const MAX_TEXT: usize = 500;
/// Longest text query of `track` (CLIP reads 77 tokens).
pub const MAX_QUERY: usize = 200;

/// The tools the agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// Start tracking an object with SAM 2.
    Track,
    /// Stop tracking an object.
    Untrack,
    /// Label a track over candidate names.
    Label,
    /// Remove a track from the image (privacy).
    Inpaint,
    /// Describe a track or the scene.
    Describe,
    /// Raise an alert.
    Alert,
    /// Publish a text on a topic.
    Publish,
}

impl ToolKind {
    /// Every tool.
    pub const ALL: [ToolKind; 7] =
        [Self::Track, Self::Untrack, Self::Label, Self::Inpaint, Self::Describe, Self::Alert, Self::Publish];

    /// The tool's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Track => "track",
            Self::Untrack => "untrack",
            Self::Label => "label",
            Self::Inpaint => "inpaint",
            Self::Describe => "describe",
            Self::Alert => "alert",
            Self::Publish => "publish",
        }
    }

    /// The tool called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn description(self) -> &'static str {
        match self {
            Self::Track => {
                "Start tracking an object: either its box [x0, y0, x1, y1] in pixels of the camera's frame, or a short \
                 text query describing it (\"the red cup\"), matched against the objects the camera's discovery found."
            }
            Self::Untrack => "Stop tracking the object with this track id.",
            Self::Label => "Name a tracked object by choosing among candidate labels.",
            Self::Inpaint => "Remove a tracked object from the published images (privacy), or show it again.",
            Self::Describe => "Describe one tracked object, or the whole scene when no track id is given.",
            Self::Alert => "Raise an alert for the operator (level 1 info, 2 warning, 3 critical).",
            Self::Publish => "Publish a short text on a topic under the pipeline's publish prefix.",
        }
    }

    fn schema(self) -> Value {
        let schema = match self {
            Self::Track => schemars::schema_for!(TrackArgs),
            Self::Untrack => schemars::schema_for!(UntrackArgs),
            Self::Label => schemars::schema_for!(LabelArgs),
            Self::Inpaint => schemars::schema_for!(InpaintArgs),
            Self::Describe => schemars::schema_for!(DescribeArgs),
            Self::Alert => schemars::schema_for!(AlertArgs),
            Self::Publish => schemars::schema_for!(PublishArgs),
        };
        let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
        if let Some(obj) = v.as_object_mut() {
            obj.remove("$schema");
            obj.remove("title");
        }
        v
    }

    /// The tool as offered to the model.
    pub fn spec(self) -> ToolSpec {
        ToolSpec { name: self.name().to_owned(), description: self.description().to_owned(), parameters: self.schema() }
    }
}

/// `track`: `box` or `query`, not both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackArgs {
    /// `[x0, y0, x1, y1]` in pixels (or give `query`).
    #[serde(rename = "box", default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// What the object looks like, in a few words ("the red cup"), instead of `box`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Camera; the only one when absent.
    #[serde(default)]
    pub camera: Option<String>,
    /// What the object is.
    #[serde(default)]
    pub label: Option<String>,
}

/// `untrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UntrackArgs {
    /// Track id.
    pub track_id: u32,
}

/// `label`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelArgs {
    /// Track id.
    pub track_id: u32,
    /// Candidate labels (1 to 16).
    pub candidates: Vec<String>,
}

/// `inpaint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InpaintArgs {
    /// Track id.
    pub track_id: u32,
    /// Show the track again instead of removing it.
    #[serde(default)]
    pub restore: bool,
}

/// `describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DescribeArgs {
    /// Track id; the scene when absent.
    #[serde(default)]
    pub track_id: Option<u32>,
}

/// `alert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertArgs {
    /// What needs attention.
    pub text: String,
    /// 1 info, 2 warning, 3 critical.
    #[serde(default = "default_level")]
    pub level: u8,
}

fn default_level() -> u8 {
    2
}

/// `publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishArgs {
    /// Topic under the publish prefix (`[a-z0-9_/-]`).
    pub topic: String,
    /// The text.
    pub text: String,
}

/// A call that passed validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "tool", content = "arguments", rename_all = "snake_case")]
pub enum ValidCall {
    /// `track`, camera resolved.
    Track {
        /// Arguments.
        #[serde(flatten)]
        args: TrackArgs,
        /// The camera.
        camera_resolved: String,
    },
    /// `untrack`.
    Untrack(UntrackArgs),
    /// `label`.
    Label(LabelArgs),
    /// `inpaint`.
    Inpaint(InpaintArgs),
    /// `describe`.
    Describe(DescribeArgs),
    /// `alert`.
    Alert(AlertArgs),
    /// `publish`.
    Publish(PublishArgs),
}

impl ValidCall {
    /// The tool.
    pub fn kind(&self) -> ToolKind {
        match self {
            Self::Track { .. } => ToolKind::Track,
            Self::Untrack(_) => ToolKind::Untrack,
            Self::Label(_) => ToolKind::Label,
            Self::Inpaint(_) => ToolKind::Inpaint,
            Self::Describe(_) => ToolKind::Describe,
            Self::Alert(_) => ToolKind::Alert,
            Self::Publish(_) => ToolKind::Publish,
        }
    }

    /// The call as text (for the Guard and the log): `track({"box": [...]})`.
    pub fn render(&self) -> String {
        let args = serde_json::to_value(self).ok().and_then(|v| v.get("arguments").cloned()).unwrap_or(Value::Null);
        format!("{}({args})", self.kind().name())
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such tool.
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    /// The tool exists but this pipeline does not allow it.
    #[error("tool {0:?} is not on this pipeline's allow-list")]
    NotAllowed(String),
    /// The arguments do not fit the schema.
    #[error("invalid arguments for {tool}: {message}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What is wrong.
        message: String,
    },
    /// The arguments fit the schema but not the world (bounds, unknown track).
    #[error("out of range for {tool}: {message}")]
    OutOfRange {
        /// The tool.
        tool: String,
        /// What is wrong.
        message: String,
    },
    /// Too many calls of this tool in the rate window.
    #[error("rate limit: {tool} allows {limit} calls per {window:?}")]
    RateLimited {
        /// The tool.
        tool: String,
        /// Calls allowed per window.
        limit: u32,
        /// The window.
        window: Duration,
    },
    /// The model's reply looked like a call but could not be read.
    #[error("malformed tool call: {0}")]
    Malformed(String),
    /// Llama Guard judged the call unsafe.
    #[error("blocked by Llama Guard ({0})")]
    Unsafe(String),
    /// The pipeline has nothing to carry the call out.
    #[error("{0}")]
    Unavailable(String),
    /// A text query matched no object (the reason says how close the best came).
    #[error("no match: {0}")]
    NoMatch(String),
}

/// Allow-list, rate limits and validation.
#[derive(Debug, Clone)]
pub struct ToolRegistry {
    allowed: Vec<ToolKind>,
    limit: u32,
    window: Duration,
    /// Per tool, the times (ns, the pipeline's clock) of the calls in the window.
    calls: BTreeMap<ToolKind, VecDeque<i64>>,
}

fn bad_args(tool: &str, message: impl std::fmt::Display) -> Refusal {
    Refusal::InvalidArguments { tool: tool.to_owned(), message: message.to_string() }
}

fn out_of_range(tool: &str, message: impl std::fmt::Display) -> Refusal {
    Refusal::OutOfRange { tool: tool.to_owned(), message: message.to_string() }
}

fn check_text(tool: &str, text: &str) -> Result<(), Refusal> {
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT {
        return Err(out_of_range(tool, format!("text must have 1 to {MAX_TEXT} characters")));
    }
    check_visible(tool, text)
}

/// Refuses text with characters that hide or reorder what people read (line breaks,
/// bidirectional overrides, zero-width and tag characters).
fn check_visible(tool: &str, text: &str) -> Result<(), Refusal> {
    match hidden_character(text) {
        Some(c) => Err(out_of_range(tool, format!("text holds the hidden or control character {c}"))),
        None => Ok(()),
    }
}

impl ToolRegistry {
    /// Allows `allowed`, at most `limit` calls of each per `window`.
    pub fn new(allowed: Vec<ToolKind>, limit: u32, window: Duration) -> Self {
        Self { allowed, limit, window, calls: BTreeMap::new() }
    }

    /// The allowed tools, as offered to the model.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.allowed.iter().map(|t| t.spec()).collect()
    }

    /// Checks one call made at `now_ns` (the pipeline's clock): known, allowed, arguments fit
    /// their schema and the world, within the rate limit (a valid call uses one slot).
    pub fn validate(
        &mut self,
        name: &str,
        arguments: &Map<String, Value>,
        world: &WorldState,
        now_ns: i64,
    ) -> Result<ValidCall, Refusal> {
        let kind = ToolKind::from_name(name).ok_or_else(|| Refusal::UnknownTool(name.to_owned()))?;
        if !self.allowed.contains(&kind) {
            return Err(Refusal::NotAllowed(name.to_owned()));
        }
        let args = Value::Object(arguments.clone());
        fn parse<T: serde::de::DeserializeOwned>(name: &str, args: Value) -> Result<T, Refusal> {
            serde_json::from_value(args).map_err(|e| bad_args(name, e))
        }
        let known = |id: u32| -> Result<(), Refusal> {
            world.track(id).map(|_| ()).ok_or_else(|| out_of_range(name, format!("no track {id}")))
        };
        let call = match kind {
            ToolKind::Track => {
                let args: TrackArgs = parse(name, args)?;
                let cameras: Vec<&str> = world.cameras().collect();
                let camera = match &args.camera {
                    Some(c) if cameras.contains(&c.as_str()) => c.clone(),
                    Some(c) => return Err(out_of_range(name, format!("no camera {c:?}"))),
                    None if cameras.len() == 1 => cameras[0].to_owned(),
                    None => return Err(out_of_range(name, format!("say which camera: {}", cameras.join(", ")))),
                };
                match (&args.bbox, &args.query) {
                    (Some(bbox), None) => {
                        let (_, w, h) = world.frame_of(&camera).unwrap_or((0, 0, 0));
                        let [x0, y0, x1, y1] = *bbox;
                        let inside = [x0, x1].iter().all(|x| (0.0..=f64::from(w)).contains(x))
                            && [y0, y1].iter().all(|y| (0.0..=f64::from(h)).contains(y));
                        if !inside || x1 - x0 < 2.0 || y1 - y0 < 2.0 {
                            return Err(out_of_range(name, format!("box {bbox:?} is not inside the {w}x{h} frame")));
                        }
                    }
                    (None, Some(query)) => {
                        if query.trim().is_empty() || query.chars().count() > MAX_QUERY {
                            return Err(out_of_range(name, format!("query must have 1 to {MAX_QUERY} characters")));
                        }
                        check_visible(name, query)?;
                    }
                    _ => return Err(bad_args(name, "give either `box` or `query`, not both")),
                }
                if let Some(label) = &args.label {
                    check_text(name, label)?;
                }
                ValidCall::Track { args, camera_resolved: camera }
            }
            ToolKind::Untrack => {
                let args: UntrackArgs = parse(name, args)?;
                known(args.track_id)?;
                ValidCall::Untrack(args)
            }
            ToolKind::Label => {
                let args: LabelArgs = parse(name, args)?;
                known(args.track_id)?;
                if args.candidates.is_empty() || args.candidates.len() > 16 {
                    return Err(out_of_range(name, "1 to 16 candidates"));
                }
                for c in &args.candidates {
                    check_text(name, c)?;
                }
                ValidCall::Label(args)
            }
            ToolKind::Inpaint => {
                let args: InpaintArgs = parse(name, args)?;
                if !args.restore {
                    known(args.track_id)?; // restoring a track that has left is harmless
                }
                ValidCall::Inpaint(args)
            }
            ToolKind::Describe => {
                let args: DescribeArgs = parse(name, args)?;
                if let Some(id) = args.track_id {
                    known(id)?;
                }
                ValidCall::Describe(args)
            }
            ToolKind::Alert => {
                let args: AlertArgs = parse(name, args)?;
                check_text(name, &args.text)?;
                if !(1..=3).contains(&args.level) {
                    return Err(out_of_range(name, format!("level {} is not 1, 2 or 3", args.level)));
                }
                ValidCall::Alert(args)
            }
            ToolKind::Publish => {
                let args: PublishArgs = parse(name, args)?;
                check_text(name, &args.text)?;
                let topic_ok = !args.topic.is_empty()
                    && args.topic.len() <= 64
                    && args.topic.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-/".contains(c))
                    && !args.topic.starts_with('/')
                    && !args.topic.contains("//");
                if !topic_ok {
                    return Err(out_of_range(name, format!("topic {:?} must be [a-z0-9_/-], relative", args.topic)));
                }
                ValidCall::Publish(args)
            }
        };
        self.take_slot(kind, now_ns)?;
        Ok(call)
    }

    fn take_slot(&mut self, kind: ToolKind, now_ns: i64) -> Result<(), Refusal> {
        let window_ns = i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX);
        let calls = self.calls.entry(kind).or_default();
        while calls.front().is_some_and(|t| now_ns.saturating_sub(*t) > window_ns) {
            calls.pop_front();
        }
        if calls.len() >= self.limit as usize {
            return Err(Refusal::RateLimited { tool: kind.name().to_owned(), limit: self.limit, window: self.window });
        }
        calls.push_back(now_ns);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_come_from_the_types() {
        let spec = ToolKind::Track.spec();
        assert_eq!(spec.parameters["type"], "object");
        assert!(spec.parameters["properties"]["box"].is_object());
        assert!(spec.parameters["properties"]["query"].is_object());
        assert!(spec.parameters.get("required").is_none_or(|r| r.as_array().is_some_and(|r| r.is_empty())));
    }

    #[test]
    fn calls_are_checked() {
        let world = WorldState::default();
        let mut reg = ToolRegistry::new(vec![ToolKind::Alert], 2, Duration::from_secs(60));
        let args = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(matches!(
            reg.validate("unlock", &args(serde_json::json!({})), &world, 0),
            Err(Refusal::UnknownTool(_))
        ));
        assert!(matches!(
            reg.validate("track", &args(serde_json::json!({"box": [0, 0, 1, 1]})), &world, 0),
            Err(Refusal::NotAllowed(_))
        ));
        assert!(matches!(
            reg.validate("alert", &args(serde_json::json!({"txt": "x"})), &world, 0),
            Err(Refusal::InvalidArguments { .. })
        ));
        assert!(matches!(
            reg.validate("alert", &args(serde_json::json!({"text": "x", "level": 9})), &world, 0),
            Err(Refusal::OutOfRange { .. })
        ));
        assert!(reg.validate("alert", &args(serde_json::json!({"text": "door"})), &world, 0).is_ok());
        assert!(reg.validate("alert", &args(serde_json::json!({"text": "door"})), &world, 0).is_ok());
        assert!(matches!(
            reg.validate("alert", &args(serde_json::json!({"text": "door"})), &world, 0),
            Err(Refusal::RateLimited { .. })
        ));
        // The window runs on the pipeline's clock (capture times), not on the wall clock.
        let later = i64::try_from(Duration::from_secs(61).as_nanos()).unwrap();
        assert!(reg.validate("alert", &args(serde_json::json!({"text": "door"})), &world, later).is_ok());
    }

    #[test]
    fn track_takes_a_box_or_a_text_query() {
        let mut world = WorldState::default();
        world.update(&ocellus_runtime::Tracks {
            meta: ocellus_runtime::FrameMeta { camera: "cam".into(), seq: 0, capture_ns: 0, frame_id: None },
            width: 64,
            height: 48,
            labels: vec![0u8; 2 * 64 * 48].into(),
            tracks: vec![],
        });
        let mut reg = ToolRegistry::new(vec![ToolKind::Track], 100, Duration::from_secs(60));
        let mut check = |v: Value| reg.validate("track", v.as_object().unwrap_or(&Map::new()), &world, 0);
        let call = check(serde_json::json!({"query": "the red cup"})).unwrap();
        assert!(call.render().contains(r#""query":"the red cup""#), "{}", call.render());
        assert!(matches!(
            call,
            ValidCall::Track { args: TrackArgs { query: Some(_), bbox: None, .. }, ref camera_resolved } if camera_resolved == "cam"
        ));
        assert!(check(serde_json::json!({"box": [1, 1, 30, 30]})).is_ok());
        for (args, why) in [
            (serde_json::json!({}), "give either `box` or `query`"),
            (serde_json::json!({"box": [1, 1, 30, 30], "query": "cup"}), "give either `box` or `query`"),
            (serde_json::json!({"query": "  "}), "query must have 1 to"),
            (serde_json::json!({"query": "x".repeat(MAX_QUERY + 1)}), "query must have 1 to"),
            (serde_json::json!({"query": "cup", "camera": "garden"}), "no camera"),
            (serde_json::json!({"query": 7}), "invalid arguments"),
        ] {
            let refusal = check(args.clone()).unwrap_err().to_string();
            assert!(refusal.contains(why), "{args}: {refusal}");
        }
    }
}
