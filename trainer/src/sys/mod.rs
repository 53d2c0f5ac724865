//! The bottom layer: libtorch and CUDA calls that tch does not wrap, and
//! nothing about models or training.
//!
//! - `cuda`: the CUDA driver and NVRTC, loaded at run time; compiles, loads
//!   and launches our kernels.
//! - `stream`: libtorch's current CUDA stream, which our launches join.
//! - `graph`: one CUDA graph with its capture stream (libtorch's CUDAGraph).
//! - `autograd`: `torch.autograd.grad` with output gradients.
//!
//! `grad_shim.cpp` and `graph_shim.cpp` are the C++ halves of `autograd`
//! and of `stream` + `graph`; `build.rs` compiles them against libtorch.

pub mod autograd;
pub mod cuda;
pub mod graph;
pub mod stream;
