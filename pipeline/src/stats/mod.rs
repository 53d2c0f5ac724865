//! `pipeline stats`: the per-pixel mean image and the RGB covariance with its
//! eigendecomposition (paper sections 2 and 4.1: mean subtraction, PCA
//! lighting), over the train split.
//!
//! Every sum is kept in integers: per-pixel sums of u8 values in u64 (the
//! channel sums are their totals), and per image the six channel products in
//! i64, merged in i128, in the offset form sum(x * (y - 128)) that the
//! AVX-512 kernel makes in one instruction a pair (128 * sum(x) is added back
//! at the end, from the exact channel sums).
//! Integer sums are exact, so the result is the same bit for bit for any
//! thread count and merge order, and nothing drifts over 10^11 pixels. Floating
//! point enters only at the end. Memory: one mean accumulator (side x side x 3
//! x 8 bytes, 1.5 MB) per thread, whatever the data set's size.
//!
//! `kernel`: the undo, sums and products of one image in one sweep;
//! `rgb_moments`: RGB sums and products (SIMD paths and the portable one).

pub mod kernel;
pub mod rgb_moments;

use std::path::Path;

use ndarray::Array2;
use ndarray_linalg::{Eigh, UPLO};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::format::manifest::{Manifest, ManifestError};
use crate::format::set;
use crate::format::shard::{PixelFilter, ReadMode, RecordDecoder, ShardError, ShardReader};
use crate::ingest::Split;
use crate::progress::Progress;

pub const MEAN_FILE: &str = "mean.npy";
pub const STATS_FILE: &str = "stats.json";

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{0}")]
    Data(String),
    #[error("eigendecomposition failed: {0}")]
    Linalg(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// stats.json or mean.npy that cannot be what `pipeline stats` wrote
    /// for these shards.
    #[error("{path}: {problem} (run `pipeline stats` again)")]
    Invalid {
        path: std::path::PathBuf,
        problem: StatsProblem,
    },
}

/// What is wrong with a stats.json or mean.npy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsProblem {
    #[error("a value is not finite")]
    NotFinite,
    #[error("eigenvalue {0} is negative")]
    NegativeEigenvalue(f64),
    #[error("the eigenvalues are not in descending order")]
    NotDescending,
    #[error("eigenvector {index} has length {length}, not 1")]
    NotUnit { index: usize, length: f64 },
    #[error("computed from shard set {stats}, but these shards are {shards}")]
    OtherShardSet { stats: String, shards: String },
    #[error("mean value {index} is {value}, outside 0..=255")]
    MeanOutOfRange { index: usize, value: f32 },
}

impl Stats {
    /// Checks what the loader relies on: finite values, eigenvalues
    /// descending and not below zero (beyond rounding: a grey data set has
    /// two that are zero up to float error), unit eigenvectors, and the
    /// shard set they were computed from.
    pub fn check(&self, manifest_id: &str) -> Result<(), StatsProblem> {
        let mut values = self
            .channel_mean
            .iter()
            .chain(self.covariance.iter().flatten())
            .chain(&self.eigenvalues)
            .chain(self.eigenvectors.iter().flatten());
        if values.any(|v| !v.is_finite()) {
            return Err(StatsProblem::NotFinite);
        }
        let rounding = 1e-6 * self.eigenvalues[0].abs().max(1.0);
        if let Some(&v) = self.eigenvalues.iter().find(|&&v| v < -rounding) {
            return Err(StatsProblem::NegativeEigenvalue(v));
        }
        if self.eigenvalues.windows(2).any(|w| w[1] > w[0] + rounding) {
            return Err(StatsProblem::NotDescending);
        }
        for (index, v) in self.eigenvectors.iter().enumerate() {
            let length = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if (length - 1.0).abs() > 1e-4 {
                return Err(StatsProblem::NotUnit { index, length });
            }
        }
        if self.manifest_id != manifest_id {
            return Err(StatsProblem::OtherShardSet {
                stats: self.manifest_id.clone(),
                shards: manifest_id.to_string(),
            });
        }
        Ok(())
    }
}

