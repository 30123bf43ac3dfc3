//! What a configuration asks to have fetched, resolved before it is validated:
//!
//! - `weights = "official"` in any table that names a `model` (an actor, or a nested model
//!   such as `labels` or `appearance`): the official checkpoint, converted once into
//!   `weights/<model>.safetensors` (`OCELLUS_WEIGHTS` moves the folder) and used from there;
//!   other keys set to `"official"` in the same table name the model's companion files
//!   (`mean_std = "official"` is LART's `weights/lart.mean_std.npy`).
//! - `preset = { kind = "sample", name = "sam2-bedroom", frames = N }` on a source: a public
//!   sample clip, fetched once into the cache and read as an image sequence.
//! - `allow_random_smpl = true` next to `smpl = "<file>"` on a pose actor: the SMPL body
//!   model is licensed and never downloaded; without the file, a seeded stand-in body.
//!
//! When something cannot be had (no network, a refused download) and the table allows it
//! (`allow_random_weights = true`, a sample's `fallback`, `allow_random_smpl = true`), the
//! pipeline runs on seeded weights or the fallback source instead, and says so: each such
//! substitution is a [`Notice`], printed as a banner and written into the recording.
//! Otherwise the error names the key and its line.
//!
//! [`Fetching::Offline`] (`ocellus check`, [`super::PipelineConfig::parse`]) downloads
//! nothing: what is not there yet is taken as it would be without the network.

use std::path::{Path, PathBuf};

use ocellus_io::kinds::PresetEntry;

use super::{ConfigError, KeyPath, Locator};

/// Whether resolving may download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetching {
    /// Fetch what is missing (`ocellus run`, `ocellus replay`), with progress bars or not.
    Download {
        /// Progress bars on the terminal.
        progress: bool,
    },
    /// Use only what is already there.
    Offline,
    /// Fetch what the sources need (sample footage), never model weights: a model whose
    /// weights are not there runs on seeded ones, silently (`ocellus adapt --config` runs only
    /// the sources).
    Sources {
        /// Progress bars on the terminal.
        progress: bool,
    },
}

/// A substitution the pipeline runs with: said in the log and in the recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Where in the configuration (`actor[0].weights`).
    pub key: String,
    /// What runs instead, and why.
    pub text: String,
}

/// The folder official weights are converted into: `OCELLUS_WEIGHTS`, else `weights`.
pub fn weights_dir() -> PathBuf {
    std::env::var_os("OCELLUS_WEIGHTS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("weights"))
}

/// Where sample clips are kept: `OCELLUS_CACHE/samples` (`~/.cache/ocellus/samples`).
pub fn samples_dir() -> PathBuf {
    crate::fetch::cache_dir().join("samples")
}

/// A public sample clip: numbered frames under one URL.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Its name in configurations.
    pub name: &'static str,
    /// The URL of frame `i` is this with `{}` replaced by `i` written on 5 digits.
    pub url: &'static str,
    /// Frames published.
    pub frames: u64,
    /// The rate it is played at.
    pub fps: u32,
    /// What it shows and where it comes from.
    pub about: &'static str,
}

/// The samples `kind = "sample"` knows.
pub const SAMPLES: &[Sample] = &[Sample {
    name: "sam2-bedroom",
    url: "https://raw.githubusercontent.com/facebookresearch/sam2/main/notebooks/videos/bedroom/{}.jpg",
    frames: 200,
    fps: 24,
    about: "the SAM 2 repository's example video (two children in a bedroom), JPEG frames",
}];

/// Resolves every request of `root` (see the module's documentation).
pub(super) fn resolve(root: &mut toml::Table, mode: Fetching, loc: &Locator<'_>) -> Result<Vec<Notice>, ConfigError> {
    let mut r = Resolver { mode, loc, notices: Vec::new() };
    super::each_table(root, &mut |t, at| r.table(t, at))?;
    Ok(r.notices)
}

/// What resolving needs, and the notices so far.
struct Resolver<'a, 'l> {
    mode: Fetching,
    loc: &'a Locator<'l>,
    notices: Vec<Notice>,
}

