//! The shard format: what the other stages write and read.
//!
//! - `shard`: the shard file (header, zstd frames, index, footer), read and
//!   written.
//! - `manifest`: what a shard folder holds (`manifest.json`).
//! - `checksum`: xxh3-64 over whole buffers, at the CPU's best vector width.
//! - `set`: a manifest's shard files, checked to be the ones it lists.
//! - `delta`: the left-neighbour delta filter and its fast undo.
//! - `atomic`: files appear under their final name only when complete.
//! - `map_fault`: a mapped shard that shrinks is named, not a silent SIGBUS.

pub mod atomic;
pub mod checksum;
pub mod delta;
pub mod manifest;
pub mod map_fault;
pub mod set;
pub mod shard;