/// A mean image's values must be pixel means: finite, within 0..=255.
pub fn check_mean(mean: &[f32]) -> Result<(), StatsProblem> {
    for (index, &value) in mean.iter().enumerate() {
        if !value.is_finite() {
            return Err(StatsProblem::NotFinite);
        }
        if !(0.0..=255.0).contains(&value) {
            return Err(StatsProblem::MeanOutOfRange { index, value });
        }
    }
    Ok(())
}

/// What `stats.json` holds. Pixel units 0..255; the covariance is the
/// population covariance (divided by the pixel count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub images: u64,
    pub pixels: u64,
    pub channel_mean: [f64; 3],
    pub covariance: [[f64; 3]; 3],
    /// Descending.
    pub eigenvalues: [f64; 3],
    /// `eigenvectors[i]` is the unit eigenvector of `eigenvalues[i]`.
    pub eigenvectors: [[f64; 3]; 3],
    /// `id` of the manifest these statistics were computed from.
    pub manifest_id: String,
    pub height: u32,
    pub width: u32,
}

/// Exact sums over some images.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sums {
    images: u64,
    /// Per pixel and channel, HWC order.
    pixel: Vec<u64>,
    /// Per-pixel sums of the last `recent_images` images, not yet in `pixel`.
    /// Adding u8 into u16 lanes vectorises four times wider than into u64;
    /// 257 images of 255 still fit in a u16.
    recent: Vec<u16>,
    recent_images: u32,
    /// rr, rg, rb, gg, gb, bb, each as sum(x * (y - 128)).
    product: [i128; 6],
}

impl Sums {
    fn new(len: usize) -> Self {
        Self {
            images: 0,
            pixel: vec![0; len],
            recent: vec![0; len],
            recent_images: 0,
            product: [0; 6],
        }
    }

    #[cfg(test)]
    fn add_image(&mut self, px: &[u8]) {
        self.start_images(1);
        self.add_pixels(px);
    }

    /// Adds decompressed images (at most `kernel::MAX_IMAGES`) whose
    /// `filters` are still in place (rows of `row_len` bytes), undoing them
    /// on the way: in one sweep where `kernel::add_filtered` can, else each
    /// in place and then as `add_image`.
    fn add_filtered_images(
        &mut self,
        images: &mut [&mut [u8]],
        filters: &[PixelFilter],
        row_len: usize,
    ) {
        self.start_images(images.len() as u32);
        if filters.iter().all(|&f| f == PixelFilter::Delta) {
            let fused = match images {
                [a] => kernel::add_filtered(&[&**a], row_len, &mut self.recent),
                [a, b] => kernel::add_filtered(&[&**a, &**b], row_len, &mut self.recent),
                _ => None,
            };
            if let Some(p) = fused {
                self.add_products(p);
                return;
            }
        }
        for (data, filter) in images.iter_mut().zip(filters) {
            filter.undo(data, row_len, 3);
            self.add_pixels(data);
        }
    }

    /// The per-pixel sums and products of one image's (undone) pixels.
    fn add_pixels(&mut self, px: &[u8]) {
        add_widening(&mut self.recent, px);
        let (c, p) = crate::stats::rgb_moments::moments(px);
        self.add_products(crate::stats::rgb_moments::offset_form(p, c));
    }

    /// Counts `count` more images, first flushing the recent sums if they
    /// could not take that many more.
    fn start_images(&mut self, count: u32) {
        if self.recent_images + count > RECENT_MAX {
            self.flush();
        }
        self.images += count as u64;
        self.recent_images += count;
    }

    fn add_products(&mut self, p: [i64; 6]) {
        for (acc, v) in self.product.iter_mut().zip(p) {
            *acc += v as i128;
        }
    }

    /// r, g, b summed over every pixel (after `flush`).
    fn channel_sums(&self) -> [u128; 3] {
        let mut c = [0u128; 3];
        for rgb in self.pixel.chunks_exact(3) {
            for (acc, &v) in c.iter_mut().zip(rgb) {
                *acc += v as u128;
            }
        }
        c
    }

    /// Moves the recent per-pixel sums into `pixel`.
    fn flush(&mut self) {
        for (acc, recent) in self.pixel.iter_mut().zip(&mut self.recent) {
            *acc += *recent as u64;
            *recent = 0;
        }
        self.recent_images = 0;
    }

