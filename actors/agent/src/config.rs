//! What a pipeline file says of the agent (`kind = "agent"`), and how it is built.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ocellus_io::kinds::{SessionKeys, key_expr};
use ocellus_io::recording::RecordedInbox;
use ocellus_language::guard::GuardModel;
use ocellus_language::openai::OpenAiConfig;
use ocellus_language::quant::Quantization;
use ocellus_model_actors::discovery;
use ocellus_model_actors::inpainter::{self, InpainterCommand};
use ocellus_model_actors::labeler::{self, LabelerCommand};
use ocellus_model_actors::tracker::{self, TrackerCommand};
use ocellus_model_actors::weights_source;
use ocellus_perception::model::ModelSpec;
use ocellus_runtime::edge::EdgePolicy;
use ocellus_runtime::kind::{
    BuildContext, Common, ConfiguredNode, Issue, ModelUse, NodeKind, PipelineView, WeightsKeys, duration,
};
use ocellus_runtime::node::{Stage, StageFactory};
use ocellus_runtime::port::{InputPort, OutputPort, Ports};
use ocellus_runtime::{PortType, Result};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::inbox::{Inbox, InboxSpec};
use crate::tools::ToolKind;
use crate::{AgentControls, AgentSpec, AgentStage, BackendSpec, GuardSpec};

/// Tokens of the KV cache unless `context` says otherwise.
const DEFAULT_CONTEXT: i64 = 4096;
/// Tokens of the Guard's KV cache.
const GUARD_CONTEXT: i64 = 2048;
/// The least KV cache a conversation needs.
const MIN_CONTEXT: i64 = 256;

/// An OpenAI-compatible server: `{ url = "http://127.0.0.1:8080/v1", model = "llama3.2" }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// Base URL.
    pub url: String,
    /// Model name sent with each request.
    pub model: String,
    /// The environment variable holding the API key (read when the agent starts).
    pub api_key_env: Option<String>,
    /// Limit on one request (`"30s"`).
    pub timeout: Option<String>,
    /// Attempts per call.
    pub attempts: Option<u32>,
}

/// `guard = { model = "llama-guard-3-1b", weights = "...", threshold = 0.5, exclude = ["S6"] }`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardEntry {
    /// `llama-guard-3-1b` (default) or `llama-guard-3-8b`.
    pub model: Option<String>,
    /// Native weights.
    pub weights: Option<PathBuf>,
    /// Seeded random weights instead (demos and tests).
    #[serde(default)]
    pub allow_random_weights: bool,
    /// Seed of random weights.
    #[serde(default)]
    pub seed: i64,
    /// An OpenAI-compatible server instead of native weights.
    pub server: Option<ServerEntry>,
    /// Native weights quantized: `"int8"`, `"int4"` (groups of 128) or `"int4:<group>"`.
    pub dtype: Option<String>,
    /// Blocks at or above this P(unsafe) (default 0.5).
    pub threshold: Option<f32>,
    /// Categories left out (`S6`, ...).
    #[serde(default)]
    pub exclude: Vec<String>,
}

ocellus_io::zenoh_entry! {
    /// `inbox = { operator_key = "robot/operator", alt_text_key = "robot/alt_text", connect = [...] }`.
    #[derive(Debug, Clone, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct InboxEntry {
        /// Key of operator instructions (UTF-8 text, or a ROS 2 `std_msgs/String`).
        pub operator_key: Option<String>,
        /// Key of alt-texts (UTF-8; `<camera>: text` names a camera).
        pub alt_text_key: Option<String>,
        /// A ROS 2 topic of operator instructions (`std_msgs/String` over rmw_zenoh), instead of
        /// `operator_key`.
        pub operator_topic: Option<String>,
        /// A ROS 2 topic of alt-texts, instead of `alt_text_key`.
        pub alt_text_topic: Option<String>,
        /// `ROS_DOMAIN_ID` of the topics (default: the environment's, else 0).
        pub domain: Option<u32>,
    }
}

