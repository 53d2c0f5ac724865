//! Run-time CPU feature checks shared by the SIMD kernels (delta undo,
//! mirrored crop rows, RGB moments), so that each feature set is spelled once.

/// AVX-512 with byte permutes (`vpermb`, `vpermt2b`): F, BW and VBMI.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
}