    fn merge(mut self, mut other: Self) -> Self {
        self.flush();
        other.flush();
        self.images += other.images;
        for (a, b) in self.pixel.iter_mut().zip(&other.pixel) {
            *a += b;
        }
        for i in 0..6 {
            self.product[i] += other.product[i];
        }
        self
    }
}

/// `acc[i] += px[i]`, u8 into u16 lanes: the compiler vectorises the loop,
/// 8 lanes wide for the baseline x86-64 (SSE2), 16 with AVX2 and 32 with
/// AVX-512BW, whose copies of the loop are picked at run time.
fn add_widening(acc: &mut [u16], px: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::SimdLevel;
        match crate::cpu::simd_level() {
            // SAFETY: `simd_level` is one this CPU has; the AVX-512 level
            // includes AVX-512BW.
            SimdLevel::Avx512 => return unsafe { add_widening_avx512(acc, px) },
            SimdLevel::Avx2 => return unsafe { add_widening_avx2(acc, px) },
            _ => {}
        }
    }
    add_widening_loop(acc, px);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn add_widening_avx512(acc: &mut [u16], px: &[u8]) {
    add_widening_loop(acc, px);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_widening_avx2(acc: &mut [u16], px: &[u8]) {
    add_widening_loop(acc, px);
}

#[inline(always)]
fn add_widening_loop(acc: &mut [u16], px: &[u8]) {
    for (a, &v) in acc.iter_mut().zip(px) {
        *a += v as u16;
    }
}

/// Images whose per-pixel sums fit u16 lanes: 257 * 255 = 65,535.
const RECENT_MAX: u32 = 257;

/// Records a stats thread takes from the shared counter at a time: few
/// enough to balance the threads, enough to keep the counter uncontended.
const RECORDS_PER_TASK: usize = 64;

/// One thread's running sums with its decoder, and a pixel buffer for each
/// image it sweeps at once.
struct Partial {
    sums: Sums,
    decoder: RecordDecoder,
    pixels: [Vec<u8>; kernel::MAX_IMAGES],
}

impl Partial {
    fn new(len: usize) -> Result<Self, StatsError> {
        Ok(Self {
            sums: Sums::new(len),
            decoder: RecordDecoder::new().map_err(|e| StatsError::Data(format!("zstd: {e}")))?,
            pixels: std::array::from_fn(|_| vec![0; len]),
        })
    }

    /// Decodes `records` (shard and index; at most `kernel::MAX_IMAGES`,
    /// the rest are not taken) and adds them in one sweep.
    fn add_records<'a>(
        &mut self,
        records: impl Iterator<Item = (&'a ShardReader, usize)>,
    ) -> Result<(), StatsError> {
        let mut filters = [PixelFilter::None; kernel::MAX_IMAGES];
        let (mut count, mut row_len) = (0, 0);
        for ((shard, index), (pixels, filter)) in
            records.zip(self.pixels.iter_mut().zip(&mut filters))
        {
            *filter = self.decoder.decode_filtered(shard, index, pixels)?;
            // Every shard of a set has the set's geometry (`set` checks).
            row_len = shard.header().row_len();
            count += 1;
        }
        let mut images = self.pixels.each_mut().map(|p| p.as_mut_slice());
        self.sums
            .add_filtered_images(&mut images[..count], &filters[..count], row_len);
        Ok(())
    }
}

/// Sums every record of `shards` on `threads` threads, each with one
/// accumulator: threads take the next `RECORDS_PER_TASK` records (in
/// global order) from a shared counter until none are left. One accumulator
/// per thread matters: each is 7.8 MB (u64 + u16 per pixel value), and
/// rayon's fold made one per split piece, up to 16 per 1,000-record shard,
/// whose zeroing and merging cost ~20% of a 4,000-image pass.
fn sum_records(
    shards: &[ShardReader],
    len: usize,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Sums, StatsError> {
    let starts: Vec<usize> = shards
        .iter()
        .scan(0, |acc, s| {
            let start = *acc;
            *acc += s.len();
            Some(start)
        })
        .collect();
    let total: usize = shards.iter().map(|s| s.len()).sum();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let locate = |global: usize| {
        let shard = starts.partition_point(|&s| s <= global) - 1;
        (&shards[shard], global - starts[shard])
    };
    let worker = || -> Result<Sums, StatsError> {
        let mut p = Partial::new(len)?;
        while !failed.load(Ordering::Relaxed) {
            let first = next.fetch_add(RECORDS_PER_TASK, Ordering::Relaxed);
            if first >= total {
                break;
            }
            let end = (first + RECORDS_PER_TASK).min(total);
            for at in (first..end).step_by(kernel::MAX_IMAGES) {
                let count = (end - at).min(kernel::MAX_IMAGES);
                if let Err(e) = p.add_records((at..at + count).map(locate)) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                progress.advance(count as u64);
            }
        }
        Ok(p.sums)
    };
    let partials: Vec<Result<Sums, StatsError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(StatsError::Data("a stats thread panicked".into())))
            })
            .collect()
    });
    partials
        .into_iter()
        .try_fold(Sums::new(len), |acc, partial| Ok(acc.merge(partial?)))
}