/// `[[actor]] kind = "agent"`: `model` (native Llama 3, with `weights`) or `server`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// `tokenizer.model` or `tokenizer.json` (when absent, the one `ocellus weights import`
    /// put next to the weights).
    pub tokenizer: Option<PathBuf>,
    /// KV cache, tokens (default 4096).
    pub context: Option<i64>,
    /// An OpenAI-compatible server instead of native weights.
    pub server: Option<ServerEntry>,
    /// No language model: captions from what is tracked (labels, actions), operator
    /// instructions read by a fixed grammar (`track the red cup`, `untrack 3`, `hide 3`, ...);
    /// every call is still validated and screened.
    #[serde(default)]
    pub rules: bool,
    /// Llama Guard 3.
    pub guard: Option<GuardEntry>,
    /// Caption period (`"2s"`).
    pub caption_every: Option<String>,
    /// Each camera's description: the base of its first caption.
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
    /// Allowed tools: track, untrack, label, inpaint, describe, alert, publish.
    #[serde(default)]
    pub tools: Vec<ToolKind>,
    /// Calls per tool per minute (default 10).
    pub rate_limit: Option<u32>,
    /// Tokens per answer (default 128).
    pub max_tokens: Option<usize>,
    /// The sam2 actor `track` and `untrack` act on (default: an input, else the only one).
    pub tracker: Option<String>,
    /// The labeler `label` acts on.
    pub labeler: Option<String>,
    /// The inpainter `inpaint` acts on.
    pub inpainter: Option<String>,
    /// The discovery actor that answers `track` text queries (default: the only one).
    pub discovery: Option<String>,
    /// Operator instructions and alt-texts on zenoh.
    pub inbox: Option<InboxEntry>,
    /// With an `actions` input: a person's best action counts from this probability on
    /// (default 0.5); it goes into the observations and the captions.
    pub action_threshold: Option<f32>,
}

/// The tokenizer `ocellus weights import` put next to a Llama weights file `X.safetensors`
/// (`X.tokenizer.json` or `X.tokenizer.model`), or `tokenizer.json` / `tokenizer.model` in
/// its folder.
pub fn default_llama_tokenizer(weights: &std::path::Path) -> Option<PathBuf> {
    let dir = weights.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    [
        weights.with_extension("tokenizer.json"),
        weights.with_extension("tokenizer.model"),
        dir.join("tokenizer.json"),
        dir.join("tokenizer.model"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

fn server(e: &ServerEntry) -> Result<BackendSpec, Issue> {
    if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
        return Err(Issue::at("url", format!("{:?} is not an http(s) URL", e.url)));
    }
    let mut c = OpenAiConfig::new(&e.url, &e.model);
    if let Some(t) = &e.timeout {
        c.timeout = duration("timeout", t)?;
    }
    if let Some(a) = e.attempts {
        if a == 0 {
            return Err(Issue::at("attempts", "must be at least 1"));
        }
        c.attempts = a;
    }
    Ok(BackendSpec::OpenAi { config: c, api_key_env: e.api_key_env.clone() })
}

fn native(
    model: &str,
    weights: &WeightsKeys,
    tokenizer: Option<&PathBuf>,
    context: i64,
    common: &Common,
    weight_format: Option<&str>,
) -> Result<BackendSpec, Issue> {
    let quantization = match weight_format {
        None => Quantization::None,
        Some(text) => Quantization::parse(text).map_err(|e| Issue::at("dtype", e.to_string()))?,
    };
    if ocellus_language::config::LlamaConfig::by_name(model).is_err() {
        return Err(Issue::at(
            "model",
            format!("unknown Llama model {model:?} (known: {})", ocellus_language::config::NAMES.join(", ")),
        ));
    }
    let tokenizer = match tokenizer {
        Some(t) if t.exists() => t.clone(),
        Some(t) => return Err(Issue::at("tokenizer", format!("{} not found", t.display()))),
        None => match weights {
            WeightsKeys::File(w) => default_llama_tokenizer(w).ok_or_else(|| {
                Issue::at(
                    "tokenizer",
                    format!(
                        "no tokenizer next to {} (`ocellus weights import` puts the model's there): give \
                         `tokenizer = \"tokenizer.model\"` (Meta's) or a Hugging Face `tokenizer.json`",
                        w.display()
                    ),
                )
            })?,
            WeightsKeys::Random { .. } => {
                return Err(Issue::at(
                    "tokenizer",
                    "random weights need a tokenizer: give `tokenizer = \"tokenizer.model\"` (Meta's) or a \
                     Hugging Face `tokenizer.json`",
                ));
            }
        },
    };
    let model = ModelSpec {
        name: model.to_owned(),
        weights: weights_source(weights),
        device: common.device,
        dtype: common.dtype,
    };
    Ok(BackendSpec::Native { model, tokenizer, context, quantization })
}

fn guard(g: &GuardEntry, tokenizer: Option<&PathBuf>, common: &Common) -> Result<GuardSpec, Issue> {
    let name = g.model.clone().unwrap_or_else(|| "llama-guard-3-1b".to_owned());
    let model = match name.as_str() {
        "llama-guard-3-1b" => GuardModel::Guard3_1B,
        "llama-guard-3-8b" => GuardModel::Guard3_8B,
        other => {
            return Err(Issue::at(
                "model",
                format!("unknown guard {other:?} (known: llama-guard-3-1b, llama-guard-3-8b)"),
            ));
        }
    };
    let backend = match (&g.server, &g.weights, g.allow_random_weights) {
        (Some(s), None, false) => server(s).map_err(|i| i.inside("server"))?,
        (Some(_), _, _) => return Err(Issue::at("server", "give either `server` or native `weights`, not both")),
        (None, Some(path), false) if path.exists() => {
            native(&name, &WeightsKeys::File(path.clone()), tokenizer, GUARD_CONTEXT, common, g.dtype.as_deref())?
        }
        (None, Some(path), false) => return Err(Issue::at("weights", format!("{} not found", path.display()))),
        (None, None, true) => {
            let random = WeightsKeys::Random { seed: g.seed };
            native(&name, &random, tokenizer, GUARD_CONTEXT, common, g.dtype.as_deref())?
        }
        (None, Some(_), true) => {
            return Err(Issue::at("allow_random_weights", "give either `weights` or `allow_random_weights`, not both"));
        }
        (None, None, false) => return Err(Issue::here("needs `server`, `weights` or `allow_random_weights = true`")),
    };
    let n = model.num_categories();
    for (i, key) in g.exclude.iter().enumerate() {
        let ok = key.strip_prefix('S').and_then(|k| k.parse::<usize>().ok()).is_some_and(|k| (1..=n).contains(&k));
        if !ok {
            return Err(Issue::at("exclude", format!("{key:?} is not a category S1..S{n}")).index(i));
        }
    }
    let threshold = g.threshold.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Issue::at("threshold", "must be in [0, 1]"));
    }
    Ok(GuardSpec { backend, model, excluded: g.exclude.clone(), threshold })
}

