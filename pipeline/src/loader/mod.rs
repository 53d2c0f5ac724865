//! The prefetching loader: batches of augmented crops from a shard folder.
//!
//! Design (after FFCV's loader): the sampler fixes the epoch's batches up
//! front; the consumer hands out batch jobs, at most `prefetch` ahead of the
//! batch it is waiting for; each of `threads` workers builds whole batches
//! (read frame, decompress, undo filter, crop/mirror/light straight into the
//! batch buffer) and returns them over a crossbeam channel; the consumer puts
//! them back in order. Every image's random draws come from (seed, epoch,
//! position in the epoch), so batches are identical for any thread count,
//! and data-parallel ranks draw what one process would.
//!
//! With `prefetch_next_epoch`, the jobs do not stop at the end of an epoch:
//! once the last batch of epoch e is handed out, the workers go on with the
//! first batches of e + 1, and `advance_epoch` carries on from there. A new
//! loader per epoch leaves a worker idle while another finishes the last
//! batch, and restarts the pipeline (~20-30 ms an epoch here; the trainer's
//! eval between epochs then also waits for a first batch).
//!
//! Memory is bounded by configuration: at most `prefetch` batches exist
//! besides the ones the caller holds, and their buffers are recycled when a
//! `Batch` is dropped. Dropping the loader stops and joins every worker. A
//! worker's error, or panic, reaches the caller as that batch's error.
//!
//! `sampler`: which records make which batch, per epoch and rank;
//! `augment`: crops, mirrors and PCA lighting draws (paper 4.1);
//! `normalise`: the float32 hand-over (mean and lighting applied);
//! `aligned`: page-aligned buffers for images and batches.

pub mod aligned;
pub mod augment;
pub mod normalise;
pub mod sampler;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::format::manifest::{Manifest, ManifestError};
use crate::format::set;
use crate::format::shard::{PixelFilter, ReadMode, RecordDecoder, ShardError, ShardReader};
use crate::ingest::Split;
use crate::loader::aligned::AlignedBuf;
use crate::loader::sampler::{mix, Order, RecordId, Sampler, SamplerError};
use crate::rng::SplitMix64;
use crate::stats::{self, Stats, StatsError};
use augment::{Lighting, Mode, View};
use normalise::MeanPlanes;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error("{0}")]
    Config(String),
    #[error("loader worker failed: {0}")]
    Worker(String),
    #[error(
        "{path}: record {record} has label {label}, but manifest.json lists {classes} classes"
    )]
    Label {
        path: std::path::PathBuf,
        record: usize,
        label: u32,
        classes: usize,
    },
}

/// How batches are handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// uint8 HWC crops (mirror applied) plus each view's parameters: the
    /// trainer subtracts the mean and adds the lighting on the GPU.
    U8,
    /// float32 CHW with mean and lighting applied.
    F32,
}

/// Every record's label must name one of the manifest's classes: a label
/// past the class list would only fail deep inside training (an index out
/// of bounds in the loss), far from the file that holds it.
fn check_labels(
    dir: &Path,
    infos: &[crate::format::manifest::ShardInfo],
    shards: &[ShardReader],
    classes: usize,
) -> Result<(), LoaderError> {
    for (info, shard) in infos.iter().zip(shards) {
        if let Some((record, entry)) = shard
            .records()
            .iter()
            .enumerate()
            .find(|(_, r)| r.label as usize >= classes)
        {
            return Err(LoaderError::Label {
                path: dir.join(&info.file),
                record,
                label: entry.label,
                classes,
            });
        }
    }
    Ok(())
}

/// The open shards of one split, with the statistics the transforms need.
pub struct Dataset {
    shards: Vec<ShardReader>,
    side: usize,
    mean: Option<Vec<f32>>,
    /// The mean as the float32 hand-over reads it.
    mean_planes: Option<MeanPlanes>,
    stats: Option<Stats>,
    pub manifest: Manifest,
}

impl Dataset {
    /// Opens `split` of the shard folder `dir`, mapping the shards if they
    /// fit in memory (`ReadMode::Auto`); reads mean.npy and stats.json when
    /// they are there (`pipeline stats` writes them).
    pub fn open(dir: &Path, split: Split) -> Result<Self, LoaderError> {
        Self::open_with(dir, split, ReadMode::Auto)
    }

    /// As `open`, reading frames as `read` says.
    pub fn open_with(dir: &Path, split: Split, read: ReadMode) -> Result<Self, LoaderError> {
        let manifest = Manifest::load(dir)?;
        let info = manifest.split(split).ok_or_else(|| {
            LoaderError::Config(format!("{}: no {} split", dir.display(), split.name()))
        })?;
        let g = manifest.geometry;
        if g.height != g.width || g.channels != 3 {
            return Err(LoaderError::Config(format!(
                "{}: images are {}x{}x{}; the loader takes square RGB",
                dir.display(),
                g.height,
                g.width,
                g.channels
            )));
        }
        let shards = set::open_split_read(dir, &manifest, split, read)?;
        check_labels(dir, &info.shards, &shards, manifest.classes.len())?;
        let side = g.width as usize;
        let stats_path = dir.join(stats::STATS_FILE);
        let stats = if stats_path.is_file() {
            let text = std::fs::read_to_string(&stats_path).map_err(|source| StatsError::Io {
                path: stats_path.clone(),
                source,
            })?;
            let stats: Stats = serde_json::from_str(&text)
                .map_err(|e| LoaderError::Config(format!("{}: {e}", stats_path.display())))?;
            stats
                .check(&manifest.id)
                .map_err(|problem| StatsError::Invalid {
                    path: stats_path.clone(),
                    problem,
                })?;
            Some(stats)
        } else {
            None
        };
        let mean_path = dir.join(stats::MEAN_FILE);
        let mean = if mean_path.is_file() {
            let mean = stats::read_npy_f32(&mean_path, &[side, side, 3])?;
            stats::check_mean(&mean).map_err(|problem| StatsError::Invalid {
                path: mean_path.clone(),
                problem,
            })?;
            Some(mean)
        } else {
            None
        };
        Ok(Self {
            shards,
            side,
            mean_planes: mean.as_deref().map(|m| MeanPlanes::from_hwc(m, side)),
            mean,
            stats,
            manifest,
        })
    }

    pub fn side(&self) -> usize {
        self.side
    }

    /// How frames are read: `Map` or `Pread`.
    pub fn read_mode(&self) -> ReadMode {
        match self.shards.first() {
            Some(s) if s.is_mapped() => ReadMode::Map,
            _ => ReadMode::Pread,
        }
    }

