//! Sums and products of interleaved RGB bytes: for the pixels of an image,
//! the channel sums (r, g, b) and the six products (rr, rg, rb, gg, gb, bb)
//! that the RGB covariance is made of (`pipeline stats`).
//!
//! Four exact paths, picked at run time:
//! - AVX-512 (VBMI + VNNI): `vpermt2b` gathers each channel of 64 pixels
//!   from three 64-byte loads, `vpsadbw` sums them, and `vpdpbusd` forms and
//!   accumulates the six products in offset form, x (y - 128), four pixels
//!   a lane (`OffsetProductsAvx512`; the channel sums turn them back into
//!   x y): about 25 instructions per 64 pixels.
//! - AVX2: the SSSE3 kernel on 32 pixels at once, two 16-pixel blocks side
//!   by side in the halves of each register (byte shuffles stay within
//!   halves): the same instructions per step, twice the pixels.
//! - SSSE3: the same with byte shuffles and `pmaddwd` on 16 pixels, about 50
//!   instructions per 16 pixels.
//! - portable (also the test oracle for the others): one accumulator per
//!   byte position of a 48-byte block, 4x the SSSE3 instructions.
//!
//! `PIPELINE_SIMD` (see `cpu`) caps the level.

use crate::cpu::SimdLevel;
#[cfg(target_arch = "x86_64")]
use crate::rgb_split::GATHER;

/// Channel sums and products of `px` (a whole number of RGB pixels).
pub fn moments(px: &[u8]) -> ([u64; 3], [u64; 6]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512_kernel() {
        let whole = px.len() / AVX512_BLOCK * AVX512_BLOCK;
        // SAFETY: the CPU has the kernel's features (checked just above).
        let (c, p) = unsafe { moments_avx512(&px[..whole]) };
        return add(
            c,
            p,
            moments_with(SimdLevel::Ssse3.min(crate::cpu::simd_level()), &px[whole..]),
        );
    }
    moments_with(crate::cpu::simd_level(), px)
}

/// `moments` on the widest of the SSSE3, AVX2 and portable paths at or
/// below `level` (which the CPU must have).
pub(crate) fn moments_with(level: SimdLevel, px: &[u8]) -> ([u64; 3], [u64; 6]) {
    assert!(level.supported(), "{} is not supported here", level.name());
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        let whole = px.len() / 96 * 96;
        // SAFETY: the CPU has AVX2 (asserted above).
        let (c, p) = unsafe { moments_avx2(&px[..whole]) };
        return add(c, p, moments_with(SimdLevel::Ssse3, &px[whole..]));
    }
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Ssse3 {
        let whole = px.len() / 48 * 48;
        // SAFETY: as above, SSSE3.
        let (c, p) = unsafe { moments_ssse3(&px[..whole]) };
        return add(c, p, moments_portable(&px[whole..]));
    }
    moments_portable(px)
}

#[cfg(target_arch = "x86_64")]
fn add(c: [u64; 3], p: [u64; 6], (tc, tp): ([u64; 3], [u64; 6])) -> ([u64; 3], [u64; 6]) {
    (
        std::array::from_fn(|i| c[i] + tc[i]),
        std::array::from_fn(|i| p[i] + tp[i]),
    )
}

/// Whether `moments_avx512` runs: the AVX-512 level (not ruled out by
/// `PIPELINE_SIMD`) and VNNI.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_kernel() -> bool {
    has_avx512_kernel_at(crate::cpu::simd_level())
}

/// Whether the AVX-512 kernels run at `level`: AVX-512 and VNNI.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_kernel_at(level: SimdLevel) -> bool {
    level >= SimdLevel::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Exact products `p` (rr, rg, rb, gg, gb, bb) and channel sums `c` in the
/// offset form of `OffsetProductsAvx512`: p - 128 * c[first of the pair].
pub fn offset_form(p: [u64; 6], c: [u64; 3]) -> [i64; 6] {
    std::array::from_fn(|k| p[k] as i64 - 128 * c[PAIRS[k].0] as i64)
}

/// Bytes of RGB the AVX-512 kernel takes at a time: 64 pixels.
#[cfg(target_arch = "x86_64")]
const AVX512_BLOCK: usize = 192;

