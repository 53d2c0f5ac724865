//! `pipeline shards`: an ILSVRC tree becomes a shard folder.
//!
//! The run is planned first, then carried out shard by shard:
//! - the plan fixes which source files go to which shard (train in a seeded
//!   shuffled order, val in name order), and gives each shard a plan id, a hash
//!   of everything its bytes depend on;
//! - a shard file that already exists with the same plan id, and whose
//!   records all pass their checksums, is finished work and is kept
//!   (resume); anything else is (re)written;
//! - the images of one shard are decoded in parallel, claimed in plan order
//!   from a shared counter, and written in plan order as they complete, so
//!   the bytes do not depend on the number of threads;
//! - each shard appears under its final name only when complete, and the
//!   manifest is written last.
//!
//! Memory: per thread, one decode and one file buffer; and a fixed window of
//! `2 x jobs + 2` frame buffers (~200 KB each) that circulate between the
//! workers and the writer, whatever the shard or data set size.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;

use xxhash_rust::xxh3::Xxh3;

use crate::format::manifest::{
    self, hex64, Geometry, Manifest, ManifestError, ShardInfo, SplitInfo,
};
use crate::format::shard::{
    Codec, MatchSearch, PixelFilter, RecordEncoder, ShardError, ShardHeader, ShardIdentity,
    ShardReader, ShardWriter, Skipped,
};
use crate::ingest::codec::{DecodeError, PreprocessOptions, Preprocessor};
use crate::ingest::{self, ClassInfo, IngestError, SourceFile, Split, ValLabelOptions};
use crate::progress::Progress;
use crate::rng::SplitMix64;

#[derive(Debug, Clone)]
pub struct ShardsConfig {
    pub imagenet: PathBuf,
    pub out: PathBuf,
    pub jobs: usize,
    pub zstd_level: i32,
    /// zstd's match search; `None` means `MatchSearch::default_for(zstd_level)`.
    pub zstd_search: Option<MatchSearch>,
    pub pixel_filter: PixelFilter,
    /// How records are stored; the zstd settings above apply to `Zstd` only.
    pub codec: Codec,
    pub preprocess: PreprocessOptions,
    /// Splits to write; `None` means train, and val when the tree has one.
    pub splits: Option<Vec<Split>>,
    pub per_class: Option<usize>,
    pub shard_size: usize,
    pub seed: u64,
    pub val_labels: ValLabelOptions,
}

impl ShardsConfig {
    /// The match search this run uses.
    pub fn zstd_search(&self) -> MatchSearch {
        self.zstd_search
            .unwrap_or_else(|| MatchSearch::default_for(self.zstd_level))
    }

    /// (pixel filter, zstd level, match search) as the shards record them:
    /// the configured ones, or (none, 0, full) with the raw codec, which
    /// stores pixels as they are.
    pub fn stored_encoding(&self) -> (PixelFilter, i32, MatchSearch) {
        match self.codec {
            Codec::Zstd => (self.pixel_filter, self.zstd_level, self.zstd_search()),
            Codec::Raw => (PixelFilter::None, 0, MatchSearch::Full),
        }
    }

    pub fn new(imagenet: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            imagenet: imagenet.into(),
            out: out.into(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            zstd_level: 1,
            zstd_search: None,
            pixel_filter: PixelFilter::Delta,
            codec: Codec::Zstd,
            preprocess: PreprocessOptions::default(),
            splits: None,
            per_class: None,
            shard_size: 1000,
            seed: 0,
            val_labels: ValLabelOptions::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MakeShardsError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path}: output folder is not writable: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("{0}: another `pipeline shards` is writing into this folder; wait for it, or choose another --out")]
    Busy(PathBuf),
    /// A split whose folder holds no file that could be read: a wrong
    /// path, an empty folder, or links that lead nowhere. Nothing is written.
    #[error("{folder}: no image file to store in {split}{}", unreadable_example(.unreadable, .first))]
    NothingToStore {
        split: &'static str,
        folder: PathBuf,
        unreadable: usize,
        first: Option<Skipped>,
    },
}

/// "; N could not be read, e.g. PATH: REASON", or nothing.
fn unreadable_example(unreadable: &usize, first: &Option<Skipped>) -> String {
    match first {
        Some(s) => format!(
            "; {unreadable} could not be read, e.g. {}: {}",
            s.path, s.reason
        ),
        None => String::new(),
    }
}

/// Unreadable files of a split reported one by one, before a summary line
/// says how many more there are (all are in the manifest): a tree of broken
/// links should not bury the terminal.
const UNREADABLE_NOTES: usize = 20;

