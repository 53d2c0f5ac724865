//! The bottom layer: libtorch and CUDA calls that tch does not wrap, and
//! nothing about models or training.
//!
//! - `cuda`: the CUDA driver and NVRTC, loaded at run time; compiles, loads
//!   and launches our kernels.
//! - `stream`: libtorch's current CUDA stream, which our launches join.
//! - `graph`: one CUDA graph with its capture stream (libtorch's CUDAGraph).
//! - `autograd`: `torch.autograd.grad` with output gradients.
//! - `dist`: c10d's TCPStore and process groups (Gloo, NCCL).
//!
//! `grad_shim.cpp`, `graph_shim.cpp` and `dist_shim.cpp` (+ `nccl_shim.cpp`)
//! are the C++ halves of `autograd`, of `stream` + `graph`, and of `dist`;
//! `build.rs` compiles them against libtorch.

pub mod autograd;
pub mod cuda;
pub mod dist;
pub mod graph;
pub mod stream;
