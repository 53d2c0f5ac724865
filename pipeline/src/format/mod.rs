//! The shard format: what the other stages write and read.
//!
//! - `shard`: the shard file (header, zstd frames, index, footer), read and
//!   written.
//! - `manifest`: what a shard folder holds (`manifest.json`).
//! - `delta`: the left-neighbour delta filter and its fast undo.
//! - `atomic`: files appear under their final name only when complete.
//! - `map_fault`: a mapped shard that shrinks is named, not a silent SIGBUS.

pub mod atomic;
pub mod delta;
pub mod manifest;
pub mod map_fault;
pub mod shard;
