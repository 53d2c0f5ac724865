//! The float32 hand-over: a view's crop with the mean image subtracted and
//! its PCA lighting added, `(pixel - mean) + light`, in CHW order.
//!
//! Two forms give the same floats, bit for bit (tested): `to_f32_chw` from
//! the stored image, and `u8_crop_to_f32_chw` from a uint8 crop. The loader
//! takes the second for zstd shards, whose crop undoes the pixel filter
//! only where it reads; the trainer does the same on the GPU with the uint8
//! crops it is handed.
//!
//! Each output row is three plane rows of `crop` floats. The mean image is
//! kept as planes (`MeanPlanes`), once as stored and once with every row
//! reversed, so that a row of mean values is one contiguous run for a plain
//! view and for a mirrored one alike; the kernel then splits a row of RGB
//! bytes into its channels with byte shuffles, widens them to floats, and
//! writes each plane row straight out. The float writes (600 KB a 224x224
//! view) are what the pass costs; the rest hides behind them. They are
//! plain stores: non-temporal ones made the loader's float32 rate 0.72x
//! (aligned to 32 bytes) and 0.85x (to whole cache lines) on a 2-core AVX2
//! EPYC.

use crate::cpu::SimdLevel;
use crate::loader::augment::{copy_row, View};
#[cfg(target_arch = "x86_64")]
use crate::rgb_split::GATHER;

/// The per-pixel mean image as three planes, plain and mirrored.
#[derive(Debug, Clone)]
pub struct MeanPlanes {
    side: usize,
    /// CHW: plane c, row y, column x at `(c * side + y) * side + x`.
    plain: Vec<f32>,
    /// The same with each row reversed: column x at `side - 1 - x`.
    mirrored: Vec<f32>,
}

impl MeanPlanes {
    /// From the mean image as `pipeline stats` writes it (side x side x 3,
    /// HWC).
    pub fn from_hwc(mean: &[f32], side: usize) -> Self {
        assert_eq!(mean.len(), side * side * 3, "a side x side x 3 mean image");
        let mut plain = vec![0f32; mean.len()];
        let mut mirrored = vec![0f32; mean.len()];
        for (i, px) in mean.chunks_exact(3).enumerate() {
            let (y, x) = (i / side, i % side);
            for (c, &value) in px.iter().enumerate() {
                plain[(c * side + y) * side + x] = value;
                mirrored[(c * side + y) * side + side - 1 - x] = value;
            }
        }
        Self {
            side,
            plain,
            mirrored,
        }
    }

    pub fn side(&self) -> usize {
        self.side
    }

    /// Channel `c`'s mean values for output row `row` of `view`, in output
    /// order (right to left in the stored image when mirrored).
    fn row(&self, c: usize, view: &View, row: usize, crop: usize) -> &[f32] {
        let (x, y, side) = (view.x as usize, view.y as usize + row, self.side);
        let (plane, start) = if view.flip {
            // Output j is stored column x + crop - 1 - j, which the
            // mirrored row holds at side - x - crop + j.
            (&self.mirrored, side - x - crop)
        } else {
            (&self.plain, x)
        };
        &plane[(c * side + y) * side + start..][..crop]
    }
}

/// The float32 hand-over from the stored image `src` (side x side x 3,
/// HWC) into `dst` (3 x crop x crop).
pub fn to_f32_chw(src: &[u8], mean: &MeanPlanes, view: &View, crop: usize, dst: &mut [f32]) {
    let (level, side) = (crate::cpu::simd_level(), mean.side);
    let mut px = vec![0u8; crop * 3];
    for row in 0..crop {
        let at = ((view.y as usize + row) * side + view.x as usize) * 3;
        copy_row(&src[at..][..crop * 3], &mut px, view.flip);
        normalise_crop_row(level, &px, mean, view, crop, row, dst);
    }
}

/// Applies a view's mean and lighting to its uint8 crop (the second
/// hand-over form, and the loader's for stored images whose filter is
/// undone only where the crop reads): the same floats as `to_f32_chw` on
/// the stored image. Rows are read where they lie.
pub fn u8_crop_to_f32_chw(
    crop_px: &[u8],
    mean: &MeanPlanes,
    view: &View,
    crop: usize,
    dst: &mut [f32],
) {
    let level = crate::cpu::simd_level();
    for (row, px) in crop_px.chunks_exact(crop * 3).take(crop).enumerate() {
        normalise_crop_row(level, px, mean, view, crop, row, dst);
    }
}

/// The one step behind both forms, so that they cannot drift apart: row
/// `row` of the crop (`px`: mirrored like the view, HWC, `crop * 3` bytes)
/// into its three plane rows of `dst` (3 x crop x crop).
#[inline(always)]
fn normalise_crop_row(
    level: SimdLevel,
    px: &[u8],
    mean: &MeanPlanes,
    view: &View,
    crop: usize,
    row: usize,
    dst: &mut [f32],
) {
    let plane = crop * crop;
    let (r_plane, rest) = dst[..3 * plane].split_at_mut(plane);
    let (g_plane, b_plane) = rest.split_at_mut(plane);
    let out = row * crop..(row + 1) * crop;
    normalise_row_with(
        level,
        px,
        [0, 1, 2].map(|c| mean.row(c, view, row, crop)),
        view.light,
        [
            &mut r_plane[out.clone()],
            &mut g_plane[out.clone()],
            &mut b_plane[out],
        ],
    );
}

