//! What `pipeline stats` does to each delta-filtered image, in one sweep.
//!
//! The plain path makes three passes over the decompressed image: undo the
//! filter (a store of every byte), add the pixels into the per-pixel u16
//! sums, and form the six RGB products. Each pass reloads the 196 KB image
//! from L2. The kernels here undo each block in registers (64 bytes with
//! AVX-512, 32 with AVX2) and feed it straight to the sums and the
//! products, so the undone pixels are never stored or reloaded. Where none
//! can run (an older CPU, or rows that are not whole blocks) `add_filtered`
//! says so and the caller takes the plain path; all give the same integers
//! (tested).

use crate::cpu::SimdLevel;

/// Undoes the delta filter of `filtered` (rows of `row_len` RGB bytes),
/// adds every undone byte into `acc` (`acc[i] += px[i]`, wrapping u16), and
/// returns the six products in offset form: sum of x * (y - 128) over all
/// pixels for (x, y) in rr, rg, rb, gg, gb, bb (add 128 * sum(x) for the
/// products; see `rgb_moments::OffsetProductsAvx512`). `None` when this CPU
/// or this geometry has no fused kernel; then nothing was added.
pub fn add_filtered(filtered: &[u8], row_len: usize, acc: &mut [u16]) -> Option<[i64; 6]> {
    add_filtered_with(crate::cpu::simd_level(), filtered, row_len, acc)
}

/// `add_filtered` with the widest kernel at or below `level` (which the CPU
/// must have: `SimdLevel::supported`).
pub(crate) fn add_filtered_with(
    level: SimdLevel,
    filtered: &[u8],
    row_len: usize,
    acc: &mut [u16],
) -> Option<[i64; 6]> {
    assert!(level.supported(), "{} is not supported here", level.name());
    let whole_rows = row_len > 0 && filtered.len().is_multiple_of(row_len);
    if !whole_rows || acc.len() != filtered.len() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::stats::rgb_moments::has_avx512_kernel_at(level)
            && row_len.is_multiple_of(AVX512_BLOCK)
        {
            // SAFETY: the CPU has the kernel's features (`level` is
            // supported, and VNNI was detected); the lengths are whole
            // blocks and rows (checked above).
            return Some(unsafe { add_filtered_avx512(filtered, row_len, acc) });
        }
        if level >= SimdLevel::Avx2 && row_len.is_multiple_of(AVX2_STEP) {
            // SAFETY: as above, AVX2.
            return Some(unsafe { add_filtered_avx2(filtered, row_len, acc) });
        }
    }
    None
}

/// 32 RGB pixels: three 32-byte blocks, the unit of `MomentsAvx2`.
#[cfg(target_arch = "x86_64")]
const AVX2_STEP: usize = 96;

