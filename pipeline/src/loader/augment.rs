//! What a network sees of a stored image (paper section 4.1).
//!
//! Training: a random `crop x crop` window (offsets uniform in
//! 0..=side-crop), mirrored with probability 1/2, plus PCA lighting: every
//! pixel gets `sum_i alpha_i * lambda_i * p_i` added, with alpha_i ~ N(0, 0.1)
//! drawn per image each time it is used, lambda_i / p_i the eigenvalues /
//! eigenvectors of the RGB covariance (stats.json; see `Lighting::from_stats`
//! for the units of lambda); then the per-pixel mean
//! image (mean.npy), cropped and mirrored like the image, is subtracted.
//! Evaluation: the centre window, or ten: 4 corners + centre, and mirrors.
//!
//! A `View` is the parameters of one crop. Two hand-over forms: float32 CHW
//! with everything applied (`normalise::to_f32_chw`), or the uint8 HWC crop
//! with the mirror applied (`crop_u8`) plus its View, from which the trainer
//! can apply mean and lighting on the GPU from 4x fewer bytes.
//! `normalise::u8_crop_to_f32_chw` does that on the CPU and gives the same
//! floats, bit for bit (tested).

use crate::cpu::SimdLevel;
use crate::format::shard::PixelFilter;
use crate::rng::SplitMix64;
use crate::stats::Stats;

/// One crop of a stored image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Top-left corner of the window in the stored image.
    pub x: u16,
    pub y: u16,
    /// Mirrored left-right.
    pub flip: bool,
    /// RGB offset added to every pixel (PCA lighting; zero at evaluation).
    pub light: [f32; 3],
}

/// The PCA lighting of the paper.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lighting {
    pub eigenvalues: [f32; 3],
    /// `eigenvectors[i]` belongs to `eigenvalues[i]`.
    pub eigenvectors: [[f32; 3]; 3],
    /// Standard deviation of the alphas (0.1 in the paper).
    pub std: f32,
}

impl Lighting {
    /// The paper's lambda_i are eigenvalues of the covariance of RGB values
    /// scaled to [0, 1], and the offset alpha * lambda * p is in those units
    /// too (so fb.resnet.torch and its descendants: ImageNet's lambda_1 =
    /// 0.2175). stats.json is in 0..255 units, where the covariance is 255^2
    /// times larger; in pixel levels the offset is then 255 * alpha *
    /// (lambda_255 / 255^2) * p = alpha * (lambda_255 / 255) * p. For
    /// ImageNet (lambda_1 ~ 12,900) that is ~5 levels per 0.1 of alpha;
    /// taking lambda_255 as it is would add ~1,300 levels and drown the image.
    pub fn from_stats(stats: &Stats, std: f32) -> Self {
        Self {
            eigenvalues: stats.eigenvalues.map(|v| (v / 255.0) as f32),
            eigenvectors: stats.eigenvectors.map(|v| v.map(|x| x as f32)),
            std,
        }
    }

    /// The RGB offset for one draw of the alphas.
    pub fn offset(&self, alpha: [f32; 3]) -> [f32; 3] {
        std::array::from_fn(|c| {
            (0..3)
                .map(|i| alpha[i] * self.eigenvalues[i] * self.eigenvectors[i][c])
                .sum()
        })
    }