/// One output row: `planes[c][j] = (px[3j + c] - mean[c][j]) + light[c]`,
/// on the widest path at or below `level` (which the CPU must have).
pub fn normalise_row_with(
    level: SimdLevel,
    px: &[u8],
    mean: [&[f32]; 3],
    light: [f32; 3],
    planes: [&mut [f32]; 3],
) {
    let n = planes[0].len();
    assert!(px.len() == 3 * n && mean.iter().all(|m| m.len() == n));
    assert!(planes.iter().all(|p| p.len() == n) && level.supported());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2 (asserted above); the lengths match.
        unsafe { normalise_row_avx2(px, mean, light, planes) };
        return;
    }
    normalise_row_portable(px, mean, light, planes, 0);
}

/// The definition, from pixel `from` on: the portable path, and the tail
/// of the AVX2 one. Public (and inline) so that a measurement can compile
/// this very loop for a wider instruction set
/// (`examples/autovec_vs_kernels.rs`).
#[inline]
pub fn normalise_row_portable(
    px: &[u8],
    mean: [&[f32]; 3],
    light: [f32; 3],
    planes: [&mut [f32]; 3],
    from: usize,
) {
    for (c, plane) in planes.into_iter().enumerate() {
        for (j, out) in plane.iter_mut().enumerate().skip(from) {
            *out = (px[3 * j + c] as f32 - mean[c][j]) + light[c];
        }
    }
}

