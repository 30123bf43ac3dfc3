//! The ONNX Runtime backend, loaded dynamically (`ort` feature `load-dynamic`).
//!
//! The library is looked up in this order: `ORT_DYLIB_PATH`; `../lib/ocellus/` next to the
//! executable (an install made by `scripts/package`); the `libonnxruntime.so.*` that
//! `scripts/bootstrap` installed into the venv (its path is baked in at build time); the
//! `onnxruntime` package of the active `VIRTUAL_ENV`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use schemars::JsonSchema;
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use tracing::trace_span;

use crate::{PerceptionError, Result};

/// Where the build found ONNX Runtime (empty when it did not).
const BUILD_TIME_DYLIB: &str = env!("OCELLUS_ORT_DYLIB_DEFAULT");

/// What was loaded.
#[derive(Debug, Clone)]
pub struct OnnxRuntimeInfo {
    /// The shared library that was loaded.
    pub path: PathBuf,
    /// ONNX Runtime's own build string (version, commit, flags).
    pub build_info: String,
}

fn venv_dylib(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib).ok()?.flatten().find_map(|python| {
        let capi = python.path().join("site-packages/onnxruntime/capi");
        std::fs::read_dir(capi)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
    })
}

/// The ONNX Runtime library this process would load, if any is found.
pub fn locate_dylib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let installed = std::env::current_exe().ok().and_then(|exe| {
        let lib = exe.parent()?.parent()?.join("lib").join("ocellus");
        std::fs::read_dir(lib)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
    });
    if installed.is_some() {
        return installed;
    }
    let baked = Path::new(BUILD_TIME_DYLIB);
    if !BUILD_TIME_DYLIB.is_empty() && baked.exists() {
        return Some(baked.to_path_buf());
    }
    std::env::var_os("VIRTUAL_ENV").and_then(|v| venv_dylib(Path::new(&v)))
}

/// Loads ONNX Runtime once per process and returns what was loaded.
pub fn init() -> Result<&'static OnnxRuntimeInfo> {
    loaded().map(|(info, _env)| info)
}

/// The runtime and its environment, loaded once per process.
fn loaded() -> Result<&'static (OnnxRuntimeInfo, ort::environment::Environment)> {
    // The environment is kept for the life of the process: ort only holds a weak reference.
    static LOADED: OnceLock<std::result::Result<(OnnxRuntimeInfo, ort::environment::Environment), String>> =
        OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = locate_dylib()
                .ok_or_else(|| "libonnxruntime not found: set ORT_DYLIB_PATH or run scripts/bootstrap".to_owned())?;
            let builder = ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
            let env = builder.with_name("ocellus").build().map_err(|e| format!("creating the environment: {e}"))?;
            Ok((OnnxRuntimeInfo { path, build_info: ort::info().to_owned() }, env))
        })
        .as_ref()
        .map_err(|e| PerceptionError::Onnx(e.clone()))
}

/// `backend = "tch" | "onnx"`: how an actor runs its image encoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Ocellus's own model over libtorch, from safetensors weights.
    #[default]
    Tch,
    /// ONNX Runtime, on a file from `ocellus weights export-onnx` given as `weights`.
    Onnx,
}

/// `optimization = "disable" | "basic" | "extended" | "all"`: ONNX Runtime's graph
/// optimization level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Optimization {
    /// No graph rewrites.
    Disable,
    /// Constant folding and redundant node elimination.
    Basic,
    /// Basic plus node fusions (attention, GELU, layer norm, ...).
    Extended,
    /// Everything, layout optimizations included.
    #[default]
    All,
}

/// `providers = ["tensorrt", "cuda", "cpu"]`: execution providers, tried in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The CPU (always available).
    Cpu,
    /// CUDA (an `onnxruntime-gpu` library and CUDA on the machine).
    Cuda,
    /// TensorRT (as CUDA, plus TensorRT).
    Tensorrt,
}

/// Session options of a model run by ONNX Runtime (`onnx = { ... }` in a config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OnnxOptions {
    /// Intra-op threads (ONNX Runtime's default, one per core, when absent).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Graph optimization level.
    #[serde(default)]
    pub optimization: Optimization,
    /// Execution providers in order of preference; a provider the loaded library lacks is
    /// skipped (the CPU is always the last resort).
    #[serde(default = "OnnxOptions::default_providers")]
    pub providers: Vec<Provider>,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self { threads: None, optimization: Optimization::default(), providers: Self::default_providers() }
    }
}

impl OnnxOptions {
    fn default_providers() -> Vec<Provider> {
        vec![Provider::Cpu]
    }
}

/// An image encoder exported to ONNX that replaces the native one inside a larger model
/// (a labeler's CLIP image tower), with its session options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxEncoder {
    /// The exported file (`ocellus weights export-onnx`).
    pub file: PathBuf,
    /// Session options.
    pub options: OnnxOptions,
}