/// `row_len` a multiple of 96, `filtered.len()` of `row_len`, and
/// `acc.len() == filtered.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_filtered_avx2(filtered: &[u8], row_len: usize, acc: &mut [u16]) -> [i64; 6] {
    use crate::format::delta::UndoRgbAvx2;
    use crate::stats::rgb_moments::{offset_form, MomentsAvx2};
    use std::arch::x86_64::*;
    let undo = UndoRgbAvx2::new();
    let mut moments = MomentsAvx2::new();
    for (row, acc_row) in filtered
        .chunks_exact(row_len)
        .zip(acc.chunks_exact_mut(row_len))
    {
        let mut previous = _mm256_setzero_si256(); // the filter restarts each row
        for (step, acc_step) in row
            .chunks_exact(AVX2_STEP)
            .zip(acc_row.chunks_exact_mut(AVX2_STEP))
        {
            let mut px = [previous; 3];
            for (k, v) in px.iter_mut().enumerate() {
                let f = _mm256_loadu_si256(step.as_ptr().add(32 * k) as *const _);
                previous = undo.block(f, previous);
                *v = previous;
                let sums = acc_step.as_mut_ptr().add(32 * k);
                let low = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(previous));
                let high = _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(previous));
                let s0 = _mm256_loadu_si256(sums as *const _);
                let s1 = _mm256_loadu_si256(sums.add(16) as *const _);
                _mm256_storeu_si256(sums as *mut _, _mm256_add_epi16(s0, low));
                _mm256_storeu_si256(sums.add(16) as *mut _, _mm256_add_epi16(s1, high));
            }
            // Bytes 0..96 as `MomentsAvx2` takes them: the 16-byte thirds of
            // bytes 0..48 in the low halves, of bytes 48..96 in the high.
            moments.add([
                _mm256_permute2x128_si256::<0x30>(px[0], px[1]),
                _mm256_permute2x128_si256::<0x21>(px[0], px[2]),
                _mm256_permute2x128_si256::<0x30>(px[1], px[2]),
            ]);
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

    /// The three plain passes: undo, per-pixel sums, portable products (in
    /// offset form).
    fn plain(filtered: &[u8], row_len: usize, acc: &mut [u16]) -> [i64; 6] {
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
        crate::stats::rgb_moments::offset_form(p, c)
    }

    #[test]
    fn fused_kernels_equal_the_three_plain_passes() {
        let mut rng = SplitMix64::new(21);
        let mut kernels = 0;
        for level in SimdLevel::supported_levels() {
            // Widths of one, two and four 64-pixel blocks and of 32 and 96
            // pixels (AVX2 steps only); several rows, so the filter must
            // restart at each row; sums that start non-zero.
            for (width, height) in [
                (64usize, 1usize),
                (128, 3),
                (256, 5),
                (256, 256),
                (32, 2),
                (96, 3),
            ] {
                let row_len = width * 3;
                let pixels: Vec<u8> = (0..row_len * height)
                    .map(|_| rng.next_u64() as u8)
                    .collect();
                let mut filtered = Vec::new();
                PixelFilter::Delta.apply(&pixels, row_len, 3, &mut filtered);
                let start: Vec<u16> = (0..pixels.len())
                    .map(|_| rng.next_u64() as u16 % 60_000)
                    .collect();
                let mut want_acc = start.clone();
                let want = plain(&filtered, row_len, &mut want_acc);
                let mut got_acc = start.clone();
                let what = format!("{} {width}x{height}", level.name());
                match add_filtered_with(level, &filtered, row_len, &mut got_acc) {
                    Some(got) => {
                        assert_eq!(got, want, "{what} products");
                        assert_eq!(got_acc, want_acc, "{what} sums");
                        kernels += 1;
                    }
                    None => assert_eq!(got_acc, start, "{what}: no kernel, nothing added"),
                }
            }
        }
        if kernels == 0 {
            crate::cpu::not_tested_here("stats sweep: no fused kernel on this CPU");
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_left_to_the_plain_path() {
        let filtered = vec![7u8; 100 * 3 * 2];
        let mut acc = vec![1u16; filtered.len()];
        assert_eq!(add_filtered(&filtered, 300, &mut acc), None);
        assert!(acc.iter().all(|&a| a == 1));
    }

    #[test]
    fn white_image_known_answer() {
        // All 255 after the filter is undone: the filtered row is 255 255 255
        // then zeros. White pixels add the most to every i32 lane: 1,500
        // rows of 96 are 4,500 AVX2 steps, past its flush at 4,096.
        let mut kernels = 0;
        for (width, height) in [(256, 4), (96, 1500)] {
            let row_len = width * 3;
            let white = vec![255u8; row_len * height];
            let mut filtered = Vec::new();
            PixelFilter::Delta.apply(&white, row_len, 3, &mut filtered);
            for level in SimdLevel::supported_levels() {
                let mut acc = vec![0u16; white.len()];
                let what = format!("{} {width}x{height}", level.name());
                if let Some(p) = add_filtered_with(level, &filtered, row_len, &mut acc) {
                    // 255 * (255 - 128) per pixel and pair.
                    assert_eq!(p, [255 * 127 * (width * height) as i64; 6], "{what}");
                    assert!(acc.iter().all(|&a| a == 255), "{what}");
                    kernels += 1;
                }
            }
        }
        if kernels == 0 {
            crate::cpu::not_tested_here("stats sweep: a fused kernel (white)");
        }
    }
}