/// What a run did, for the closing summary.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Images stored by this run (not counting finished shards it kept).
    pub written: u64,
    /// Images in shards kept from an earlier run.
    pub kept: u64,
    pub skipped: u64,
    /// Bytes of all shard files.
    pub shard_bytes: u64,
    /// Raw pixel bytes of all stored images.
    pub raw_bytes: u64,
    pub elapsed: Duration,
    /// Things the user should know that are not errors.
    pub notes: Vec<String>,
}

impl Summary {
    pub fn compression_ratio(&self) -> f64 {
        self.raw_bytes as f64 / self.shard_bytes.max(1) as f64
    }
}

/// One planned shard.
struct ShardPlan {
    split: Split,
    index: usize,
    /// Position of `files[0]` in the split's planned order.
    first: usize,
    files: Vec<SourceFile>,
    plan_id: u64,
}

impl ShardPlan {
    fn file_name(&self) -> String {
        format!("{}-{:05}.shard", self.split.name(), self.index)
    }

    /// The header this plan's file is written with: the run's `common` one
    /// with the plan's id and place.
    fn header(&self, common: ShardHeader) -> ShardHeader {
        ShardHeader {
            plan_id: self.plan_id,
            identity: Some(self.identity()),
            ..common
        }
    }

    /// The place in the set this plan's file holds (its header says so).
    fn identity(&self) -> ShardIdentity {
        ShardIdentity {
            split: self.split,
            number: self.index as u32,
            first: self.first as u64,
            planned: self.files.len() as u32,
        }
    }
}

/// Writes the shards `config` asks for, reporting each file to `progress`
/// (skipped files as notes).
pub fn make_shards(
    config: &ShardsConfig,
    progress: &dyn Progress,
) -> Result<(Manifest, Summary), MakeShardsError> {
    let started = Instant::now();
    // Checked first, so that a mistake stops the run before any work.
    let header = shard_header(config)?;
    let mut summary = Summary::default();
    let classes = ingest::discover_classes(&config.imagenet)?;
    let mut listings = list_splits(config, &classes, &mut summary, progress)?;
    // Held until the run ends (dropped with it).
    let _lock = prepare_output(&config.out)?;

    let mut plans = Vec::new();
    for (split, listing) in &mut listings {
        // The plans own the files from here; the listing keeps what it could not read.
        plans.extend(plan_split(
            config,
            *split,
            std::mem::take(&mut listing.files),
        ));
    }
    let total: u64 = plans.iter().map(|p| p.files.len() as u64).sum();
    progress.start(total);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.jobs)
        .build()
        .map_err(|e| MakeShardsError::Config(format!("thread pool: {e}")))?;
    let mut workers = (0..config.jobs)
        .map(|_| Worker::new(config.preprocess, header))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| MakeShardsError::Config(format!("zstd compressor: {e}")))?;

    // Shards of an earlier run, checked record by record (in parallel)
    // before they are kept: a damaged one is written again.
    let finished: Vec<Option<ShardReader>> = plans
        .par_iter()
        .map(|plan| {
            let header = plan.header(header);
            finished_shard(&config.out.join(plan.file_name()), &header, progress)
        })
        .collect();
    let to_write = plans
        .iter()
        .zip(&finished)
        .filter(|(_, kept)| kept.is_none())
        .map(|(plan, _)| plan);
    write_shards(&pool, &mut workers, to_write, header, &config.out, progress)?;
    let shard_infos = describe_shards(config, &plans, finished, &mut summary, progress)?;
    progress.finish();

    let manifest = build_manifest(config, classes, &plans, listings, shard_infos, &mut summary);
    manifest.write(&config.out)?;
    summary.elapsed = started.elapsed();
    Ok((manifest, summary))
}

/// The header every shard of this run shares (each adds its own plan id
/// and place), once the options are checked.
fn shard_header(config: &ShardsConfig) -> Result<ShardHeader, MakeShardsError> {
    if config.shard_size == 0 || config.jobs == 0 {
        return Err(MakeShardsError::Config(
            "--shard-size and --jobs must be at least 1".into(),
        ));
    }
    let (filter, zstd_level, zstd_search) = config.stored_encoding();
    zstd_search.check_level(zstd_level).map_err(|why| {
        MakeShardsError::Config(format!(
            "{why}: with --level {zstd_level} use --zstd-search full"
        ))
    })?;
    Ok(ShardHeader {
        height: config.preprocess.side as u32,
        width: config.preprocess.side as u32,
        channels: 3,
        filter,
        zstd_level,
        zstd_search,
        codec: config.codec,
        plan_id: 0,
        identity: None,
    })
}

