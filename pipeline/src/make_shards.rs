//! `pipeline shards`: an ILSVRC tree becomes a shard folder.
//!
//! The run is planned first, then carried out shard by shard:
//! - the plan fixes which source files go to which shard (train in a seeded
//!   shuffled order, val in name order), and gives each shard a plan id, a hash
//!   of everything its bytes depend on;
//! - a shard file that already exists with the same plan id is finished work
//!   and is kept (resume); anything else is (re)written;
//! - the images of one shard are decoded in parallel and written in plan
//!   order, so the bytes do not depend on the number of threads;
//! - each shard appears under its final name only when complete, and the
//!   manifest is written last.
//!
//! Memory: one shard's compressed records (shard size x ~120 KB) plus one
//! decode buffer per thread, whatever the data set's size.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use xxhash_rust::xxh3::Xxh3;

use crate::codec::{PreprocessOptions, Preprocessor};
use crate::ingest::{self, ClassInfo, IngestError, SourceFile, Split, ValLabelOptions};
use crate::manifest::{self, Geometry, Manifest, ManifestError, ShardInfo, SplitInfo};
use crate::rng::SplitMix64;
use crate::shard::{
    PixelFilter, RecordEncoder, ShardError, ShardHeader, ShardReader, ShardWriter, Skipped,
};

#[derive(Debug, Clone)]
pub struct ShardsConfig {
    pub imagenet: PathBuf,
    pub out: PathBuf,
    pub jobs: usize,
    pub zstd_level: i32,
    pub pixel_filter: PixelFilter,
    pub preprocess: PreprocessOptions,
    /// Splits to write; `None` means train, and val when the tree has one.
    pub splits: Option<Vec<Split>>,
    pub per_class: Option<usize>,
    pub shard_size: usize,
    pub seed: u64,
    pub val_labels: ValLabelOptions,
    pub progress: bool,
}

impl ShardsConfig {
    pub fn new(imagenet: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            imagenet: imagenet.into(),
            out: out.into(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
            zstd_level: 1,
            pixel_filter: PixelFilter::Delta,
            preprocess: PreprocessOptions::default(),
            splits: None,
            per_class: None,
            shard_size: 1000,
            seed: 0,
            val_labels: ValLabelOptions::default(),
            progress: false,
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
}

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
    files: Vec<SourceFile>,
    plan_id: u64,
}

impl ShardPlan {
    fn file_name(&self) -> String {
        format!("{}-{:05}.shard", self.split.name(), self.index)
    }
}

pub fn make_shards(config: &ShardsConfig) -> Result<(Manifest, Summary), MakeShardsError> {
    let started = Instant::now();
    if config.shard_size == 0 || config.jobs == 0 {
        return Err(MakeShardsError::Config(
            "--shard-size and --jobs must be at least 1".into(),
        ));
    }
    let mut summary = Summary::default();
    let classes = ingest::discover_classes(&config.imagenet)?;
    let mut listings = list_splits(config, &classes, &mut summary)?;
    prepare_output(&config.out)?;

    let header = ShardHeader {
        height: config.preprocess.side as u32,
        width: config.preprocess.side as u32,
        channels: 3,
        filter: config.pixel_filter,
        zstd_level: config.zstd_level,
        plan_id: 0,
    };
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
    let progress = progress_bar(config.progress, total);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.jobs)
        .build()
        .map_err(|e| MakeShardsError::Config(format!("thread pool: {e}")))?;

    let mut shard_infos: BTreeMap<Split, Vec<(ShardInfo, Vec<Skipped>)>> = BTreeMap::new();
    for plan in &plans {
        let path = config.out.join(plan.file_name());
        let header = ShardHeader {
            plan_id: plan.plan_id,
            ..header
        };
        let (reader, kept) = match finished_shard(&path, plan.plan_id) {
            Some(reader) => (reader, true),
            None => {
                pool.install(|| write_shard(config, plan, header, &path, &progress))?;
                (ShardReader::open(&path)?, false)
            }
        };
        let records = reader.len() as u64;
        if kept {
            summary.kept += records;
            progress.inc(plan.files.len() as u64);
        } else {
            summary.written += records;
        }
        summary.shard_bytes += reader.file_len();
        summary.raw_bytes += records * header.image_len() as u64;
        shard_infos.entry(plan.split).or_default().push((
            ShardInfo {
                file: plan.file_name(),
                records,
                bytes: reader.file_len(),
            },
            reader.skipped().to_vec(),
        ));
    }
    progress.finish_and_clear();

    let manifest = build_manifest(config, classes, &plans, listings, shard_infos, &mut summary);
    manifest.write(&config.out)?;
    summary.elapsed = started.elapsed();
    Ok((manifest, summary))
}

fn list_splits(
    config: &ShardsConfig,
    classes: &[ClassInfo],
    summary: &mut Summary,
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
    Ok(listings)
}

