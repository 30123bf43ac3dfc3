//! From a validated configuration to a runnable [`Pipeline`].

use ocellus_runtime::kind::BuildContext;
use ocellus_runtime::{Pipeline, RuntimeError};

use crate::config::{ConfigError, PipelineConfig};

/// Why a configuration could not become a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration itself is wrong (with file, key path and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A node could not be created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Checks what can be checked without running: every GStreamer description is parsed and
/// its elements created, every zenoh configuration file is read (errors name the element or
/// the file, and the config line). No session is opened, no model loaded.
pub fn check(config: &PipelineConfig) -> Result<(), BuildError> {
    for source in &config.sources {
        source.kind.check().map_err(|e| config.error_at(&source.described_at, e))?;
    }
    Ok(())
}

/// Builds the pipeline of `config` (opens nothing: each node opens its devices, sessions and
/// files when it starts).
pub fn build(config: &PipelineConfig) -> Result<Pipeline, BuildError> {
    build_with(config, BuildContext::new())
}

/// [`build`] with a build context a tool prepared (a replay's clock and recorded inputs).
pub fn build_with(config: &PipelineConfig, mut ctx: BuildContext) -> Result<Pipeline, BuildError> {
    check(config)?;
    if !config.notices.is_empty() {
        for n in &config.notices {
            tracing::warn!(key = %n.key, "{}", n.text);
        }
        ctx.insert_extension(ocellus_runtime::kind::Notices(config.notices.iter().map(|n| n.text.clone()).collect()));
    }
    let mut pipeline = Pipeline::new();
    pipeline.restart_policy(config.runtime.restart).metrics_every(config.runtime.metrics_every).clock(ctx.clock);
    for source in &config.sources {
        pipeline.source(&source.name, source.kind.factory());
    }
    for node in config.actors.iter().chain(&config.sinks) {
        let factory = node.node.build(&mut ctx)?;
        pipeline.node(&node.name, node.node.ports(), node.wires.clone(), factory);
    }
    if let Some(sink) = config.sinks.iter().find(|s| s.node.takes_metrics()) {
        pipeline.metrics_to(&sink.name);
    }
    Ok(pipeline)
}
