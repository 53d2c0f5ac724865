//! What `pipeline stats` does to delta-filtered images, in one sweep.
//!
//! The plain path makes three passes over each decompressed image: undo the
//! filter (a store of every byte), add the pixels into the per-pixel u16
//! sums, and form the six RGB products. Each pass reloads the 196 KB image
//! from L2. The kernels here undo each block in registers (64 bytes with
//! AVX-512, 16 of each of two images with AVX2) and feed it straight to the
//! sums and the products, so the undone pixels are never stored or
//! reloaded. Where none can run (an older CPU, or rows that are not whole
//! blocks) `add_filtered` says so and the caller takes the plain path; all
//! give the same integers (tested).
//!
//! The AVX2 kernel takes two images at once. Beside zstd's working set, the
//! per-pixel sums (393 KB of u16) and the image do not stay in a 1 MB L2,
//! so on such cores the sweep waits on their traffic as much as on its
//! arithmetic; two images per read and write of the sums halve that part.
//! With two threads on a Skylake-SP this made the whole statistics pass
//! ~10% faster (docs/performance.md).

use crate::cpu::SimdLevel;

/// Images `add_filtered` takes at once.
pub const MAX_IMAGES: usize = 2;

/// Undoes the delta filter of each of `images` (one or two, each rows of
/// `row_len` RGB bytes), adds every undone byte into `acc` (`acc[i] +=
/// px[i]` for each image, wrapping u16), and returns the six products over
/// all their pixels in offset form: sum of x * (y - 128) for (x, y) in rr,
/// rg, rb, gg, gb, bb (add 128 * sum(x) for the products; see
/// `rgb_moments::OffsetProductsAvx512`). `None` when this CPU or this
/// geometry has no fused kernel; then nothing was added.
pub fn add_filtered(images: &[&[u8]], row_len: usize, acc: &mut [u16]) -> Option<[i64; 6]> {
    add_filtered_with(crate::cpu::simd_level(), images, row_len, acc)
}

/// `add_filtered` with the widest kernel at or below `level` (which the CPU
/// must have: `SimdLevel::supported`).
pub(crate) fn add_filtered_with(
    level: SimdLevel,
    images: &[&[u8]],
    row_len: usize,
    acc: &mut [u16],
) -> Option<[i64; 6]> {
    assert!(level.supported(), "{} is not supported here", level.name());
    let whole_rows = row_len > 0 && acc.len().is_multiple_of(row_len);
    let same_size = images.iter().all(|image| image.len() == acc.len());
    if !(1..=MAX_IMAGES).contains(&images.len()) || !whole_rows || !same_size {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::stats::rgb_moments::has_avx512_kernel_at(level)
            && row_len.is_multiple_of(AVX512_BLOCK)
        {
            let mut products = [0i64; 6];
            for image in images {
                // SAFETY: the CPU has the kernel's features (`level` is
                // supported, and VNNI was detected); the lengths are whole
                // blocks and rows (checked above).
                let p = unsafe { add_filtered_avx512(image, row_len, acc) };
                for (total, v) in products.iter_mut().zip(p) {
                    *total += v;
                }
            }
            return Some(products);
        }
        if level >= SimdLevel::Avx2 && row_len.is_multiple_of(AVX2_STEP) {
            // SAFETY: as above, AVX2.
            return Some(unsafe {
                add_filtered_avx2(images[0], images.get(1).copied(), row_len, acc)
            });
        }
    }
    None
}

/// 16 RGB pixels of each image: three 16-byte blocks, whose pairs make the
/// three vectors of a `MomentsAvx2` step.
#[cfg(target_arch = "x86_64")]
const AVX2_STEP: usize = 48;