/// Each split's shards as the manifest lists them, with each shard's
/// skipped files.
type SplitShards = BTreeMap<Split, Vec<(ShardInfo, Vec<Skipped>)>>;

/// The shards of every split, each with the files it left out; counts
/// what was kept and written into `summary`. A kept shard's images are
/// reported to `progress` here, a written one's were as they were stored.
fn describe_shards(
    config: &ShardsConfig,
    plans: &[ShardPlan],
    finished: Vec<Option<ShardReader>>,
    summary: &mut Summary,
    progress: &dyn Progress,
) -> Result<SplitShards, MakeShardsError> {
    let mut shard_infos = SplitShards::new();
    for (plan, finished) in plans.iter().zip(finished) {
        let (reader, kept) = match finished {
            Some(reader) => (reader, true),
            None => (
                ShardReader::open(&config.out.join(plan.file_name()))?,
                false,
            ),
        };
        let records = reader.len() as u64;
        if kept {
            summary.kept += records;
            progress.advance(plan.files.len() as u64);
        } else {
            summary.written += records;
        }
        summary.shard_bytes += reader.file_len();
        summary.raw_bytes += records * reader.header().image_len() as u64;
        shard_infos.entry(plan.split).or_default().push((
            ShardInfo {
                file: plan.file_name(),
                records,
                bytes: reader.file_len(),
                plan_id: Some(hex64(plan.plan_id)),
                index_xxh3: Some(hex64(reader.index_checksum())),
            },
            reader.skipped().to_vec(),
        ));
    }
    Ok(shard_infos)
}

/// The files of each split asked for; what could not be read is reported
/// to `progress`, and a split with nothing to store is an error.
fn list_splits(
    config: &ShardsConfig,
    classes: &[ClassInfo],
    summary: &mut Summary,
    progress: &dyn Progress,
) -> Result<Vec<(Split, ingest::SplitListing)>, MakeShardsError> {
    let splits = config
        .splits
        .clone()
        .unwrap_or_else(|| vec![Split::Train, Split::Val]);
    let mut listings = Vec::new();
    for split in splits {
        let listing = match split {
            Split::Train => ingest::list_train(&config.imagenet, classes, config.per_class),
            Split::Val => {
                match ingest::list_val(
                    &config.imagenet,
                    classes,
                    config.per_class,
                    &config.val_labels,
                ) {
                    Err(IngestError::NoVal(root)) if config.splits.is_none() => {
                        summary.notes.push(format!(
                            "{}: no val/ folder, wrote train only",
                            root.display()
                        ));
                        continue;
                    }
                    other => other?,
                }
            }
        };
        listings.push((split, listing));
    }
    // After every split is listed, so that a listing's own error (val/
    // without labels) is the one reported.
    for (split, listing) in &listings {
        if listing.files.is_empty() {
            return Err(MakeShardsError::NothingToStore {
                split: split.name(),
                folder: config.imagenet.join(split.name()),
                unreadable: listing.unreadable.len(),
                first: listing.unreadable.first().cloned(),
            });
        }
    }
    for (split, listing) in &listings {
        report_unreadable(*split, &listing.unreadable, progress);
    }
    Ok(listings)
}

/// Notes for the files a listing could not read, as the encoders' skips
/// are noted: the first `UNREADABLE_NOTES`, then how many more.
fn report_unreadable(split: Split, unreadable: &[Skipped], progress: &dyn Progress) {
    for s in unreadable.iter().take(UNREADABLE_NOTES) {
        note_skipped(progress, s);
    }
    if let Some(more) = unreadable
        .len()
        .checked_sub(UNREADABLE_NOTES)
        .filter(|&n| n > 0)
    {
        progress.note(&format!(
            "skipped {more} more unreadable files of {} (manifest.json lists each with its reason)",
            split.name()
        ));
    }
}

/// One line for a file not stored: "skipped PATH: REASON".
fn note_skipped(progress: &dyn Progress, skipped: &Skipped) {
    progress.note(&format!("skipped {}: {}", skipped.path, skipped.reason));
}

/// Makes `out`, takes its lock, proves it writable and clears partial
/// files a killed run left. The lock (flock on the folder itself, so that no lock file is left
/// behind; released when the returned handle is dropped, or the process
/// dies) keeps a second run out: it would remove this run's partial files.
fn prepare_output(out: &Path) -> Result<std::fs::File, MakeShardsError> {
    let err = |source| MakeShardsError::Output {
        path: out.to_owned(),
        source,
    };
    std::fs::create_dir_all(out).map_err(err)?;
    let lock = std::fs::File::open(out).map_err(err)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(MakeShardsError::Busy(out.to_owned()))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    let probe = out.join(".write-probe");
    std::fs::write(&probe, b"").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    for entry in std::fs::read_dir(out).map_err(err)?.flatten() {
        if crate::format::atomic::is_partial(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path()).map_err(err)?;
        }
    }
    Ok(lock)
}