    pub fn draw(&self, rng: &mut SplitMix64) -> [f32; 3] {
        let alpha = std::array::from_fn(|_| (rng.normal() * self.std as f64) as f32);
        self.offset(alpha)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Random crop, mirror and lighting.
    Train,
    /// The centre window.
    Center,
    /// Four corners and centre, and their mirrors, kept together per image.
    Tencrop,
}

impl Mode {
    pub fn views_per_image(self) -> usize {
        match self {
            Self::Tencrop => 10,
            _ => 1,
        }
    }
}

/// The views of one image. `side` is the stored size, `crop` the window.
pub fn views(
    mode: Mode,
    side: usize,
    crop: usize,
    lighting: Option<&Lighting>,
    rng: &mut SplitMix64,
) -> Vec<View> {
    let slack = (side - crop) as u16;
    let plain = |x: u16, y: u16, flip: bool| View {
        x,
        y,
        flip,
        light: [0.0; 3],
    };
    match mode {
        Mode::Train => {
            let x = rng.below(slack as u64 + 1) as u16;
            let y = rng.below(slack as u64 + 1) as u16;
            let flip = rng.next_u64() >> 63 == 1;
            let light = lighting.map_or([0.0; 3], |l| l.draw(rng));
            vec![View { x, y, flip, light }]
        }
        Mode::Center => vec![plain(slack / 2, slack / 2, false)],
        Mode::Tencrop => {
            let corners = [
                (0, 0),
                (slack, 0),
                (0, slack),
                (slack, slack),
                (slack / 2, slack / 2),
            ];
            [false, true]
                .into_iter()
                .flat_map(|flip| corners.map(|(x, y)| plain(x, y, flip)))
                .collect()
        }
    }
}

/// One crop row of RGB pixels, reversed pixel by pixel when mirrored.
#[inline]
pub(crate) fn copy_row(src_row: &[u8], dst_row: &mut [u8], flip: bool) {
    if !flip {
        dst_row.copy_from_slice(src_row);
        return;
    }
    copy_row_reversed(crate::cpu::simd_level(), src_row, dst_row);
}

/// `dst_row` = `src_row` with its RGB pixels in reverse order, on the
/// widest path at or below `level` (which the CPU must have). AVX2 takes
/// the SSSE3 path: `vpshufb` only shuffles within 16-byte halves, so a
/// 32-byte version is two 16-byte ones whose stores must still go in
/// order (each overwrites the byte after its 5 pixels).
pub(crate) fn copy_row_reversed(level: SimdLevel, src_row: &[u8], dst_row: &mut [u8]) {
    assert!(level.supported(), "{} is not supported here", level.name());
    assert_eq!(src_row.len(), dst_row.len());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx512 {
        // SAFETY: the CPU has the kernel's features (asserted above).
        unsafe { copy_row_reversed_avx512(src_row, dst_row) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Ssse3 {
        // SAFETY: as above.
        unsafe { copy_row_reversed_ssse3(src_row, dst_row) };
        return;
    }
    copy_pixels_reversed(src_row, dst_row, 0);
}

/// `pshufb` indices that reverse 5 RGB pixels (15 bytes) loaded from the
/// byte before them; lane 15 is zero (its byte is overwritten by the next
/// block, or by the tail).
#[cfg(target_arch = "x86_64")]
const fn reverse_5_pixels() -> [u8; 16] {
    let mut idx = [0x80u8; 16];
    let mut lane = 0;
    while lane < 15 {
        idx[lane] = (3 * (4 - lane / 3) + lane % 3 + 1) as u8;
        lane += 1;
    }
    idx
}

/// The mirrored copy 5 pixels at a time: one 16-byte load that ends at the
/// block's last source byte, one `pshufb`, one 16-byte store; the loop
/// stops while at least one pixel is left after the block, so the store
/// stays inside the row (and the load, which starts at least 2 bytes into
/// it); the last pixels one by one. About 5x fewer instructions than pixel
/// moves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn copy_row_reversed_ssse3(src_row: &[u8], dst_row: &mut [u8]) {
    use std::arch::x86_64::*;
    const PIXELS: usize = 5;
    const REVERSE: [u8; 16] = reverse_5_pixels();
    let n = src_row.len() / 3;
    let idx = _mm_loadu_si128(REVERSE.as_ptr() as *const _);
    // Every block's first pixel j has j <= n - 6: its store ends at byte
    // 3j + 16 <= 3n, and its source starts at byte 3(n - j - 5) >= 3.
    let blocks = n.saturating_sub(1) / PIXELS;
    for k in 0..blocks {
        let first = k * PIXELS;
        let from = (n - first - PIXELS) * 3 - 1;
        let v = _mm_loadu_si128(src_row.as_ptr().add(from) as *const _);
        _mm_storeu_si128(
            dst_row.as_mut_ptr().add(first * 3) as *mut _,
            _mm_shuffle_epi8(v, idx),
        );
    }
    copy_pixels_reversed(src_row, dst_row, blocks * PIXELS);
}

/// Pixels `from..` of `dst_row` from the mirrored `src_row`, one at a time:
/// three-byte moves, about a cycle a pixel.
fn copy_pixels_reversed(src_row: &[u8], dst_row: &mut [u8], from: usize) {
    let n = src_row.len() / 3;
    for j in from..n {
        let s = (n - 1 - j) * 3;
        dst_row[j * 3..j * 3 + 3].copy_from_slice(&src_row[s..s + 3]);
    }
}

/// `vpermb` indices that reverse the order of 21 RGB pixels (63 bytes):
/// lane 3i + c takes byte 3(20 - i) + c; lane 63 is not stored.
#[cfg(target_arch = "x86_64")]
const fn reverse_21_pixels() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut lane = 0;
    while lane < 63 {
        idx[lane] = (3 * (20 - lane / 3) + lane % 3) as u8;
        lane += 1;
    }
    idx
}

/// The mirrored copy 21 pixels at a time: a masked 63-byte load from the
/// far end of the source, one `vpermb`, one 64-byte store (its last byte is
/// overwritten by the next block; the loop stops while at least one pixel
/// is left, so the store stays inside the row); the last pixels one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn copy_row_reversed_avx512(src_row: &[u8], dst_row: &mut [u8]) {
    use std::arch::x86_64::*;
    const PIXELS: usize = 21;
    const REVERSE: [u8; 64] = reverse_21_pixels();
    let n = src_row.len() / 3;
    let idx = _mm512_loadu_si512(REVERSE.as_ptr() as *const _);
    let blocks = n.saturating_sub(1) / PIXELS;
    for k in 0..blocks {
        let first = k * PIXELS; // first destination pixel of the block
        let from = (n - first - PIXELS) * 3;
        let v = _mm512_maskz_loadu_epi8((1u64 << 63) - 1, src_row.as_ptr().add(from) as *const i8);
        // first * 3 + 64 <= n * 3, since first <= n - 22 (blocks <= (n - 1) / 21).
        _mm512_storeu_si512(
            dst_row.as_mut_ptr().add(first * 3) as *mut _,
            _mm512_permutexvar_epi8(idx, v),
        );
    }
    copy_pixels_reversed(src_row, dst_row, blocks * PIXELS);
}

