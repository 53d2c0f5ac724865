//! Looking into a shard folder: `pipeline verify` and `pipeline export`.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::format::checksum::xxh3_64;
use crate::format::manifest::{Manifest, ManifestError, ShardInfo};
use crate::format::set;
use crate::format::shard::{Codec, RecordDecoder, ShardError, ShardReader};
use crate::ingest::Split;
use crate::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{0}")]
    NotFound(String),
    #[error("zstd: {0}")]
    Zstd(#[from] std::io::Error),
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub shards: usize,
    pub records: u64,
    /// One line per problem, naming shard and record.
    pub problems: Vec<String>,
}

/// Checks that each shard file is the one the manifest lists in its place
/// (size, identity, plan id, index checksum), decodes every record and
/// checks its frame and pixels against their checksums, and lists shard
/// files the manifest does not. Problems are collected, not fatal, so one
/// run lists them all.
pub fn verify(dir: &Path, progress: &dyn Progress) -> Result<VerifyReport, InspectError> {
    let manifest = Manifest::load(dir)?;
    let listed: Vec<(Split, usize, &ShardInfo)> = manifest
        .splits
        .iter()
        .flat_map(|(&split, s)| s.shards.iter().enumerate().map(move |(n, i)| (split, n, i)))
        .collect();
    let found = AtomicUsize::new(0);
    let per_shard: Vec<(u64, Vec<String>)> = listed
        .par_iter()
        .map(|&(split, number, info)| {
            let result = verify_shard(dir, &manifest, split, number, info);
            let so_far = found.fetch_add(result.1.len(), Ordering::Relaxed) + result.1.len();
            progress.status(format!("{so_far} problems"));
            progress.advance(1);
            result
        })
        .collect();
    let mut report = VerifyReport {
        shards: listed.len(),
        ..Default::default()
    };
    for (records, problems) in per_shard {
        report.records += records;
        report.problems.extend(problems);
    }
    let unlisted = set::unlisted_files(dir, &manifest).map_err(|source| {
        InspectError::NotFound(format!("{}: cannot list: {source}", dir.display()))
    })?;
    report.problems.extend(unlisted.iter().map(|file| {
        format!(
            "{}: not listed in manifest.json, so never read (a manifest that lost an entry, \
             or a file from elsewhere)",
            dir.join(file).display()
        )
    }));
    Ok(report)
}

fn verify_shard(
    dir: &Path,
    manifest: &Manifest,
    split: Split,
    number: usize,
    info: &ShardInfo,
) -> (u64, Vec<String>) {
    let path = &dir.join(&info.file);
    let shard = match ShardReader::open(path) {
        Ok(shard) => shard,
        Err(e) => return (0, vec![e.to_string()]),
    };
    let mut problems = Vec::new();
    // A file in the wrong place may still be whole: its records are
    // checked too.
    if let Err(e) = set::check_listed(&shard, split, number, info) {
        problems.push(e.to_string());
    }
    // The check every reader of the set makes; records of other sizes
    // cannot be decoded into the manifest's.
    if let Err(e) = set::check_geometry(&shard, manifest.geometry) {
        problems.push(e.to_string());
        return (0, problems);
    }
    let mut decoder = match RecordDecoder::new() {
        Ok(d) => d,
        Err(e) => return (0, vec![format!("zstd: {e}")]),
    };
    let mut pixels = vec![0; manifest.image_len()];
    for i in 0..shard.len() {
        if let Err(e) = decoder.decode(&shard, i, &mut pixels, true) {
            problems.push(e.to_string());
        }
    }
    (shard.len() as u64, problems)
}

/// Which record to look at.
#[derive(Debug, Clone)]
pub enum Selector {
    /// Position in the split, counting through its shards in order.
    Record(u64),
    /// Source file name as stored (e.g. `n01440764/n01440764_10026.JPEG`), or
    /// its last path component.
    Name(String),
}

/// One record, found.
pub struct Located {
    pub shard: ShardReader,
    pub index_in_shard: usize,
    /// Position in the split.
    pub record: u64,
}

pub fn locate(
    dir: &Path,
    manifest: &Manifest,
    split: Split,
    selector: &Selector,
) -> Result<Located, InspectError> {
    let info = manifest.split(split).ok_or_else(|| {
        InspectError::NotFound(format!(
            "{}: no {} split in the manifest",
            dir.display(),
            split.name()
        ))
    })?;
    let mut first = 0u64;
    for shard_info in &info.shards {
        let may_hold_it = match selector {
            Selector::Record(n) => *n < first + shard_info.records,
            Selector::Name(_) => true,
        };
        if may_hold_it {
            let shard = ShardReader::open(&dir.join(&shard_info.file))?;
            let index = match selector {
                Selector::Record(n) => Some((n - first) as usize),
                Selector::Name(name) => shard.records().iter().position(|r| {
                    r.name == *name || r.name.rsplit('/').next() == Some(name.as_str())
                }),
            };
            if let Some(index) = index {
                return Ok(Located {
                    shard,
                    index_in_shard: index,
                    record: first + index as u64,
                });
            }
        }
        first += shard_info.records;
    }
    Err(InspectError::NotFound(match selector {
        Selector::Record(n) => format!(
            "record {n} is out of range: the {} split holds {first} records",
            split.name()
        ),
        Selector::Name(name) => format!("no record named {name} in the {} split", split.name()),
    }))
}