fn ort_error(path: &Path) -> impl Fn(ort::Error) -> PerceptionError + '_ {
    move |e| PerceptionError::Onnx(format!("{}: {e}", path.display()))
}

/// A model exported to ONNX (`ocellus weights export-onnx`) with one `f32` image input and
/// `f32` outputs, run by ONNX Runtime. Inputs and outputs are tch tensors, so that the
/// actors treat it like the native model it replaces.
pub struct OnnxModel {
    path: PathBuf,
    // `Session::run` takes `&mut self`; a stage runs one forward at a time anyway.
    session: Mutex<Session>,
    input: String,
    input_shape: Vec<i64>,
    outputs: Vec<String>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("input_shape", &self.input_shape)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl OnnxModel {
    /// Loads `path` with `options` (ONNX Runtime is loaded first if needed).
    pub fn load(path: &Path, options: &OnnxOptions) -> Result<Self> {
        let (_, env) = loaded()?;
        if !path.is_file() {
            return Err(PerceptionError::Onnx(format!("{} not found", path.display())));
        }
        let err = ort_error(path);
        let level = match options.optimization {
            Optimization::Disable => GraphOptimizationLevel::Disable,
            Optimization::Basic => GraphOptimizationLevel::Level1,
            Optimization::Extended => GraphOptimizationLevel::Level2,
            Optimization::All => GraphOptimizationLevel::All,
        };
        let providers: Vec<ort::ep::ExecutionProviderDispatch> = options
            .providers
            .iter()
            .map(|p| match p {
                Provider::Cpu => ort::ep::CPU::default().build(),
                Provider::Cuda => ort::ep::CUDA::default().build(),
                Provider::Tensorrt => ort::ep::TensorRT::default().build(),
            })
            .collect();
        let mut builder = Session::builder(env)
            .map_err(&err)?
            .with_optimization_level(level)
            .map_err(|e| err(e.into()))?
            .with_execution_providers(providers)
            .map_err(|e| err(e.into()))?;
        if let Some(n) = options.threads {
            builder = builder.with_intra_threads(n).map_err(|e| err(e.into()))?;
        }
        let session = builder.commit_from_file(path).map_err(&err)?;
        let [input] = session.inputs() else {
            return Err(PerceptionError::Onnx(format!(
                "{}: one image input expected, the model has {}",
                path.display(),
                session.inputs().len()
            )));
        };
        let input_shape: Vec<i64> =
            input.dtype().tensor_shape().map(|s| s.iter().copied().collect()).unwrap_or_default();
        let input_name = input.name().to_owned();
        let outputs = session.outputs().iter().map(|o| o.name().to_owned()).collect();
        Ok(Self { path: path.to_path_buf(), session: Mutex::new(session), input: input_name, input_shape, outputs })
    }

    /// The input shape the model was exported with (`-1` where it is dynamic).
    pub fn input_shape(&self) -> &[i64] {
        &self.input_shape
    }

    /// Whether an input of `shape` fits the exported one (its dynamic axes take any size).
    pub fn accepts(&self, shape: &[i64]) -> bool {
        shape.len() == self.input_shape.len() && shape.iter().zip(&self.input_shape).all(|(&a, &b)| b < 0 || a == b)
    }

    /// The output names, in the model's order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Runs the model on `x` (any kind and device; it is read as `f32`); returns the outputs
    /// in the model's order as `f32` tensors on `x`'s device.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let _span = trace_span!("onnx_forward", model = %self.path.display()).entered();
        let err = ort_error(&self.path);
        let shape = x.size();
        if !self.accepts(&shape) {
            return Err(PerceptionError::Onnx(format!(
                "{}: input {shape:?} does not fit the exported shape {:?}",
                self.path.display(),
                self.input_shape
            )));
        }
        let device = x.device();
        let host = x.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let numel = host.numel();
        let mut data = vec![0f32; numel];
        host.f_copy_data(&mut data, numel)?;
        let value = ort::value::Tensor::from_array((shape.clone(), data)).map_err(&err)?;
        let mut session = self.session.lock().map_err(|_| PerceptionError::Onnx("session poisoned".into()))?;
        let outputs = session.run(ort::inputs![self.input.as_str() => value]).map_err(&err)?;
        self.outputs
            .iter()
            .map(|name| {
                let (shape, values) = outputs[name.as_str()].try_extract_tensor::<f32>().map_err(&err)?;
                let dims: Vec<i64> = shape.iter().copied().collect();
                Ok(Tensor::f_from_slice(values)?.f_view(dims.as_slice())?.f_to_device(device)?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_bootstrapped_runtime() {
        let info = init().expect("ONNX Runtime from the bootstrap venv");
        assert!(info.path.exists());
        assert!(info.build_info.contains("ORT Build Info"), "{}", info.build_info);
    }
}