    pub fn shard_lens(&self) -> Vec<u32> {
        self.shards.iter().map(|s| s.len() as u32).collect()
    }

    pub fn mean(&self) -> Option<&[f32]> {
        self.mean.as_deref()
    }

    /// The mean image as planes (plain and mirrored), for the float32
    /// hand-over (`normalise`).
    pub fn mean_planes(&self) -> Option<&MeanPlanes> {
        self.mean_planes.as_ref()
    }

    /// stats.json, when `pipeline stats` has been run.
    pub fn stats(&self) -> Option<&Stats> {
        self.stats.as_ref()
    }

    /// Records in this split.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes one stored image (side x side x 3) into `out`.
    pub fn decode(
        &self,
        id: RecordId,
        decoder: &mut RecordDecoder,
        out: &mut [u8],
    ) -> Result<(), LoaderError> {
        let shard = &self.shards[id.shard as usize];
        Ok(decoder.decode(shard, id.index as usize, out, false)?)
    }

    pub fn label(&self, id: RecordId) -> u32 {
        self.shards[id.shard as usize].records()[id.index as usize].label
    }
}

#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub threads: usize,
    /// Batches in flight ahead of the one the caller waits for.
    pub prefetch: usize,
    pub mode: Mode,
    pub output: Output,
    /// Side of the crop (224 in the paper).
    pub crop: usize,
    pub seed: u64,
    pub order: Order,
    pub rank: usize,
    pub world: usize,
    pub drop_last: bool,
    /// Also check every record's pixels against their checksum as it is
    /// read (the stored frame is always checked).
    pub verify: bool,
    /// A damaged record (its checksum fails, or it does not decode) is left
    /// out of its batch and named in `Batch::damaged`, instead of failing
    /// the batch. The batch is then smaller by one.
    pub skip_damaged: bool,
    /// Standard deviation of the PCA lighting alphas (0.1; 0 turns it off).
    pub lighting_std: f32,
    /// Start on the next epoch's batches while this one's last are still
    /// being made; for callers that go on with `advance_epoch` (else that
    /// work is thrown away).
    pub prefetch_next_epoch: bool,
    /// Only the first this many records of each epoch's order, all ranks
    /// together (None: the whole split). For scoring part of a split.
    pub limit: Option<usize>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            batch_size: 128,
            threads,
            prefetch: 2 * threads,
            mode: Mode::Train,
            output: Output::U8,
            crop: 224,
            seed: 0,
            order: Order::Random,
            rank: 0,
            world: 1,
            drop_last: false,
            verify: false,
            skip_damaged: false,
            lighting_std: 0.1,
            prefetch_next_epoch: false,
            limit: None,
        }
    }
}

/// The pixels of a batch.
#[derive(Debug)]
pub enum BatchData {
    /// views x crop x crop x 3, starting on a 4 KiB boundary.
    U8(AlignedBuf),
    /// views x 3 x crop x crop.
    F32(Vec<f32>),
}

impl BatchData {
    /// Crops `view` of `stored`, an image of `dataset`, into `slot` of this
    /// buffer, as uint8 HWC or as float32 CHW less the dataset's mean image.
    fn write_view(
        &mut self,
        stored: &mut Stored,
        dataset: &Dataset,
        view: &View,
        crop: usize,
        crop_px: &mut Vec<u8>,
        slot: std::ops::Range<usize>,
    ) -> Result<(), LoaderError> {
        match self {
            Self::U8(d) => stored.crop_u8(dataset.side, view, crop, &mut d[slot]),
            Self::F32(d) => {
                // `Loader::new` refuses float32 output without a mean.
                let Some(mean) = dataset.mean_planes.as_ref() else {
                    return Err(LoaderError::Config("no mean image".into()));
                };
                stored.crop_f32(mean, view, crop, crop_px, &mut d[slot]);
            }
        }
        Ok(())
    }

    /// Keeps the first `len` values: the views of the records that were
    /// read, when damaged ones were skipped.
    fn keep(&mut self, len: usize) {
        match self {
            Self::U8(d) => d.resize(len),
            Self::F32(d) => d.truncate(len),
        }
    }
}

/// Idle batch buffers, shared by the loaders of successive epochs so that
/// each epoch does not allocate and zero its buffers anew (at 256 x 224 x
/// 224 x 3 bytes a batch, that costs about as much as decoding the images).
#[derive(Clone)]
pub struct BufferPool {
    tx: Sender<BatchData>,
    rx: Receiver<BatchData>,
}

impl BufferPool {
    /// Keeps at most `capacity` idle buffers; more are freed.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        Self { tx, rx }
    }

    /// A pool sized for one loader configuration.
    pub fn for_config(config: &LoaderConfig) -> Self {
        Self::new(config.prefetch + config.threads)
    }
}

/// One batch. Its buffer goes back to the pool when it is dropped.
pub struct Batch {
    pub epoch: u64,
    /// Position in the epoch (counting from batch 0, also when resumed).
    pub index: usize,
    pub records: Vec<RecordId>,
    pub labels: Vec<u32>,
    /// `views_per_image` views per record, record by record.
    pub views: Vec<View>,
    pub views_per_image: usize,
    pub data: BatchData,
    /// Records left out because they are damaged (`skip_damaged`), each
    /// as the error that names its shard and record.
    pub damaged: Vec<String>,
    recycle: Option<Sender<BatchData>>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(recycle) = self.recycle.take() {
            let data = std::mem::replace(&mut self.data, BatchData::U8(AlignedBuf::default()));
            let _ = recycle.try_send(data); // a full pool just frees it
        }
    }
}

/// A batch to make: (epoch, position in the epoch, records).
type Job = (u64, usize, Vec<RecordId>);
type Done = ((u64, usize), Result<Batch, LoaderError>);

/// Batches of one epoch, in order. Iterate it; drop it to stop; with
/// `prefetch_next_epoch`, `advance_epoch` moves on to the next epoch.
pub struct Loader {
    sampler: Sampler,
    epoch: u64,
    batches: Vec<Vec<RecordId>>,
    next: usize,
    issued: usize,
    /// The next epoch's batches, once its first jobs are out.
    ahead: Option<Vec<Vec<RecordId>>>,
    issued_ahead: usize,
    prefetch: usize,
    prefetch_next_epoch: bool,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// Finished batches by (epoch, position), until their turn.
    ready: BTreeMap<(u64, usize), Result<Batch, LoaderError>>,
    workers: Vec<JoinHandle<()>>,
    live: Arc<AtomicUsize>,
}