/// Train: a seeded shuffle, so that every shard holds a mix of classes;
/// val: name order. Then cut into shards of `shard_size` files.
fn plan_split(config: &ShardsConfig, split: Split, mut files: Vec<SourceFile>) -> Vec<ShardPlan> {
    if split == Split::Train {
        SplitMix64::new(config.seed).shuffle(&mut files);
    }
    let mut files = files.into_iter();
    let mut plans = Vec::new();
    loop {
        let chunk: Vec<SourceFile> = files.by_ref().take(config.shard_size).collect();
        if chunk.is_empty() {
            return plans;
        }
        plans.push(ShardPlan {
            split,
            index: plans.len(),
            first: plans.len() * config.shard_size,
            plan_id: plan_id(config, split, &chunk),
            files: chunk,
        });
    }
}

/// The settings part of a plan id.
fn plan_settings(config: &ShardsConfig, split: Split) -> serde_json::Value {
    let (filter, zstd_level, zstd_search) = config.stored_encoding();
    let mut settings = serde_json::json!({
        "format": crate::format::shard::VERSION,
        "split": split,
        "preprocess": config.preprocess,
        "zstd_level": zstd_level,
        "pixel_filter": filter,
    });
    // Each only when not its default, as they were added: the settings of
    // a zstd shard with zstd's own search read as they did before.
    if zstd_search != MatchSearch::Full {
        settings["zstd_search"] = serde_json::json!(zstd_search);
    }
    if config.codec != Codec::Zstd {
        settings["codec"] = serde_json::json!(config.codec);
    }
    settings
}

/// Everything a shard's bytes depend on.
fn plan_id(config: &ShardsConfig, split: Split, files: &[SourceFile]) -> u64 {
    let mut h = Xxh3::new();
    h.update(plan_settings(config, split).to_string().as_bytes());
    for f in files {
        h.update(f.name.as_bytes());
        h.update(&[0]);
        h.update(&f.label.to_le_bytes());
        h.update(&f.bytes.to_le_bytes());
    }
    h.digest()
}

/// An existing, intact shard made from the same plan: its header, index
/// and every record checked. A damaged one is reported (`progress`) and
/// left to be written again.
fn finished_shard(
    path: &Path,
    header: &ShardHeader,
    progress: &dyn Progress,
) -> Option<ShardReader> {
    if !path.exists() {
        return None;
    }
    let checked = ShardReader::open(path).and_then(|reader| {
        if reader.header() != header {
            return Ok(None); // another plan's: replaced, not damaged
        }
        reader
            .check_records(header.image_len())
            .map(|()| Some(reader))
    });
    match checked {
        Ok(kept) => kept,
        Err(e) => {
            progress.note(&format!("{e}: written again"));
            None
        }
    }
}

/// Per-thread state: decoder, compressor, and the buffers of one image.
struct Worker {
    preprocessor: Preprocessor,
    encoder: RecordEncoder,
    /// The source file's bytes.
    file: Vec<u8>,
    pixels: Vec<u8>,
}

impl Worker {
    fn new(preprocess: PreprocessOptions, header: ShardHeader) -> std::io::Result<Self> {
        let preprocessor = Preprocessor::new(preprocess);
        let pixels = vec![0; preprocessor.output_len()];
        Ok(Self {
            preprocessor,
            encoder: RecordEncoder::new(header)?,
            file: Vec::new(),
            pixels,
        })
    }

    /// Reads, decodes and compresses one source file into `frame`; returns
    /// the pixels' checksum, or why the file is skipped.
    fn encode(&mut self, file: &SourceFile, frame: &mut Vec<u8>) -> Result<u64, SkipReason> {
        read_into(&file.path, &mut self.file).map_err(SkipReason::Read)?;
        self.preprocessor.process(&self.file, &mut self.pixels)?;
        self.encoder
            .encode(&self.pixels, frame)
            .map_err(SkipReason::Compress)
    }
}

/// Why a source file is not stored; its text goes into the manifest.
#[derive(Debug, thiserror::Error)]
enum SkipReason {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("zstd: {0}")]
    Compress(#[source] std::io::Error),
    /// A panic while encoding (a bug, in a decoder for instance).
    #[error("internal error while encoding (please report it): {0}")]
    Panic(String),
}

