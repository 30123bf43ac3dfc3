//! `make install` (`scripts/package PREFIX BINARY`): a relocatable tree. The installed binary,
//! run from another folder with an empty environment (no venv on the path, no
//! `VIRTUAL_ENV`, no `LD_LIBRARY_PATH`, a home without Ocellus's cache), loads libtorch and
//! ONNX Runtime from the tree and nothing from the build venv.
#![allow(clippy::unwrap_used)] // tests may unwrap, helpers included

use std::path::Path;
use std::process::Command;

#[test]
fn the_installed_tree_runs_anywhere_without_the_venv() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("install");
    std::fs::remove_dir_all(&root).ok();
    let prefix = root.join("opt/ocellus");
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/package");
    let out = Command::new(&script).arg(&prefix).arg(env!("CARGO_BIN_EXE_ocellus")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bin = prefix.join("bin/ocellus");
    let prefix = std::fs::canonicalize(&prefix).unwrap();

    // Every libtorch / CUDA library resolves inside the tree.
    let ldd = Command::new("ldd").arg(&bin).env_clear().output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    assert!(!ldd.contains("not found"), "{ldd}");
    for line in ldd.lines().filter(|l| l.contains("libtorch") || l.contains("libc10")) {
        let path = line.split("=>").nth(1).unwrap().split_whitespace().next().unwrap();
        let path = std::fs::canonicalize(path).unwrap();
        assert!(path.starts_with(&prefix), "{line}");
    }

    // It runs from elsewhere with nothing in its environment, and finds ONNX Runtime in the tree.
    let run = Command::new(&bin)
        .arg("info")
        .current_dir(&elsewhere)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &elsewhere)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("libtorch:"), "{stdout}");
    let ort = stdout.lines().find(|l| l.starts_with("onnxruntime:")).unwrap();
    assert!(ort.contains(prefix.join("lib/ocellus/libonnxruntime.so").to_str().unwrap()), "{ort}");
    assert!(stdout.contains("actions"), "the node kinds: {stdout}");
}
