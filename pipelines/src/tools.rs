//! `ocellus weights import | init`.

use std::path::{Path, PathBuf};

use ocellus_perception::PerceptionError;
use ocellus_perception::backbone::Backbone;
use ocellus_perception::weights::{self, Manifest};
use tch::Device;

/// Default output of the weights commands: `weights/<model>.safetensors`.
pub fn default_weights_path(model: &str) -> PathBuf {
    Path::new("weights").join(format!("{model}.safetensors"))
}

/// Converts an official checkpoint of `model` to safetensors at `out`, verifies every key
/// against the architecture, and writes the manifest.
pub fn import(model: &str, checkpoint: &Path, out: &Path) -> Result<Manifest, PerceptionError> {
    let mut backbone = Backbone::new(model, Device::Cpu)?;
    let tmp = out.with_extension("safetensors.partial");
    weights::convert_checkpoint(checkpoint, &tmp)?;
    let verified = backbone.load(&tmp);
    if let Err(e) = verified {
        std::fs::remove_file(&tmp).ok();
        return Err(e);
    }
    std::fs::rename(&tmp, out)
        .map_err(|e| PerceptionError::Weights { path: out.to_path_buf(), message: e.to_string() })?;
    weights::write_manifest(out, model, backbone.config().clone(), format!("import {}", checkpoint.display()))
}

/// Writes seeded random weights of `model` to `out`, with the manifest.
pub fn init(model: &str, seed: i64, out: &Path) -> Result<Manifest, PerceptionError> {
    let backbone = Backbone::new(model, Device::Cpu)?;
    backbone.init_seeded(seed)?;
    weights::save(backbone.var_store(), out, model, backbone.config().clone(), format!("init seed={seed}"))
}
