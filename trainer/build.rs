//! Links the trainer so that it runs without LD_LIBRARY_PATH and sees CUDA.
//!
//! torch-sys tells its dependents where libtorch is (DEP_TCH_LIBTORCH_LIB).
//! We add that folder as an rpath, and link libtorch_cuda with
//! --no-as-needed: nothing in our code names a CUDA symbol, so the linker
//! would otherwise drop the library and libtorch would silently report no
//! CUDA device (the CUDA backend registers itself when the library loads).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(trainer_cuda_graphs)");
    println!("cargo::rustc-check-cfg=cfg(trainer_c10d)");
    println!("cargo::rustc-check-cfg=cfg(trainer_nccl)");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    compile_grad_shim(std::path::Path::new(&lib));
    compile_graph_shim(std::path::Path::new(&lib));
    compile_dist_shim(std::path::Path::new(&lib));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // Where to look for the NVRTC that matches this libtorch when the
    // process has not mapped libtorch from elsewhere (sys/cuda.rs).
    println!("cargo:rustc-env=TRAINER_LIBTORCH_LIB={lib}");
    let dir = std::path::Path::new(&lib);
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// `src/sys/grad_shim.cpp`: autograd with output gradients (src/sys/autograd.rs).
fn compile_grad_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/sys/grad_shim.cpp");
    let torch = lib.parent().expect("torch/lib has a parent");
    if !torch.join("include").exists() {
        panic!("no libtorch headers beside {}", lib.display());
    }
    let mut build = libtorch_cpp(torch);
    build.file("src/sys/grad_shim.cpp");
    compile(&build, "trainer_grad_shim");
}

/// Compiles and links a shim, except under `cargo clippy`: clippy-driver
/// compiles the workspace's build scripts too, so clippy's run of this script
/// is one of its own, not the one `cargo build` and `cargo test` share, and
/// a lint links nothing. Compiling the shims there too would cost `make
/// test` (clippy, then the tests) a minute or two of C++ for nothing. The
/// cfgs are printed either way, so clippy lints the code the build compiles.
fn compile(build: &cc::Build, name: &str) {
    if !linting_only() {
        build.compile(name);
    }
}

fn linting_only() -> bool {
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    std::env::var_os("RUSTC_WORKSPACE_WRAPPER").is_some_and(|wrapper| {
        std::path::Path::new(&wrapper)
            .file_stem()
            .is_some_and(|stem| stem.to_string_lossy().starts_with("clippy-driver"))
    })
}

/// A C++ build against libtorch's headers, set up as torch-sys builds its
/// own: C++17, the libstdc++ ABI of the PyTorch wheels (new unless
/// LIBTORCH_CXX11_ABI says otherwise).
fn libtorch_cpp(torch: &std::path::Path) -> cc::Build {
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        // No -g: debug info for code that includes libtorch's headers is
        // large and slow to write (a third of the compile), and perf names
        // the shims' functions from their symbols anyway.
        .debug(false)
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT");
    build
}

/// `src/sys/graph_shim.cpp`: CUDA-graph capture (src/sys/graph.rs).
/// libtorch's CUDA headers include CUDA's, and the PyTorch wheel ships only
/// part of those:
/// `make setup-torch` adds `crt/` and `nv/target` (nvidia-cuda-crt,
/// nvidia-cuda-cccl). Without them the trainer builds without graphs
/// (`--cuda-graph` then says so), and without CUDA at all it never needs them.
fn compile_graph_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/sys/graph_shim.cpp");
    let torch = lib.parent().expect("torch/lib has a parent");
    let Some(cuda_include) = cuda_include(torch) else {
        println!("cargo:warning=no CUDA headers beside libtorch (make setup-torch): building without --cuda-graph");
        return;
    };
    println!("cargo:rerun-if-changed={}", cuda_include.display());
    let mut build = libtorch_cpp(torch);
    build
        .include(&cuda_include)
        .flag("-Wno-interference-size")
        .file("src/sys/graph_shim.cpp");
    compile(&build, "trainer_graph_shim");
    // libtorch's stream functions live in libc10_cuda, beside libtorch.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-lc10_cuda");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
    println!("cargo:rustc-cfg=trainer_cuda_graphs");
}

/// `site-packages/nvidia/<package>/include` holding both the runtime API and
/// `crt/host_config.h`, for the libtorch of a PyTorch wheel.
fn cuda_include(torch: &std::path::Path) -> Option<std::path::PathBuf> {
    let nvidia = torch.parent()?.join("nvidia");
    std::fs::read_dir(nvidia)
        .ok()?
        .flatten()
        .map(|e| e.path().join("include"))
        .find(|i| {
            ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"]
                .iter()
                .all(|f| i.join(f).exists())
        })
}

/// `src/sys/dist_shim.cpp` (+ `nccl_shim.cpp`): c10d's TCPStore and process
/// groups (src/sys/dist.rs). libtorch's ProcessGroupGloo.hpp includes Gloo's
/// headers, which the PyTorch wheel leaves out: `make setup-gloo` installs
/// them and names the folder in TRAINER_GLOO_INCLUDE. Without them the
/// trainer builds for one process only (a distributed launch then says
/// so). NCCL needs CUDA's headers (as the graph shim) and the wheel's nccl.h.
fn compile_dist_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=src/sys/dist_shim.cpp");
    println!("cargo:rerun-if-changed=src/sys/nccl_shim.cpp");
    println!("cargo:rerun-if-changed=src/sys/nccl_stub.cpp");
    println!("cargo:rerun-if-env-changed=TRAINER_GLOO_INCLUDE");
    let torch = lib.parent().expect("torch/lib has a parent");
    let gloo = std::env::var_os("TRAINER_GLOO_INCLUDE").map(std::path::PathBuf::from);
    let Some(gloo) = gloo.filter(|g| g.join("gloo/algorithm.h").exists()) else {
        println!("cargo:warning=no Gloo headers (make setup-gloo): building without data-parallel training");
        return;
    };
    let mut build = libtorch_cpp(torch);
    build
        .include(&gloo)
        .define("USE_C10D_GLOO", None)
        .file("src/sys/dist_shim.cpp");
    let nccl = cuda_include(torch).zip(nccl_include(torch));
    match &nccl {
        Some((cuda, nccl)) => {
            build
                .include(cuda)
                .include(nccl)
                .define("USE_C10D_NCCL", None)
                .flag("-Wno-interference-size")
                .file("src/sys/nccl_shim.cpp");
            println!("cargo:rustc-cfg=trainer_nccl");
        }
        None => {
            build.file("src/sys/nccl_stub.cpp");
        }
    }
    compile(&build, "trainer_dist_shim");
    println!("cargo:rustc-cfg=trainer_c10d");
}

/// `site-packages/nvidia/nccl/include` (nccl.h) for a PyTorch wheel's libtorch.
fn nccl_include(torch: &std::path::Path) -> Option<std::path::PathBuf> {
    let include = torch.parent()?.join("nvidia/nccl/include");
    include.join("nccl.h").exists().then_some(include)
}
