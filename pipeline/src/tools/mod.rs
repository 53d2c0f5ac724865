//! Tools over a finished shard folder.
//!
//! - `inspect`: `pipeline verify` (every record's checksum) and `pipeline
//!   export` (one record as PNG), and the zstd ceilings the benchmarks
//!   compare against.
//! - `loader_bench`: `pipeline bench`'s measurement of the loader.
//! - `sheet`: a contact sheet of one augmented batch (PNG).

pub mod inspect;
pub mod loader_bench;
pub mod sheet;