impl Resolver<'_, '_> {
    /// One table of an entry.
    fn table(&mut self, t: &mut toml::Table, at: &KeyPath) -> Result<(), ConfigError> {
        let is_preset = at.0.len() == 3 && at.0.last() == Some(&super::Seg::Key("preset".into()));
        if is_preset && t.get("kind").and_then(toml::Value::as_str) == Some("sample") {
            self.sample(t, at)?;
        }
        if t.get("weights").and_then(toml::Value::as_str) == Some("official") {
            self.official_weights(t, at)?;
        }
        if t.get("allow_random_smpl").and_then(toml::Value::as_bool) == Some(true) {
            self.smpl(t, at);
        }
        Ok(())
    }

    fn official_weights(&mut self, t: &mut toml::Table, at: &KeyPath) -> Result<(), ConfigError> {
        let loc = self.loc;
        let key = at.key("weights");
        let Some(model) = t.get("model").and_then(toml::Value::as_str).map(str::to_owned) else {
            return Err(loc.error(key, "`\"official\"` weights need the `model` they are of"));
        };
        let known = crate::fetch::known(&model).map_err(|e| loc.error(at.key("model"), e.to_string()))?;
        let path = weights_dir().join(format!("{model}.safetensors"));
        let fallback = t.get("allow_random_weights").and_then(toml::Value::as_bool) == Some(true);
        let sources_only = matches!(self.mode, Fetching::Sources { .. });
        let companions: Vec<String> = t
            .iter()
            .filter(|(k, v)| *k != "weights" && v.as_str() == Some("official"))
            .map(|(k, _)| k.clone())
            .collect();
        let companion_path = |k: &str| -> Option<PathBuf> {
            known
                .companions
                .iter()
                .find(|c| c.suffix.split('.').next() == Some(k))
                .map(|c| path.with_extension(c.suffix))
        };
        for k in &companions {
            if companion_path(k).is_none() {
                return Err(loc.error(at.key(k), format!("{model} has no official `{k}` file")));
            }
        }
        let complete = |p: &Path| p.exists() && companions.iter().filter_map(|k| companion_path(k)).all(|c| c.exists());
        let why_not = if complete(&path) {
            None
        } else {
            match self.mode {
                Fetching::Offline => Some(format!("not fetched yet (`ocellus weights fetch {model}`)")),
                Fetching::Sources { .. } => Some("not fetched for the sources alone".to_owned()),
                Fetching::Download { progress } => {
                    eprintln!("fetching the official {model} weights into {} (once)", path.display());
                    match crate::fetch::fetch(&model, &path, progress) {
                        Ok(_) if complete(&path) => None,
                        Ok(_) => Some("a companion file is missing after the fetch".to_owned()),
                        Err(e) => Some(format!("{e:#}")),
                    }
                }
            }
        };
        match why_not {
            None => {
                t.insert("weights".into(), toml::Value::String(path.display().to_string()));
                t.remove("allow_random_weights");
                for k in &companions {
                    if let Some(c) = companion_path(k) {
                        t.insert(k.clone(), toml::Value::String(c.display().to_string()));
                    }
                }
            }
            Some(why) if fallback || sources_only => {
                t.remove("weights");
                for k in &companions {
                    t.remove(k);
                }
                if sources_only {
                    // Only the sources run: the model is never built, so nothing is said of it.
                    t.insert("allow_random_weights".into(), toml::Value::Boolean(true));
                } else {
                    let seed = t.get("seed").and_then(toml::Value::as_integer).unwrap_or(0);
                    let text = format!(
                        "{model}: SEEDED RANDOM WEIGHTS (seed {seed}), its outputs mean nothing: the official weights: {why}"
                    );
                    self.notices.push(Notice { key: key.to_string(), text });
                }
            }
            Some(why) => {
                let message = format!(
                    "the official {model} weights: {why} (add `allow_random_weights = true` to run on seeded weights instead)"
                );
                return Err(loc.error(key, message));
            }
        }
        Ok(())
    }