/// The agent kind.
pub struct AgentKind;

impl NodeKind for AgentKind {
    const NAME: &'static str = "agent";
    const DOC: &'static str =
        "Llama 3 agent: a world state from tracks, Altogether captions, guarded tool calls from operator instructions";
    const MODEL: ModelUse = ModelUse::Optional;
    const QUANTIZED_WEIGHTS: bool = true;
    type Config = AgentEntry;

    fn configure(common: &Common, e: AgentEntry, view: &PipelineView) -> Result<Arc<dyn ConfiguredNode>, Issue> {
        let context = e.context.unwrap_or(DEFAULT_CONTEXT);
        if context < MIN_CONTEXT {
            return Err(Issue::at("context", format!("must be at least {MIN_CONTEXT} tokens")));
        }
        let backend = match (&e.server, &common.model, &common.weights) {
            _ if e.rules && (e.server.is_some() || common.model.is_some()) => {
                return Err(Issue::at("rules", "give `rules = true`, `model` or `server`, one of them"));
            }
            (None, None, _) if e.rules => BackendSpec::Rules,
            (Some(s), None, None) => server(s).map_err(|i| i.inside("server"))?,
            (None, Some(model), Some(weights)) => {
                native(model, weights, e.tokenizer.as_ref(), context, common, common.weight_format.as_deref())?
            }
            (None, Some(_), None) => {
                return Err(Issue::at("weights", "needs `weights` or `allow_random_weights = true`"));
            }
            (Some(_), _, _) => return Err(Issue::at("server", "give either `model` (native) or `server`, not both")),
            (None, None, _) => {
                return Err(Issue::here(
                    "needs `model` (native Llama 3), `server` (OpenAI-compatible) or `rules = true` (no language model)",
                ));
            }
        };
        let guard = e
            .guard
            .as_ref()
            .map(|g| guard(g, e.tokenizer.as_ref(), common).map_err(|i| i.inside("guard")))
            .transpose()?;
        let tracker = view.resolve("tracker", e.tracker.as_deref(), "sam2", "a sam2 actor")?;
        let labeler = view.resolve("labeler", e.labeler.as_deref(), "labeler", "a labeler actor")?;
        let inpainter = view.resolve("inpainter", e.inpainter.as_deref(), "inpainter", "an inpainter actor")?;
        let discovery = view.resolve("discovery", e.discovery.as_deref(), "discovery", "a discovery actor")?;
        let tools = e.tools;
        if tools.contains(&ToolKind::Inpaint) && inpainter.is_none() {
            return Err(Issue::at("tools", "`inpaint` needs an inpainter actor (`inpainter`)"));
        }
        if tools.contains(&ToolKind::Label) && labeler.is_none() {
            return Err(Issue::at("tools", "`label` needs a labeler actor (in `inputs` or `labeler`)"));
        }
        if tools.iter().any(|t| matches!(t, ToolKind::Track | ToolKind::Untrack)) && tracker.is_none() {
            return Err(Issue::at("tools", "`track` and `untrack` need a sam2 actor (in `inputs` or `tracker`)"));
        }
        let action_threshold = e.action_threshold.unwrap_or(crate::DEFAULT_ACTION_THRESHOLD);
        if !(0.0..=1.0).contains(&action_threshold) {
            return Err(Issue::at("action_threshold", "must be a probability, 0 to 1"));
        }
        let caption_every = e
            .caption_every
            .as_deref()
            .map(|t| duration("caption_every", t))
            .transpose()?
            .unwrap_or(Duration::from_secs(2));
        let inbox = match &e.inbox {
            None => None,
            Some(i) => {
                let topic_key =
                    |key: &Option<String>, topic: &Option<String>, name: &str| -> Result<Option<String>, Issue> {
                        match (key, topic) {
                            (Some(_), Some(_)) => {
                                Err(Issue::at(name, format!("give `{name}` or its `_key`, not both")).inside("inbox"))
                            }
                            (None, Some(t)) => {
                                let domain = ocellus_io::kinds::ros_domain(i.domain).map_err(|i| i.inside("inbox"))?;
                                Ok(Some(ocellus_wire::ros2::rmw_zenoh_key(
                                    domain,
                                    t,
                                    ocellus_wire::ros2::MsgType::String,
                                    None,
                                )))
                            }
                            (k, None) => Ok(k.clone()),
                        }
                    };
                let operator_key = topic_key(&i.operator_key, &i.operator_topic, "operator_topic")?;
                let alt_text_key = topic_key(&i.alt_text_key, &i.alt_text_topic, "alt_text_topic")?;
                for (k, v) in [("operator_key", &operator_key), ("alt_text_key", &alt_text_key)] {
                    if let Some(key) = v {
                        key_expr(k, key).map_err(|i| i.inside("inbox"))?;
                    }
                }
                let keys: SessionKeys = ocellus_io::session_keys!(i);
                let session = keys.spec().map_err(|i| i.inside("inbox"))?;
                Some(InboxSpec { session, operator_key, alt_text_key })
            }
        };
        Ok(Arc::new(AgentSpec {
            backend,
            guard,
            tools,
            rate_limit: e.rate_limit.unwrap_or(10).max(1),
            rate_window: Duration::from_secs(60),
            caption_every,
            descriptions: e.descriptions.into_iter().collect(),
            max_tokens: e.max_tokens.unwrap_or(128).max(1),
            inbox,
            tracker,
            labeler,
            inpainter,
            discovery,
            action_threshold,
        }))
    }
}

