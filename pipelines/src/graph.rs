//! From a validated configuration to a runnable [`Pipeline`].

use ocellus_actors::backbone::{BackboneProcessor, BackboneSpec};
use ocellus_actors::motion::MotionProcessor;
use ocellus_actors::runtime::SourceKind;
use ocellus_actors::sink::{NullSink, RerunSink, rerun::open_recording};
use ocellus_actors::source::gst;
use ocellus_actors::stage::Processor;
use ocellus_actors::tracker::{TrackerProcessor, TrackerSpec};
use ocellus_actors::{ActorError, Pipeline};
use ocellus_perception::sam2::tracker::StreamConfig;

use crate::config::{ActorKind, ConfigError, PipelineConfig, SinkKind};

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
/// its elements created (errors name the element and the config line).
pub fn check(config: &PipelineConfig) -> Result<(), BuildError> {
    for source in &config.sources {
        gst::check(&source.spec).map_err(|e| config.error_at(&source.path.key("gstreamer"), e.to_string()))?;
    }
    Ok(())
}

/// Builds the pipeline of `config` (opens recordings; starts nothing).
pub fn build(config: &PipelineConfig) -> Result<Pipeline, BuildError> {
    check(config)?;
    let mut pipeline = Pipeline::new();
    pipeline.restart_policy(config.restart).metrics_every(config.metrics_every);
    for source in &config.sources {
        pipeline.source(&source.name, SourceKind::Gstreamer(source.spec.clone()));
    }
    let device = config.device;
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
            ActorKind::Sam2 { model, weights, prompts, max_cond_frames } => {
                let spec = TrackerSpec {
                    model: model.clone(),
                    weights: weights.clone(),
                    device,
                    dtype: config.dtype,
                    prompts: prompts.clone(),
                    stream: StreamConfig { max_cond_frames: *max_cond_frames, ..StreamConfig::default() },
                };
                pipeline.stage(
                    &actor.name,
                    &inputs,
                    actor.edge,
                    Box::new(move || Ok(Box::new(TrackerProcessor::new(spec.clone())?) as Box<dyn Processor>)),
                );
            }
            ActorKind::Backbone { model, weights, resolution } => {
                let spec = BackboneSpec {
                    model: model.clone(),
                    weights: weights.clone(),
                    resolution: *resolution,
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