/// Each vector holds the same 16 bytes of both images, `first`'s in the low
/// half and `second`'s in the high half (zeros without `second`, which add
/// nothing). Each image is its own running sum, so the undo never moves a
/// byte between halves (`UndoRgbHalvesAvx2`), and the halves of three
/// vectors are the layout `MomentsAvx2` takes. `row_len` a multiple of 48;
/// `acc`, `first` and `second` whole rows of the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_filtered_avx2(
    first: &[u8],
    second: Option<&[u8]>,
    row_len: usize,
    acc: &mut [u16],
) -> [i64; 6] {
    use crate::format::delta::UndoRgbHalvesAvx2;
    use crate::stats::rgb_moments::{offset_form, MomentsAvx2};
    use std::arch::x86_64::*;
    let undo = UndoRgbHalvesAvx2::new();
    let mut moments = MomentsAvx2::new();
    let zero = _mm256_setzero_si256();
    for (row, acc_row) in acc.chunks_exact_mut(row_len).enumerate() {
        let start = row * row_len;
        let low = first[start..start + row_len].as_ptr();
        let high = second.map(|s| s[start..start + row_len].as_ptr());
        let mut previous = zero; // the filter restarts each row
        for step in (0..row_len).step_by(AVX2_STEP) {
            let mut px = [zero; 3];
            for (k, v) in px.iter_mut().enumerate() {
                let at = step + 16 * k;
                let filtered = _mm256_set_m128i(
                    match high {
                        Some(h) => _mm_loadu_si128(h.add(at) as *const _),
                        None => _mm_setzero_si128(),
                    },
                    _mm_loadu_si128(low.add(at) as *const _),
                );
                previous = undo.block(filtered, previous);
                *v = previous;
                // Bytes 0..8 and 8..16 of each half as u16, then both
                // images' 16 values side by side, added in one.
                let lo = _mm256_unpacklo_epi8(previous, zero);
                let hi = _mm256_unpackhi_epi8(previous, zero);
                let both = _mm256_add_epi16(
                    _mm256_permute2x128_si256::<0x20>(lo, hi),
                    _mm256_permute2x128_si256::<0x31>(lo, hi),
                );
                let sums = acc_row.as_mut_ptr().add(at) as *mut __m256i;
                _mm256_storeu_si256(sums, _mm256_add_epi16(_mm256_loadu_si256(sums), both));
            }
            moments.add(px);
        }
    }
    let (c, p) = moments.finish();
    offset_form(p, c)
}

/// 64 RGB pixels: the unit of the channel split and the products.
#[cfg(target_arch = "x86_64")]
const AVX512_BLOCK: usize = 192;