/// The agent's ports.
pub fn ports() -> Ports {
    Ports {
        inputs: vec![
            InputPort::new("tracks", &[PortType::Tracks], EdgePolicy::Latest),
            InputPort::new("actions", &[PortType::Actions], EdgePolicy::Latest).optional(),
        ],
        outputs: vec![OutputPort { name: "events", ty: PortType::Agent }],
        join: None,
    }
}

impl ConfiguredNode for AgentSpec {
    fn ports(&self) -> Ports {
        ports()
    }

    fn build(&self, ctx: &mut BuildContext) -> Result<StageFactory> {
        let controls = AgentControls {
            tracker: self.tracker.as_ref().map(|t| ctx.control::<TrackerCommand>(t, tracker::CONTROL_DEPTH).0),
            labeler: self.labeler.as_ref().map(|l| ctx.control::<LabelerCommand>(l, labeler::CONTROL_DEPTH).0),
            inpainter: self.inpainter.as_ref().map(|i| ctx.control::<InpainterCommand>(i, inpainter::CONTROL_DEPTH).0),
            discovery: self.discovery.as_ref().map(|d| discovery::control_of(ctx, d)),
        };
        // A replay hands the agent what it received when the recording was made.
        let inbox = match ctx.extension::<RecordedInbox>() {
            Some(recorded) => Inbox::replayed((*recorded).clone()),
            None => Inbox::new(),
        };
        let spec = self.clone();
        Ok(Box::new(move || {
            Ok(Box::new(AgentStage::new(spec.clone(), controls.clone(), inbox.clone())) as Box<dyn Stage>)
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
