//! Undoing the delta filter (see `shard::PixelFilter`): a running sum along
//! each row with a stride of `channels` bytes, mod 256.
//!
//! Every record read pays for this, so it must cost little next to zstd
//! decompression (~0.16 ms an image here). The plain loop carries a
//! dependency from each byte to the one `channels` before it and takes about
//! as long as zstd itself; the SSSE3 path below does 16 bytes in a handful of
//! instructions, the AVX-512 one 64. All give the same bytes (tested).

/// `row[i] += row[i - channels]` for every row, in place.
pub fn undo(data: &mut [u8], row_len: usize, channels: usize) {
    #[cfg(target_arch = "x86_64")]
    if channels == 3 && crate::cpu::has_avx512_vbmi() {
        for row in data.chunks_exact_mut(row_len) {
            // SAFETY: the CPU has the kernel's features (checked just above).
            unsafe { undo_row_rgb_avx512(row) };
        }
        return;
    }
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

/// `vpermb` indices and lane mask that shift a 64-byte block up by `s`
/// bytes (lanes below `s` become zero).
const fn shift_up(s: usize) -> ([u8; 64], u64) {
    let mut idx = [0u8; 64];
    let mut i = s;
    while i < 64 {
        idx[i] = (i - s) as u8;
        i += 1;
    }
    (idx, !0u64 << s)
}

/// Lane i of a block takes its carry from byte 61 + i % 3 of the previous.
const fn carry_lanes() -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        idx[i] = 61 + (i % 3) as u8;
        i += 1;
    }
    idx
}

/// The SSSE3 scheme on 64-byte blocks. Shifts by 3, 6, 12, 24 and 48 bytes
/// (same channel, since each is a multiple of 3) sum every byte with the
/// same-channel bytes before it in the block; the carry for lane i is byte
/// 61 + i % 3 of the previous finished block. `vpermb` does the cross-lane
/// shifts that SSE's byte shifts cannot. The last partial block is read and
/// written with byte masks, so no scalar tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn undo_row_rgb_avx512(row: &mut [u8]) {
    use std::arch::x86_64::*;
    let undo = UndoRgbAvx512::new();
    let mut previous = _mm512_setzero_si512();
    for start in (0..row.len()).step_by(64) {
        let n = (row.len() - start).min(64);
        let mask: u64 = if n == 64 { !0 } else { (1u64 << n) - 1 };
        let ptr = row.as_mut_ptr().add(start) as *mut i8;
        let v = if n == 64 {
            _mm512_loadu_si512(ptr as *const _)
        } else {
            _mm512_maskz_loadu_epi8(mask, ptr)
        };
        let v = undo.block(v, previous);
        // Masked stores are slow on some cores (AMD Zen 4): only the tail.
        if n == 64 {
            _mm512_storeu_si512(ptr as *mut _, v);
        } else {
            _mm512_mask_storeu_epi8(ptr, mask, v);
        }
        previous = v;
    }
}

/// The AVX-512 undo of one 64-byte block of an RGB row, in registers: for
/// `undo_row_rgb_avx512` and for kernels that never store the undone pixels
/// (the stats pass, `stats_kernel`).
#[cfg(target_arch = "x86_64")]
pub(crate) struct UndoRgbAvx512 {
    shift_idx: [std::arch::x86_64::__m512i; 5],
    carry_idx: std::arch::x86_64::__m512i,
}

/// `vpermb` indices and lane masks of `UndoRgbAvx512`'s shifts, made at
/// compile time: building them per row cost more than the row itself.
const SHIFTS: [([u8; 64], u64); 5] = [
    shift_up(3),
    shift_up(6),
    shift_up(12),
    shift_up(24),
    shift_up(48),
];
const CARRY: [u8; 64] = carry_lanes();

#[cfg(target_arch = "x86_64")]
impl UndoRgbAvx512 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        Self {
            shift_idx: std::array::from_fn(
                |k| _mm512_loadu_si512(SHIFTS[k].0.as_ptr() as *const _),
            ),
            carry_idx: _mm512_loadu_si512(CARRY.as_ptr() as *const _),
        }
    }

    /// Block `v` (filtered) undone, given `previous`, the undone block
    /// before it in the row (zero for a row's first block).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) unsafe fn block(
        &self,
        mut v: std::arch::x86_64::__m512i,
        previous: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        for (&idx, &(_, lanes)) in self.shift_idx.iter().zip(SHIFTS.iter()) {
            v = _mm512_add_epi8(v, _mm512_maskz_permutexvar_epi8(lanes, idx, v));
        }
        _mm512_add_epi8(v, _mm512_permutexvar_epi8(self.carry_idx, previous))
    }
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

    /// Each SIMD kernel this CPU has, on its own, against the plain loop:
    /// `undo` only shows the first one that runs. Lengths around the 16-
    /// and 64-byte blocks, and the loader's crop rows (not whole blocks).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_kernel_equals_the_plain_running_sum() {
        let mut rng = SplitMix64::new(11);
        for len in [
            3usize, 15, 16, 48, 63, 64, 65, 126, 192, 672, 699, 768, 1023,
        ] {
            let row: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let mut plain = row.clone();
            undo_row_scalar(&mut plain, 3, 3);
            if crate::cpu::has_avx512_vbmi() {
                let mut got = row.clone();
                // SAFETY: checked just above.
                unsafe { undo_row_rgb_avx512(&mut got) };
                assert_eq!(got, plain, "avx512, {len} bytes");
            }
            if std::arch::is_x86_feature_detected!("ssse3") {
                let mut got = row.clone();
                // SAFETY: checked just above.
                unsafe { undo_row_rgb_ssse3(&mut got) };
                assert_eq!(got, plain, "ssse3, {len} bytes");
            }
        }
        eprintln!("AVX-512 kernel tested: {}", crate::cpu::has_avx512_vbmi());
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
