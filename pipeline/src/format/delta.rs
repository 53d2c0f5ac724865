//! Undoing the delta filter (see `shard::PixelFilter`): a running sum along
//! each row with a stride of `channels` bytes, mod 256.
//!
//! Every record read pays for this, so it must cost little next to zstd
//! decompression (~0.16 ms an image here). The plain loop carries a
//! dependency from each byte to the one `channels` before it and takes about
//! as long as zstd itself; the SSSE3 path below does 16 bytes in a handful of
//! instructions, the AVX2 one 32, the AVX-512 one 64. All give the same bytes
//! (tested).

use crate::cpu::SimdLevel;

/// `row[i] += row[i - channels]` for every row, in place.
pub fn undo(data: &mut [u8], row_len: usize, channels: usize) {
    undo_with(crate::cpu::simd_level(), data, row_len, channels);
}

/// `undo` on the widest path at or below `level` (which the CPU must have:
/// `SimdLevel::supported`).
pub fn undo_with(level: SimdLevel, data: &mut [u8], row_len: usize, channels: usize) {
    assert!(level.supported(), "{} is not supported here", level.name());
    if row_len == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if channels == 3 && level >= SimdLevel::Ssse3 {
        // SAFETY (each kernel): the CPU has `level` (asserted above), and
        // so every narrower level.
        let kernel: unsafe fn(&mut [u8]) = match level {
            SimdLevel::Avx512 => undo_row_rgb_avx512,
            SimdLevel::Avx2 => undo_row_rgb_avx2,
            _ => undo_row_rgb_ssse3,
        };
        for row in data.chunks_exact_mut(row_len) {
            unsafe { kernel(row) };
        }
        return;
    }
    for row in data.chunks_exact_mut(row_len) {
        undo_row_scalar(row, channels, channels);
    }
}

/// The plain running sum, from byte `start` on: the portable path, and
/// the tail of the SIMD ones. Public (and inline) so that a measurement
/// can compile this very loop for a wider instruction set
/// (`examples/autovec_vs_kernels.rs`).
#[inline]
pub fn undo_row_scalar(row: &mut [u8], channels: usize, start: usize) {
    for i in start.max(channels)..row.len() {
        row[i] = row[i].wrapping_add(row[i - channels]);
    }
}

/// `pshufb` indices of the 16-byte undo's carries: byte i of a block takes
/// byte 13 + i % 3 of the previous block, its channel's last value.
#[cfg(target_arch = "x86_64")]
const CARRY_FROM_PREVIOUS: [u8; 16] = [
    13, 14, 15, 13, 14, 15, 13, 14, 15, 13, 14, 15, 13, 14, 15, 13,
];

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
    let gather = _mm_loadu_si128(CARRY_FROM_PREVIOUS.as_ptr() as *const _);
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

/// `pshufb` indices of the AVX2 undo's carries. Across blocks
/// (`!within`): byte i of a 32-byte block takes byte 29 + i % 3 of the
/// previous block, which is byte 13 + i % 3 of its upper half. Within a
/// block: byte 16 + j of the upper half takes byte 13 + j % 3 of the lower
/// half; the lower half takes nothing (0x80: zero).
#[cfg(target_arch = "x86_64")]
const fn carry_lanes_avx2(within: bool) -> [u8; 32] {
    let mut idx = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        idx[i] = match (within, i < 16) {
            (false, _) => 13 + (i % 3) as u8,
            (true, true) => 0x80,
            (true, false) => 13 + ((i - 16) % 3) as u8,
        };
        i += 1;
    }
    idx
}

/// The SSSE3 scheme on 32-byte blocks (`UndoRgbAvx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn undo_row_rgb_avx2(row: &mut [u8]) {
    use std::arch::x86_64::*;
    let undo = UndoRgbAvx2::new();
    let mut previous = _mm256_setzero_si256();
    let blocks = row.len() / 32;
    for b in 0..blocks {
        let ptr = row.as_mut_ptr().add(b * 32) as *mut __m256i;
        previous = undo.block(_mm256_loadu_si256(ptr), previous);
        _mm256_storeu_si256(ptr, previous);
    }
    undo_row_scalar(row, 3, blocks * 32);
}

