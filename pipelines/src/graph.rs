//! From a validated configuration to a runnable [`Pipeline`].

use std::collections::HashMap;

use ocellus_actors::agent::inbox::Inbox;
use ocellus_actors::agent::{AgentProcessor, AgentSpec, BackendSpec, GuardSpec};
use ocellus_actors::backbone::{BackboneProcessor, BackboneSpec};
use ocellus_actors::control::{
    ControlReceiver, ControlSender, InpainterCommand, LabelerCommand, TrackerCommand, control_channel,
};
use ocellus_actors::inpainter::{InpainterProcessor, InpainterSpec};
use ocellus_actors::labeler::{LabelerProcessor, LabelerSpec};
use ocellus_actors::motion::MotionProcessor;
use ocellus_actors::runtime::SourceKind;
use ocellus_actors::sink::{NullSink, RerunSink, ZenohSinkHandle, rerun::open_recording};
use ocellus_actors::source::gst;
use ocellus_actors::stage::Processor;
use ocellus_actors::tracker::{TrackerProcessor, TrackerSpec};
use ocellus_actors::{ActorError, Pipeline};
use ocellus_perception::sam2::tracker::{DEFAULT_MAX_BATCH, GPU_MAX_BATCH, StreamConfig};

use crate::config::{ActorKind, ConfigError, PipelineConfig, SinkKind};

/// Commands queued per tracker before the agent is told the tracker is busy.
const TRACKER_CONTROL_DEPTH: usize = 16;

/// The backend on the pipeline's device (the config is read before the device is known).
fn with_device(backend: &BackendSpec, device: tch::Device) -> BackendSpec {
    match backend {
        BackendSpec::Native { model, weights, tokenizer, context, .. } => BackendSpec::Native {
            model: model.clone(),
            weights: weights.clone(),
            tokenizer: tokenizer.clone(),
            context: *context,
            device,
        },
        other => other.clone(),
    }
}

/// Why a configuration could not become a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration itself is wrong (with file, key path and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A component could not be created.
    #[error(transparent)]
    Actor(#[from] ActorError),
}

/// Checks what can be checked without running: every GStreamer description is parsed and
/// its elements created (errors name the element and the config line). zenoh sources and
/// sinks were checked when the configuration was read (key expressions, zenoh
/// configuration files, endpoints); no session is opened, so no peer is needed.
pub fn check(config: &PipelineConfig) -> Result<(), BuildError> {
    for source in &config.sources {
        if let SourceKind::Gstreamer(spec) = &source.kind {
            gst::check(spec).map_err(|e| config.error_at(&source.path.key("gstreamer"), e.to_string()))?;
        }
    }
    Ok(())
}