/// Copies the window of `view` (mirrored if asked) from the stored image
/// `src` (side x side x 3, HWC) into `dst` (crop x crop x 3, HWC).
pub fn crop_u8(src: &[u8], side: usize, view: &View, crop: usize, dst: &mut [u8]) {
    for row in 0..crop {
        let src_row = &src[((view.y as usize + row) * side + view.x as usize) * 3..][..crop * 3];
        let dst_row = &mut dst[row * crop * 3..][..crop * 3];
        copy_row(src_row, dst_row, view.flip);
    }
}

/// `undo_window_*`: a row's delta filter undone in registers, and the
/// window from byte `start` on written to the crop row.
#[cfg(target_arch = "x86_64")]
type WindowUndo = unsafe fn(line: &[u8], start: usize, dst: &mut [u8]);

/// As `crop_u8`, from a stored image whose pixel `filter` is still in
/// place: only the rows the window covers, and each only up to the window's
/// right edge, are unfiltered (in place), then copied while in L1. Saves the
/// full-image unfilter pass and a second walk over the rows.
pub fn crop_u8_filtered(
    filtered: &mut [u8],
    filter: PixelFilter,
    side: usize,
    view: &View,
    crop: usize,
    dst: &mut [u8],
) {
    let (x, y) = (view.x as usize, view.y as usize);
    // Unmirrored rows: undone in registers and written straight out.
    // Mirrored rows keep the in-place undo and the reversed copy: a
    // register version (one `vpermt2b` and one masked `vpermb` per 64 bytes
    // out) was 6% slower here, the shuffles being what bounds both.
    #[cfg(target_arch = "x86_64")]
    if filter == PixelFilter::Delta && !view.flip {
        let kernel: Option<WindowUndo> = match crate::cpu::simd_level() {
            SimdLevel::Avx512 => Some(undo_window_avx512),
            SimdLevel::Avx2 => Some(undo_window_avx2),
            _ => None,
        };
        if let Some(kernel) = kernel {
            for row in 0..crop {
                let line = &filtered[(y + row) * side * 3..][..(x + crop) * 3];
                let dst_row = &mut dst[row * crop * 3..][..crop * 3];
                // SAFETY: the CPU has the kernel's level (`simd_level` is
                // one it supports), and `line` ends where the window does.
                unsafe { kernel(line, x * 3, dst_row) };
            }
            return;
        }
    }
    for row in 0..crop {
        let line = &mut filtered[(y + row) * side * 3..][..(x + crop) * 3];
        filter.undo(line, line.len(), 3);
        let src_row = &line[x * 3..];
        let dst_row = &mut dst[row * crop * 3..][..crop * 3];
        copy_row(src_row, dst_row, view.flip);
    }
}

