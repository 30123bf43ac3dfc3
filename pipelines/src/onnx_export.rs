//! `ocellus weights export-onnx`: an image encoder (Hiera, SAM 2's HieraDet + FPN neck, a CLIP
//! image tower) exported to ONNX from its official PyTorch module, then checked against
//! Ocellus's own forward through ONNX Runtime.
//!
//! The export runs `python/export_onnx.py` (embedded in the binary) in a Python that has torch,
//! onnx and the model's reference package: the bootstrap venv, or any given with `--python`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use ocellus_kernels::DType;
use ocellus_perception::backbone::Backbone;
use ocellus_perception::clip::Clip;
use ocellus_perception::model::{Model, ModelSpec, WeightsSource};
use ocellus_perception::onnx::{OnnxModel, OnnxOptions};
use tch::{Device, Kind, Tensor};

/// The exporter, run by the Python that has the reference packages.
const EXPORT_SCRIPT: &str = include_str!("../python/export_onnx.py");
/// ONNX opset of exported models (ONNX Runtime 1.31 runs up to 23).
pub const DEFAULT_OPSET: i64 = 17;
/// Seed of the input the export is checked on.
const CHECK_SEED: i64 = 0;

/// What was exported and how close it is to the native forward.
#[derive(Debug)]
pub struct Exported {
    /// Output names and shapes, in the model's order.
    pub outputs: Vec<(String, Vec<i64>)>,
    /// Max abs difference to Ocellus's own forward on a seeded input (f32, CPU).
    pub max_abs_error: f64,
}

/// The Python the exporter runs with: `given`, `OCELLUS_PYTHON`, the bootstrap venv, or
/// `python3`.
pub fn python(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("OCELLUS_PYTHON").filter(|p| !p.is_empty()).map(PathBuf::from))
        .or_else(ocellus_perception::weights::venv_python)
        .unwrap_or_else(|| "python3".into())
}

/// The native model an export is checked against.
enum Native {
    Backbone(ocellus_perception::model::Loaded<Backbone>),
    Clip(Box<ocellus_perception::model::Loaded<Clip>>),
}

impl Native {
    fn load(model: &str, weights: &Path) -> anyhow::Result<Self> {
        let spec = ModelSpec {
            name: model.to_owned(),
            weights: WeightsSource::File(weights.to_path_buf()),
            device: Device::Cpu,
            dtype: DType::F32,
        };
        if Clip::names().contains(&model) {
            Ok(Self::Clip(Box::new(spec.load::<Clip>()?)))
        } else if Backbone::names().contains(&model) {
            Ok(Self::Backbone(spec.load::<Backbone>()?))
        } else {
            bail!(
                "export-onnx exports image encoders: {} (not {model:?})",
                [Backbone::names(), Clip::names()].concat().join(", ")
            )
        }
    }

    /// `(T,) H, W` of the model's own input.
    fn input_size(&self) -> Vec<i64> {
        match self {
            Self::Backbone(b) => b.input_size().to_vec(),
            Self::Clip(c) => {
                let side = c.config().vision_cfg.image_size;
                vec![side, side]
            }
        }
    }

    fn forward(&self, x: &Tensor) -> anyhow::Result<Vec<Tensor>> {
        Ok(match self {
            Self::Backbone(b) => b.forward(x)?,
            Self::Clip(c) => vec![tch::no_grad(|| c.encode_image(x))?],
        })
    }
}

/// The exporter written out for Python, removed when dropped.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn write() -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ocellus-export-onnx-{}-{n}.py", std::process::id()));
        std::fs::write(&path, EXPORT_SCRIPT).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Exports `model` with `weights` to `out` at `resolution` (`H, W`; the model's own when
/// `None`), then runs the file through ONNX Runtime and compares it with the native forward.
pub fn export(
    model: &str,
    weights: &Path,
    out: &Path,
    resolution: Option<(i64, i64)>,
    python_path: &Path,
    opset: i64,
) -> anyhow::Result<Exported> {
    // The weights are loaded natively first: a wrong or incomplete file is named by key here.
    let native = Native::load(model, weights)?;
    let mut size = native.input_size();
    if let Some((h, w)) = resolution {
        let n = size.len();
        size[n - 2..].copy_from_slice(&[h, w]);
    }
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let script = ScriptFile::write()?;
    let run = Command::new(python_path)
        .arg(&script.0)
        .arg(model)
        .arg(weights)
        .arg(out)
        .args([h.to_string(), w.to_string(), opset.to_string()])
        .env("PYTHONWARNINGS", "ignore")
        .output()
        .with_context(|| format!("running {} (give a Python with torch and onnx: --python)", python_path.display()))?;
    if !run.status.success() {
        let stderr = String::from_utf8_lossy(&run.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("exporting {model} with {} failed ({}):\n{}", python_path.display(), run.status, tail.join("\n"));
    }

    let onnx = OnnxModel::load(out, &OnnxOptions::default())?;
    let mut shape = vec![1, 3];
    shape.extend(&size);
    let x = tch::no_grad(|| {
        tch::manual_seed(CHECK_SEED);
        Tensor::f_randn(shape.as_slice(), (Kind::Float, Device::Cpu))
    })?;
    let expected = native.forward(&x)?;
    let got = onnx.forward(&x)?;
    if expected.len() != got.len() {
        bail!("{}: {} outputs, the native forward has {}", out.display(), got.len(), expected.len());
    }
    let mut max_abs_error = 0f64;
    for (e, g) in expected.iter().zip(&got) {
        if e.size() != g.size() {
            bail!("{}: output {:?}, the native forward gives {:?}", out.display(), g.size(), e.size());
        }
        max_abs_error = max_abs_error.max(e.f_sub(g)?.f_abs()?.f_max()?.f_double_value(&[])?);
    }
    let outputs = onnx.output_names().iter().cloned().zip(got.iter().map(Tensor::size)).collect();
    Ok(Exported { outputs, max_abs_error })
}