/// What every worker shares.
struct Shared {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    lighting: Option<Lighting>,
    pool: BufferPool,
}

impl Loader {
    /// The batches of `epoch` for this rank, from `start_batch` on.
    pub fn new(
        dataset: Arc<Dataset>,
        config: LoaderConfig,
        epoch: u64,
        start_batch: usize,
    ) -> Result<Self, LoaderError> {
        let pool = BufferPool::for_config(&config);
        Self::with_pool(dataset, config, pool, epoch, start_batch)
    }

    /// As `new`, taking batch buffers from (and returning them to) `pool`:
    /// pass the same pool to every epoch's loader.
    pub fn with_pool(
        dataset: Arc<Dataset>,
        config: LoaderConfig,
        pool: BufferPool,
        epoch: u64,
        start_batch: usize,
    ) -> Result<Self, LoaderError> {
        let sampler = check_config(&dataset, &config)?;
        let lighting = lighting_for(&dataset, &config)?;
        let batches = sampler.batches(epoch, 0);
        // At most `prefetch` jobs are out at once (see `issue`), so neither
        // channel ever blocks its sender; the bounds make that a property of
        // the types rather than of the bookkeeping.
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(config.prefetch);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<Done>(config.prefetch);
        let shared = Arc::new(Shared {
            dataset,
            lighting,
            pool,
            config: config.clone(),
        });
        let (workers, live) = spawn_workers(&shared, config.threads, &jobs_rx, &done_tx)?;
        let mut loader = Self {
            sampler,
            epoch,
            next: start_batch.min(batches.len()),
            issued: start_batch.min(batches.len()),
            batches,
            ahead: None,
            issued_ahead: 0,
            prefetch: config.prefetch,
            prefetch_next_epoch: config.prefetch_next_epoch,
            jobs: Some(jobs_tx),
            done: done_rx,
            ready: BTreeMap::new(),
            workers,
            live,
        };
        loader.issue();
        Ok(loader)
    }

    /// Batches left in this epoch.
    pub fn remaining(&self) -> usize {
        self.batches.len() - self.next
    }

    /// Worker threads still running (for tests of shutdown).
    pub fn live_workers(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }

    /// The epoch whose batches `next` hands out.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Moves on to batch 0 of the next epoch. Batches of this epoch not yet
    /// taken are skipped (those already being made are waited for and
    /// dropped). With `prefetch_next_epoch`, the first batches of the next
    /// epoch are typically made already.
    pub fn advance_epoch(&mut self) {
        self.batches.truncate(self.issued);
        while self.next().is_some() {}
        let ahead = match self.ahead.take() {
            Some(batches) => batches,
            None => self.sampler.batches(self.epoch + 1, 0),
        };
        self.epoch += 1;
        self.batches = ahead;
        self.next = 0;
        self.issued = self.issued_ahead;
        self.issued_ahead = 0;
        self.issue();
    }

    /// Turns `LoaderConfig::prefetch_next_epoch` on or off from now on.
    /// Turn it off when this epoch is the last, so that no work goes into
    /// batches nobody will take (at the end of training, that work would
    /// compete with the final evaluation).
    pub fn set_prefetch_next_epoch(&mut self, on: bool) {
        self.prefetch_next_epoch = on;
        self.issue();
    }

