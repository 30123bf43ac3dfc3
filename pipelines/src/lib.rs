//! # ocellus-pipelines
//!
//! Pipeline configuration files (TOML) → running pipelines, and the `ocellus` command.
//!
//! - [`config`]: the schema and its validation, with errors that name the file, the key path
//!   and the line.
//! - [`graph`]: turns a validated configuration into an [`ocellus_actors::Pipeline`].
//! - [`bench`]: the benchmarks behind `ocellus bench`.
//! - [`curate`]: `ocellus curate`, MetaCLIP-balanced frames and captions from recordings.
//! - [`replay`]: `ocellus replay`, a pipeline fed the camera images of a recording.
//! - [`tools`]: `ocellus weights import | init`.
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod curate;
pub mod graph;
pub mod replay;
pub mod tools;

pub use config::{ConfigError, PipelineConfig};
pub use graph::{BuildError, build, check};
