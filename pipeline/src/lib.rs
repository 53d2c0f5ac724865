//! alexnet-rs pipeline: ImageNet from its JPEG tree into zstd shards, the
//! dataset statistics, and the loader that feeds the trainer.
//!
//! Modules, one idea each:
//! - [`codec`]: one source file -> one 256x256 RGB image (decode, resample).
pub mod codec;