    /// Hands out jobs up to `prefetch` ahead of the batch awaited: this
    /// epoch's, then (with `prefetch_next_epoch`) the next one's.
    fn issue(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        while (self.issued - self.next) + self.issued_ahead < self.prefetch {
            let job = if self.issued < self.batches.len() {
                self.issued += 1;
                (
                    self.epoch,
                    self.issued - 1,
                    self.batches[self.issued - 1].clone(),
                )
            } else if self.prefetch_next_epoch {
                let ahead = self
                    .ahead
                    .get_or_insert_with(|| self.sampler.batches(self.epoch + 1, 0));
                let Some(records) = ahead.get(self.issued_ahead) else {
                    return;
                };
                self.issued_ahead += 1;
                (self.epoch + 1, self.issued_ahead - 1, records.clone())
            } else {
                return;
            };
            if jobs.send(job).is_err() {
                return;
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, LoaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_within(None) {
            Ok(next) => next,
            Err(TimedOut) => unreachable!("no deadline, no time-out"),
        }
    }
}

/// `Loader::next_within` gave up waiting; nothing was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl Loader {
    /// As `next`, waiting at most `timeout` (None: as long as it takes)
    /// for the batch. `Err(TimedOut)` leaves the loader as it was, to be
    /// asked again: for a caller that must look at something else while it
    /// waits (an interpreter checking for Ctrl-C).
    pub fn next_within(
        &mut self,
        timeout: Option<std::time::Duration>,
    ) -> Result<Option<Result<Batch, LoaderError>>, TimedOut> {
        if self.next >= self.batches.len() {
            return Ok(None);
        }
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let result = loop {
            if let Some(result) = self.ready.remove(&(self.epoch, self.next)) {
                break result;
            }
            let received = match deadline {
                None => self.done.recv().map_err(|_| None),
                Some(deadline) => self.done.recv_deadline(deadline).map_err(|e| match e {
                    crossbeam_channel::RecvTimeoutError::Timeout => Some(TimedOut),
                    crossbeam_channel::RecvTimeoutError::Disconnected => None,
                }),
            };
            match received {
                Ok((key, result)) => {
                    self.ready.insert(key, result);
                }
                Err(Some(timed_out)) => return Err(timed_out),
                Err(None) => break Err(LoaderError::Worker("every worker has stopped".into())),
            }
        };
        self.next += 1;
        self.issue();
        Ok(Some(result))
    }

    /// Batches this rank gets in the current epoch, from its start.
    pub fn batches_this_epoch(&self) -> usize {
        self.batches.len()
    }

    /// Records in those batches.
    pub fn records_this_epoch(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    /// Batches of the current epoch handed out so far (counting from the
    /// epoch's start, also when resumed): where a resumed loader starts.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.jobs = None; // workers see the channel close and return
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// Whether `config` can load from `dataset` (threads, prefetch, crop, the
/// rank's share, and the statistics float32 output and lighting need),
/// with the sampler it implies: what `Loader::new` checks before it starts
/// a thread, for callers that want the error before the first epoch.
pub fn check_config(dataset: &Dataset, config: &LoaderConfig) -> Result<Sampler, LoaderError> {
    if config.threads == 0 || config.prefetch == 0 || config.crop > dataset.side {
        return Err(LoaderError::Config(format!(
            "threads and prefetch must be at least 1 and the crop ({}) at most the stored side ({})",
            config.crop, dataset.side
        )));
    }
    lighting_for(dataset, config)?;
    if config.output == Output::F32 && dataset.mean.is_none() {
        return Err(LoaderError::Config(
            "float32 output subtracts the mean image: run `pipeline stats` first (no mean.npy)"
                .into(),
        ));
    }
    Ok(Sampler::new(
        dataset.shard_lens(),
        config.seed,
        config.order,
        (config.rank, config.world),
        config.batch_size,
        config.drop_last,
    )?
    .first(config.limit))
}

/// Starts `threads` workers that build the batches `jobs` asks for and
/// send them to `done`. Returns their handles and the count of those
/// still running, which each lowers as it exits.
fn spawn_workers(
    shared: &Arc<Shared>,
    threads: usize,
    jobs: &crossbeam_channel::Receiver<Job>,
    done: &crossbeam_channel::Sender<Done>,
) -> Result<(Vec<JoinHandle<()>>, Arc<AtomicUsize>), LoaderError> {
    let live = Arc::new(AtomicUsize::new(0));
    let workers = (0..threads)
        .map(|i| {
            let (shared, jobs, done, live) =
                (shared.clone(), jobs.clone(), done.clone(), live.clone());
            live.fetch_add(1, Ordering::SeqCst);
            std::thread::Builder::new()
                .name(format!("loader-{i}"))
                .spawn(move || {
                    worker(&shared, &jobs, &done);
                    live.fetch_sub(1, Ordering::SeqCst);
                })
                .map_err(|e| LoaderError::Worker(format!("cannot start a thread: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((workers, live))
}

fn lighting_for(dataset: &Dataset, config: &LoaderConfig) -> Result<Option<Lighting>, LoaderError> {
    if config.mode != Mode::Train || config.lighting_std == 0.0 {
        return Ok(None);
    }
    let stats = dataset.stats.as_ref().ok_or_else(|| {
        LoaderError::Config(
            "PCA lighting needs the RGB eigen pairs: run `pipeline stats` first (no stats.json), \
             or set the lighting std to 0"
                .into(),
        )
    })?;
    Ok(Some(Lighting::from_stats(stats, config.lighting_std)))
}

fn worker(shared: &Shared, jobs: &Receiver<Job>, done: &Sender<Done>) {
    let mut decoder = match RecordDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            // Report on every job we take, so that no batch is waited for in vain.
            for (epoch, index, _) in jobs.iter() {
                let error = LoaderError::Worker(format!("zstd: {e}"));
                let _ = done.send(((epoch, index), Err(error)));
            }
            return;
        }
    };
    // Decoded images land on a page boundary (see aligned.rs).
    let mut image = AlignedBuf::zeroed(shared.dataset.side * shared.dataset.side * 3);
    for (epoch, index, records) in jobs.iter() {
        let result = catch_unwind(AssertUnwindSafe(|| {
            build_batch(shared, &mut decoder, &mut image, epoch, index, records)
        }))
        .unwrap_or_else(|panic| {
            let text = crate::panics::message(&*panic).unwrap_or_else(|| "panic".into());
            Err(LoaderError::Worker(text))
        });
        if done.send(((epoch, index), result)).is_err() {
            return;
        }
    }
}

fn build_batch(
    shared: &Shared,
    decoder: &mut RecordDecoder,
    image: &mut [u8],
    epoch: u64,
    index: usize,
    records: Vec<RecordId>,
) -> Result<Batch, LoaderError> {
    let config = &shared.config;
    let dataset = &shared.dataset;
    let (side, crop) = (dataset.side, config.crop);
    let per_image = config.mode.views_per_image();
    let views_total = records.len() * per_image;
    let mut data = take_buffer(shared, views_total * crop * crop * 3);
    let mut views = Vec::with_capacity(views_total);
    let mut labels = Vec::with_capacity(records.len());
    // Each image's draws are keyed by its position in the whole epoch's
    // order (rank r's j-th record is the epoch's record r + world j), so
    // that data-parallel ranks augment each record as one process would.
    let epoch_seed = mix(mix(config.seed, epoch), 0);
    // One view per image and no checksum: unfilter only what the crop
    // reads, while copying it (augment::crop_u8_filtered); float32 output
    // then normalises that crop from `crop_px`, which stays in L2.
    let fused = per_image == 1 && !config.verify;
    let mut crop_px = Vec::new();
    let mut kept = Vec::with_capacity(records.len());
    let mut damaged = Vec::new();
    for (i, &id) in records.iter().enumerate() {
        let shard = &dataset.shards[id.shard as usize];
        let read = read_stored(
            decoder,
            shard,
            id.index as usize,
            image,
            fused,
            config.verify,
        );
        let mut stored = match read {
            Ok(stored) => stored,
            Err(e @ ShardError::BadRecord { .. }) if config.skip_damaged => {
                damaged.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        kept.push(id);
        labels.push(shard.records()[id.index as usize].label);
        let position = ((index * config.batch_size + i) * config.world + config.rank) as u64;
        let mut rng = SplitMix64::new(mix(epoch_seed, position));
        for view in augment::views(config.mode, side, crop, shared.lighting.as_ref(), &mut rng) {
            let slot = views.len() * crop * crop * 3..(views.len() + 1) * crop * crop * 3;
            data.write_view(&mut stored, dataset, &view, crop, &mut crop_px, slot)?;
            views.push(view);
        }
    }
    if !damaged.is_empty() {
        data.keep(views.len() * crop * crop * 3);
    }
    Ok(Batch {
        epoch,
        index,
        records: kept,
        labels,
        views,
        views_per_image: per_image,
        data,
        damaged,
        recycle: Some(shared.pool.tx.clone()),
    })
}

/// A record's pixels, as a batch reads them.
enum Stored<'a> {
    /// Unfiltered and checked: where they lie (a mapped raw shard), or
    /// decoded into the worker's image buffer.
    Pixels(&'a [u8]),
    /// Decoded into the worker's buffer with the pixel filter still in
    /// place, for a crop that undoes it only where it reads.
    Filtered(&'a mut [u8], PixelFilter),
}

impl Stored<'_> {
    /// `view` of the image as uint8 HWC into `dst` (crop x crop x 3).
    fn crop_u8(&mut self, side: usize, view: &View, crop: usize, dst: &mut [u8]) {
        match self {
            Self::Filtered(image, filter) => {
                augment::crop_u8_filtered(image, *filter, side, view, crop, dst)
            }
            Self::Pixels(pixels) => augment::crop_u8(pixels, side, view, crop, dst),
        }
    }

    /// `view` of the image as float32 CHW less the mean image, into `dst`.
    /// A filtered image is cropped to uint8 in `crop_px` first (it stays
    /// in L2), undoing the filter only where the crop reads.
    fn crop_f32(
        &mut self,
        mean: &MeanPlanes,
        view: &View,
        crop: usize,
        crop_px: &mut Vec<u8>,
        dst: &mut [f32],
    ) {
        match self {
            Self::Filtered(image, filter) => {
                crop_px.resize(crop * crop * 3, 0);
                augment::crop_u8_filtered(image, *filter, mean.side(), view, crop, crop_px);
                normalise::u8_crop_to_f32_chw(crop_px, mean, view, crop, dst);
            }
            Self::Pixels(pixels) => normalise::to_f32_chw(pixels, mean, view, crop, dst),
        }
    }
}

/// Reads record `index` of `shard`: a mapped raw shard's image where it
/// lies, no copy; any other into `image`, with its filter left in place
/// when `keep_filter` (and the pixels then not checked: the frame is).
fn read_stored<'a>(
    decoder: &mut RecordDecoder,
    shard: &'a ShardReader,
    index: usize,
    image: &'a mut [u8],
    keep_filter: bool,
    verify: bool,
) -> Result<Stored<'a>, ShardError> {
    if let Some(pixels) = shard.mapped_pixels(index, verify) {
        return pixels.map(Stored::Pixels);
    }
    if keep_filter {
        let filter = decoder.decode_filtered(shard, index, image)?;
        return Ok(Stored::Filtered(image, filter));
    }
    decoder.decode(shard, index, image, verify)?;
    Ok(Stored::Pixels(image))
}

/// A recycled buffer of the right kind, or a new one; sized to `len` values.
fn take_buffer(shared: &Shared, len: usize) -> BatchData {
    let wanted_f32 = shared.config.output == Output::F32;
    let mut data = match shared.pool.rx.try_recv() {
        Ok(data) => data,
        Err(_) if wanted_f32 => BatchData::F32(Vec::new()),
        Err(_) => BatchData::U8(AlignedBuf::default()),
    };
    match &mut data {
        BatchData::U8(v) if !wanted_f32 => v.resize(len),
        BatchData::F32(v) if wanted_f32 => v.resize(len, 0.0),
        _ => {
            data = if wanted_f32 {
                BatchData::F32(vec![0.0; len])
            } else {
                BatchData::U8(AlignedBuf::zeroed(len))
            }
        }
    }
    data
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::shard::Codec;
    use crate::ingest::codec::PreprocessOptions;
    use crate::ingest::make_shards::{make_shards, ShardsConfig};

    pub(crate) const SIDE: usize = 32;
    pub(crate) const CROP: usize = 24;

    /// A shard folder of 3 classes x 9 textured PNGs (side 32), with stats.
    pub(crate) fn dataset() -> (tempfile::TempDir, Arc<Dataset>) {
        dataset_with(Codec::Zstd)
    }

    /// `dataset()` with records stored by `codec`.
    pub(crate) fn dataset_with(codec: Codec) -> (tempfile::TempDir, Arc<Dataset>) {
        let dir = tempfile::tempdir().expect("tempdir");
        for class in 0..3u32 {
            let d = dir.path().join("tree/train").join(format!("n{class}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            for k in 0..9u32 {
                let img = image::RgbImage::from_fn(40, 32, |x, y| {
                    image::Rgb([
                        (x * 6 + k * 9) as u8,
                        (y * 7 + class * 50) as u8,
                        ((x ^ y) * 5) as u8,
                    ])
                });
                img.save(d.join(format!("{k}.png"))).expect("png");
            }
        }
        let mut config = ShardsConfig::new(dir.path().join("tree"), dir.path().join("shards"));
        config.shard_size = 4;
        config.jobs = 1;
        config.codec = codec;
        config.preprocess = PreprocessOptions {
            side: SIDE,
            ..Default::default()
        };
        make_shards(&config, &crate::progress::Silent).expect("shards");
        let (stats, mean) =
            crate::stats::compute(&config.out, &crate::progress::Silent).expect("stats");
        crate::stats::write(&config.out, &stats, &mean).expect("write stats");
        let data = Arc::new(Dataset::open(&config.out, Split::Train).expect("open"));
        (dir, data)
    }

    fn config(threads: usize, output: Output) -> LoaderConfig {
        LoaderConfig {
            batch_size: 5,
            threads,
            prefetch: 3,
            output,
            crop: CROP,
            seed: 7,
            ..Default::default()
        }
    }

    fn collect(loader: Loader) -> Vec<Batch> {
        loader.map(|b| b.expect("batch")).collect()
    }

    fn u8_data(b: &Batch) -> &[u8] {
        match &b.data {
            BatchData::U8(d) => d,
            BatchData::F32(_) => panic!("expected u8"),
        }
    }

    fn f32_data(b: &Batch) -> &[f32] {
        match &b.data {
            BatchData::F32(d) => d,
            BatchData::U8(_) => panic!("expected f32"),
        }
    }

    /// Also with frames read by pread instead of from the memory map.
    #[test]
    fn batches_are_the_same_for_any_thread_count_and_follow_the_sampler() {
        let (dir, data) = dataset();
        let pread = Dataset::open_with(&dir.path().join("shards"), Split::Train, ReadMode::Pread);
        let pread = Arc::new(pread.expect("open"));
        assert_eq!(
            (data.read_mode(), pread.read_mode()),
            (ReadMode::Map, ReadMode::Pread)
        );
        let one = collect(Loader::new(data.clone(), config(1, Output::U8), 2, 0).expect("loader"));
        let three =
            collect(Loader::new(data.clone(), config(3, Output::U8), 2, 0).expect("loader"));
        let three_pread = collect(Loader::new(pread, config(3, Output::U8), 2, 0).expect("loader"));
        assert_eq!(one.len(), 6); // 27 records in batches of 5
        for b in [&three, &three_pread] {
            for (a, b) in one.iter().zip(b) {
                assert_eq!(
                    (a.index, &a.records, &a.labels, &a.views),
                    (b.index, &b.records, &b.labels, &b.views)
                );
                assert_eq!(u8_data(a), u8_data(b));
            }
        }
        let sampler =
            Sampler::new(data.shard_lens(), 7, Order::Random, (0, 1), 5, false).expect("s");
        let expected: Vec<Vec<RecordId>> = sampler.batches(2, 0);
        assert_eq!(
            one.iter().map(|b| b.records.clone()).collect::<Vec<_>>(),
            expected
        );
        for b in &one {
            assert_eq!(
                b.labels,
                b.records.iter().map(|&r| data.label(r)).collect::<Vec<_>>()
            );
        }
        let next_epoch = collect(Loader::new(data, config(2, Output::U8), 3, 0).expect("loader"));
        assert_ne!(next_epoch[0].records, one[0].records);
    }

    /// The uint8 crops (unfiltered only where the crop reads) are the crops
    /// of the fully decoded images, and float32 output is those crops
    /// normalised.
    #[test]
    fn u8_crops_are_crops_of_the_decoded_images() {
        let (_dir, data) = dataset();
        let u8s = collect(Loader::new(data.clone(), config(2, Output::U8), 1, 0).expect("loader"));
        let f32s =
            collect(Loader::new(data.clone(), config(2, Output::F32), 1, 0).expect("loader"));
        let mut decoder = RecordDecoder::new().expect("decoder");
        let mut image = vec![0u8; SIDE * SIDE * 3];
        let (mut want, mut norm) = (vec![0u8; CROP * CROP * 3], vec![0f32; CROP * CROP * 3]);
        for (b, f) in u8s.iter().zip(&f32s) {
            let BatchData::F32(fdata) = &f.data else {
                panic!("f32")
            };
            for (i, (&id, view)) in b.records.iter().zip(&b.views).enumerate() {
                data.decode(id, &mut decoder, &mut image).expect("decode");
                augment::crop_u8(&image, SIDE, view, CROP, &mut want);
                let got = &u8_data(b)[i * CROP * CROP * 3..][..CROP * CROP * 3];
                assert_eq!(got, &want[..], "batch {} view {i}", b.index);
                let mean = data.mean_planes().expect("mean");
                normalise::u8_crop_to_f32_chw(got, mean, view, CROP, &mut norm);
                assert_eq!(&fdata[i * CROP * CROP * 3..][..CROP * CROP * 3], &norm[..]);
            }
        }
    }

    #[test]
    fn a_shared_pool_hands_buffers_to_the_next_epoch() {
        let (_dir, data) = dataset();
        let c = config(2, Output::U8);
        let pool = BufferPool::for_config(&c);
        let first =
            collect(Loader::with_pool(data.clone(), c.clone(), pool.clone(), 0, 0).expect("l"));
        let addresses: Vec<*const u8> = first.iter().map(|b| u8_data(b).as_ptr()).collect();
        drop(first);
        let second = collect(Loader::with_pool(data.clone(), c.clone(), pool, 1, 0).expect("l"));
        let reused = second
            .iter()
            .filter(|b| addresses.contains(&u8_data(b).as_ptr()))
            .count();
        assert!(reused >= 1, "no buffer came back from epoch 0");
        let fresh = collect(Loader::new(data, c, 1, 0).expect("l"));
        for (a, b) in second.iter().zip(&fresh) {
            assert_eq!(
                u8_data(a),
                u8_data(b),
                "recycled buffers hold nothing stale"
            );
        }
    }

    /// Data-parallel ranks: batch k of 3 ranks of batch 2, together, holds
    /// the records, views (crop, mirror, lighting) and pixels of batch k of
    /// one process of batch 6; and each rank has that process's batch count.
    #[test]
    fn ranks_batches_together_are_one_processs_batches_pixel_for_pixel() {
        let (_dir, data) = dataset();
        let with = |rank, world, batch_size| LoaderConfig {
            rank,
            world,
            batch_size,
            drop_last: true,
            ..config(2, Output::U8)
        };
        let one = collect(Loader::new(data.clone(), with(0, 1, 6), 1, 0).expect("loader"));
        let ranks: Vec<Vec<Batch>> = (0..3)
            .map(|r| collect(Loader::new(data.clone(), with(r, 3, 2), 1, 0).expect("loader")))
            .collect();
        assert_eq!(one.len(), 4); // 27 records in batches of 6
        let view_bytes = CROP * CROP * 3;
        for (k, whole) in one.iter().enumerate() {
            let mut want: Vec<(RecordId, augment::View, Vec<u8>)> = (0..whole.records.len())
                .map(|i| {
                    let px = u8_data(whole)[i * view_bytes..][..view_bytes].to_vec();
                    (whole.records[i], whole.views[i], px)
                })
                .collect();
            let mut got = Vec::new();
            for part in &ranks {
                assert_eq!(part.len(), one.len());
                let b = &part[k];
                for i in 0..b.records.len() {
                    let px = u8_data(b)[i * view_bytes..][..view_bytes].to_vec();
                    got.push((b.records[i], b.views[i], px));
                }
            }
            want.sort_by_key(|w| w.0);
            got.sort_by_key(|g| g.0);
            assert!(want == got, "batch {k} differs");
        }
    }

    /// Raw shards of the same images give the batches zstd shards give,
    /// bit for bit: in every mode and output, read where they lie in the
    /// map or by pread, with the pixel check or without.
    #[test]
    fn raw_and_zstd_shards_of_the_same_images_give_identical_batches() {
        let (_zstd_dir, zstd) = dataset();
        let (raw_dir, raw) = dataset_with(Codec::Raw);
        let raw_shards = raw_dir.path().join("shards");
        let raw_pread = Dataset::open_with(&raw_shards, Split::Train, ReadMode::Pread);
        let raw_pread = Arc::new(raw_pread.expect("open"));
        assert_eq!(raw.read_mode(), ReadMode::Map, "small shards are mapped");
        assert_eq!(raw.manifest.codec, Codec::Raw);
        assert_eq!(raw.mean(), zstd.mean(), "the stats pass reads both alike");
        let (raw_stats, zstd_stats) = (raw.stats().expect("stats"), zstd.stats().expect("stats"));
        assert_ne!(
            raw_stats.manifest_id, zstd_stats.manifest_id,
            "two shard sets"
        );
        let figures = |s: &crate::stats::Stats| {
            (
                s.images,
                s.pixels,
                s.channel_mean,
                s.covariance,
                s.eigenvalues,
                s.eigenvectors,
            )
        };
        assert_eq!(figures(raw_stats), figures(zstd_stats));
        let bits = |b: &Batch| match &b.data {
            BatchData::U8(d) => d.iter().map(|&v| v as u32).collect::<Vec<_>>(),
            BatchData::F32(d) => d.iter().map(|v| v.to_bits()).collect(),
        };
        for mode in [Mode::Train, Mode::Center, Mode::Tencrop] {
            for output in [Output::U8, Output::F32] {
                for verify in [false, true] {
                    let config = LoaderConfig {
                        mode,
                        verify,
                        ..config(2, output)
                    };
                    let want =
                        collect(Loader::new(zstd.clone(), config.clone(), 1, 0).expect("zstd"));
                    for data in [&raw, &raw_pread] {
                        let got =
                            collect(Loader::new(data.clone(), config.clone(), 1, 0).expect("raw"));
                        assert_eq!(got.len(), want.len());
                        for (g, w) in got.iter().zip(&want) {
                            let what =
                                format!("{mode:?} {output:?} verify {verify}, batch {}", w.index);
                            assert_eq!((&g.records, &g.labels), (&w.records, &w.labels), "{what}");
                            assert_eq!(g.views, w.views, "{what}");
                            assert!(bits(g) == bits(w), "{what}: pixels differ");
                        }
                    }
                }
            }
        }
    }

    /// Waiting in short slices (as the Python binding does, to look for
    /// Ctrl-C in between) loses nothing: the same batches as `next`, and
    /// the position counts them.
    #[test]
    fn waiting_in_slices_gives_the_batches_next_gives() {
        let (_dir, data) = dataset();
        let want = collect(Loader::new(data.clone(), config(2, Output::U8), 3, 0).expect("loader"));
        let mut loader = Loader::new(data, config(2, Output::U8), 3, 0).expect("loader");
        assert_eq!(loader.batches_this_epoch(), want.len());
        let (mut got, mut timeouts) = (Vec::new(), 0);
        loop {
            match loader.next_within(Some(std::time::Duration::from_micros(50))) {
                Err(TimedOut) => timeouts += 1,
                Ok(None) => break,
                Ok(Some(batch)) => {
                    got.push(batch.expect("batch"));
                    assert_eq!(loader.position(), got.len());
                }
            }
        }
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (g.index, &g.records, u8_data(g)),
                (w.index, &w.records, u8_data(w))
            );
        }
        eprintln!("{timeouts} waits timed out");
    }

    #[test]
    fn resuming_mid_epoch_gives_the_same_remaining_batches() {
        let (_dir, data) = dataset();
        let whole =
            collect(Loader::new(data.clone(), config(2, Output::U8), 1, 0).expect("loader"));
        let rest = collect(Loader::new(data, config(2, Output::U8), 1, 4).expect("loader"));
        assert_eq!(rest.len(), 2);
        for (a, b) in whole[4..].iter().zip(&rest) {
            assert_eq!(
                (a.index, &a.records, &a.views),
                (b.index, &b.records, &b.views)
            );
            assert_eq!(u8_data(a), u8_data(b));
        }
    }

    #[test]
    fn u8_hand_over_with_its_views_gives_the_f32_batch() {
        let (_dir, data) = dataset();
        let bytes =
            collect(Loader::new(data.clone(), config(2, Output::U8), 0, 0).expect("loader"));
        let floats =
            collect(Loader::new(data.clone(), config(2, Output::F32), 0, 0).expect("loader"));
        // The mean image as stored (HWC), indexed here by hand rather than
        // through the loader's own mean planes.
        let mean = data.mean().expect("mean");
        let side = data.side();
        let n = CROP * CROP * 3;
        for (b, f) in bytes.iter().zip(&floats) {
            assert_eq!(b.views, f.views);
            assert!(
                b.views.iter().any(|v| v.light != [0.0; 3]),
                "lighting is on"
            );
            for (k, view) in b.views.iter().enumerate() {
                let (pixels, floats) = (&u8_data(b)[k * n..][..n], &f32_data(f)[k * n..][..n]);
                for (y, x, c) in window_indices(CROP) {
                    // Output column x of a mirrored view comes from stored
                    // column x0 + CROP - 1 - x.
                    let sx = usize::from(view.x) + if view.flip { CROP - 1 - x } else { x };
                    let sy = usize::from(view.y) + y;
                    let want = (f32::from(pixels[(y * CROP + x) * 3 + c])
                        - mean[(sy * side + sx) * 3 + c])
                        + view.light[c];
                    assert_eq!(
                        floats[(c * CROP + y) * CROP + x],
                        want,
                        "{view:?} {y} {x} {c}"
                    );
                }
            }
        }
    }

    /// Every (row, column, channel) of a crop x crop x 3 window.
    fn window_indices(crop: usize) -> impl Iterator<Item = (usize, usize, usize)> {
        (0..crop).flat_map(move |y| (0..crop).flat_map(move |x| (0..3).map(move |c| (y, x, c))))
    }

    #[test]
    fn ten_crop_keeps_ten_views_per_image_together() {
        let (_dir, data) = dataset();
        let c = LoaderConfig {
            mode: Mode::Tencrop,
            order: Order::Sequential,
            ..config(2, Output::U8)
        };
        let batches = collect(Loader::new(data, c, 0, 0).expect("loader"));
        let b = &batches[0];
        assert_eq!(b.views.len(), 50);
        assert_eq!(u8_data(b).len(), 50 * CROP * CROP * 3);
        // View 5 is view 0 mirrored: the same pixels, columns reversed.
        let n = CROP * CROP * 3;
        let (v0, v5) = (&u8_data(b)[..n], &u8_data(b)[5 * n..][..n]);
        for row in 0..CROP {
            for col in 0..CROP {
                let a = &v0[(row * CROP + col) * 3..][..3];
                let m = &v5[(row * CROP + CROP - 1 - col) * 3..][..3];
                assert_eq!(a, m);
            }
        }
    }

    /// One loader run through epochs with `advance_epoch`, the next epoch's
    /// jobs starting before this one ends (or not, when turned off for an
    /// epoch), gives the batches (records, views, pixels) of a fresh loader
    /// per epoch, for 1 and 3 threads.
    #[test]
    fn advancing_epochs_equals_a_fresh_loader_per_epoch() {
        let (_dir, data) = dataset();
        for threads in [1, 3] {
            let c = LoaderConfig {
                prefetch_next_epoch: true,
                ..config(threads, Output::U8)
            };
            let mut loader = Loader::new(data.clone(), c.clone(), 1, 0).expect("loader");
            for epoch in 1..4u64 {
                assert_eq!(loader.epoch(), epoch);
                // Epoch 2 runs as if it were the last: nothing is made ahead.
                loader.set_prefetch_next_epoch(epoch != 2);
                let got: Vec<Batch> = loader.by_ref().map(|b| b.expect("batch")).collect();
                let ahead = if epoch == 2 { 0 } else { c.prefetch };
                assert_eq!(loader.issued_ahead, ahead, "epoch {epoch}");
                let want = collect(
                    Loader::new(data.clone(), config(2, Output::U8), epoch, 0).expect("loader"),
                );
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.epoch, g.index), (w.epoch, w.index));
                    assert_eq!(g.records, w.records, "epoch {epoch}");
                    assert_eq!(g.views, w.views);
                    assert_eq!(u8_data(g), u8_data(w));
                }
                loader.advance_epoch();
            }
        }
    }

    /// `advance_epoch` before the end skips the rest of the epoch; with a
    /// resumed start too. The work ahead stays within `prefetch` jobs, so
    /// the workers still stop when the loader is dropped mid-way.
    #[test]
    fn advancing_mid_epoch_skips_the_rest_and_drop_still_joins() {
        let (_dir, data) = dataset();
        let c = LoaderConfig {
            prefetch_next_epoch: true,
            ..config(3, Output::U8)
        };
        let mut loader = Loader::new(data.clone(), c, 0, 2).expect("loader");
        let live = loader.live_workers();
        let first = loader.next().expect("one").expect("ok");
        assert_eq!((first.epoch, first.index), (0, 2));
        loader.advance_epoch();
        let next: Vec<Batch> = loader.by_ref().map(|b| b.expect("batch")).collect();
        let want = collect(Loader::new(data.clone(), config(1, Output::U8), 1, 0).expect("loader"));
        assert_eq!(
            next.iter().map(|b| &b.records).collect::<Vec<_>>(),
            want.iter().map(|b| &b.records).collect::<Vec<_>>()
        );
        assert_eq!(live.load(Ordering::SeqCst), 3);
        drop(loader); // jobs of epoch 2 are out by now
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn dropping_the_loader_mid_epoch_stops_every_worker() {
        let (_dir, data) = dataset();
        let mut loader = Loader::new(data, config(3, Output::F32), 0, 0).expect("loader");
        let live = loader.live_workers();
        let first = loader.next().expect("one").expect("ok");
        assert_eq!(live.load(Ordering::SeqCst), 3);
        drop(loader);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        drop(first); // its buffer's way home is closed: no panic, no hang
    }

    /// Flips one byte inside record 2 of train-00001.shard.
    fn damage_a_record(shards: &Path) {
        let path = shards.join("train-00001.shard");
        let reader = ShardReader::open(&path).expect("open");
        let rec = reader.records()[2].clone();
        drop(reader);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[rec.offset as usize + rec.len as usize / 2] ^= 0x55;
        std::fs::write(&path, bytes).expect("write");
    }

    /// On the hot path (no `verify`, uint8 fused crop) as well as with the
    /// pixel check and the float32 output.
    #[test]
    fn a_damaged_record_is_an_error_naming_shard_and_record() {
        let (dir, _) = dataset();
        let shards = dir.path().join("shards");
        damage_a_record(&shards);
        let ways = [
            (ReadMode::Map, false, Output::U8),
            (ReadMode::Pread, false, Output::U8),
            (ReadMode::Map, true, Output::U8),
            (ReadMode::Map, false, Output::F32),
        ];
        for (read, verify, output) in ways {
            let data = Arc::new(Dataset::open_with(&shards, Split::Train, read).expect("open"));
            let c = LoaderConfig {
                verify,
                order: Order::Sequential,
                ..config(2, output)
            };
            let results: Vec<_> = Loader::new(data, c, 0, 0).expect("loader").collect();
            assert_eq!(results.len(), 6, "every batch is delivered, good or bad");
            let errors: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .map(|e| e.to_string())
                .collect();
            assert_eq!(errors.len(), 1, "{read:?}: {errors:?}");
            assert!(
                errors[0].contains("train-00001.shard: record 2"),
                "{read:?}: {}",
                errors[0]
            );
        }
    }

    /// `skip_damaged`: the batch that held the record comes one shorter,
    /// names it, and every other image is what it was before the damage.
    #[test]
    fn a_skipped_damaged_record_leaves_the_rest_of_its_batch_as_it_was() {
        let (dir, data) = dataset();
        let shards = dir.path().join("shards");
        let c = LoaderConfig {
            order: Order::Sequential,
            skip_damaged: true,
            ..config(2, Output::U8)
        };
        let clean = collect(Loader::new(data, c.clone(), 0, 0).expect("loader"));
        damage_a_record(&shards);
        let data = Arc::new(Dataset::open(&shards, Split::Train).expect("open"));
        let skipped = collect(Loader::new(data, c, 0, 0).expect("loader"));
        assert_eq!(skipped.len(), clean.len());
        let view_len = CROP * CROP * 3;
        let mut left_out = Vec::new();
        for (a, b) in clean.iter().zip(&skipped) {
            assert_eq!(u8_data(b).len(), b.views.len() * view_len);
            assert_eq!(
                (b.labels.len(), b.records.len()),
                (b.views.len(), b.views.len())
            );
            for (j, id) in b.records.iter().enumerate() {
                let i = a
                    .records
                    .iter()
                    .position(|r| r == id)
                    .expect("a record of the batch");
                assert_eq!(b.views[j], a.views[i]);
                assert_eq!(b.labels[j], a.labels[i]);
                assert_eq!(
                    u8_data(b)[j * view_len..][..view_len],
                    u8_data(a)[i * view_len..][..view_len]
                );
            }
            left_out.extend(b.damaged.iter().cloned());
            assert_eq!(a.records.len() - b.records.len(), b.damaged.len());
        }
        assert_eq!(left_out.len(), 1, "{left_out:?}");
        assert!(
            left_out[0].contains("train-00001.shard: record 2"),
            "{}",
            left_out[0]
        );
    }

    #[test]
    fn missing_statistics_are_named() {
        let (dir, _) = dataset();
        let shards = dir.path().join("shards");
        std::fs::remove_file(shards.join("mean.npy")).expect("rm");
        std::fs::remove_file(shards.join("stats.json")).expect("rm");
        let data = Arc::new(Dataset::open(&shards, Split::Train).expect("open"));
        let err = Loader::new(data.clone(), config(1, Output::U8), 0, 0)
            .err()
            .expect("no stats");
        assert!(err.to_string().contains("stats.json"), "{err}");
        let c = LoaderConfig {
            mode: Mode::Center,
            ..config(1, Output::F32)
        };
        let err = Loader::new(data.clone(), c, 0, 0).err().expect("no mean");
        assert!(err.to_string().contains("mean.npy"), "{err}");
        let c = LoaderConfig {
            mode: Mode::Center,
            ..config(1, Output::U8)
        };
        assert_eq!(
            collect(Loader::new(data, c, 0, 0).expect("centre u8 needs neither")).len(),
            6
        );
    }
}