/// `px.len()` must be a multiple of 48.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn moments_ssse3(px: &[u8]) -> ([u64; 3], [u64; 6]) {
    use std::arch::x86_64::*;
    let masks: [[__m128i; 3]; 3] = std::array::from_fn(|ch| {
        std::array::from_fn(|part| _mm_loadu_si128(GATHER[ch][part].as_ptr() as *const __m128i))
    });
    let zero = _mm_setzero_si128();
    let (mut c, mut p) = ([0u64; 3], [0u64; 6]);
    // An i32 lane gains at most 2 * 2 * 255^2 = 260,100 a block: flush to
    // u64 every 4,096 blocks (65,536 pixels), far below 2^31.
    for slice in px.chunks(48 * 4096) {
        let mut sum = [zero; 3]; // u64 lanes, from psadbw
        let mut prod = [zero; 6]; // i32 lanes
        for block in slice.chunks_exact(48) {
            let ptr = block.as_ptr() as *const __m128i;
            let parts = [
                _mm_loadu_si128(ptr),
                _mm_loadu_si128(ptr.add(1)),
                _mm_loadu_si128(ptr.add(2)),
            ];
            let chan: [__m128i; 3] = std::array::from_fn(|ch| {
                _mm_or_si128(
                    _mm_or_si128(
                        _mm_shuffle_epi8(parts[0], masks[ch][0]),
                        _mm_shuffle_epi8(parts[1], masks[ch][1]),
                    ),
                    _mm_shuffle_epi8(parts[2], masks[ch][2]),
                )
            });
            for ch in 0..3 {
                sum[ch] = _mm_add_epi64(sum[ch], _mm_sad_epu8(chan[ch], zero));
            }
            let lo = chan.map(|v| _mm_unpacklo_epi8(v, zero));
            let hi = chan.map(|v| _mm_unpackhi_epi8(v, zero));
            for (k, (a, b)) in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
                .into_iter()
                .enumerate()
            {
                let both =
                    _mm_add_epi32(_mm_madd_epi16(lo[a], lo[b]), _mm_madd_epi16(hi[a], hi[b]));
                prod[k] = _mm_add_epi32(prod[k], both);
            }
        }
        for ch in 0..3 {
            let mut lanes = [0u64; 2];
            _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, sum[ch]);
            c[ch] += lanes[0] + lanes[1];
        }
        for k in 0..6 {
            let mut lanes = [0u32; 4];
            _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, prod[k]);
            p[k] += lanes.iter().map(|&v| v as u64).sum::<u64>();
        }
    }
    (c, p)
}

/// The SSSE3 kernel on two 48-byte blocks at once, one in each 16-byte half
/// of the AVX2 registers (`MomentsAvx2`). `px.len()` must be a multiple of
/// 96.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn moments_avx2(px: &[u8]) -> ([u64; 3], [u64; 6]) {
    use std::arch::x86_64::*;
    let mut moments = MomentsAvx2::new();
    for step in px.chunks_exact(96) {
        let ptr = step.as_ptr() as *const __m128i;
        // Third k of the first block in the low half, of the second in the
        // high half.
        moments.add(std::array::from_fn(|k| {
            _mm256_loadu2_m128i(ptr.add(3 + k), ptr.add(k))
        }));
    }
    moments.finish()
}

/// Channel sums and products of RGB pixels fed 32 at a time: two 48-byte
/// blocks side by side, the k-th 16 bytes of one in the low half of
/// register k and of the other in the high half. `vpshufb` shuffles within
/// halves, so the gather masks are the SSSE3 ones in both, and each step is
/// the SSSE3 kernel's instructions for twice the pixels. For
/// `moments_avx2` and for the stats sweep (`stats::kernel`), which feeds
/// it pixels undone in registers.
#[cfg(target_arch = "x86_64")]
pub(crate) struct MomentsAvx2 {
    masks: [[std::arch::x86_64::__m256i; 3]; 3],
    /// u64 lanes, from `vpsadbw`: no overflow.
    sum: [std::arch::x86_64::__m256i; 3],
    /// i32 lanes, flushed into `p` every `STEPS_PER_FLUSH` steps.
    prod: [std::arch::x86_64::__m256i; 6],
    steps: usize,
    p: [u64; 6],
}

/// An i32 lane of `MomentsAvx2` gains at most 2 * 2 * 255^2 = 260,100 a
/// step: 4,096 steps stay far below 2^31.
#[cfg(target_arch = "x86_64")]
const STEPS_PER_FLUSH: usize = 4096;