/// Undoes the delta filter of `line` (an RGB row from its first byte to the
/// window's last) in registers and writes bytes `start..` of the result to
/// `dst` (`line.len() - start` bytes), for unmirrored crop rows: the undone
/// row is never stored, and each 64 output bytes are one `vpermt2b` over
/// two undone blocks. Saves the in-place store and the separate row copy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn undo_window_avx512(line: &[u8], start: usize, dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let end = line.len();
    assert_eq!(end - start, dst.len());
    let undo = crate::format::delta::UndoRgbAvx512::new();
    // Block j of the filtered row (bytes 64j.., zero past the end).
    let load = |j: usize| {
        let from = 64 * j;
        if from + 64 <= end {
            _mm512_loadu_si512(line.as_ptr().add(from) as *const _)
        } else if from < end {
            _mm512_maskz_loadu_epi8(
                (1u64 << (end - from)) - 1,
                line.as_ptr().add(from) as *const i8,
            )
        } else {
            _mm512_setzero_si512()
        }
    };
    let first = start / 64;
    let mut previous = _mm512_setzero_si512();
    for j in 0..=first {
        previous = undo.block(load(j), previous);
    }
    // Lane i of an output block is byte start % 64 + i of (previous, current).
    let shift = _mm512_set1_epi8((start % 64) as i8);
    let lanes = _mm512_add_epi8(_mm512_loadu_si512(LANES.as_ptr() as *const _), shift);
    for (k, out) in dst.chunks_mut(64).enumerate() {
        let current = undo.block(load(first + k + 1), previous);
        let v = _mm512_permutex2var_epi8(previous, lanes, current);
        match out.len() {
            64 => _mm512_storeu_si512(out.as_mut_ptr() as *mut _, v),
            // A 224-pixel row ends in half a block: no masked store, which
            // is slow on some cores (AMD Zen 4).
            32 => _mm256_storeu_si256(out.as_mut_ptr() as *mut _, _mm512_castsi512_si256(v)),
            n => _mm512_mask_storeu_epi8(out.as_mut_ptr() as *mut i8, (1u64 << n) - 1, v),
        }
        previous = current;
    }
}

