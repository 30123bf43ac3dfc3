//! Bake libtorch's folder into this crate's test targets as an rpath (and keep `libtorch`, so
//! CUDA, linked), and remember where `scripts/bootstrap` found ONNX Runtime: the built binaries
//! then need no environment (`ORT_DYLIB_PATH` still wins at run time).
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
    println!("cargo:rerun-if-env-changed=OCELLUS_ORT_DYLIB");
    let ort = std::env::var("OCELLUS_ORT_DYLIB").unwrap_or_default();
    println!("cargo:rustc-env=OCELLUS_ORT_DYLIB_DEFAULT={ort}");
}
