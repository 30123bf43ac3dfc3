//! Bake libtorch's folder into this crate's test and binary targets as an rpath, and keep
//! `libtorch` (and so CUDA) linked even though no symbol of it is used directly. The binary
//! looks first in `$ORIGIN/../lib/ocellus/torch/lib`: the relocatable tree `scripts/package`
//! (`make install`) makes, which then needs no venv.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/../lib/ocellus/torch/lib");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