/// `std::fs::read` into a buffer kept from file to file: a fresh buffer per
/// file took page faults on every image.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?.read_to_end(buf)?;
    Ok(())
}

/// One encoded file on its way to the writer: its place in the plan, the
/// frame buffer (returned to the workers once written) and the checksum or
/// the reason to skip it.
struct Encoded {
    index: usize,
    frame: Vec<u8>,
    result: Result<u64, SkipReason>,
}

/// Writes the shards of `plans`, one after another. Each finished shard is
/// synced and renamed into place on a thread of its own while the workers
/// go on to the next: a shard's `fsync` (~120 MB) takes about as long as
/// 16 workers take to encode it, and every worker would wait for it. One
/// shard at most waits for that thread, so a disk slower than the encoders
/// holds them back instead of piling up written shards.
fn write_shards<'a>(
    pool: &rayon::ThreadPool,
    workers: &mut [Worker],
    plans: impl Iterator<Item = &'a ShardPlan>,
    header: ShardHeader,
    out: &Path,
    progress: &dyn Progress,
) -> Result<(), MakeShardsError> {
    std::thread::scope(|scope| {
        let (to_finish, finish_rx) = crossbeam_channel::bounded::<ShardWriter>(1);
        let finisher = scope.spawn(move || -> Result<(), MakeShardsError> {
            for writer in finish_rx {
                writer.finish()?;
            }
            Ok(())
        });
        for plan in plans {
            let path = out.join(plan.file_name());
            let writer = write_shard(pool, workers, plan, plan.header(header), &path, progress)?;
            if to_finish.send(writer).is_err() {
                break; // the finisher stopped at an error, which its result holds
            }
        }
        drop(to_finish);
        finisher.join().unwrap_or_else(|_| {
            Err(MakeShardsError::Config(
                "a shard's finishing thread panicked".into(),
            ))
        })
    })
}

/// Workers claim the plan's files in order from a shared counter and send
/// each frame to this thread, which writes them in plan order. Frame buffers
/// circulate: a fixed set of them bounds memory and how far ahead of the
/// writer the workers can get. Returns the shard with every frame written,
/// to be finished (index, sync, rename) by the caller.
fn write_shard(
    pool: &rayon::ThreadPool,
    workers: &mut [Worker],
    plan: &ShardPlan,
    header: ShardHeader,
    path: &Path,
    progress: &dyn Progress,
) -> Result<ShardWriter, MakeShardsError> {
    let mut writer = ShardWriter::create(path, header)?;
    let next_file = AtomicUsize::new(0);
    let (free_tx, free_rx) = crossbeam_channel::unbounded();
    for _ in 0..2 * workers.len() + 2 {
        let _ = free_tx.send(Vec::new()); // cannot fail: we hold the receiver
    }
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    // The body runs on this thread, not in the pool, so that it can wait for
    // frames while every pool thread encodes.
    pool.in_place_scope(|scope| {
        for worker in workers.iter_mut() {
            let (free, done, next_file) = (free_rx.clone(), done_tx.clone(), &next_file);
            scope
                .spawn(move |_| encode_files(worker, &plan.files, next_file, free, done, progress));
        }
        drop(done_tx);
        let written = write_in_order(&mut writer, &plan.files, done_rx, free_tx, progress);
        if written.is_err() {
            // Stop claiming files; the closed channels release waiting workers.
            next_file.store(plan.files.len(), Ordering::Relaxed);
        }
        written
    })?;
    Ok(writer)
}

