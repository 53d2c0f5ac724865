//! `pipeline bench`'s measurement, as a library call so that any front end
//! (the CLI, the trainer, a Python binding) reports the same figures: the
//! loader's images/s over epochs run back to back, each epoch's rate, the
//! steady rate after the first, memory against the configured bound, and
//! both single-thread ceilings of the same shards (zstd decompression, or
//! checking and copying raw frames).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::loader::{BufferPool, Dataset, Loader, LoaderConfig, LoaderError, Output};
use crate::tools::inspect::{self, Ceilings, InspectError};

#[derive(Debug, thiserror::Error)]
pub enum LoaderBenchError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Ceilings(#[from] InspectError),
}

/// What one `pipeline bench` run measured (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct LoaderBench {
    /// Over the whole run, from starting the loader to its last batch.
    pub images_per_sec: f64,
    pub images_per_sec_each_epoch: Vec<f64>,
    /// Threads x the single-thread decode rate.
    pub ceiling_images_per_sec: f64,
    pub ratio: f64,
    /// The epochs after the first, together (None with one epoch).
    pub steady_images_per_sec: Option<f64>,
    pub steady_ratio: Option<f64>,
    /// How the shards store images: "zstd" or "raw".
    pub codec: String,
    /// What the decode ceiling measures (`Ceilings::decode_name`).
    pub decode: String,
    pub single_thread_decode_images_per_sec: f64,
    pub single_thread_read_and_decode_images_per_sec: f64,
    pub ratio_to_read_and_decode: f64,
    /// `threads` threads decoding at once (`Ceilings::parallel_decode`):
    /// the ceiling without the assumption that threads scale perfectly.
    pub parallel_ceiling_images_per_sec: f64,
    pub ratio_to_parallel_ceiling: f64,
    pub threads: usize,
    pub prefetch: usize,
    pub batch_size: usize,
    pub mode: String,
    pub output: String,
    pub images: u64,
    /// `map` or `pread`.
    pub read: String,
    pub peak_resident_mb_after_each_epoch: Vec<f64>,
    /// Heap and stacks: what the configuration bounds.
    pub peak_private_mb_after_each_epoch: Vec<f64>,
    pub mapped_file_mb_after_each_epoch: Vec<f64>,
    /// (prefetch + threads) x batch + 64 MB.
    pub memory_bound_mb: f64,
    /// Records left out as damaged (`skip_damaged`), each naming its shard
    /// and record.
    pub damaged_left_out: Vec<String>,
    /// The SIMD level the kernels ran at (`cpu::simd_level`).
    pub simd: String,
}

/// Frames the ceilings are measured on (~240 MB of ImageNet in memory).
const CEILING_FRAMES: usize = 2000;

/// Runs a loader over `dataset` (opened from `shards`) for `epochs` epochs
/// back to back, then measures the ceilings of the same shards.
pub fn measure(
    shards: &Path,
    dataset: Arc<Dataset>,
    config: &LoaderConfig,
    epochs: u64,
) -> Result<LoaderBench, LoaderBenchError> {
    let figures = run_epochs(&dataset, config, epochs)?;
    // After the loader, so that the peak memory above is the loader's: the
    // ceiling holds its frames in memory, and the allocator keeps much of
    // that resident after they are freed.
    let ceilings = inspect::ceilings(shards, &dataset.manifest, CEILING_FRAMES, config.threads)?;
    let threads = config.threads as f64;
    let ceiling_total = ceilings.decode * threads;
    let images = figures.images();
    let rate = images as f64 / figures.seconds;
    let steady = figures.steady_rate();
    Ok(LoaderBench {
        images_per_sec: rate,
        images_per_sec_each_epoch: figures.rates(),
        ceiling_images_per_sec: ceiling_total,
        ratio: rate / ceiling_total,
        steady_images_per_sec: steady,
        steady_ratio: steady.map(|r| r / ceiling_total),
        codec: dataset.manifest.codec.name().into(),
        decode: Ceilings::decode_name(dataset.manifest.codec).into(),
        single_thread_decode_images_per_sec: ceilings.decode,
        single_thread_read_and_decode_images_per_sec: ceilings.read_and_decode,
        ratio_to_read_and_decode: rate / (ceilings.read_and_decode * threads),
        parallel_ceiling_images_per_sec: ceilings.parallel_decode,
        ratio_to_parallel_ceiling: rate / ceilings.parallel_decode,
        threads: config.threads,
        prefetch: config.prefetch,
        batch_size: config.batch_size,
        mode: format!("{:?}", config.mode).to_lowercase(),
        output: format!("{:?}", config.output).to_lowercase(),
        images,
        read: format!("{:?}", dataset.read_mode()).to_lowercase(),
        peak_resident_mb_after_each_epoch: figures.resident_mb,
        peak_private_mb_after_each_epoch: figures.private_mb,
        mapped_file_mb_after_each_epoch: figures.mapped_mb,
        memory_bound_mb: memory_bound_mb(config),
        damaged_left_out: figures.damaged,
        simd: crate::cpu::simd_level().name().into(),
    })
}

