//! Prefers Debian's single-threaded OpenBLAS at run time, when installed.
//!
//! `pipeline stats` needs LAPACK for one 3x3 eigendecomposition. The
//! pthread OpenBLAS that `libopenblas.so.0` usually resolves to starts its
//! worker threads when the library loads, and they spin on sched_yield for
//! ~0.1 s before sleeping: a whole core taken from a stats pass that lasts
//! about a second per 4,000 images (measured: 0.95 -> 0.81 CPU seconds for
//! such a pass with the serial build). The serial build (apt package
//! libopenblas0-serial, which `make setup` installs) has the same ABI, so an
//! rpath to its folder, searched before the system's default, is enough; if
//! the folder is missing, the usual library is used.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The target's library folder, not the host's: a cross build for
    // aarch64 on x86-64 must not point its rpath at x86-64 libraries.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let serial = [
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib64".into(),
        "/usr/lib".into(),
    ]
    .iter()
    .map(|dir| std::path::Path::new(dir).join("openblas-serial"))
    .find(|dir| dir.join("libopenblas.so.0").exists());
    if let Some(dir) = serial {
        println!("cargo:rerun-if-changed={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
}
