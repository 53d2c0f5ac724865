//! Links the trainer so that it runs without LD_LIBRARY_PATH and sees CUDA.
//!
//! torch-sys tells its dependents where libtorch is (DEP_TCH_LIBTORCH_LIB).
//! We add that folder as an rpath, and link libtorch_cuda with
//! --no-as-needed: nothing in our code names a CUDA symbol, so the linker
//! would otherwise drop the library and libtorch would silently report no
//! CUDA device (the CUDA backend registers itself when the library loads).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // Where to look for the NVRTC that matches this libtorch when the
    // process has not mapped libtorch from elsewhere (fused_lrn/cuda.rs).
    println!("cargo:rustc-env=TRAINER_LIBTORCH_LIB={lib}");
    let dir = std::path::Path::new(&lib);
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
