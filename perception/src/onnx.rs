//! The ONNX Runtime backend, loaded dynamically (`ort` feature `load-dynamic`).
//!
//! The library is looked up in this order: `ORT_DYLIB_PATH`; `../lib/ocellus/` next to the
//! executable (an install made by `scripts/package`); the `libonnxruntime.so.*` that
//! `scripts/bootstrap` installed into the venv (its path is baked in at build time); the
//! `onnxruntime` package of the active `VIRTUAL_ENV`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
        .map(|(info, _env)| info)
        .map_err(|e| PerceptionError::Onnx(e.clone()))
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