fn encode_files(
    worker: &mut Worker,
    files: &[SourceFile],
    next_file: &AtomicUsize,
    free: Receiver<Vec<u8>>,
    done: Sender<Encoded>,
    progress: &dyn Progress,
) {
    // A buffer is taken before a file is claimed: the file the writer waits
    // for is then always in the hands of a worker that can finish it.
    while let Ok(mut frame) = free.recv() {
        let index = next_file.fetch_add(1, Ordering::Relaxed);
        let Some(file) = files.get(index) else {
            return;
        };
        let result = guarded(|| worker.encode(file, &mut frame));
        progress.advance(1);
        if done
            .send(Encoded {
                index,
                frame,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Runs `encode`, turning a panic (a bug, in a decoder for instance) into
/// the file's skip reason. The run goes on; and without this, the writer
/// would wait for that file for ever while the other workers wait for
/// buffers.
fn guarded(encode: impl FnOnce() -> Result<u64, SkipReason>) -> Result<u64, SkipReason> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(encode)).unwrap_or_else(|panic| {
        let text = crate::panics::message(&*panic).unwrap_or_default();
        Err(SkipReason::Panic(text))
    })
}

/// Writes the frames in plan order as they arrive, hands each buffer back,
/// and returns when every worker has finished.
fn write_in_order(
    writer: &mut ShardWriter,
    files: &[SourceFile],
    done: Receiver<Encoded>,
    free: Sender<Vec<u8>>,
    progress: &dyn Progress,
) -> Result<(), MakeShardsError> {
    let mut early = BTreeMap::new();
    let mut next = 0;
    for encoded in done {
        early.insert(encoded.index, encoded);
        while let Some(Encoded { frame, result, .. }) = early.remove(&next) {
            let file = &files[next];
            match result {
                Ok(checksum) => writer.add(file.label, &file.name, &frame, checksum)?,
                Err(reason) => {
                    let skipped = Skipped {
                        path: file.path.display().to_string(),
                        reason: reason.to_string(),
                    };
                    note_skipped(progress, &skipped);
                    writer.skip(skipped);
                }
            }
            let _ = free.send(frame); // fails only once every worker is gone
            next += 1;
        }
    }
    if next != files.len() {
        return Err(MakeShardsError::Config(format!(
            "a worker stopped early: {next} of {} files written",
            files.len()
        )));
    }
    Ok(())
}

fn build_manifest(
    config: &ShardsConfig,
    classes: Vec<ClassInfo>,
    plans: &[ShardPlan],
    listings: Vec<(Split, ingest::SplitListing)>,
    mut shard_infos: SplitShards,
    summary: &mut Summary,
) -> Manifest {
    let mut id = Xxh3::new();
    for plan in plans {
        id.update(&plan.plan_id.to_le_bytes());
    }
    let mut splits = BTreeMap::new();
    for (split, listing) in listings {
        let infos = shard_infos.remove(&split).unwrap_or_default();
        let mut skipped = listing.unreadable;
        let mut shards = Vec::new();
        for (info, shard_skipped) in infos {
            skipped.extend(shard_skipped);
            shards.push(info);
        }
        summary.skipped += skipped.len() as u64;
        splits.insert(
            split,
            SplitInfo {
                images: shards.iter().map(|s| s.records).sum(),
                shards,
                skipped,
            },
        );
    }
    let side = config.preprocess.side as u32;
    let (pixel_filter, zstd_level, zstd_search) = config.stored_encoding();
    Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        id: hex64(id.digest()),
        created_by: format!("pipeline {}", env!("CARGO_PKG_VERSION")),
        source: config.imagenet.display().to_string(),
        geometry: Geometry {
            height: side,
            width: side,
            channels: 3,
        },
        preprocess: config.preprocess,
        zstd_level,
        zstd_search,
        pixel_filter,
        codec: config.codec,
        seed: config.seed,
        classes,
        splits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    fn files(n: usize) -> Vec<SourceFile> {
        (0..n)
            .map(|i| SourceFile {
                path: PathBuf::from(format!("/tree/train/c/{i}.JPEG")),
                name: format!("c/{i}.JPEG"),
                label: i as u32,
                bytes: 1,
            })
            .collect()
    }

    fn header() -> ShardHeader {
        ShardHeader {
            height: 1,
            width: 2,
            channels: 3,
            filter: PixelFilter::None,
            zstd_level: 1,
            zstd_search: MatchSearch::Full,
            codec: Codec::Zstd,
            plan_id: 7,
            identity: Some(ShardIdentity {
                split: Split::Train,
                number: 0,
                first: 0,
                planned: 5,
            }),
        }
    }

    /// Sends the frames of `order` (file index, frame byte; `None` = skipped)
    /// to the writer as workers finishing in that order would.
    fn write(
        path: &Path,
        files: &[SourceFile],
        order: &[(usize, Option<u8>)],
    ) -> Result<(), MakeShardsError> {
        let mut writer = ShardWriter::create(path, header())?;
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let (free_tx, free_rx) = crossbeam_channel::unbounded();
        for &(index, byte) in order {
            let result = byte
                .map(u64::from)
                .ok_or(SkipReason::Decode(DecodeError::Empty));
            let frame = vec![byte.unwrap_or(0); 3];
            let _ = done_tx.send(Encoded {
                index,
                frame,
                result,
            });
        }
        drop(done_tx);
        write_in_order(&mut writer, files, done_rx, free_tx, &Silent)?;
        assert_eq!(free_rx.len(), order.len(), "every buffer handed back");
        writer.finish()?;
        Ok(())
    }

    #[test]
    fn frames_arriving_out_of_order_are_written_in_plan_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.shard");
        let files = files(5);
        let order = [
            (3, Some(30)),
            (1, None),
            (0, Some(0)),
            (4, Some(40)),
            (2, Some(20)),
        ];
        write(&path, &files, &order).expect("write");
        let reader = ShardReader::open(&path).expect("open");
        let names: Vec<&str> = reader.records().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["c/0.JPEG", "c/2.JPEG", "c/3.JPEG", "c/4.JPEG"]);
        let checksums: Vec<u64> = reader.records().iter().map(|r| r.checksum).collect();
        assert_eq!(checksums, [0, 20, 30, 40]);
        let labels: Vec<u32> = reader.records().iter().map(|r| r.label).collect();
        assert_eq!(labels, [0, 2, 3, 4]);
        assert_eq!(reader.skipped().len(), 1);
        assert_eq!(reader.skipped()[0].path, "/tree/train/c/1.JPEG");
        assert_eq!(reader.skipped()[0].reason, DecodeError::Empty.to_string());
    }

    /// While one run holds the output folder, a second is refused with
    /// one line and removes nothing; once the first is done, it may start.
    #[test]
    fn a_second_run_into_a_busy_folder_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("shards");
        let first = prepare_output(&out).expect("first");
        let partial = out.join(".train-00000.shard.partial");
        std::fs::write(&partial, b"in progress").expect("partial");
        let err = prepare_output(&out).expect_err("second while busy");
        assert!(matches!(err, MakeShardsError::Busy(_)), "{err}");
        assert!(
            err.to_string().contains("another `pipeline shards`"),
            "{err}"
        );
        assert!(
            partial.exists(),
            "the first run's partial file is left alone"
        );
        drop(first);
        prepare_output(&out).expect("after the first");
        assert!(!partial.exists(), "a dead run's partial file is cleared");
    }

    /// Notes, kept for a test to read.
    #[derive(Default)]
    struct Notes(std::sync::Mutex<Vec<String>>);

    impl Progress for Notes {
        fn note(&self, text: &str) {
            self.0.lock().expect("notes").push(text.to_owned());
        }
    }

    /// A tree whose train/n01/ holds `good` 16-pixel PNGs and `dangling`
    /// links to files that do not exist.
    fn tree_with_links(good: usize, dangling: usize) -> (tempfile::TempDir, ShardsConfig) {
        let dir = tempfile::tempdir().expect("tempdir");
        let class = dir.path().join("tree").join("train").join("n01");
        std::fs::create_dir_all(&class).expect("mkdir");
        for k in 0..good {
            let img =
                image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8, y as u8, k as u8]));
            img.save(class.join(format!("good{k}.png"))).expect("png");
        }
        for k in 0..dangling {
            let target = dir.path().join(format!("gone{k}.JPEG"));
            std::os::unix::fs::symlink(target, class.join(format!("link{k:02}.JPEG")))
                .expect("link");
        }
        let mut config = ShardsConfig::new(dir.path().join("tree"), dir.path().join("shards"));
        config.splits = Some(vec![Split::Train]);
        config.jobs = 1;
        config.preprocess.side = 16;
        (dir, config)
    }

    /// Files the listing cannot read are noted as the encoders' skips are
    /// (the first 20, then a count) and all are in the manifest.
    #[test]
    fn unreadable_files_are_noted_and_listed() {
        let (_dir, config) = tree_with_links(1, 25);
        let notes = Notes::default();
        let (manifest, _) = make_shards(&config, &notes).expect("shards");
        let notes = notes.0.into_inner().expect("notes");
        let per_file: Vec<&String> = notes
            .iter()
            .filter(|n| n.contains("link") && n.contains("cannot stat file"))
            .collect();
        assert_eq!(per_file.len(), UNREADABLE_NOTES, "{notes:?}");
        assert!(
            notes
                .iter()
                .any(|n| n.contains("skipped 5 more unreadable files of train")),
            "{notes:?}"
        );
        let train = manifest.split(Split::Train).expect("train");
        assert_eq!((train.images, train.skipped.len()), (1, 25));
    }

    /// Shards finished on their own thread while the next is encoded all
    /// end up under their final names, each whole, every file in one of
    /// them; none is left under its temporary name.
    #[test]
    fn every_shard_is_finished_in_place_while_the_next_is_written() {
        let (dir, mut config) = tree_with_links(7, 0);
        config.shard_size = 2;
        config.jobs = 2;
        let (manifest, summary) = make_shards(&config, &Silent).expect("shards");
        let train = manifest.split(Split::Train).expect("train");
        assert_eq!((train.images, summary.written), (7, 7));
        let mut names = Vec::new();
        for shard in &train.shards {
            let reader = ShardReader::open(&config.out.join(&shard.file)).expect("open");
            assert_eq!(reader.len() as u64, shard.records, "{}", shard.file);
            names.extend(reader.records().iter().map(|r| r.name.clone()));
        }
        assert_eq!(train.shards.len(), 4);
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!((names.len(), distinct.len()), (7, 7), "{names:?}");
        let partial: Vec<_> = std::fs::read_dir(dir.path().join("shards"))
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(partial.is_empty(), "{partial:?}");
    }

    /// A split with no file that can be read stops the run before anything
    /// is written, naming the folder, the count and one file with its reason.
    #[test]
    fn a_split_with_nothing_readable_is_an_error() {
        let (_dir, config) = tree_with_links(0, 3);
        let err = make_shards(&config, &Silent).expect_err("nothing to store");
        let text = err.to_string();
        assert!(
            matches!(err, MakeShardsError::NothingToStore { unreadable: 3, .. }),
            "{text}"
        );
        assert!(
            text.contains("train: no image file to store in train; 3 could not be read, e.g. "),
            "{text}"
        );
        assert!(text.contains("link00.JPEG: cannot stat file"), "{text}");
        assert!(!config.out.exists(), "nothing written");
        // An empty class folder: the same error, with no example to give.
        let (_dir, config) = tree_with_links(0, 0);
        let text = make_shards(&config, &Silent)
            .expect_err("empty")
            .to_string();
        assert!(text.ends_with("no image file to store in train"), "{text}");
    }

    #[test]
    fn a_panic_while_encoding_becomes_the_files_skip_reason() {
        assert_eq!(guarded(|| Ok(7)).ok(), Some(7));
        let empty = guarded(|| Err(DecodeError::Empty.into())).expect_err("an error");
        assert!(
            matches!(empty, SkipReason::Decode(DecodeError::Empty)),
            "{empty}"
        );
        let reason = guarded(|| panic!("index {} out of range", 3))
            .expect_err("panicked")
            .to_string();
        assert!(
            reason.contains("internal error") && reason.contains("index 3 out of range"),
            "{reason}"
        );
    }

    #[test]
    fn the_match_search_enters_the_plan_id_only_when_not_full() {
        let mut config = ShardsConfig::new("/tree", "/out");
        let files = files(3);
        assert_eq!(
            config.zstd_search(),
            MatchSearch::Sparse,
            "level 1's default"
        );
        let sparse = plan_id(&config, Split::Train, &files);
        config.zstd_search = Some(MatchSearch::Full);
        let full = plan_id(&config, Split::Train, &files);
        assert_ne!(
            sparse, full,
            "a resumed run with the other search redoes the shard"
        );
        // The settings of a `full` shard are what they were before the
        // choice existed, so shards written then are still found finished.
        let before = serde_json::json!({
            "format": crate::format::shard::VERSION,
            "split": Split::Train,
            "preprocess": config.preprocess,
            "zstd_level": 1,
            "pixel_filter": config.pixel_filter,
        });
        assert_eq!(plan_settings(&config, Split::Train), before);
    }

    #[test]
    fn the_raw_codec_enters_the_plan_id_and_drops_the_zstd_settings() {
        let mut config = ShardsConfig::new("/tree", "/out");
        let files = files(3);
        let zstd = plan_id(&config, Split::Train, &files);
        config.codec = Codec::Raw;
        assert_ne!(plan_id(&config, Split::Train, &files), zstd);
        assert_eq!(
            config.stored_encoding(),
            (PixelFilter::None, 0, MatchSearch::Full)
        );
        let settings = plan_settings(&config, Split::Train);
        assert_eq!(settings["codec"], "raw");
        assert_eq!(settings["pixel_filter"], "none");
        assert!(settings.get("zstd_search").is_none(), "{settings}");
    }

    #[test]
    fn sparse_search_at_another_level_is_a_clear_error() {
        let mut config = ShardsConfig::new("/nonexistent-tree", "/nonexistent-out");
        config.zstd_level = 3;
        assert_eq!(config.zstd_search(), MatchSearch::Full, "level 3's default");
        config.zstd_search = Some(MatchSearch::Sparse);
        let err = make_shards(&config, &Silent).expect_err("refused");
        assert!(err.to_string().contains("--zstd-search full"), "{err}");
    }

    #[test]
    fn a_missing_frame_fails_the_shard_instead_of_shortening_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.shard");
        let err = write(&path, &files(3), &[(0, Some(1)), (2, Some(3))]).expect_err("a gap");
        assert!(err.to_string().contains("1 of 3 files written"), "{err}");
        assert!(!path.exists(), "no shard under the final name");
    }
}