/// Creates the output folder, proves it writable, and removes partial files
/// that an interrupted run left behind.
fn prepare_output(out: &Path) -> Result<(), MakeShardsError> {
    let err = |source| MakeShardsError::Output {
        path: out.to_owned(),
        source,
    };
    std::fs::create_dir_all(out).map_err(err)?;
    let probe = out.join(".write-probe");
    std::fs::write(&probe, b"").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    for entry in std::fs::read_dir(out).map_err(err)?.flatten() {
        if crate::atomic::is_partial(&entry.file_name().to_string_lossy()) {
            std::fs::remove_file(entry.path()).map_err(err)?;
        }
    }
    Ok(())
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
            plan_id: plan_id(config, split, &chunk),
            files: chunk,
        });
    }
}

/// Everything a shard's bytes depend on.
fn plan_id(config: &ShardsConfig, split: Split, files: &[SourceFile]) -> u64 {
    let mut h = Xxh3::new();
    let settings = serde_json::json!({
        "format": crate::shard::VERSION,
        "split": split,
        "preprocess": config.preprocess,
        "zstd_level": config.zstd_level,
        "pixel_filter": config.pixel_filter,
    });
    h.update(settings.to_string().as_bytes());
    for f in files {
        h.update(f.name.as_bytes());
        h.update(&[0]);
        h.update(&f.label.to_le_bytes());
        h.update(&f.bytes.to_le_bytes());
    }
    h.digest()
}

/// An existing, intact shard made from the same plan.
fn finished_shard(path: &Path, plan_id: u64) -> Option<ShardReader> {
    let reader = ShardReader::open(path).ok()?;
    (reader.header().plan_id == plan_id).then_some(reader)
}

/// Outcome of one source file: a compressed record or the reason it was skipped.
type Encoded = Result<(Vec<u8>, u64), String>;

/// Per-thread state: decoder, compressor and the output image buffer.
struct Worker {
    preprocessor: Preprocessor,
    encoder: RecordEncoder,
    pixels: Vec<u8>,
}

fn write_shard(
    config: &ShardsConfig,
    plan: &ShardPlan,
    header: ShardHeader,
    path: &Path,
    progress: &ProgressBar,
) -> Result<(), MakeShardsError> {
    let encoded: Vec<Encoded> = plan
        .files
        .par_iter()
        .map_init(
            || new_worker(config, header),
            |worker, file| {
                let result = match worker {
                    Ok(worker) => encode_file(worker, file),
                    Err(e) => Err(format!("cannot start a worker: {e}")),
                };
                progress.inc(1);
                result
            },
        )
        .collect();
    let mut writer = ShardWriter::create(path, header)?;
    for (file, result) in plan.files.iter().zip(encoded) {
        match result {
            Ok((frame, checksum)) => writer.add(file.label, &file.name, &frame, checksum)?,
            Err(reason) => {
                progress.suspend(|| eprintln!("skipped {}: {reason}", file.path.display()));
                writer.skip(Skipped {
                    path: file.path.display().to_string(),
                    reason,
                });
            }
        }
    }
    writer.finish()?;
    Ok(())
}

fn new_worker(config: &ShardsConfig, header: ShardHeader) -> std::io::Result<Worker> {
    let preprocessor = Preprocessor::new(config.preprocess);
    let pixels = vec![0; preprocessor.output_len()];
    Ok(Worker {
        preprocessor,
        encoder: RecordEncoder::new(header)?,
        pixels,
    })
}

fn encode_file(worker: &mut Worker, file: &SourceFile) -> Encoded {
    let bytes = std::fs::read(&file.path).map_err(|e| format!("cannot read: {e}"))?;
    worker
        .preprocessor
        .process(&bytes, &mut worker.pixels)
        .map_err(|e| e.to_string())?;
    worker
        .encoder
        .encode(&worker.pixels)
        .map_err(|e| format!("zstd: {e}"))
}

fn progress_bar(visible: bool, total: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn build_manifest(
    config: &ShardsConfig,
    classes: Vec<ClassInfo>,
    plans: &[ShardPlan],
    listings: Vec<(Split, ingest::SplitListing)>,
    mut shard_infos: BTreeMap<Split, Vec<(ShardInfo, Vec<Skipped>)>>,
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
    Manifest {
        format: manifest::FORMAT.into(),
        version: 1,
        id: format!("{:016x}", id.digest()),
        created_by: format!("pipeline {}", env!("CARGO_PKG_VERSION")),
        source: config.imagenet.display().to_string(),
        geometry: Geometry {
            height: side,
            width: side,
            channels: 3,
        },
        preprocess: config.preprocess,
        zstd_level: config.zstd_level,
        pixel_filter: config.pixel_filter,
        seed: config.seed,
        classes,
        splits,
    }
}
