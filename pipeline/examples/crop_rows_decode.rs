//! Whether decoding only the rows a training crop reads pays, measured in
//! one process on one thread.
//!
//! A zstd frame decodes front to back, so a reader can stop after the last
//! row its crop needs (y + 224 of 256, y uniform in 0..=32) only if the
//! frame's blocks end before that row. With zstd's default 128 KiB blocks
//! a 256x256x3 image is two blocks, and every crop needs the second. This
//! re-encodes the first images of a shard (the stored, pixel-filtered
//! bytes, with the shards' level 1 sparse search) at smaller maximum block
//! sizes and times, for each:
//!
//! - `whole`: the frame decompressed in one call (what the loader does);
//! - `crop rows`: zstd's block-by-block API (`ZSTD_decompressContinue`),
//!   stopped once the crop's rows are out.
//!
//! Block sizes take turns within each round, so that a noisy machine's
//! drift falls on all of them alike; the table has medians.
//!
//! `cargo run --release -p pipeline --example crop_rows_decode -- SHARD [IMAGES] [ROUNDS]`

use std::time::Instant;

use pipeline::format::shard::{MatchSearch, RecordDecoder, ShardReader};
use pipeline::rng::SplitMix64;
use zstd::zstd_safe::{zstd_sys, CParameter};

const SIDE: usize = 256;
const CROP: usize = 224;
const ROW: usize = SIDE * 3;

type Error = Box<dyn std::error::Error>;

fn compress(image: &[u8], max_block: Option<u32>) -> Result<Vec<u8>, Error> {
    let mut c = MatchSearch::Sparse.compressor(1)?;
    if let Some(bytes) = max_block {
        c.set_parameter(CParameter::MaxBlockSize(bytes))?;
    }
    Ok(c.compress(image)?)
}

/// Decodes blocks of `frame` into `out` until at least `need` bytes are
/// out; returns how many are.
struct BlockDecoder(*mut zstd_sys::ZSTD_DCtx);

impl BlockDecoder {
    fn new() -> Self {
        // SAFETY: a fresh context, freed in Drop.
        Self(unsafe { zstd_sys::ZSTD_createDCtx() })
    }

    fn decode_until(&mut self, frame: &[u8], out: &mut [u8], need: usize) -> Result<usize, Error> {
        // SAFETY: every call gets this context, `frame` from `read` on,
        // exactly the size zstd asked for (bounded by the frame's end), and
        // `out` from `written` on with its remaining capacity.
        unsafe {
            check(zstd_sys::ZSTD_decompressBegin(self.0))?;
            let (mut read, mut written) = (0, 0);
            while written < need {
                let n = zstd_sys::ZSTD_nextSrcSizeToDecompress(self.0);
                if n == 0 || read + n > frame.len() {
                    break;
                }
                written += check(zstd_sys::ZSTD_decompressContinue(
                    self.0,
                    out.as_mut_ptr().add(written).cast(),
                    out.len() - written,
                    frame.as_ptr().add(read).cast(),
                    n,
                ))?;
                read += n;
            }
            Ok(written)
        }
    }
}

impl Drop for BlockDecoder {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once.
        unsafe { zstd_sys::ZSTD_freeDCtx(self.0) };
    }
}

fn check(code: usize) -> Result<usize, Error> {
    // SAFETY: ZSTD_isError and ZSTD_getErrorName take any code.
    if unsafe { zstd_sys::ZSTD_isError(code) } != 0 {
        let name = unsafe { std::ffi::CStr::from_ptr(zstd_sys::ZSTD_getErrorName(code)) };
        return Err(format!("zstd: {}", name.to_string_lossy()).into());
    }
    Ok(code)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: crop_rows_decode SHARD [IMAGES] [ROUNDS]")?;
    let images: usize = args.next().map_or(Ok(400), |n| n.parse())?;
    let rounds: usize = args.next().map_or(Ok(7), |n| n.parse())?;
    let shard = ShardReader::open(std::path::Path::new(&path))?;
    let mut decoder = RecordDecoder::new()?;
    let mut stored = Vec::new();
    for i in 0..images.min(shard.len()) {
        let mut pixels = vec![0u8; SIDE * SIDE * 3];
        decoder.decode_filtered(&shard, i, &mut pixels)?;
        stored.push(pixels);
    }
    let mut rng = SplitMix64::new(1);
    let needs: Vec<usize> = stored
        .iter()
        .map(|_| (rng.below((SIDE - CROP + 1) as u64) as usize + CROP) * ROW)
        .collect();

    let sizes = [None, Some(65536), Some(32768), Some(16384), Some(8192)];
    let mut frames = Vec::new();
    for &size in &sizes {
        let encoded: Result<Vec<_>, _> = stored.iter().map(|p| compress(p, size)).collect();
        frames.push(encoded?);
    }
    let mut out = vec![0u8; SIDE * SIDE * 3];
    let mut whole = zstd::bulk::Decompressor::new()?;
    let mut blocks = BlockDecoder::new();
    for (frame, need) in frames.iter().flat_map(|f| f.iter().zip(&needs)).take(50) {
        blocks.decode_until(frame, &mut out, *need)?;
    }
    let (mut t_whole, mut t_rows) = (vec![vec![]; sizes.len()], vec![vec![]; sizes.len()]);
    for _ in 0..rounds {
        for (s, set) in frames.iter().enumerate() {
            let t = Instant::now();
            for frame in set {
                whole.decompress_to_buffer(&frame[..], &mut out[..])?;
            }
            t_whole[s].push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for (frame, &need) in set.iter().zip(&needs) {
                blocks.decode_until(frame, &mut out, need)?;
            }
            t_rows[s].push(t.elapsed().as_secs_f64());
        }
    }
    // The crop rows must be the image's rows.
    for (s, set) in frames.iter().enumerate() {
        for (k, frame) in set.iter().enumerate() {
            let n = blocks.decode_until(frame, &mut out, needs[k])?;
            if n < needs[k] || out[..needs[k]] != stored[k][..needs[k]] {
                return Err(format!("block size {:?}: image {k} decodes wrong", sizes[s]).into());
            }
        }
    }
    let n = stored.len() as f64;
    let base = n / median(t_whole[0].clone());
    println!(
        "{} images of {path}, {rounds} rounds, medians, one thread",
        stored.len()
    );
    println!(
        "max block | bytes/image | whole img/s | crop rows img/s | crop rows vs whole default"
    );
    for (s, size) in sizes.iter().enumerate() {
        let bytes: usize = frames[s].iter().map(Vec::len).sum();
        let (w, r) = (
            n / median(t_whole[s].clone()),
            n / median(t_rows[s].clone()),
        );
        let label = size.map_or("128 KiB (default)".to_string(), |b| {
            format!("{} KiB", b / 1024)
        });
        println!(
            "{label} | {:.0} | {w:.0} | {r:.0} | {:.3}",
            bytes as f64 / n,
            r / base
        );
    }
    Ok(())
}
