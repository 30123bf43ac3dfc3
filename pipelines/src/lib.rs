//! # ocellus-pipelines
//!
//! Pipeline configuration files (TOML) → running pipelines, and the `ocellus` command.
//!
//! - [`config`]: the file's common keys, the table of node kinds (each kind owns its keys),
//!   the wiring of typed ports, errors that name the file, the key path and the line, and the
//!   JSON Schema of the format.
//! - [`graph`]: turns a validated configuration into an [`ocellus_runtime::Pipeline`].
//! - [`replay`]: `ocellus replay`, a pipeline fed the camera images of a recording, on its
//!   clock.
//! - [`adapt`]: `ocellus adapt`, MAE adaptation of a Hiera backbone on recorded camera images.
//! - [`curate`]: `ocellus curate`, MetaCLIP-balanced frames and captions from recordings.
//! - [`tools`]: `ocellus weights import | init`.
//! - [`cli`]: the subcommands, one argument struct each.
#![warn(missing_docs)]

pub mod adapt;
pub mod cli;
pub mod config;
pub mod curate;
pub mod fetch;
pub mod graph;
pub mod onnx_export;
pub mod replay;
pub mod tools;

pub use config::{ConfigError, PipelineConfig};
pub use graph::{BuildError, build, build_with, check};