/// `row_len` a multiple of 192, `filtered.len()` of `row_len`, and
/// `acc.len() == filtered.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn add_filtered_avx512(filtered: &[u8], row_len: usize, acc: &mut [u16]) -> [i64; 6] {
    use crate::format::delta::UndoRgbAvx512;
    use crate::stats::rgb_moments::{OffsetProductsAvx512, SplitRgbAvx512};
    use std::arch::x86_64::*;
    let undo = UndoRgbAvx512::new();
    let split = SplitRgbAvx512::new();
    let mut products = OffsetProductsAvx512::new();
    for (row, acc_row) in filtered
        .chunks_exact(row_len)
        .zip(acc.chunks_exact_mut(row_len))
    {
        let mut previous = _mm512_setzero_si512(); // the filter restarts each row
        for (block, acc_block) in row
            .chunks_exact(AVX512_BLOCK)
            .zip(acc_row.chunks_exact_mut(AVX512_BLOCK))
        {
            let mut px = [previous; 3];
            for (k, v) in px.iter_mut().enumerate() {
                let f = _mm512_loadu_si512(block.as_ptr().add(64 * k) as *const _);
                previous = undo.block(f, previous);
                *v = previous;
                let sums = acc_block.as_mut_ptr().add(64 * k);
                let low = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(previous));
                let high = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(previous));
                let s0 = _mm512_loadu_si512(sums as *const _);
                let s1 = _mm512_loadu_si512(sums.add(32) as *const _);
                _mm512_storeu_si512(sums as *mut _, _mm512_add_epi16(s0, low));
                _mm512_storeu_si512(sums.add(32) as *mut _, _mm512_add_epi16(s1, high));
            }
            products.add(split.channels(px[0], px[1], px[2]));
        }
    }
    products.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::shard::PixelFilter;
    use crate::rng::SplitMix64;

    /// The three plain passes over each image: undo, per-pixel sums,
    /// portable products (in offset form, summed over the images).
    fn plain(images: &[&[u8]], row_len: usize, acc: &mut [u16]) -> [i64; 6] {
        let mut products = [0i64; 6];
        for filtered in images {
            let mut px = filtered.to_vec();
            for row in px.chunks_exact_mut(row_len) {
                for i in 3..row_len {
                    row[i] = row[i].wrapping_add(row[i - 3]);
                }
            }
            for (a, &v) in acc.iter_mut().zip(&px) {
                *a = a.wrapping_add(v as u16);
            }
            let (c, p) = crate::stats::rgb_moments::moments_portable(&px);
            let p = crate::stats::rgb_moments::offset_form(p, c);
            for (total, v) in products.iter_mut().zip(p) {
                *total += v;
            }
        }
        products
    }

    fn delta_filtered(pixels: &[u8], row_len: usize) -> Vec<u8> {
        let mut filtered = Vec::new();
        PixelFilter::Delta.apply(pixels, row_len, 3, &mut filtered);
        filtered
    }

    #[test]
    fn fused_kernels_equal_the_three_plain_passes() {
        let mut rng = SplitMix64::new(21);
        let mut kernels = 0;
        for level in SimdLevel::supported_levels() {
            // Widths of one, two and four 64-pixel blocks and of 16, 32 and
            // 96 pixels (AVX2 steps only); several rows, so the filter must
            // restart at each row; sums that start non-zero; one image and
            // two.
            for (width, height) in [
                (64usize, 1usize),
                (128, 3),
                (256, 5),
                (256, 256),
                (16, 1),
                (32, 2),
                (96, 3),
            ] {
                for count in 1..=MAX_IMAGES {
                    let row_len = width * 3;
                    let filtered: Vec<Vec<u8>> = (0..count)
                        .map(|_| {
                            let pixels: Vec<u8> = (0..row_len * height)
                                .map(|_| rng.next_u64() as u8)
                                .collect();
                            delta_filtered(&pixels, row_len)
                        })
                        .collect();
                    let images: Vec<&[u8]> = filtered.iter().map(|f| &f[..]).collect();
                    let start: Vec<u16> = (0..row_len * height)
                        .map(|_| rng.next_u64() as u16 % 60_000)
                        .collect();
                    let mut want_acc = start.clone();
                    let want = plain(&images, row_len, &mut want_acc);
                    let mut got_acc = start.clone();
                    let what = format!("{} {width}x{height}, {count} images", level.name());
                    match add_filtered_with(level, &images, row_len, &mut got_acc) {
                        Some(got) => {
                            assert_eq!(got, want, "{what} products");
                            assert_eq!(got_acc, want_acc, "{what} sums");
                            kernels += 1;
                        }
                        None => assert_eq!(got_acc, start, "{what}: no kernel, nothing added"),
                    }
                }
            }
        }
        if kernels == 0 {
            crate::cpu::not_tested_here("stats sweep: no fused kernel on this CPU");
        }
    }

    #[test]
    fn images_that_are_not_whole_blocks_or_alike_are_left_to_the_plain_path() {
        let filtered = vec![7u8; 100 * 3 * 2];
        let mut acc = vec![1u16; filtered.len()];
        // Rows of 100 pixels: no kernel's block.
        assert_eq!(add_filtered(&[&filtered], 300, &mut acc), None);
        // Whole blocks, but not one or two images of the sums' size.
        let image = vec![7u8; 96 * 3 * 2];
        let short = vec![7u8; 96 * 3];
        let mut acc2 = vec![1u16; image.len()];
        assert_eq!(add_filtered(&[], 288, &mut acc2), None);
        assert_eq!(
            add_filtered(&[&image, &image, &image], 288, &mut acc2),
            None
        );
        assert_eq!(add_filtered(&[&image, &short], 288, &mut acc2), None);
        assert!(acc.iter().chain(&acc2).all(|&a| a == 1));
    }

    #[test]
    fn white_image_known_answer() {
        // All 255 after the filter is undone: the filtered row is 255 255 255
        // then zeros. White pixels add the most to every i32 lane: 1,500
        // rows of 96 pixels are 9,000 AVX2 steps (16 pixels of each image
        // a step), past its flush at 4,096.
        let mut kernels = 0;
        for (width, height) in [(256, 4), (96, 1500)] {
            let row_len = width * 3;
            let white = vec![255u8; row_len * height];
            let filtered = delta_filtered(&white, row_len);
            for level in SimdLevel::supported_levels() {
                for count in 1..=MAX_IMAGES {
                    let images = vec![&filtered[..]; count];
                    let mut acc = vec![0u16; white.len()];
                    let what = format!("{} {width}x{height}, {count} images", level.name());
                    if let Some(p) = add_filtered_with(level, &images, row_len, &mut acc) {
                        // 255 * (255 - 128) per pixel and pair.
                        let want = 255 * 127 * (count * width * height) as i64;
                        assert_eq!(p, [want; 6], "{what}");
                        assert!(acc.iter().all(|&a| a as usize == 255 * count), "{what}");
                        kernels += 1;
                    }
                }
            }
        }
        if kernels == 0 {
            crate::cpu::not_tested_here("stats sweep: a fused kernel (white)");
        }
    }
}
