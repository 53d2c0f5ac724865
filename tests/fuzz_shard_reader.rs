//! The shard reader under random damage, for a bounded time.
//!
//! Real shard files (written by `ShardWriter`: sparse zstd frames,
//! delta-filtered or not, and raw records) are damaged at random, thousands of ways: bytes
//! flipped anywhere, cut short, grown, header fields set to edge values,
//! and damage inside the index or inside a frame with the checksums that
//! cover it recomputed, so that the index parser, zstd and the delta
//! filter see the damage too and not only the checksum that guards them.
//! Each damaged file is read the way the tools read shards: opened, read
//! through pread and through a memory map, every record decoded with and
//! without the pixel check, through the filtered path the loader and the
//! statistics take, and (raw) where it lies in the map. For any input:
//!
//! - no panic (a panic is a bug: the input is kept under
//!   `target/fuzz-failures/` and named);
//! - no allocation larger than twice the file plus a fixed 1 MiB for
//!   decoder state (a damaged count or length must not reserve what the
//!   file does not hold);
//! - whatever is not an error is what the checksums vouch for.
//!
//! `FUZZ_SECONDS` sets the time (default 15); `FUZZ_SEED` the first seed.
//! `make test` runs it in release mode, like every test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pipeline::format::shard::{
    Codec, MatchSearch, PixelFilter, RecordDecoder, RecordEncoder, ShardHeader, ShardIdentity,
    ShardReader, ShardWriter, Skipped,
};
use pipeline::ingest::Split;
use pipeline::rng::SplitMix64;

/// Records the largest single allocation while `TRACKING` is set.
struct Counting;