/// The AVX2 form of `undo_window_avx512`: `line`'s delta filter undone in
/// registers, 32 bytes a block, and bytes `start..` of the result written to
/// `dst` (`line.len() - start` bytes). Without a two-register byte permute,
/// each whole undone block is stored where it lands in `dst`, at any
/// alignment; the block holding `start` and a partial last block go
/// through a stack buffer. Saves the in-place store and the separate copy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn undo_window_avx2(line: &[u8], start: usize, dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let end = line.len();
    assert_eq!(end - start, dst.len());
    let undo = crate::format::delta::UndoRgbAvx2::new();
    let mut spill = [0u8; 32];
    let mut previous = _mm256_setzero_si256();
    for from in (0..end).step_by(32) {
        let whole = from + 32 <= end;
        let v = if whole {
            _mm256_loadu_si256(line.as_ptr().add(from) as *const _)
        } else {
            spill = [0; 32];
            spill[..end - from].copy_from_slice(&line[from..]);
            _mm256_loadu_si256(spill.as_ptr() as *const _)
        };
        previous = undo.block(v, previous);
        if from + 32 <= start {
            continue; // left of the window: only its carry is needed
        }
        if whole && from >= start {
            _mm256_storeu_si256(dst.as_mut_ptr().add(from - start) as *mut _, previous);
        } else {
            _mm256_storeu_si256(spill.as_mut_ptr() as *mut _, previous);
            let (skip, upto) = (start.saturating_sub(from), (end - from).min(32));
            dst[from + skip - start..from + upto - start].copy_from_slice(&spill[skip..upto]);
        }
    }
}

