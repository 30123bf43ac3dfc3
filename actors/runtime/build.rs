//! Bake libtorch's folder into this crate's test and binary targets as an rpath, and keep
//! `libtorch` (and so CUDA) linked even though no symbol of it is used directly.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