/// Reads the train split once and computes the statistics, reading frames
/// as `ReadMode::Auto` says.
pub fn compute(dir: &Path, progress: &dyn Progress) -> Result<(Stats, Vec<f32>), StatsError> {
    compute_with(dir, ReadMode::Auto, progress)
}

/// `compute`, reading frames as `read` says. Mapped shards are decompressed
/// where they lie in the page cache; `pread` first copies each frame out
/// (~5% of a single-thread pass on a Skylake-SP core).
pub fn compute_with(
    dir: &Path,
    read: ReadMode,
    progress: &dyn Progress,
) -> Result<(Stats, Vec<f32>), StatsError> {
    let manifest = Manifest::load(dir)?;
    let split = manifest.split(Split::Train).ok_or_else(|| {
        StatsError::Data(format!(
            "{}: the manifest has no train split",
            dir.display()
        ))
    })?;
    if split.images == 0 {
        return Err(StatsError::Data(format!(
            "{}: the train split is empty",
            dir.display()
        )));
    }
    let g = manifest.geometry;
    if g.channels != 3 {
        return Err(StatsError::Data(format!(
            "{}: images have {} channels; RGB statistics need 3",
            dir.display(),
            g.channels
        )));
    }
    let len = manifest.image_len();
    // Each file checked to be the one listed, with the set's geometry.
    let shards = set::open_split_read(dir, &manifest, Split::Train, read)?;
    let mut sums = sum_records(&shards, len, rayon::current_num_threads(), progress)?;
    sums.flush();
    let stats = finish(&sums, &manifest)?;
    let mean = sums
        .pixel
        .iter()
        .map(|&s| (s as f64 / sums.images as f64) as f32)
        .collect();
    Ok((stats, mean))
}

fn finish(sums: &Sums, manifest: &Manifest) -> Result<Stats, StatsError> {
    // Pixels in all: images x pixels per image.
    let n = sums.images as u128 * (sums.pixel.len() / 3) as u128;
    let idx = |a: usize, b: usize| match (a.min(b), a.max(b)) {
        (0, 0) => 0,
        (0, 1) => 1,
        (0, 2) => 2,
        (1, 1) => 3,
        (1, 2) => 4,
        _ => 5,
    };
    let channel = sums.channel_sums();
    let mut cov = [[0f64; 3]; 3];
    for (a, row) in cov.iter_mut().enumerate() {
        for (b, v) in row.iter_mut().enumerate() {
            // n * sum(xy) - sum(x) sum(y), exactly, then one rounding.
            // sum(xy) = sum(x (y - 128)) + 128 sum(x), x the pair's first.
            let first = a.min(b);
            let product = sums.product[idx(a, b)] + 128 * channel[first] as i128;
            let centred = n as i128 * product - channel[a] as i128 * channel[b] as i128;
            *v = centred as f64 / (n as f64 * n as f64);
        }
    }
    let (eigenvalues, eigenvectors) = eigen_descending(&cov)?;
    Ok(Stats {
        images: sums.images,
        pixels: n as u64,
        channel_mean: std::array::from_fn(|c| channel[c] as f64 / n as f64),
        covariance: cov,
        eigenvalues,
        eigenvectors,
        manifest_id: manifest.id.clone(),
        height: manifest.geometry.height,
        width: manifest.geometry.width,
    })
}

