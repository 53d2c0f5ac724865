//! What checking each record's frame checksum costs a reader, measured in
//! one process on one thread: records in a random order (as an epoch reads
//! them, from the page cache of mapped shards), taken in blocks of 100 that
//! go in turn to each way of reading, so that a noisy machine's drift falls
//! on all of them alike.
//!
//! - `zstd only`: the frame decompressed, nothing checked (the reader
//!   before frame checksums);
//! - `hash, then zstd`: the frame checked, then decompressed
//!   (`RecordDecoder::decode_filtered`, what the loader and stats call);
//! - `zstd, then hash`: decompressed first, checked after, while the frame
//!   is still in the CPU's cache.
//!
//! `cargo run --release -p pipeline --example frame_check_cost -- SHARD_DIR [ROUNDS]`
//! (a folder of format-2 `.shard` files).

use std::time::Instant;

use pipeline::format::checksum::xxh3_64;
use pipeline::format::shard::{RecordDecoder, ShardReader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: frame_check_cost SHARD_DIR [ROUNDS]")?;
    let rounds: usize = args.next().map_or(Ok(5), |r| r.parse())?;
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|x| x == "shard") {
            shards.push(ShardReader::open(&path)?.map_frames()?);
        }
    }
    let mut ids: Vec<(usize, usize)> = shards
        .iter()
        .enumerate()
        .flat_map(|(s, shard)| (0..shard.len()).map(move |i| (s, i)))
        .collect();
    pipeline::rng::SplitMix64::new(1).shuffle(&mut ids);
    let image_len = shards.first().ok_or("no shards")?.header().image_len();
    let mut zstd = zstd::bulk::Decompressor::new()?;
    let mut decoder = RecordDecoder::new()?;
    let mut out = vec![0u8; image_len];
    let mut frame_buffer = Vec::new();
    println!("{} records, {} shards", ids.len(), shards.len());
    for round in 0..rounds {
        let mut seconds = [0f64; 3];
        let mut records = [0usize; 3];
        for (k, block) in ids.chunks(100).enumerate() {
            let way = (k + round) % 3;
            let started = Instant::now();
            for &(s, i) in block {
                let shard = &shards[s];
                match way {
                    0 => {
                        let frame = shard.read_frame(i, &mut frame_buffer)?;
                        zstd.decompress_to_buffer(frame, &mut out)?;
                    }
                    1 => {
                        decoder.decode_filtered(shard, i, &mut out)?;
                    }
                    _ => {
                        let frame = shard.read_frame(i, &mut frame_buffer)?;
                        zstd.decompress_to_buffer(frame, &mut out)?;
                        if Some(xxh3_64(frame)) != shard.records()[i].frame_checksum {
                            return Err(format!("record {i} of shard {s} is damaged").into());
                        }
                    }
                }
            }
            seconds[way] += started.elapsed().as_secs_f64();
            records[way] += block.len();
        }
        let us = |w: usize| seconds[w] / records[w] as f64 * 1e6;
        println!(
            "round {round}: zstd only {:.1} us; hash, then zstd {:.1} us ({:+.1}%); \
             zstd, then hash {:.1} us ({:+.1}%)",
            us(0),
            us(1),
            100.0 * (us(1) / us(0) - 1.0),
            us(2),
            100.0 * (us(2) / us(0) - 1.0)
        );
    }
    Ok(())
}
