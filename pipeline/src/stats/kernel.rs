//! What `pipeline stats` does to each delta-filtered image, in one sweep.
//!
//! The plain path makes three passes over the decompressed image: undo the
//! filter (a store of every byte), add the pixels into the per-pixel u16
//! sums, and form the six RGB products. Each pass reloads the 196 KB image
//! from L2. The AVX-512 kernel here undoes each 64-byte block in registers
//! and feeds it straight to the sums and the products, so the undone pixels
//! are never stored or reloaded. Where it cannot run (another CPU, or rows
//! that are not whole 64-pixel blocks) `add_filtered` says so and the caller
//! takes the plain path; both give the same integers (tested).

/// Undoes the delta filter of `filtered` (rows of `row_len` RGB bytes),
/// adds every undone byte into `acc` (`acc[i] += px[i]`, wrapping u16), and
/// returns the six products in offset form: sum of x * (y - 128) over all
/// pixels for (x, y) in rr, rg, rb, gg, gb, bb (add 128 * sum(x) for the
/// products; see `rgb_moments::OffsetProductsAvx512`). `None` when this CPU
/// or this geometry has no fused kernel; then nothing was added.
pub fn add_filtered(filtered: &[u8], row_len: usize, acc: &mut [u16]) -> Option<[i64; 6]> {
    #[cfg(target_arch = "x86_64")]
    if crate::stats::rgb_moments::has_avx512_kernel()
        && row_len > 0
        && row_len.is_multiple_of(AVX512_BLOCK)
        && filtered.len().is_multiple_of(row_len)
        && acc.len() == filtered.len()
    {
        // SAFETY: the CPU has the kernel's features and the lengths are
        // whole blocks and rows (checked just above).
        return Some(unsafe { add_filtered_avx512(filtered, row_len, acc) });
    }
    let _ = (filtered, row_len, acc);
    None
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
    fn fused_kernel_equals_the_three_plain_passes() {
        let mut rng = SplitMix64::new(21);
        // Widths of one, two and four 64-pixel blocks; several rows, so the
        // filter must restart at each row; sums that start non-zero.
        for (width, height) in [(64usize, 1usize), (128, 3), (256, 5), (256, 256)] {
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
            match add_filtered(&filtered, row_len, &mut got_acc) {
                Some(got) => {
                    assert_eq!(got, want, "{width}x{height} products");
                    assert_eq!(got_acc, want_acc, "{width}x{height} sums");
                }
                None => {
                    assert_eq!(got_acc, start, "no kernel: nothing added");
                    crate::cpu::not_tested_here("stats sweep: the fused AVX-512 kernel");
                    return;
                }
            }
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
        // then zeros.
        let (width, height) = (256, 4);
        let row_len = width * 3;
        let white = vec![255u8; row_len * height];
        let mut filtered = Vec::new();
        PixelFilter::Delta.apply(&white, row_len, 3, &mut filtered);
        let mut acc = vec![0u16; white.len()];
        match add_filtered(&filtered, row_len, &mut acc) {
            Some(p) => {
                // 255 * (255 - 128) per pixel and pair.
                assert_eq!(p, [255 * 127 * (width * height) as i64; 6]);
                assert!(acc.iter().all(|&a| a == 255));
            }
            None => crate::cpu::not_tested_here("stats sweep: the fused AVX-512 kernel (white)"),
        }
    }
}