/// (prefetch + threads) batches of the configured output, plus 64 MB.
pub fn memory_bound_mb(config: &LoaderConfig) -> f64 {
    let value_bytes = if config.output == Output::F32 { 4 } else { 1 };
    let batch_mb = (config.batch_size
        * config.mode.views_per_image()
        * config.crop
        * config.crop
        * 3
        * value_bytes) as f64
        / 1e6;
    (config.prefetch + config.threads) as f64 * batch_mb + 64.0
}

/// What `run_epochs` measured, one entry per epoch.
struct EpochFigures {
    /// From starting the loader to its last batch.
    seconds: f64,
    /// Images and seconds of each epoch alone: the first one also fills the
    /// pipeline, first touches the batch buffers and maps the shards' pages.
    epochs: Vec<(u64, f64)>,
    /// Peak resident set so far.
    resident_mb: Vec<f64>,
    /// Peak private memory so far (sampled at every batch).
    private_mb: Vec<f64>,
    /// Mapped file pages at the epoch's end.
    mapped_mb: Vec<f64>,
    /// Records the loader left out as damaged.
    damaged: Vec<String>,
}

/// Runs a loader for `epochs` epochs back to back and measures each.
fn run_epochs(
    dataset: &Arc<Dataset>,
    config: &LoaderConfig,
    epochs: u64,
) -> Result<EpochFigures, LoaderError> {
    let run_started = Instant::now();
    let pool = BufferPool::for_config(config);
    let mut loader = Loader::with_pool(dataset.clone(), config.clone(), pool, 0, 0)?;
    let mut f = EpochFigures {
        seconds: 0.0,
        epochs: Vec::new(),
        resident_mb: Vec::new(),
        private_mb: Vec::new(),
        mapped_mb: Vec::new(),
        damaged: Vec::new(),
    };
    let mut private_peak = 0f64;
    for epoch in 0..epochs {
        if epoch > 0 {
            loader.advance_epoch();
        }
        // As the trainer does: no batches made for an epoch after the last.
        loader.set_prefetch_next_epoch(epoch + 1 < epochs);
        let (started, mut images) = (Instant::now(), 0u64);
        for batch in loader.by_ref() {
            let batch = batch?;
            images += batch.records.len() as u64;
            f.damaged.extend(batch.damaged.iter().cloned());
            // /proc keeps no peak of private memory alone: sample it at
            // every batch (~20 us; a batch takes ~25 ms here).
            private_peak = private_peak.max(memory_mb("RssAnon:"));
        }
        f.epochs
            .push((images, started.elapsed().as_secs_f64().max(1e-9)));
        f.resident_mb.push(memory_mb("VmHWM:"));
        f.private_mb.push(private_peak);
        f.mapped_mb.push(memory_mb("RssFile:"));
    }
    // Before the drop, which waits for the batches made ahead.
    f.seconds = run_started.elapsed().as_secs_f64().max(1e-9);
    Ok(f)
}

impl EpochFigures {
    fn images(&self) -> u64 {
        self.epochs.iter().map(|&(images, _)| images).sum()
    }

    /// Images/s of each epoch alone.
    fn rates(&self) -> Vec<f64> {
        self.epochs.iter().map(|&(n, s)| n as f64 / s).collect()
    }

    /// Images/s of the epochs after the first, together: the steady state
    /// (None with a single epoch).
    fn steady_rate(&self) -> Option<f64> {
        let later = self.epochs.get(1..).filter(|l| !l.is_empty())?;
        let images: u64 = later.iter().map(|&(n, _)| n).sum();
        let seconds: f64 = later.iter().map(|&(_, s)| s).sum();
        Some(images as f64 / seconds)
    }
}

/// One memory figure of this process from /proc/self/status, in MB; 0
/// where there is none. `VmHWM:` is the peak resident memory so far;
/// `RssAnon:` the resident private memory (heap, stacks: what the loader's
/// configuration bounds); `RssFile:` resident pages of mapped files (the
/// shards in map mode, and this program's code).
fn memory_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
