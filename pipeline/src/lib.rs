//! alexnet-rs pipeline: ImageNet from its JPEG tree into zstd shards, the
//! dataset statistics, and the loader that feeds the trainer. The folders
//! are the stages:
//!
//! - [`format`]: the shard file and folder format (shard, manifest, delta
//!   filter, atomic writes), which every stage below shares.
//! - [`ingest`]: an ILSVRC tree -> shards (`pipeline shards`): finding the
//!   files, decoding and resampling them (`codec`), writing the shards.
//! - [`stats`]: mean image and RGB PCA (`pipeline stats`).
//! - [`loader`]: the multithreaded prefetching loader (sampler,
//!   augmentation, batch buffers).
//! - [`tools`]: `pipeline verify`, `pipeline export`, `pipeline sheet` and
//!   the zstd ceilings the benchmarks use.
//! - [`progress`]: how long calls report progress (the binaries draw it);
//!   `value_enum!`: a library enum as a binary's command-line value.
//! - [`rng`]: the seeded generator behind every order and augmentation;
//!   `cpu`: which SIMD kernels this CPU runs; `panics`: a worker's panic as
//!   the text of its error.
//!
//! The library has no command-line or terminal concerns; the binary
//! (`src/bin/pipeline/`, a module per command) owns those.
pub mod format;
pub mod ingest;
pub mod loader;
pub mod stats;
pub mod tools;

pub mod cpu;
mod error_line;
pub use error_line::error_line;
mod panics;
pub mod progress;
#[cfg(target_arch = "x86_64")]
mod rgb_split;
pub mod rng;
mod value_enum;