/// Single-thread rates (images/s) that passes over the shards are measured
/// against, each the median of five passes over the same records.
#[derive(Debug, Clone)]
pub struct Ceilings {
    /// Decoding alone, frames already in memory: zstd decompression, or for
    /// raw shards checking each frame and copying it out. The loader's and
    /// the stats pass's ceiling.
    pub decode: f64,
    /// Reading each frame with pread (from the page cache) and then
    /// decoding it: what any reader of the shards must do at least.
    pub read_and_decode: f64,
    /// All of `threads` threads decoding the in-memory frames at once,
    /// images/s in all: what the machine gives that many threads (shared
    /// caches, memory bandwidth, clocks that drop as cores get busy), where
    /// `threads x decode` assumes perfect scaling.
    pub parallel_decode: f64,
    /// The records each rate was measured over (the first `limit` of the
    /// train split, across as many shards as that takes).
    pub records: Vec<(usize, usize)>,
}

impl Ceilings {
    /// What `decode` measures, for a report: "zstd" or "raw check + copy".
    pub fn decode_name(codec: Codec) -> &'static str {
        match codec {
            Codec::Zstd => "zstd",
            Codec::Raw => "raw check + copy",
        }
    }
}

/// The `Ceilings` over up to `limit` records of the train split, the
/// parallel one with `threads` threads. Frames are first read into memory
/// for the decode-only rates; the median of five passes is kept, because
/// one short pass on a shared machine varies by a third.
pub fn ceilings(
    dir: &Path,
    manifest: &Manifest,
    limit: usize,
    threads: usize,
) -> Result<Ceilings, InspectError> {
    let info = manifest
        .split(Split::Train)
        .ok_or_else(|| InspectError::NotFound("no train split".into()))?;
    let mut shards = Vec::new();
    let mut records = Vec::new();
    for shard_info in &info.shards {
        if records.len() == limit {
            break;
        }
        let shard = ShardReader::open(&dir.join(&shard_info.file))?;
        let take = shard.len().min(limit - records.len());
        records.extend((0..take).map(|i| (shards.len(), i)));
        shards.push(shard);
    }
    let mut decode = FrameDecoder::new(manifest.codec, manifest.image_len())?;
    let mut buffer = Vec::new();
    let mut frames = Vec::with_capacity(records.len());
    for &(s, i) in &records {
        frames.push(shards[s].read_frame(i, &mut buffer)?.to_vec());
    }
    let decode_rate = median_rate(records.len(), || {
        frames.iter().try_for_each(|frame| decode.run(frame))
    })?;
    let threads = threads.max(1);
    let parallel_rate = median_rate(records.len() * threads, || {
        decode_in_parallel(&frames, threads, manifest.codec, manifest.image_len())
    })?;
    drop(frames);
    let read_rate = median_rate(records.len(), || {
        records.iter().try_for_each(|&(s, i)| {
            let frame = shards[s].read_frame(i, &mut buffer)?;
            decode.run(frame)
        })
    })?;
    Ok(Ceilings {
        decode: decode_rate,
        read_and_decode: read_rate,
        parallel_decode: parallel_rate,
        records,
    })
}

/// `threads` threads, each decoding every frame once, all at the same time.
fn decode_in_parallel(
    frames: &[Vec<u8>],
    threads: usize,
    codec: Codec,
    image_len: usize,
) -> Result<(), InspectError> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut decode = FrameDecoder::new(codec, image_len)?;
                    frames.iter().try_for_each(|frame| decode.run(frame))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(InspectError::NotFound("a ceiling thread panicked".into())))
        })
    })
}

/// The least work that turns one stored frame into pixels.
enum FrameDecoder {
    Zstd(zstd::bulk::Decompressor<'static>, Vec<u8>),
    /// The frame's checksum, and a copy out of it (the loader's crop).
    Raw(Vec<u8>),
}

impl FrameDecoder {
    fn new(codec: Codec, image_len: usize) -> std::io::Result<Self> {
        Ok(match codec {
            Codec::Zstd => Self::Zstd(zstd::bulk::Decompressor::new()?, vec![0; image_len]),
            Codec::Raw => Self::Raw(vec![0; image_len]),
        })
    }

    fn run(&mut self, frame: &[u8]) -> Result<(), InspectError> {
        match self {
            Self::Zstd(zstd, out) => {
                zstd.decompress_to_buffer(frame, out)?;
            }
            Self::Raw(out) => {
                std::hint::black_box(xxh3_64(frame));
                let n = frame.len().min(out.len());
                out[..n].copy_from_slice(&frame[..n]);
                std::hint::black_box(&out);
            }
        }
        Ok(())
    }
}

/// Images/s of `pass` over `images` images, the median of five passes.
fn median_rate(
    images: usize,
    mut pass: impl FnMut() -> Result<(), InspectError>,
) -> Result<f64, InspectError> {
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        pass()?;
        rates.push(images as f64 / started.elapsed().as_secs_f64().max(1e-9));
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits that end inside a shard, at a shard's end, and past the
    /// split: every record counted is read from the shard it names.
    #[test]
    fn ceilings_take_records_up_to_the_limit_across_shards() {
        let (dir, data) = crate::loader::tests::dataset();
        let out = dir.path().join("shards");
        let manifest = Manifest::load(&out).expect("manifest");
        let lens: Vec<usize> = data.shard_lens().iter().map(|&n| n as usize).collect();
        assert!(lens.len() > 2 && lens[0] > 1, "several shards: {lens:?}");
        // The split's records in stored order: shard by shard.
        let stored: Vec<(usize, usize)> = lens
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| (0..n).map(move |i| (s, i)))
            .collect();
        for limit in [1, lens[0] - 1, lens[0], lens[0] + 1, data.len() + 5] {
            let c = ceilings(&out, &manifest, limit, 2).expect("ceilings");
            assert_eq!(
                c.records,
                stored[..limit.min(stored.len())],
                "limit {limit}"
            );
            assert!(
                c.decode > 0.0 && c.read_and_decode > 0.0 && c.parallel_decode > 0.0,
                "limit {limit}: {c:?}"
            );
        }
    }
}