#[cfg(target_arch = "x86_64")]
impl MomentsAvx2 {
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        Self {
            masks: std::array::from_fn(|ch| {
                std::array::from_fn(|part| {
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        GATHER[ch][part].as_ptr() as *const __m128i
                    ))
                })
            }),
            sum: [_mm256_setzero_si256(); 3],
            prod: [_mm256_setzero_si256(); 6],
            steps: 0,
            p: [0; 6],
        }
    }

    /// Adds 32 pixels laid out as the type's comment says.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn add(&mut self, parts: [std::arch::x86_64::__m256i; 3]) {
        use std::arch::x86_64::*;
        if self.steps == STEPS_PER_FLUSH {
            self.flush();
        }
        self.steps += 1;
        let zero = _mm256_setzero_si256();
        let masks = &self.masks;
        let chan: [__m256i; 3] = std::array::from_fn(|ch| {
            _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_shuffle_epi8(parts[0], masks[ch][0]),
                    _mm256_shuffle_epi8(parts[1], masks[ch][1]),
                ),
                _mm256_shuffle_epi8(parts[2], masks[ch][2]),
            )
        });
        for (sum, &v) in self.sum.iter_mut().zip(&chan) {
            *sum = _mm256_add_epi64(*sum, _mm256_sad_epu8(v, zero));
        }
        let lo = chan.map(|v| _mm256_unpacklo_epi8(v, zero));
        let hi = chan.map(|v| _mm256_unpackhi_epi8(v, zero));
        for (k, &(a, b)) in PAIRS.iter().enumerate() {
            let both = _mm256_add_epi32(
                _mm256_madd_epi16(lo[a], lo[b]),
                _mm256_madd_epi16(hi[a], hi[b]),
            );
            self.prod[k] = _mm256_add_epi32(self.prod[k], both);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn flush(&mut self) {
        use std::arch::x86_64::*;
        for k in 0..6 {
            let mut lanes = [0u32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, self.prod[k]);
            self.p[k] += lanes.iter().map(|&v| v as u64).sum::<u64>();
            self.prod[k] = _mm256_setzero_si256();
        }
        self.steps = 0;
    }

    /// Channel sums and products of every pixel added.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn finish(mut self) -> ([u64; 3], [u64; 6]) {
        use std::arch::x86_64::*;
        self.flush();
        let c = self.sum.map(|s| {
            let mut lanes = [0u64; 4];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s);
            lanes.iter().sum::<u64>()
        });
        (c, self.p)
    }
}

/// Indices that gather channel `ch` of 64 pixels: byte `3 * i + ch` of the
/// 192 loaded, as `vpermt2b` indices into the first two 64-byte loads (0..128)
/// for the pixels whose byte lies there, and as `vpermb` indices into the
/// third load for the rest (whose lanes the mask picks).
#[cfg(target_arch = "x86_64")]
const fn avx512_gather(ch: usize) -> ([u8; 64], [u8; 64], u64) {
    let (mut first, mut third, mut from_third) = ([0u8; 64], [0u8; 64], 0u64);
    let mut i = 0;
    while i < 64 {
        let byte = 3 * i + ch;
        if byte < 128 {
            first[i] = byte as u8;
        } else {
            third[i] = (byte - 128) as u8;
            from_third |= 1 << i;
        }
        i += 1;
    }
    (first, third, from_third)
}

/// `px.len()` must be a multiple of 192.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn moments_avx512(px: &[u8]) -> ([u64; 3], [u64; 6]) {
    use std::arch::x86_64::*;
    let split = SplitRgbAvx512::new();
    let mut products = OffsetProductsAvx512::new();
    let zero = _mm512_setzero_si512();
    let mut sum = [zero; 3]; // u64 lanes, from vpsadbw: no overflow
    for block in px.chunks_exact(AVX512_BLOCK) {
        let ptr = block.as_ptr();
        let chan = split.channels(
            _mm512_loadu_si512(ptr as *const _),
            _mm512_loadu_si512(ptr.add(64) as *const _),
            _mm512_loadu_si512(ptr.add(128) as *const _),
        );
        for ch in 0..3 {
            sum[ch] = _mm512_add_epi64(sum[ch], _mm512_sad_epu8(chan[ch], zero));
        }
        products.add(chan);
    }
    let c = sum.map(|s| _mm512_reduce_add_epi64(s) as u64);
    let offset = products.finish();
    // Back from x (y - 128) to x y with these pixels' own channel sums.
    let p = std::array::from_fn(|k| (offset[k] + 128 * c[PAIRS[k].0] as i64) as u64);
    (c, p)
}