/// Builds the pipeline of `config` (opens recordings; starts nothing).
pub fn build(config: &PipelineConfig) -> Result<Pipeline, BuildError> {
    check(config)?;
    let mut pipeline = Pipeline::new();
    pipeline.restart_policy(config.restart).metrics_every(config.metrics_every);
    for source in &config.sources {
        pipeline.source(&source.name, source.kind.clone());
    }
    let device = config.device;
    // A control channel into every SAM 2 actor an agent acts on.
    let mut controls: HashMap<String, (ControlSender<TrackerCommand>, ControlReceiver<TrackerCommand>)> =
        HashMap::new();
    let mut label_controls: HashMap<String, (ControlSender<LabelerCommand>, ControlReceiver<LabelerCommand>)> =
        HashMap::new();
    let mut inpaint_controls: HashMap<String, (ControlSender<InpainterCommand>, ControlReceiver<InpainterCommand>)> =
        HashMap::new();
    for actor in &config.actors {
        if let ActorKind::Agent(agent) = &actor.kind
            && let Some(tracker) = &agent.tracker
        {
            controls.entry(tracker.clone()).or_insert_with(|| control_channel(TRACKER_CONTROL_DEPTH));
        }
        if let ActorKind::Agent(agent) = &actor.kind
            && let Some(labeler) = &agent.labeler
        {
            label_controls.entry(labeler.clone()).or_insert_with(|| control_channel(TRACKER_CONTROL_DEPTH));
        }
        if let ActorKind::Agent(agent) = &actor.kind
            && let Some(inpainter) = &agent.inpainter
        {
            inpaint_controls.entry(inpainter.clone()).or_insert_with(|| control_channel(TRACKER_CONTROL_DEPTH));
        }
    }
    for actor in &config.actors {
        let inputs: Vec<&str> = actor.inputs.iter().map(String::as_str).collect();
        match &actor.kind {
            ActorKind::Motion(motion) => {
                let motion = *motion;
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(MotionProcessor::new(motion, device)?) as Box<dyn Processor>)),
                );
            }
            ActorKind::Sam2 { model, weights, prompts, max_cond_frames, prompt_topic, image_size, resize } => {
                if let Some(topic) = prompt_topic {
                    let (tx, _) =
                        controls.entry(actor.name.clone()).or_insert_with(|| control_channel(TRACKER_CONTROL_DEPTH));
                    ocellus_actors::control::subscribe_prompts(topic.clone(), tx.clone()).map_err(|e| {
                        BuildError::Actor(ActorError::Failed(format!("{}: prompt topic: {e}", actor.name)))
                    })?;
                }
                let spec = TrackerSpec {
                    model: model.clone(),
                    weights: weights.clone(),
                    device,
                    dtype: config.dtype,
                    prompts: prompts.clone(),
                    stream: StreamConfig {
                        max_cond_frames: *max_cond_frames,
                        max_batch: if device.is_cuda() { GPU_MAX_BATCH } else { DEFAULT_MAX_BATCH },
                        ..StreamConfig::default()
                    },
                    image_size: *image_size,
                    resize: *resize,
                    control: controls.get(&actor.name).map(|(_, rx)| rx.clone()),
                };
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(TrackerProcessor::new(spec.clone())?) as Box<dyn Processor>)),
                );
            }
            ActorKind::Labeler { model, weights, vocabulary, templates, bpe, smoothing, padding } => {
                let spec = LabelerSpec {
                    model: model.clone(),
                    weights: weights.clone(),
                    device,
                    dtype: config.dtype,
                    vocabulary: vocabulary.clone(),
                    templates: templates.clone(),
                    bpe: bpe.clone(),
                    smoothing: *smoothing,
                    padding: *padding,
                    control: label_controls.get(&actor.name).map(|(_, rx)| rx.clone()),
                };
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(LabelerProcessor::new(spec.clone())?) as Box<dyn Processor>)),
                );
            }
            ActorKind::Inpainter { method, tracks, labels, dilate } => {
                let spec = InpainterSpec {
                    method: method.clone(),
                    device,
                    dtype: config.dtype,
                    tracks: tracks.clone(),
                    labels: labels.clone(),
                    dilate: *dilate,
                    control: inpaint_controls.get(&actor.name).map(|(_, rx)| rx.clone()),
                };
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(InpainterProcessor::new(spec.clone())?) as Box<dyn Processor>)),
                );
            }
            ActorKind::Agent(agent) => {
                let inbox = Inbox::new();
                if let Some(spec) = &agent.inbox {
                    ocellus_actors::agent::inbox::subscribe(spec.clone(), inbox.clone()).map_err(|e| {
                        BuildError::Actor(ocellus_actors::ActorError::Failed(format!("agent inbox: {e}")))
                    })?;
                }
                let spec = AgentSpec {
                    backend: with_device(&agent.backend, device),
                    guard: agent.guard.clone().map(|g| GuardSpec { backend: with_device(&g.backend, device), ..g }),
                    tools: agent.tools.clone(),
                    rate_limit: agent.rate_limit,
                    rate_window: std::time::Duration::from_secs(60),
                    caption_every: agent.caption_every,
                    descriptions: agent.descriptions.clone(),
                    max_tokens: agent.max_tokens,
                    inbox,
                    tracker: agent.tracker.as_ref().and_then(|t| controls.get(t)).map(|(tx, _)| tx.clone()),
                    labeler: agent.labeler.as_ref().and_then(|l| label_controls.get(l)).map(|(tx, _)| tx.clone()),
                    inpainter: agent.inpainter.as_ref().and_then(|i| inpaint_controls.get(i)).map(|(tx, _)| tx.clone()),
                };
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(AgentProcessor::new(spec.clone())?) as Box<dyn Processor>)),
                );
            }
            ActorKind::Backbone { model, weights, resolution, resize } => {
                let spec = BackboneSpec {
                    model: model.clone(),
                    weights: weights.clone(),
                    resolution: *resolution,
                    resize: *resize,
                    device,
                    dtype: config.dtype,
                };
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(BackboneProcessor::new(spec.clone())?) as Box<dyn Processor>)),
                );
            }
        }
    }
    for sink in &config.sinks {
        let inputs: Vec<&str> = sink.inputs.iter().map(String::as_str).collect();
        match &sink.kind {
            SinkKind::Rerun { target, metrics, app_id } => {
                // One recording for the whole run: a restarted sink goes on writing to it.
                let rec = open_recording(app_id, target)?;
                pipeline.stage(
                    &sink.name,
                    &inputs,
                    sink.edge,
                    Box::new(move || Ok(Box::new(RerunSink::new(rec.clone())) as Box<dyn Processor>)),
                );
                if *metrics {
                    pipeline.metrics_to(&sink.name);
                }
            }
            SinkKind::Zenoh(spec) => {
                // One session for the whole run: a restarted sink goes on publishing through it.
                let handle = ZenohSinkHandle::start(&sink.name, spec.clone())?;
                pipeline.stage(&sink.name, &inputs, sink.edge, Box::new(move || Ok(handle.processor())));
            }
            SinkKind::Null => {
                pipeline.stage(
                    &sink.name,
                    &inputs,
                    sink.edge,
                    Box::new(|| Ok(Box::new(NullSink) as Box<dyn Processor>)),
                );
            }
        }
    }
    Ok(pipeline)
}