/// 0, 1, ..., 63.
#[cfg(target_arch = "x86_64")]
const LANES: [u8; 64] = {
    let mut lanes = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        lanes[i] = i as u8;
        i += 1;
    }
    lanes
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The mirrored row copy, on every level this CPU has, against the
    /// plain reversal: every row length up to 70 pixels (around the 5- and
    /// 21-pixel blocks), the crop widths used, random lengths; and rows
    /// cut from inside a longer buffer, as crop rows are.
    #[test]
    fn mirrored_rows_are_reversed_pixel_by_pixel() {
        let mut rng = SplitMix64::new(21);
        let lengths: Vec<usize> = (0..=70usize)
            .chain([224, 227, 256])
            .chain((0..20).map(|_| rng.below(600) as usize))
            .collect();
        for n in lengths {
            let line: Vec<u8> = (0..n * 3 + 9).map(|_| rng.next_u64() as u8).collect();
            let src = &line[4..4 + n * 3];
            let want: Vec<u8> = src.chunks_exact(3).rev().flatten().copied().collect();
            for level in crate::cpu::SimdLevel::supported_levels() {
                let mut got = vec![0u8; n * 3];
                copy_row_reversed(level, src, &mut got);
                assert_eq!(got, want, "{}, {n} pixels", level.name());
            }
            let mut got = vec![0u8; n * 3];
            copy_row(src, &mut got, true);
            assert_eq!(got, want, "{n} pixels, the running level");
        }
    }

    /// A random side x side image with its `filter`ed copy.
    fn image_and_filtered(side: usize, seed: u64, filter: PixelFilter) -> (Vec<u8>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        let image: Vec<u8> = (0..side * side * 3).map(|_| rng.next_u64() as u8).collect();
        let mut filtered = Vec::new();
        filter.apply(&image, side * 3, 3, &mut filtered);
        (image, filtered)
    }

    /// Cropping the filtered image (a copy: the filtered path may undo rows
    /// in place) gives the bytes of cropping the image itself.
    fn assert_filtered_crop(
        (image, filtered): (&[u8], &[u8]),
        filter: PixelFilter,
        side: usize,
        crop: usize,
        view: View,
    ) {
        let mut want = vec![0u8; crop * crop * 3];
        crop_u8(image, side, &view, crop, &mut want);
        let mut got = vec![0u8; crop * crop * 3];
        let mut scratch = filtered.to_vec();
        crop_u8_filtered(&mut scratch, filter, side, &view, crop, &mut got);
        assert_eq!(
            got, want,
            "{filter:?}, crop {crop} at {}, {}, mirrored {}",
            view.x, view.y, view.flip
        );
    }

    /// The paper's geometry, every crop offset, both mirror states: the
    /// AVX-512 window undo (unmirrored rows) and the in-place path.
    #[test]
    fn cropping_a_filtered_256_image_equals_cropping_the_unfiltered_one() {
        let (image, filtered) = image_and_filtered(256, 19, PixelFilter::Delta);
        for x in 0..=32u16 {
            for flip in [false, true] {
                let light = [0.0; 3];
                let view = View {
                    x,
                    y: 32 - x % 33,
                    flip,
                    light,
                };
                assert_filtered_crop((&image, &filtered), PixelFilter::Delta, 256, 224, view);
            }
        }
    }

    /// Every crop width from 1 to 70 pixels (windows that end inside the
    /// first, second and third 64-byte block), several offsets, both
    /// mirror states.
    #[test]
    fn cropping_filtered_windows_of_any_width() {
        let side = 80;
        let (image, filtered) = image_and_filtered(side, 23, PixelFilter::Delta);
        for crop in 1..=70usize {
            for x in [0u16, 1, 5, 10, 11, 21, 32]
                .into_iter()
                .filter(|&x| x as usize + crop <= side)
            {
                for flip in [false, true] {
                    let light = [0.0; 3];
                    let view = View {
                        x,
                        y: 3,
                        flip,
                        light,
                    };
                    let pair = (image.as_slice(), filtered.as_slice());
                    assert_filtered_crop(pair, PixelFilter::Delta, side, crop, view);
                }
            }
        }
    }

    /// Unfiltering only the window's rows while cropping gives the bytes of
    /// cropping the fully unfiltered image, for either filter.
    #[test]
    fn cropping_a_filtered_image_equals_cropping_the_unfiltered_one() {
        for filter in [PixelFilter::Delta, PixelFilter::None] {
            let (image, filtered) = image_and_filtered(40, 9, filter);
            for (x, y, flip) in [(0, 0, false), (11, 3, true), (11, 11, false), (5, 9, true)] {
                let light = [0.0; 3];
                let view = View { x, y, flip, light };
                assert_filtered_crop((&image, &filtered), filter, 40, 29, view);
            }
        }
    }

    /// stats.json's eigenvalues (0..255 units) become lighting in levels:
    /// alpha = 1 along the first component moves a pixel lambda / 255.
    #[test]
    fn lighting_from_stats_is_in_pixel_levels() {
        let p = [0.58f64, 0.58, 0.57];
        let stats = Stats {
            images: 1,
            pixels: 1,
            channel_mean: [0.0; 3],
            covariance: [[0.0; 3]; 3],
            eigenvalues: [12750.0, 510.0, 255.0],
            eigenvectors: [p, [0.7, 0.0, -0.7], [-0.4, 0.8, -0.4]],
            manifest_id: String::new(),
            height: 1,
            width: 1,
        };
        let l = Lighting::from_stats(&stats, 0.1);
        let off = l.offset([1.0, 0.0, 0.0]);
        for c in 0..3 {
            assert!((off[c] as f64 - 50.0 * p[c]).abs() < 1e-3, "{off:?}");
        }
        // Draws: about N(0, 0.1) * 50 levels along p.
        let mut rng = SplitMix64::new(1);
        let n = 4000;
        let var: f64 = (0..n)
            .map(|_| (l.draw(&mut rng)[0] as f64).powi(2))
            .sum::<f64>()
            / n as f64;
        let want = (5.0f64 * p[0]).powi(2) + (0.2f64 * 0.7).powi(2) + (0.1f64 * 0.4).powi(2);
        assert!((var / want - 1.0).abs() < 0.1, "var {var} vs {want}");
    }

    const SIDE: usize = 8;
    const CROP: usize = 5;

    #[test]
    fn train_views_cover_every_offset_and_flip_half_the_time() {
        let mut rng = SplitMix64::new(2);
        let mut xs = [0u32; SIDE - CROP + 1];
        let mut ys = [0u32; SIDE - CROP + 1];
        let mut same = 0;
        let mut flips = 0;
        let n = 30_000;
        for _ in 0..n {
            let v = views(Mode::Train, SIDE, CROP, None, &mut rng)[0];
            xs[v.x as usize] += 1;
            ys[v.y as usize] += 1;
            same += u32::from(v.x == v.y);
            flips += v.flip as u32;
            assert_eq!(v.light, [0.0; 3]);
        }
        // Each of x and y takes every offset equally often, and they are
        // drawn apart (x == y about one time in SIDE - CROP + 1).
        for count in xs.iter().chain(&ys) {
            assert!((7_000..8_000).contains(count), "x {xs:?} y {ys:?}");
        }
        assert!((7_000..8_000).contains(&same), "x == y {same} times");
        assert!((14_400..15_600).contains(&flips), "{flips}");
    }

    #[test]
    fn ten_crop_is_corners_centre_and_mirrors() {
        let v = views(Mode::Tencrop, 256, 224, None, &mut SplitMix64::new(0));
        let corners: Vec<(u16, u16, bool)> = v.iter().map(|v| (v.x, v.y, v.flip)).collect();
        assert_eq!(
            corners,
            [
                (0, 0, false),
                (32, 0, false),
                (0, 32, false),
                (32, 32, false),
                (16, 16, false),
                (0, 0, true),
                (32, 0, true),
                (0, 32, true),
                (32, 32, true),
                (16, 16, true),
            ]
        );
        let c = views(Mode::Center, 256, 224, None, &mut SplitMix64::new(0));
        assert_eq!((c[0].x, c[0].y, c[0].flip), (16, 16, false));
    }

    #[test]
    fn lighting_offsets_have_the_paper_covariance() {
        // Offsets are sum_i alpha_i lambda_i p_i with alpha_i ~ N(0, s^2): their
        // covariance is sum_i (s lambda_i)^2 p_i p_i^T.
        let r = std::f32::consts::FRAC_1_SQRT_2;
        let lighting = Lighting {
            eigenvalues: [30.0, 10.0, 5.0],
            eigenvectors: [[r, r, 0.0], [r, -r, 0.0], [0.0, 0.0, 1.0]],
            std: 0.1,
        };
        let mut rng = SplitMix64::new(9);
        let n = 100_000;
        let draws: Vec<[f32; 3]> = (0..n).map(|_| lighting.draw(&mut rng)).collect();
        let want: [[f64; 3]; 3] = std::array::from_fn(|a| {
            std::array::from_fn(|b| {
                (0..3)
                    .map(|i| {
                        let s = 0.1 * lighting.eigenvalues[i] as f64;
                        let p = lighting.eigenvectors[i];
                        s * s * p[a] as f64 * p[b] as f64
                    })
                    .sum()
            })
        });
        for a in 0..3 {
            let mean: f64 = draws.iter().map(|d| d[a] as f64).sum::<f64>() / n as f64;
            assert!(
                mean.abs() < 6.0 * (want[a][a] / n as f64).sqrt(),
                "mean {mean}"
            );
            for b in 0..3 {
                let cov: f64 =
                    draws.iter().map(|d| d[a] as f64 * d[b] as f64).sum::<f64>() / n as f64;
                // Six standard errors of a Gaussian sample covariance.
                let se = ((want[a][a] * want[b][b] + want[a][b].powi(2)) / n as f64).sqrt();
                assert!(
                    (cov - want[a][b]).abs() < 6.0 * se,
                    "cov[{a}][{b}] {cov} vs {}",
                    want[a][b]
                );
            }
        }
    }
}
