//! `ocellus replay`: a pipeline's sources replaced by the camera images of a recording.
//!
//! Each `[[source]]` of the configuration is fed the images its name has in the recording
//! (`world/<name>/image`), with their recorded frame numbers and capture times (the
//! intervals kept); actors and sinks run as configured, on the replay's clock, and the agent
//! is handed what it received when the recording was made (`agent/inbox`), on the same frames.
//! So captions and decisions come out as they did, however fast the replay runs. A Rerun sink
//! that would write over the recording being read is refused (write elsewhere with `--save`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ocellus_io::IoError;
use ocellus_io::kinds::{ConfiguredSource, RerunNode};
use ocellus_io::recording::{self, RecordingIndex};
use ocellus_io::sink::RerunTarget;
use ocellus_io::source::{ReplayClock, ReplaySpec, ReplayTiming};
use ocellus_runtime::Clock;
use ocellus_runtime::kind::BuildContext;

use crate::config::PipelineConfig;

/// Why a recording cannot be replayed through a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The recording cannot be read.
    #[error(transparent)]
    Recording(#[from] IoError),
    /// A source has no images in the recording.
    #[error("{recording}: no images of camera {camera:?} (world/{camera}/image); it holds {found}")]
    MissingCamera {
        /// The recording.
        recording: PathBuf,
        /// The source's name.
        camera: String,
        /// The cameras it holds.
        found: String,
    },
    /// The output would overwrite the input.
    #[error("sink {sink:?} would write over {recording}, which is being replayed: give another file with --save")]
    Overwrite {
        /// The sink.
        sink: String,
        /// The recording.
        recording: PathBuf,
    },
    /// `--save` with no Rerun sink saving a file, or with several.
    #[error("--save replaces the file of the one Rerun sink that saves one; this configuration has {0}")]
    Save(usize),
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Replaces every source of `config` by its camera's images in `recording`, and the file of
/// its saving Rerun sink by `save` when given. Returns what the recording holds, and the build
/// context of the replay (its clock, the agent's recorded inbox).
pub fn prepare(
    config: &mut PipelineConfig,
    recording: &Path,
    timing: ReplayTiming,
    save: Option<&Path>,
) -> Result<(RecordingIndex, BuildContext), ReplayError> {
    let index = recording::index(recording)?;
    let clock = ReplayClock::new(index.origin_ns());
    for source in &mut config.sources {
        if index.cameras.get(&source.name).is_none_or(|c| c.frames == 0) {
            let found = if index.cameras.is_empty() {
                "no camera images".to_owned()
            } else {
                format!("cameras {}", index.cameras.keys().cloned().collect::<Vec<_>>().join(", "))
            };
            return Err(ReplayError::MissingCamera {
                recording: recording.to_path_buf(),
                camera: source.name.clone(),
                found,
            });
        }
        source.kind = ConfiguredSource::Replay(ReplaySpec {
            recording: recording.to_path_buf(),
            camera: source.name.clone(),
            timing,
            clock: clock.clone(),
        });
    }
    let saving: Vec<usize> = (0..config.sinks.len())
        .filter(|&i| config.sinks[i].spec::<RerunNode>().is_some_and(|r| matches!(r.target, RerunTarget::Save(_))))
        .collect();
    if let Some(out) = save {
        let [i] = saving.as_slice() else { return Err(ReplayError::Save(saving.len())) };
        if let Some(r) = config.sinks[*i].spec::<RerunNode>() {
            let node = RerunNode {
                target: RerunTarget::Save(out.to_path_buf()),
                metrics: r.metrics,
                app_id: r.app_id.clone(),
                layout: r.layout.clone(),
                jpeg: r.jpeg,
            };
            config.sinks[*i].node = Arc::new(node);
        }
    }
    for sink in &config.sinks {
        if let Some(RerunNode { target: RerunTarget::Save(path), .. }) = sink.spec::<RerunNode>()
            && same_file(path, recording)
        {
            return Err(ReplayError::Overwrite { sink: sink.name.clone(), recording: recording.to_path_buf() });
        }
    }
    let mut ctx = BuildContext::new();
    ctx.clock = Clock::Replay;
    ctx.insert_extension(recording::inbox(recording)?);
    Ok((index, ctx))
}