/// 16 pixels a step: three 16-byte loads, each channel gathered by three
/// shuffles (`rgb_split`), widened to 2 x 8 floats, `(p - mean) + light`, stored. The
/// remainder (fewer than 16 pixels) takes the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normalise_row_avx2(
    px: &[u8],
    mean: [&[f32]; 3],
    light: [f32; 3],
    planes: [&mut [f32]; 3],
) {
    use std::arch::x86_64::*;
    let n = planes[0].len();
    let blocks = n / 16;
    let masks = GATHER.map(|m| m.map(|k| _mm_loadu_si128(k.as_ptr().cast())));
    let light = light.map(|l| _mm256_set1_ps(l));
    let [r, g, b] = planes;
    let outs = [r.as_mut_ptr(), g.as_mut_ptr(), b.as_mut_ptr()];
    for block in 0..blocks {
        let at = px.as_ptr().add(48 * block);
        let loads = [0, 16, 32].map(|o| _mm_loadu_si128(at.add(o).cast()));
        for c in 0..3 {
            let bytes = _mm_or_si128(
                _mm_or_si128(
                    _mm_shuffle_epi8(loads[0], masks[c][0]),
                    _mm_shuffle_epi8(loads[1], masks[c][1]),
                ),
                _mm_shuffle_epi8(loads[2], masks[c][2]),
            );
            let halves = [bytes, _mm_srli_si128::<8>(bytes)];
            for (h, half) in halves.into_iter().enumerate() {
                let j = 16 * block + 8 * h;
                let value = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(half));
                let mean = _mm256_loadu_ps(mean[c].as_ptr().add(j));
                let out = _mm256_add_ps(_mm256_sub_ps(value, mean), light[c]);
                _mm256_storeu_ps(outs[c].add(j), out);
            }
        }
    }
    let light = [0, 1, 2].map(|c| _mm256_cvtss_f32(light[c]));
    normalise_row_portable(px, mean, light, [r, g, b], 16 * blocks);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::augment::{crop_u8, views, Lighting, Mode};
    use crate::rng::SplitMix64;

    const SIDE: usize = 8;
    const CROP: usize = 5;

    fn image(side: usize) -> Vec<u8> {
        (0..side * side * 3).map(|i| (i * 7 % 256) as u8).collect()
    }

    fn mean(side: usize) -> Vec<f32> {
        (0..side * side * 3)
            .map(|i| (i % 13) as f32 * 0.5 + (i % 7) as f32 * 0.01)
            .collect()
    }

    /// The plain definition, index by index, for comparison.
    fn reference(src: &[u8], mean: &[f32], side: usize, crop: usize, view: &View) -> Vec<f32> {
        let mut out = vec![0f32; 3 * crop * crop];
        for c in 0..3 {
            for y in 0..crop {
                for x in 0..crop {
                    let sx = if view.flip {
                        view.x as usize + crop - 1 - x
                    } else {
                        view.x as usize + x
                    };
                    let i = ((view.y as usize + y) * side + sx) * 3 + c;
                    out[(c * crop + y) * crop + x] = (src[i] as f32 - mean[i]) + view.light[c];
                }
            }
        }
        out
    }

    /// Both forms against the definition, bit for bit, on a small image
    /// (every row a remainder) and at the training geometry (16-pixel
    /// blocks), plain and mirrored.
    #[test]
    fn both_hand_over_forms_agree_with_the_definition() {
        let mut rng = SplitMix64::new(1);
        let lighting = Lighting {
            eigenvalues: [3.0, 2.0, 1.0],
            eigenvectors: [[0.6, 0.6, 0.52], [0.7, 0.0, -0.7], [-0.4, 0.8, -0.4]],
            std: 0.1,
        };
        for (side, crop) in [(SIDE, CROP), (256, 224), (40, 35)] {
            let (src, mean) = (image(side), mean(side));
            let planes = MeanPlanes::from_hwc(&mean, side);
            for _ in 0..20 {
                let view = views(Mode::Train, side, crop, Some(&lighting), &mut rng)[0];
                let want = reference(&src, &mean, side, crop, &view);
                let mut direct = vec![0f32; want.len()];
                to_f32_chw(&src, &planes, &view, crop, &mut direct);
                assert!(direct == want, "{side}/{crop} {view:?}");
                let mut crop_px = vec![0u8; crop * crop * 3];
                crop_u8(&src, side, &view, crop, &mut crop_px);
                let mut from_u8 = vec![0f32; want.len()];
                u8_crop_to_f32_chw(&crop_px, &planes, &view, crop, &mut from_u8);
                assert!(from_u8 == want, "bit for bit: {side}/{crop} {view:?}");
            }
        }
    }

    /// Every level this CPU has against the portable row, on random
    /// pixels, means, lights and row lengths (around the 16-pixel block).
    #[test]
    fn every_level_normalises_rows_as_the_portable_path_does() {
        let mut rng = SplitMix64::new(9);
        let lengths: Vec<usize> = (0..=40).chain([224, 227, 256]).collect();
        for &n in &lengths {
            let px: Vec<u8> = (0..3 * n).map(|_| rng.next_u64() as u8).collect();
            let mean: Vec<Vec<f32>> = (0..3)
                .map(|_| (0..n).map(|_| rng.uniform() as f32 * 255.0).collect())
                .collect();
            let light = [0, 1, 2].map(|_| rng.normal() as f32 * 20.0);
            let means = [0, 1, 2].map(|c| mean[c].as_slice());
            let mut want = vec![vec![0f32; n]; 3];
            {
                let [r, g, b] = &mut want[..] else {
                    unreachable!()
                };
                normalise_row_portable(&px, means, light, [r, g, b], 0);
            }
            for level in SimdLevel::supported_levels() {
                let mut got = vec![vec![f32::NAN; n]; 3];
                let [r, g, b] = &mut got[..] else {
                    unreachable!()
                };
                normalise_row_with(level, &px, means, light, [r, g, b]);
                assert!(got == want, "{level:?}, {n} pixels");
            }
        }
    }

    /// A mirrored 2 x 2 window of a 3 x 3 image, worked by hand: pixel
    /// (y, x, c) is 100c + 10y + x, the mean 0.5 except [1, 2, 3] at (1, 2),
    /// the light [0.25, -1, 2]; output column 0 is stored column 2.
    #[test]
    fn a_mirrored_window_worked_by_hand() {
        let side = 3;
        let src: Vec<u8> = (0..side * side * 3)
            .map(|i| (100 * (i % 3) + 10 * (i / 3 / side) + (i / 3) % side) as u8)
            .collect();
        let mut mean = vec![0.5f32; side * side * 3];
        mean[(side + 2) * 3..][..3].copy_from_slice(&[1.0, 2.0, 3.0]);
        let view = View {
            x: 1,
            y: 1,
            flip: true,
            light: [0.25, -1.0, 2.0],
        };
        let want = [
            11.25, 10.75, 21.75, 20.75, // R: 12 - 1 + 0.25, 11 - 0.5 + 0.25, ...
            109.0, 109.5, 120.5, 119.5, // G: 112 - 2 - 1, ...
            211.0, 212.5, 223.5, 222.5, // B: 212 - 3 + 2, ...
        ];
        let planes = MeanPlanes::from_hwc(&mean, side);
        let mut direct = [0f32; 12];
        to_f32_chw(&src, &planes, &view, 2, &mut direct);
        assert_eq!(direct, want);
        let mut crop_px = [0u8; 12];
        crop_u8(&src, side, &view, 2, &mut crop_px);
        let mut from_u8 = [0f32; 12];
        u8_crop_to_f32_chw(&crop_px, &planes, &view, 2, &mut from_u8);
        assert_eq!(from_u8, want);
    }

    #[test]
    fn mirrored_planes_hold_each_row_reversed() {
        let side = 6;
        let mean = mean(side);
        let planes = MeanPlanes::from_hwc(&mean, side);
        let view = View {
            x: 1,
            y: 2,
            flip: true,
            light: [0.0; 3],
        };
        for c in 0..3 {
            let got = planes.row(c, &view, 1, 4);
            // Output j of a mirrored 4-wide window at x = 1 is column 4 - j.
            let want: Vec<f32> = (0..4).map(|j| mean[((3 * side) + 4 - j) * 3 + c]).collect();
            assert_eq!(got, &want[..]);
        }
    }
}
