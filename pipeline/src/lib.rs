//! alexnet-rs pipeline: ImageNet from its JPEG tree into zstd shards, the
//! dataset statistics, and the loader that feeds the trainer.
//!
//! Modules, one idea each:
//! - [`aligned`]: page-aligned buffers for images and batches.
//! - [`augment`]: crops, mirrors, PCA lighting and mean (paper 4.1).
//! - [`atomic`]: files appear under their final name only when complete.
//! - [`ingest`]: find the images of an ILSVRC tree and their labels.
//! - [`codec`]: one source file -> one 256x256 RGB image (decode, resample).
//! - `cpu`: which SIMD kernels this CPU runs.
//! - [`delta`]: undoing the delta filter fast (SSSE3), for every read.
//! - [`shard`]: the shard file format (read and write).
//! - [`manifest`]: what a shard folder holds.
//! - [`make_shards`]: the `pipeline shards` run (plan, resume, parallel write).
//! - `panics`: a worker's panic as the text of its error.
//! - [`loader`]: the multithreaded prefetching loader.
//! - [`inspect`]: `pipeline verify` and `pipeline export`.
//! - [`stats`]: mean image and RGB PCA (`pipeline stats`).
//! - [`stats_kernel`]: the stats' undo, sums and products in one sweep.
//! - [`sheet`]: a contact sheet of one augmented batch (PNG).
//! - [`sampler`]: which records make which batch, per epoch and rank.
//! - [`rgb_moments`]: RGB sums and products, fast (for stats).
//! - [`rng`]: the seeded generator behind every order and augmentation.
pub mod aligned;
pub mod atomic;
pub mod augment;
pub mod codec;
mod cpu;
pub mod delta;
pub mod ingest;
pub mod inspect;
pub mod loader;
pub mod make_shards;
pub mod manifest;
mod panics;
pub mod rgb_moments;
pub mod rng;
pub mod sampler;
pub mod shard;
pub mod sheet;
pub mod stats;
pub mod stats_kernel;