    fn smpl(&mut self, t: &mut toml::Table, at: &KeyPath) {
        match t.get("smpl").and_then(toml::Value::as_str).map(PathBuf::from) {
            Some(p) if p.exists() => {
                t.remove("allow_random_smpl");
            }
            given => {
                t.remove("smpl");
                let wanted =
                    given.map_or_else(|| "no `smpl` file given".to_owned(), |p| format!("{} not found", p.display()));
                let text = format!(
                    "SMPL: a SEEDED STAND-IN BODY MODEL ({wanted}): bodies and actions mean nothing. SMPL is licensed: \
register at smpl.is.tue.mpg.de, then `ocellus weights import --model smpl --from SMPL_NEUTRAL.pkl --extra-regressor \
SMPL_to_J19.pkl`"
                );
                self.notices.push(Notice { key: at.key("smpl").to_string(), text });
            }
        }
    }

    fn sample(&mut self, preset: &mut toml::Table, at: &KeyPath) -> Result<(), ConfigError> {
        let loc = self.loc;
        // The preset's own type checks its keys (the fallback's too) before anything is fetched.
        let PresetEntry::Sample { name, frames, .. } = loc.typed(at, toml::Value::Table(preset.clone()))? else {
            return Ok(());
        };
        let Some(s) = SAMPLES.iter().find(|s| s.name == name) else {
            let names: Vec<&str> = SAMPLES.iter().map(|s| s.name).collect();
            return Err(loc.error(at.key("name"), format!("no sample {name:?} (known: {})", names.join(", "))));
        };
        let frames = match frames {
            None => s.frames,
            Some(n) if (1..=s.frames).contains(&n) => n,
            Some(_) => return Err(loc.error(at.key("frames"), format!("{name} has 1 to {} frames", s.frames))),
        };
        let fallback = match preset.get("fallback") {
            Some(toml::Value::Table(f)) => Some(f.clone()),
            _ => None,
        };
        let dir = samples_dir().join(s.name);
        let frame = |i: u64| dir.join(format!("{i:05}.jpg"));
        let have = |n: u64| (0..n).all(|i| frame(i).exists());
        let why_not = if have(frames) {
            None
        } else {
            match self.mode {
                Fetching::Offline => Some("not fetched yet (`ocellus run` fetches it)".to_owned()),
                Fetching::Download { progress } | Fetching::Sources { progress } => {
                    eprintln!("fetching the {name} sample ({frames} frames, {}) into {}", s.about, dir.display());
                    fetch_frames(s, frames, &dir, progress).err().map(|e| format!("{e:#}"))
                }
            }
        };
        let mut resolved = toml::Table::new();
        match (why_not, fallback) {
            (None, _) => {
                resolved.insert("kind".into(), "file".into());
                resolved.insert("path".into(), toml::Value::String(dir.join("%05d.jpg").display().to_string()));
                resolved.insert("fps".into(), toml::Value::Integer(i64::from(s.fps)));
                resolved.insert("frames".into(), toml::Value::Integer(frames as i64));
            }
            (Some(why), Some(f)) => {
                self.notices.push(Notice {
                    key: at.to_string(),
                    text: format!("the {name} sample could not be had ({why}): the fallback source runs instead"),
                });
                resolved = f;
            }
            (Some(why), None) => {
                return Err(loc.error(
                    at.key("name"),
                    format!("the {name} sample: {why} (a `fallback` preset runs instead when it cannot be had)"),
                ));
            }
        }
        *preset = resolved;
        Ok(())
    }
}

/// Downloads the first `frames` frames of `s` into `dir` (those there are kept).
fn fetch_frames(s: &Sample, frames: u64, dir: &Path, progress: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bar = progress.then(|| indicatif::ProgressBar::new(frames));
    for i in 0..frames {
        let target = dir.join(format!("{i:05}.jpg"));
        if !target.exists() {
            let url = s.url.replace("{}", &format!("{i:05}"));
            crate::fetch::download_to(&crate::fetch::mirrored(&url), None, false, dir)?;
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}