/// The AVX2 undo of one 32-byte block of an RGB row, in registers: for
/// `undo_row_rgb_avx2` and for the loader's crop, which writes undone
/// blocks straight to the batch. AVX2's byte shifts and shuffles stay
/// inside each 16-byte half: each half is summed on its own (shifts by 3,
/// 6 and 12), the upper half then adds the lower half's last pixel, and the
/// whole block the previous block's last pixel (one lane permute and one
/// shuffle each).
#[cfg(target_arch = "x86_64")]
pub(crate) struct UndoRgbAvx2 {
    carry_idx: std::arch::x86_64::__m256i,
    half_idx: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl UndoRgbAvx2 {
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        const CARRY: [u8; 32] = carry_lanes_avx2(false);
        const HALF: [u8; 32] = carry_lanes_avx2(true);
        Self {
            carry_idx: _mm256_loadu_si256(CARRY.as_ptr() as *const _),
            half_idx: _mm256_loadu_si256(HALF.as_ptr() as *const _),
        }
    }

    /// Block `v` (filtered) undone, given `previous`, the undone block
    /// before it in the row (zero for a row's first block).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn block(
        &self,
        mut v: std::arch::x86_64::__m256i,
        previous: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        v = sum_within_halves(v);
        let lower = _mm256_permute2x128_si256::<0x00>(v, v);
        v = _mm256_add_epi8(v, _mm256_shuffle_epi8(lower, self.half_idx));
        let carry = _mm256_permute2x128_si256::<0x11>(previous, previous);
        _mm256_add_epi8(v, _mm256_shuffle_epi8(carry, self.carry_idx))
    }
}

/// Each byte of each 16-byte half of `v` plus the same-channel bytes
/// before it in that half: the shifts by 3, 6 and 12 bytes of the SSSE3
/// undo, which AVX2 applies to both halves apart.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn sum_within_halves(mut v: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    v = _mm256_add_epi8(v, _mm256_slli_si256::<3>(v));
    v = _mm256_add_epi8(v, _mm256_slli_si256::<6>(v));
    _mm256_add_epi8(v, _mm256_slli_si256::<12>(v))
}

/// The SSSE3 undo in each 16-byte half of a 32-byte vector, the halves
/// being two independent streams (for the stats sweep: the same 16 bytes of
/// two images). No byte crosses between the halves, so this takes four
/// in-lane shuffles where `UndoRgbAvx2`, whose halves are one stream, takes
/// seven.
#[cfg(target_arch = "x86_64")]
pub(crate) struct UndoRgbHalvesAvx2 {
    carry_idx: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl UndoRgbHalvesAvx2 {
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        // Each half takes its carries from the same half of the previous
        // vector, as the SSSE3 undo does.
        Self {
            carry_idx: _mm256_broadcastsi128_si256(_mm_loadu_si128(
                CARRY_FROM_PREVIOUS.as_ptr() as *const _
            )),
        }
    }

    /// `v`'s two halves (filtered) undone, given `previous`, the undone
    /// vector before it in both streams (zero at their starts).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn block(
        &self,
        v: std::arch::x86_64::__m256i,
        previous: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_add_epi8(
            sum_within_halves(v),
            _mm256_shuffle_epi8(previous, self.carry_idx),
        )
    }
}

/// `vpermb` indices and lane mask that shift a 64-byte block up by `s`
/// bytes (lanes below `s` become zero).
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
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
#[cfg(target_arch = "x86_64")]
const SHIFTS: [([u8; 64], u64); 5] = [
    shift_up(3),
    shift_up(6),
    shift_up(12),
    shift_up(24),
    shift_up(48),
];
#[cfg(target_arch = "x86_64")]
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

    /// Each level this CPU has, on its own, against the plain loop: rows
    /// of every length up to 3 blocks of 64 (16-, 32- and 64-byte blocks
    /// and every tail), the loader's crop rows, and random lengths.
    #[test]
    fn each_level_equals_the_plain_running_sum() {
        let mut rng = SplitMix64::new(11);
        let lengths = (1..=195usize)
            .chain([672, 699, 768, 1023])
            .chain((0..20).map(|_| 1 + rng.below(3000) as usize));
        for len in lengths.collect::<Vec<_>>() {
            let row: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let mut plain = row.clone();
            undo_row_scalar(&mut plain, 3, 3);
            for level in SimdLevel::supported_levels() {
                let mut got = row.clone();
                undo_with(level, &mut got, len, 3);
                assert_eq!(got, plain, "{}, {len} bytes", level.name());
            }
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