/// Splits 64 interleaved RGB pixels (three 64-byte registers) into one
/// register per channel: `vpermt2b` from the first two, `vpermb` from the
/// third under a lane mask.
#[cfg(target_arch = "x86_64")]
pub(crate) struct SplitRgbAvx512 {
    first: [std::arch::x86_64::__m512i; 3],
    third: [std::arch::x86_64::__m512i; 3],
}

/// The gather tables of `SplitRgbAvx512`, made at compile time.
#[cfg(target_arch = "x86_64")]
const GATHERS: [([u8; 64], [u8; 64], u64); 3] =
    [avx512_gather(0), avx512_gather(1), avx512_gather(2)];

#[cfg(target_arch = "x86_64")]
impl SplitRgbAvx512 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        Self {
            first: GATHERS.map(|g| _mm512_loadu_si512(g.0.as_ptr() as *const _)),
            third: GATHERS.map(|g| _mm512_loadu_si512(g.1.as_ptr() as *const _)),
        }
    }

    /// [r, g, b] of the 64 pixels in `a`, `b`, `c` (bytes 0..192).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(crate) unsafe fn channels(
        &self,
        a: std::arch::x86_64::__m512i,
        b: std::arch::x86_64::__m512i,
        c: std::arch::x86_64::__m512i,
    ) -> [std::arch::x86_64::__m512i; 3] {
        use std::arch::x86_64::*;
        std::array::from_fn(|ch| {
            let low = _mm512_permutex2var_epi8(a, self.first[ch], b);
            _mm512_mask_permutexvar_epi8(low, GATHERS[ch].2, self.third[ch], c)
        })
    }
}

/// The six products in offset form, sum of x * (y - 128) for (x, y) in rr,
/// rg, rb, gg, gb, bb, from channel-split pixels: `vpdpbusd` multiplies
/// unsigned bytes by signed ones and adds four products into each i32 lane,
/// so y - 128 (y with its top bit flipped, read as signed) makes one
/// instruction a pair per 64 pixels, where the exact form widens to 16 bits
/// and needs two. The caller adds 128 * sum(x) back (`stats` does it once,
/// from the exact per-pixel sums).
#[cfg(target_arch = "x86_64")]
pub(crate) struct OffsetProductsAvx512 {
    lanes: [std::arch::x86_64::__m512i; 6],
    blocks: usize,
    total: [i64; 6],
}

/// Pairs of channels, in the order rr, rg, rb, gg, gb, bb.
const PAIRS: [(usize, usize); 6] = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)];

#[cfg(target_arch = "x86_64")]
impl OffsetProductsAvx512 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn new() -> Self {
        use std::arch::x86_64::*;
        Self {
            lanes: [_mm512_setzero_si512(); 6],
            blocks: 0,
            total: [0; 6],
        }
    }

    /// Adds 64 pixels, `chan` as from `SplitRgbAvx512`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn add(&mut self, chan: [std::arch::x86_64::__m512i; 3]) {
        use std::arch::x86_64::*;
        if self.blocks == BLOCKS_PER_FLUSH {
            self.flush();
        }
        self.blocks += 1;
        let top = _mm512_set1_epi8(-128);
        let signed = chan.map(|v| _mm512_xor_si512(v, top));
        for (k, (x, y)) in PAIRS.into_iter().enumerate() {
            self.lanes[k] = _mm512_dpbusd_epi32(self.lanes[k], chan[x], signed[y]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn flush(&mut self) {
        use std::arch::x86_64::*;
        for k in 0..6 {
            // Sixteen lanes of up to 5.3e8 each can pass i32: widen first.
            let v = self.lanes[k];
            let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
            let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v));
            self.total[k] += _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi));
            self.lanes[k] = _mm512_setzero_si512();
        }
        self.blocks = 0;
    }

    /// Sum of x * (y - 128) for each pair, over every pixel added.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(crate) unsafe fn finish(mut self) -> [i64; 6] {
        self.flush();
        self.total
    }
}

/// An i32 lane of `OffsetProductsAvx512` moves by at most 4 * 255 * 128 =
/// 130,560 a block of 64 pixels: 4,096 blocks stay far inside i32.
#[cfg(target_arch = "x86_64")]
const BLOCKS_PER_FLUSH: usize = 4096;