/// Eigen pairs of a symmetric 3x3 matrix (ndarray-linalg `eigh`, LAPACK),
/// largest eigenvalue first; each eigenvector's sign is fixed so that its
/// largest-magnitude component is positive, making the output canonical.
pub fn eigen_descending(m: &[[f64; 3]; 3]) -> Result<([f64; 3], [[f64; 3]; 3]), StatsError> {
    let a = Array2::from_shape_fn((3, 3), |(i, j)| m[i][j]);
    let (values, vectors) = a
        .eigh(UPLO::Lower)
        .map_err(|e| StatsError::Linalg(e.to_string()))?;
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| values[j].total_cmp(&values[i]));
    let eigenvalues = order.map(|i| values[i]);
    let eigenvectors = order.map(|i| {
        let v = [vectors[(0, i)], vectors[(1, i)], vectors[(2, i)]];
        let big = v
            .iter()
            .copied()
            .fold(0f64, |acc, x| if x.abs() > acc.abs() { x } else { acc });
        v.map(|x| if big < 0.0 { -x } else { x })
    });
    Ok((eigenvalues, eigenvectors))
}

/// Writes `mean.npy` (float32, HWC) and `stats.json` into `dir`, each
/// atomically.
pub fn write(dir: &Path, stats: &Stats, mean: &[f32]) -> Result<(), StatsError> {
    let shape = [stats.height as usize, stats.width as usize, 3];
    write_atomic(&dir.join(MEAN_FILE), &npy_f32(&shape, mean))?;
    let json = serde_json::to_string_pretty(stats).map_err(|e| StatsError::Data(e.to_string()))?;
    write_atomic(&dir.join(STATS_FILE), (json + "\n").as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StatsError> {
    crate::format::atomic::write(path, bytes).map_err(|source| StatsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// An NPY 1.0 file of little-endian float32 in C order.
pub fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Reads an NPY file written by `npy_f32` (or numpy: little-endian float32,
/// C order) and checks its shape.
pub fn read_npy_f32(path: &Path, shape: &[usize]) -> Result<Vec<f32>, StatsError> {
    let bytes = std::fs::read(path).map_err(|source| StatsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bad = |detail: &str| StatsError::Data(format!("{}: {detail}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        return Err(bad("not an NPY 1.x file"));
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(
        bytes
            .get(10..10 + header_len)
            .ok_or_else(|| bad("short header"))?,
    )
    .map_err(|_| bad("header is not text"))?;
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    if !header.contains("'descr': '<f4'")
        || !header.contains("'fortran_order': False")
        || !header.contains(&format!("'shape': ({})", dims.join(", ")))
    {
        return Err(bad(&format!(
            "expected float32 of shape {shape:?}, header says {}",
            header.trim()
        )));
    }
    let data = &bytes[10 + header_len..];
    if data.len() != shape.iter().product::<usize>() * 4 {
        return Err(bad("data length does not match the shape"));
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    fn valid_stats() -> Stats {
        let r = std::f64::consts::FRAC_1_SQRT_2;
        Stats {
            images: 10,
            pixels: 640,
            channel_mean: [120.0, 110.0, 100.0],
            covariance: [[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]],
            eigenvalues: [3.0, 2.0, 0.0],
            eigenvectors: [[1.0, 0.0, 0.0], [0.0, r, r], [0.0, r, -r]],
            manifest_id: "set-a".into(),
            height: 8,
            width: 8,
        }
    }

    #[test]
    fn stats_files_that_cannot_be_ours_are_named_by_their_problem() {
        assert_eq!(valid_stats().check("set-a"), Ok(()));
        // A grey set's zero eigenvalues come out a hair below zero.
        let mut grey = valid_stats();
        grey.eigenvalues[2] = -1e-9;
        assert_eq!(grey.check("set-a"), Ok(()));
        type Spoil = fn(&mut Stats);
        let cases: [(Spoil, StatsProblem); 5] = [
            (
                |s| s.eigenvalues[2] = -0.5,
                StatsProblem::NegativeEigenvalue(-0.5),
            ),
            (
                |s| s.eigenvalues = [1.0, 2.0, 0.0],
                StatsProblem::NotDescending,
            ),
            (|s| s.covariance[1][2] = f64::NAN, StatsProblem::NotFinite),
            (
                |s| s.eigenvectors[1] = [0.0, 1.0, 1.0],
                StatsProblem::NotUnit {
                    index: 1,
                    length: 2f64.sqrt(),
                },
            ),
            (
                |s| s.manifest_id = "set-b".into(),
                StatsProblem::OtherShardSet {
                    stats: "set-b".into(),
                    shards: "set-a".into(),
                },
            ),
        ];
        for (spoil, problem) in cases {
            let mut stats = valid_stats();
            spoil(&mut stats);
            assert_eq!(stats.check("set-a"), Err(problem));
        }
    }

    #[test]
    fn a_mean_image_must_hold_pixel_means() {
        assert_eq!(check_mean(&[0.0, 127.5, 255.0]), Ok(()));
        assert_eq!(check_mean(&[1.0, f32::NAN]), Err(StatsProblem::NotFinite));
        assert_eq!(
            check_mean(&[1.0, 2.0, -3.0]),
            Err(StatsProblem::MeanOutOfRange {
                index: 2,
                value: -3.0
            })
        );
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn eigen_of_a_diagonal_matrix_is_sorted_axes() {
        let (values, vectors) =
            eigen_descending(&[[2.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0]]).expect("eigh");
        assert_eq!(values, [5.0, 2.0, 1.0]);
        assert_eq!(vectors, [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]);
    }

    #[test]
    fn eigen_known_answer() {
        // [[4,1,0],[1,4,0],[0,0,1]]: 5 with (1,1,0)/sqrt2, 3 with
        // (1,-1,0)/sqrt2, 1 with (0,0,1), worked out by hand.
        let (values, vectors) =
            eigen_descending(&[[4.0, 1.0, 0.0], [1.0, 4.0, 0.0], [0.0, 0.0, 1.0]]).expect("eigh");
        let r = std::f64::consts::FRAC_1_SQRT_2;
        for (got, want) in values.iter().zip([5.0, 3.0, 1.0]) {
            assert!(close(*got, want), "{values:?}");
        }
        for (got, want) in vectors
            .iter()
            .zip([[r, r, 0.0], [r, -r, 0.0], [0.0, 0.0, 1.0]])
        {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "{vectors:?}");
            }
        }
    }

    /// Threads pull records from a shared counter: any thread count gives
    /// the same integers, and every record is counted once.
    #[test]
    fn record_sums_are_the_same_for_any_thread_count() {
        let (dir, data) = crate::loader::tests::dataset();
        let out = dir.path().join("shards");
        let manifest = Manifest::load(&out).unwrap();
        let shards: Vec<ShardReader> = manifest
            .split(Split::Train)
            .unwrap()
            .shards
            .iter()
            .map(|s| ShardReader::open(&out.join(&s.file)).unwrap())
            .collect();
        assert!(shards.len() > 2, "several shards");
        let len = manifest.image_len();
        let mut one = sum_records(&shards, len, 1, &Silent).unwrap();
        let mut three = sum_records(&shards, len, 3, &Silent).unwrap();
        one.flush();
        three.flush();
        assert_eq!(one.images as usize, data.len());
        assert_eq!(one, three);
    }

    #[test]
    fn sums_merge_in_any_order_to_the_same_integers() {
        let images: Vec<Vec<u8>> = (0..6u32)
            .map(|k| (0..12u32).map(|i| (i * 53 + k * 101) as u8).collect())
            .collect();
        let mut whole = Sums::new(12);
        images.iter().for_each(|im| whole.add_image(im));
        whole.flush();
        let mut a = Sums::new(12);
        let mut b = Sums::new(12);
        images[..2].iter().for_each(|im| a.add_image(im));
        images[2..].iter().for_each(|im| b.add_image(im));
        assert_eq!(b.clone().merge(a.clone()), whole);
        assert_eq!(a.merge(b), whole);
        assert_eq!(
            whole.pixel[0],
            images.iter().map(|im| im[0] as u64).sum::<u64>()
        );
    }

    #[test]
    fn filtered_images_add_up_as_their_pixels_do() {
        use crate::rng::SplitMix64;
        let mut rng = SplitMix64::new(3);
        // 64 pixels wide: the fused kernel where the CPU has it; 20 wide:
        // always the undo-then-add path. Images one at a time and two at a
        // time, both filtered and one of each (which no kernel takes).
        for (width, height) in [(64usize, 4usize), (20, 3)] {
            let row_len = width * 3;
            let mut plain = Sums::new(row_len * height);
            let mut filtered = Sums::new(row_len * height);
            let delta = |px: &[u8]| {
                let mut data = Vec::new();
                PixelFilter::Delta.apply(px, row_len, 3, &mut data);
                data
            };
            for _ in 0..3 {
                let px: Vec<Vec<u8>> = (0..2)
                    .map(|_| {
                        (0..row_len * height)
                            .map(|_| rng.next_u64() as u8)
                            .collect()
                    })
                    .collect();
                let (mut a, mut b) = (delta(&px[0]), delta(&px[1]));
                filtered.add_filtered_images(&mut [&mut a], &[PixelFilter::Delta], row_len);
                let (mut a, mut raw) = (delta(&px[0]), px[1].clone());
                filtered.add_filtered_images(
                    &mut [&mut a, &mut raw],
                    &[PixelFilter::Delta, PixelFilter::None],
                    row_len,
                );
                let mut a = delta(&px[0]);
                filtered.add_filtered_images(
                    &mut [&mut a, &mut b],
                    &[PixelFilter::Delta, PixelFilter::Delta],
                    row_len,
                );
                for image in [0, 0, 1, 0, 1] {
                    plain.add_image(&px[image]);
                }
            }
            plain.flush();
            filtered.flush();
            assert_eq!(filtered, plain, "{width}x{height}");
        }
    }

    #[test]
    fn pixel_sums_stay_exact_past_the_u16_flush_point() {
        // 600 white images: 153,000 per pixel, far beyond u16, through two
        // automatic flushes and the final one.
        let mut sums = Sums::new(6);
        for _ in 0..600 {
            sums.add_image(&[255; 6]);
        }
        sums.flush();
        assert_eq!(sums.pixel, [600 * 255; 6]);
        assert_eq!(sums.images, 600);
        // Two at a time, whose 257th image would come in the middle of a
        // pair (16-pixel rows: a fused kernel where the CPU has one).
        let mut sums = Sums::new(48);
        let mut white = Vec::new();
        PixelFilter::Delta.apply(&[255; 48], 48, 3, &mut white);
        for _ in 0..300 {
            let (mut a, mut b) = (white.clone(), white.clone());
            sums.add_filtered_images(&mut [&mut a, &mut b], &[PixelFilter::Delta; 2], 48);
            assert!(sums.recent_images <= RECENT_MAX);
        }
        sums.flush();
        assert_eq!(sums.pixel, [600 * 255; 48]);
        assert_eq!(sums.images, 600);
    }

    #[test]
    fn npy_round_trip_and_shape_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.npy");
        let data: Vec<f32> = (0..18).map(|i| i as f32 / 3.0).collect();
        std::fs::write(&path, npy_f32(&[2, 3, 3], &data)).expect("write");
        assert_eq!(read_npy_f32(&path, &[2, 3, 3]).expect("read"), data);
        let err = read_npy_f32(&path, &[3, 2, 3]).expect_err("shape");
        assert!(
            err.to_string().contains("m.npy: expected float32 of shape"),
            "{err}"
        );
    }

    #[test]
    fn npy_header_is_what_numpy_writes() {
        let bytes = npy_f32(&[2, 3, 3], &[0.5; 18]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).expect("ascii");
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 3), }")
        );
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + len + 18 * 4);
    }
}