static TRACKING: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn note(size: usize) {
        if TRACKING.load(Ordering::Relaxed) {
            LARGEST.fetch_max(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SIDE: u32 = 32;
const IMAGE_LEN: usize = (SIDE * SIDE * 3) as usize;
/// Fixed decoder state an allocation may take beyond the file's size.
const SLACK: usize = 1 << 20;

/// Where the checksums of an intact file sit, to recompute them after
/// damaging what they cover.
struct Places {
    index_offset: usize,
    /// Per record: frame start, frame length, and where its frame checksum
    /// sits in the file.
    frames: Vec<(usize, usize, usize)>,
}

fn image(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    (0..IMAGE_LEN)
        .map(|i| {
            let (x, y) = ((i / 3) as u32 % SIDE, (i / 3) as u32 / SIDE);
            // Gradients (matches for zstd) plus a little noise (literals).
            (x * 5 + y * 3 + (rng.next_u64() % 7) as u32 + (i % 3) as u32 * 40) as u8
        })
        .collect()
}

/// A real shard of 6 records and one skipped file; its bytes and layout.
fn write_shard(dir: &Path, filter: PixelFilter, codec: Codec) -> (Vec<u8>, Places) {
    let header = ShardHeader {
        height: SIDE,
        width: SIDE,
        channels: 3,
        filter,
        zstd_level: 1,
        zstd_search: MatchSearch::Sparse,
        codec,
        plan_id: 99,
        identity: Some(ShardIdentity {
            split: Split::Train,
            number: 1,
            first: 7,
            planned: 7,
        }),
    };
    let path = dir.join(format!("seed-{filter:?}-{codec:?}.shard"));
    let mut encoder = RecordEncoder::new(header).expect("encoder");
    let mut writer = ShardWriter::create(&path, header).expect("create");
    let mut frame = Vec::new();
    for i in 0..6 {
        let checksum = encoder.encode(&image(i), &mut frame).expect("encode");
        writer
            .add(i as u32, &format!("n0/{i}.JPEG"), &frame, checksum)
            .expect("add");
    }
    writer.skip(Skipped {
        path: "n0/bad.JPEG".into(),
        reason: "empty file".into(),
    });
    writer.finish().expect("finish");
    let bytes = std::fs::read(&path).expect("read");
    let reader = ShardReader::open(&path).expect("open");
    let index_offset = u64::from_le_bytes(bytes[bytes.len() - 32..][..8].try_into().unwrap());
    let mut at = index_offset as usize + 4;
    let mut frames = Vec::new();
    for r in reader.records() {
        frames.push((r.offset as usize, r.len as usize, at + 24));
        at += 8 + 4 + 4 + 8 + 8 + 4 + r.name.len();
    }
    let layout = Places {
        index_offset: index_offset as usize,
        frames,
    };
    (bytes, layout)
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    if at + 8 <= bytes.len() {
        bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
}

fn xxh3(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The footer's index checksum, recomputed over the index as it now is.
fn fix_index_checksum(bytes: &mut [u8], layout: &Places) {
    let end = bytes.len().saturating_sub(32);
    if layout.index_offset < end {
        let sum = xxh3(&bytes[layout.index_offset..end]);
        put_u64(bytes, end + 16, sum);
    }
}

/// One random way to damage `seed`'s bytes; returns the damaged bytes and
/// what was done (for the failure message).
fn damage(rng: &mut SplitMix64, seed: &[u8], layout: &Places) -> (Vec<u8>, String) {
    let mut bytes = seed.to_vec();
    let len = bytes.len();
    let edges = [
        0u64,
        1,
        7,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        u64::MAX,
        len as u64,
        len as u64 - 32,
        rng.next_u64(),
    ];
    match rng.below(7) {
        0 => {
            let n = 1 + rng.below(8);
            for _ in 0..n {
                let at = rng.below(len as u64) as usize;
                bytes[at] ^= 1 + rng.below(255) as u8;
            }
            (bytes, format!("{n} bytes flipped"))
        }
        1 => {
            let keep = rng.below(len as u64) as usize;
            bytes.truncate(keep);
            (bytes, format!("cut to {keep} bytes"))
        }
        2 => {
            let at = rng.below(len as u64) as usize;
            let n = 1 + rng.below(300) as usize;
            let insert: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            bytes.splice(at..at, insert);
            (bytes, format!("{n} bytes inserted at {at}"))
        }
        3 => {
            // A header field (the header has no checksum of its own).
            let at = 4 * rng.below(20) as usize;
            let value = edges[rng.below(edges.len() as u64) as usize];
            if rng.below(2) == 0 {
                bytes[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
            } else {
                put_u64(&mut bytes, at, value);
            }
            (bytes, format!("header field at {at} set to {value}"))
        }
        4 => {
            // A footer field.
            let at = len - 32 + 8 * rng.below(3) as usize;
            let value = edges[rng.below(edges.len() as u64) as usize];
            put_u64(&mut bytes, at, value);
            (bytes, format!("footer field at {at} set to {value}"))
        }
        5 => {
            // Inside the index, its checksum made to match again.
            let index_len = len - 32 - layout.index_offset;
            let n = 1 + rng.below(6);
            for _ in 0..n {
                let at = layout.index_offset + rng.below(index_len as u64) as usize;
                let value = edges[rng.below(edges.len() as u64) as usize];
                match rng.below(3) {
                    0 => bytes[at] ^= 1 + rng.below(255) as u8,
                    1 => {
                        let at = at.min(len - 32 - 4);
                        bytes[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
                    }
                    _ => {
                        // A record's 64-bit offset (24 bytes before its
                        // frame checksum), near the top of its range too.
                        let record = rng.below(layout.frames.len() as u64) as usize;
                        let value = value.wrapping_sub(rng.below(2) * rng.below(256));
                        put_u64(&mut bytes, layout.frames[record].2 - 24, value);
                    }
                }
            }
            fix_index_checksum(&mut bytes, layout);
            (bytes, format!("{n} index edits, index checksum fixed"))
        }
        _ => {
            // Inside a frame, its frame checksum and the index checksum
            // made to match again: zstd and the filter see the damage.
            let record = rng.below(layout.frames.len() as u64) as usize;
            let (start, flen, sum_at) = layout.frames[record];
            let n = 1 + rng.below(4);
            for _ in 0..n {
                let at = start + rng.below(flen as u64) as usize;
                bytes[at] ^= 1 + rng.below(255) as u8;
            }
            let sum = xxh3(&bytes[start..start + flen]);
            put_u64(&mut bytes, sum_at, sum);
            fix_index_checksum(&mut bytes, layout);
            (
                bytes,
                format!("record {record}: {n} frame bytes, checksums fixed"),
            )
        }
    }
}

/// Reads `path` every way the tools do. Errors are fine; what is not an
/// error must be what the checksums vouch for.
fn read_everything(path: &Path) {
    let Ok(shard) = ShardReader::open(path) else {
        return;
    };
    let mapped = ShardReader::open(path).and_then(ShardReader::map_frames);
    let mut decoder = RecordDecoder::new().expect("decoder");
    // The buffer's size comes from the manifest (trusted), not the header.
    let mut pixels = vec![0u8; IMAGE_LEN];
    for shard in std::iter::once(shard).chain(mapped) {
        let _ = shard.check_records(IMAGE_LEN);
        for i in 0..shard.len() {
            if decoder.decode(&shard, i, &mut pixels, true).is_ok() {
                let sum = xxhash_rust::xxh3::xxh3_64(&pixels);
                assert_eq!(sum, shard.records()[i].checksum, "verified pixels");
            }
            let _ = decoder.decode(&shard, i, &mut pixels, false);
            let _ = decoder.decode_filtered(&shard, i, &mut pixels);
            if let Some(Ok(stored)) = shard.mapped_pixels(i, true) {
                let sum = xxhash_rust::xxh3::xxh3_64(stored);
                assert_eq!(sum, shard.records()[i].checksum, "verified raw pixels");
            }
        }
    }
}

fn seconds() -> u64 {
    std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

fn keep_failure(bytes: &[u8], name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    let _ = std::fs::write(&path, bytes);
    path
}

#[test]
fn random_damage_never_panics_or_over_allocates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds = [
        write_shard(dir.path(), PixelFilter::Delta, Codec::Zstd),
        write_shard(dir.path(), PixelFilter::None, Codec::Zstd),
        write_shard(dir.path(), PixelFilter::None, Codec::Raw),
    ];
    let first_seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let path = dir.path().join("damaged.shard");
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let mut cases = 0u64;
    let mut opened = 0u64;
    while Instant::now() < deadline {
        let seed = first_seed + cases;
        let mut rng = SplitMix64::new(seed);
        let (original, layout) = &seeds[(seed % seeds.len() as u64) as usize];
        let (bytes, what) = damage(&mut rng, original, layout);
        std::fs::write(&path, &bytes).expect("write");
        if ShardReader::open(&path).is_ok() {
            opened += 1;
        }
        LARGEST.store(0, Ordering::Relaxed);
        TRACKING.store(true, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| read_everything(&path)));
        TRACKING.store(false, Ordering::Relaxed);
        if let Err(panic) = outcome {
            let kept = keep_failure(&bytes, &format!("seed-{seed}.shard"));
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "seed {seed} ({what}): panic {text:?}; input kept in {}",
                kept.display()
            );
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        if largest > 2 * bytes.len() + SLACK {
            let kept = keep_failure(&bytes, &format!("seed-{seed}.shard"));
            panic!(
                "seed {seed} ({what}): an allocation of {largest} bytes for a file of {}; \
                 input kept in {}",
                bytes.len(),
                kept.display()
            );
        }
        cases += 1;
    }
    eprintln!("{cases} damaged shard files read, {opened} of them opened");
    assert!(cases >= 200, "only {cases} cases in the time given");
    assert!(
        opened > cases / 10,
        "too few inputs got past open: {opened}"
    );
}