/// The portable path: channel sums (r, g, b) and products (rr, rg, rb, gg,
/// gb, bb) of interleaved RGB bytes.
///
/// A loop over pixels with nine accumulators does not vectorise. Instead we
/// walk the interleaved bytes in blocks of 48 (16 pixels) and keep one u32
/// accumulator per byte position for x, x*x, x*next and x*next-but-one;
/// position j of a block is channel j % 3, so each lane maps to one sum, and
/// the lanes that pair bytes of two different pixels are dropped. A lane adds
/// at most 255^2 = 65,025 per block, so u32 lanes are safe for 65,536 blocks
/// (1M pixels); larger images are summed in slices of that size. Measured on
/// decoded sample images, one core: 0.09-0.14 ms an image, the plain pixel
/// loop 0.17-0.21 ms.
pub(crate) fn moments_portable(px: &[u8]) -> ([u64; 3], [u64; 6]) {
    const BLOCK: usize = 48;
    const MAX_BLOCKS: usize = 65_536; // 65,536 * 65,025 < 2^32
    let (mut c, mut p) = ([0u64; 3], [0u64; 6]);
    let whole = px.len() / BLOCK * BLOCK;
    for slice in px[..whole].chunks(BLOCK * MAX_BLOCKS) {
        let (mut s, mut sq) = ([0u32; BLOCK], [0u32; BLOCK]);
        let (mut next, mut next2) = ([0u32; BLOCK], [0u32; BLOCK]);
        for block in slice.chunks_exact(BLOCK) {
            let x: &[u8; BLOCK] = block.try_into().expect("48-byte block");
            for j in 0..BLOCK {
                let v = x[j] as u32;
                s[j] += v;
                sq[j] += v * v;
            }
            for j in 0..BLOCK - 1 {
                next[j] += x[j] as u32 * x[j + 1] as u32;
            }
            for j in 0..BLOCK - 2 {
                next2[j] += x[j] as u32 * x[j + 2] as u32;
            }
        }
        for j in 0..BLOCK {
            let ch = j % 3;
            c[ch] += s[j] as u64;
            p[[0, 3, 5][ch]] += sq[j] as u64; // rr, gg, bb
            match ch {
                0 => {
                    p[1] += next[j] as u64; // r*g
                    p[2] += next2[j] as u64; // r*b
                }
                1 => p[4] += next[j] as u64, // g*b
                _ => {}                      // pairs across pixels
            }
        }
    }
    for rgb in px[whole..].chunks_exact(3) {
        let (r, g, b) = (rgb[0] as u64, rgb[1] as u64, rgb[2] as u64);
        c[0] += r;
        c[1] += g;
        c[2] += b;
        p[0] += r * r;
        p[1] += r * g;
        p[2] += r * b;
        p[3] += g * g;
        p[4] += g * b;
        p[5] += b * b;
    }
    (c, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn blocked_channel_sums_equal_the_plain_loop() {
        // 16 pixels make one block; 23 pixels leave a remainder.
        for pixels in [1usize, 16, 23, 4096] {
            let px: Vec<u8> = (0..pixels * 3).map(|i| (i * 97 % 251) as u8).collect();
            let (mut c, mut p) = ([0u64; 3], [0u64; 6]);
            for rgb in px.chunks_exact(3) {
                let [r, g, b] = [rgb[0], rgb[1], rgb[2]].map(u64::from);
                c = [c[0] + r, c[1] + g, c[2] + b];
                let q = [r * r, r * g, r * b, g * g, g * b, b * b];
                p = std::array::from_fn(|i| p[i] + q[i]);
            }
            assert_eq!(moments_portable(&px), (c, p), "{pixels} pixels");
        }
        let white = vec![255u8; 256 * 256 * 3];
        let (c, p) = moments_portable(&white);
        assert_eq!(c, [255 * 65536; 3]);
        assert_eq!(p, [65025 * 65536; 6]);
    }

    #[test]
    fn channel_sums_known_answers() {
        // Two pixels (1,2,3) and (4,5,6), worked out by hand.
        let (c, p) = moments_portable(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(c, [5, 7, 9]);
        assert_eq!(p, [17, 22, 27, 29, 36, 45]);
        let white = vec![255u8; 256 * 256 * 3];
        let (c, p) = moments_portable(&white);
        assert_eq!(c, [255 * 65536; 3]);
        assert_eq!(p, [65025 * 65536; 6]);
    }

    #[test]
    fn the_kernel_equals_the_portable_path() {
        let mut rng = SplitMix64::new(4);
        // Whole blocks, a tail, one pixel, a 256x256 image, and one past a
        // flush (4,096 blocks).
        for pixels in [16usize, 23, 1, 65_536, 65_536 + 16 * 3 + 5] {
            let px: Vec<u8> = (0..pixels * 3).map(|_| rng.next_u64() as u8).collect();
            assert_eq!(moments(&px), moments_portable(&px), "{pixels} pixels");
        }
        let white = vec![255u8; 70_000 * 3];
        assert_eq!(moments(&white), moments_portable(&white));
        assert_eq!(moments(&white).1, [65025 * 70_000; 6]);
    }

    /// Each level this CPU has against the portable path: every pixel
    /// count up to 80 (around the 16-, 32- and 64-pixel blocks and their
    /// tails), past the AVX2 flush, and all-white (the largest sums).
    #[test]
    fn each_level_equals_the_portable_path() {
        let mut rng = SplitMix64::new(19);
        let counts = (0..=80usize).chain([32 * 4096 + 7, 65_536]);
        for pixels in counts {
            let px: Vec<u8> = (0..pixels * 3).map(|_| rng.next_u64() as u8).collect();
            let white = vec![255u8; pixels * 3];
            for level in SimdLevel::supported_levels() {
                assert_eq!(
                    moments_with(level, &px),
                    moments_portable(&px),
                    "{}, {pixels} pixels",
                    level.name()
                );
                assert_eq!(moments_with(level, &white).1, [65025 * pixels as u64; 6]);
            }
        }
    }

    /// The AVX-512 kernel on its own, when this CPU has it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn each_kernel_equals_the_portable_path() {
        let mut rng = SplitMix64::new(9);
        // 64-pixel blocks; one past the AVX-512 flush (4,096 blocks).
        for blocks in [1usize, 2, 1024, 4097] {
            let px: Vec<u8> = (0..blocks * 192).map(|_| rng.next_u64() as u8).collect();
            let want = moments_portable(&px);
            if has_avx512_kernel() {
                // SAFETY: checked just above.
                assert_eq!(
                    unsafe { moments_avx512(&px) },
                    want,
                    "avx512, {blocks} blocks"
                );
            }
            if std::arch::is_x86_feature_detected!("ssse3") {
                // SAFETY: checked just above.
                assert_eq!(
                    unsafe { moments_ssse3(&px) },
                    want,
                    "ssse3, {blocks} blocks"
                );
            }
        }
        let white = vec![255u8; 4097 * 192];
        if has_avx512_kernel() {
            // SAFETY: checked just above.
            assert_eq!(unsafe { moments_avx512(&white) }.1, [65025 * 4097 * 64; 6]);
        }
        if !has_avx512_kernel() {
            crate::cpu::not_tested_here("rgb_moments: the AVX-512 VNNI moments kernel");
        }
    }

    /// The offset-form kernel against the portable products, past its flush
    /// (4,096 blocks) and at both extremes of x * (y - 128).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn offset_products_equal_the_portable_path() {
        if !has_avx512_kernel() {
            crate::cpu::not_tested_here("rgb_moments: the AVX-512 VNNI offset-products kernel");
            return;
        }
        let mut rng = SplitMix64::new(13);
        let random: Vec<u8> = (0..4097 * 192).map(|_| rng.next_u64() as u8).collect();
        let white = vec![255u8; 4097 * 192];
        let red: Vec<u8> = (0..4097 * 64).flat_map(|_| [255, 0, 0]).collect();
        for (name, px) in [("random", &random), ("white", &white), ("red", &red)] {
            let (c, p) = moments_portable(px);
            // SAFETY: the CPU has the kernel's features (checked above).
            let got = unsafe {
                let split = SplitRgbAvx512::new();
                let mut products = OffsetProductsAvx512::new();
                for block in px.chunks_exact(AVX512_BLOCK) {
                    use std::arch::x86_64::*;
                    let ptr = block.as_ptr();
                    products.add(split.channels(
                        _mm512_loadu_si512(ptr as *const _),
                        _mm512_loadu_si512(ptr.add(64) as *const _),
                        _mm512_loadu_si512(ptr.add(128) as *const _),
                    ));
                }
                products.finish()
            };
            assert_eq!(got, offset_form(p, c), "{name}");
        }
        // rg of pure red: 255 * (0 - 128) per pixel.
        let (c, p) = moments_portable(&red);
        assert_eq!(offset_form(p, c)[1], -255 * 128 * 4097 * 64);
    }
}
