//! # ocellus-pipelines
//!
//! Pipeline configuration files (TOML) → running pipelines, and the `ocellus` command.
//!
//! - [`config`]: the schema and its validation, with errors that name the file, the key path
//!   and the line.
//! - [`graph`]: turns a validated configuration into an [`ocellus_actors::Pipeline`].
//! - [`bench`]: the benchmarks behind `ocellus bench`.
//! - [`tools`]: `ocellus weights import | init`.
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod graph;
pub mod tools;

pub use config::{ConfigError, PipelineConfig};
pub use graph::{BuildError, build, check};
