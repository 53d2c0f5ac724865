//! Undoing the delta filter (see `shard::PixelFilter`): a running sum along
//! each row with a stride of `channels` bytes, mod 256.
//!
//! Every record read pays for this, so it must cost little next to zstd
//! decompression (~0.16 ms an image here). The plain loop carries a
//! dependency from each byte to the one `channels` before it and takes about
//! as long as zstd itself; the SSSE3 path below does 16 bytes in a handful of
//! instructions. Both give the same bytes (tested).

/// `row[i] += row[i - channels]` for every row, in place.
pub fn undo(data: &mut [u8], row_len: usize, channels: usize) {
    #[cfg(target_arch = "x86_64")]
    if channels == 3 && std::arch::is_x86_feature_detected!("ssse3") {
        for row in data.chunks_exact_mut(row_len) {
            // SAFETY: the CPU supports SSSE3 (checked just above).
            unsafe { undo_row_rgb_ssse3(row) };
        }
        return;
    }
    for row in data.chunks_exact_mut(row_len) {
        undo_row_scalar(row, channels, channels);
    }
}

/// The plain running sum, from byte `start` on.
fn undo_row_scalar(row: &mut [u8], channels: usize, start: usize) {
    for i in start.max(channels)..row.len() {
        row[i] = row[i].wrapping_add(row[i - channels]);
    }
}

/// One row of RGB bytes, 16 at a time. Within a block, three shift-and-add
/// steps (by 3, 6 and 12 bytes) sum every byte with the same-channel bytes
/// before it in the block; then each lane adds the finished value of its
/// channel from the end of the previous block. Lane i of a block starting at
/// byte o has the channel of byte o - 3 + i % 3, which is byte 13 + i % 3 of
/// the previous block: one shuffle gathers those carries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn undo_row_rgb_ssse3(row: &mut [u8]) {
    use std::arch::x86_64::*;
    let gather = _mm_setr_epi8(
        13, 14, 15, 13, 14, 15, 13, 14, 15, 13, 14, 15, 13, 14, 15, 13,
    );
    let mut carry_from = _mm_setzero_si128();
    let blocks = row.len() / 16;
    for b in 0..blocks {
        let ptr = row.as_mut_ptr().add(b * 16) as *mut __m128i;
        let mut v = _mm_loadu_si128(ptr);
        v = _mm_add_epi8(v, _mm_slli_si128::<3>(v));
        v = _mm_add_epi8(v, _mm_slli_si128::<6>(v));
        v = _mm_add_epi8(v, _mm_slli_si128::<12>(v));
        v = _mm_add_epi8(v, _mm_shuffle_epi8(carry_from, gather));
        _mm_storeu_si128(ptr, v);
        carry_from = v;
    }
    undo_row_scalar(row, 3, blocks * 16);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn fast_path_equals_the_plain_running_sum() {
        let mut rng = SplitMix64::new(5);
        // Row lengths that are and are not multiples of 16 bytes.
        for (width, height) in [(256, 4), (1, 3), (5, 2), (17, 3), (100, 2)] {
            let row_len = width * 3;
            let data: Vec<u8> = (0..row_len * height)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let mut fast = data.clone();
            undo(&mut fast, row_len, 3);
            let mut plain = data.clone();
            for row in plain.chunks_exact_mut(row_len) {
                undo_row_scalar(row, 3, 3);
            }
            assert_eq!(fast, plain, "width {width}");
        }
    }

    #[test]
    fn running_sum_known_answer() {
        // Two rows of three pixels; each row restarts the sums.
        let mut data = [1, 2, 3, 1, 1, 1, 255, 0, 2, 9, 9, 9, 1, 2, 3, 0, 0, 0];
        undo(&mut data, 9, 3);
        assert_eq!(
            data,
            [1, 2, 3, 2, 3, 4, 1, 3, 6, 9, 9, 9, 10, 11, 12, 10, 11, 12]
        );
    }
}
