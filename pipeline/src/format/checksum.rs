//! xxh3-64 of whole buffers: frames, pixels, indexes.
//!
//! Every record read checks its frame, so this sits on the loader's hot
//! path. The `xxh3` crate picks AVX2 or NEON when the CPU has them, at run
//! time; xxhash-rust (still used for streaming hashes, such as plan ids)
//! fixes its vector width when it is compiled, which for a portable x86-64
//! build is SSE2, at half the speed. Both compute the same XXH3 values.

/// XXH3 64-bit, seed 0.
pub fn xxh3_64(bytes: &[u8]) -> u64 {
    xxh3::hash64_with_seed(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length class XXH3 treats apart (0, 1-3, 4-8, 9-16, 17-128,
    /// 129-240, long with and without a partial stripe or block) against
    /// xxhash-rust, an independent implementation of the same hash.
    #[test]
    fn equals_xxhash_rust_at_every_length_class() {
        let mut rng = crate::rng::SplitMix64::new(3);
        let data: Vec<u8> = (0..300_000).map(|_| rng.next_u64() as u8).collect();
        let lens = (0..=300).chain([1023, 1024, 1025, 4096, 65_537, 118_003, 196_608, 300_000]);
        for len in lens {
            let bytes = &data[..len];
            assert_eq!(
                xxh3_64(bytes),
                xxhash_rust::xxh3::xxh3_64(bytes),
                "length {len}"
            );
        }
    }

    #[test]
    fn known_value_of_the_empty_input() {
        // XXH3_64bits("") from the reference implementation's test vectors.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }
}
