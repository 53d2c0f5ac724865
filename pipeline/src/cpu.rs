//! Which SIMD kernels run: the widest instruction set this CPU has, or the
//! one the `PIPELINE_SIMD` environment variable names (to compare paths on
//! one machine, or to rule one out). Each kernel (delta undo, mirrored crop
//! rows, RGB moments, the stats sweep) takes the widest path it has at or
//! below this level.

use std::sync::OnceLock;

/// The environment variable that forces a level.
pub const SIMD_ENV: &str = "PIPELINE_SIMD";

/// An instruction-set level, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Plain Rust: what non-x86 targets run (the compiler vectorises what
    /// it can).
    Portable,
    /// SSSE3: 16-byte shuffles.
    Ssse3,
    /// AVX2: 32-byte registers.
    Avx2,
    /// AVX-512 F, BW and VBMI: 64-byte registers and byte permutes.
    Avx512,
}

impl SimdLevel {
    pub const ALL: [SimdLevel; 4] = [Self::Portable, Self::Ssse3, Self::Avx2, Self::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Ssse3 => "ssse3",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Whether this CPU runs the level's instructions. Cheap (one cached
    /// load): the kernels' `*_with` entry points check it on every call,
    /// per crop row on the loader's hot path.
    pub fn supported(self) -> bool {
        self <= Self::best()
    }

    /// The widest level this CPU has, found once: the levels are nested,
    /// so it is the last of an unbroken run from `Portable` up.
    pub fn best() -> Self {
        static BEST: OnceLock<SimdLevel> = OnceLock::new();
        *BEST.get_or_init(|| {
            Self::ALL
                .into_iter()
                .take_while(|l| l.has_features())
                .last()
                .unwrap_or(Self::Portable)
        })
    }

    /// Whether the CPU has the features of this level itself.
    fn has_features(self) -> bool {
        match self {
            Self::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Self::Ssse3 => std::arch::is_x86_feature_detected!("ssse3"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => has_avx512_vbmi(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every level this CPU has, narrowest first.
    pub fn supported_levels() -> Vec<Self> {
        Self::ALL.into_iter().filter(|l| l.supported()).collect()
    }
}

/// `PIPELINE_SIMD` names a level this build or CPU cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimdError {
    #[error("{SIMD_ENV}={0:?}: not a level (portable, ssse3, avx2, avx512)")]
    Unknown(String),
    #[error("{SIMD_ENV}={0}: this CPU does not have it (it has up to {1})")]
    Unsupported(&'static str, &'static str),
}

/// The level `PIPELINE_SIMD` asks for (`None` when unset or empty).
pub fn requested_level() -> Result<Option<SimdLevel>, SimdError> {
    let Some(value) = std::env::var_os(SIMD_ENV) else {
        return Ok(None);
    };
    let value = value.to_string_lossy().trim().to_ascii_lowercase();
    if value.is_empty() {
        return Ok(None);
    }
    let level = SimdLevel::ALL
        .into_iter()
        .find(|l| l.name() == value)
        .ok_or(SimdError::Unknown(value))?;
    if !level.supported() {
        return Err(SimdError::Unsupported(
            level.name(),
            SimdLevel::best().name(),
        ));
    }
    Ok(Some(level))
}

/// The level the kernels run at: `PIPELINE_SIMD`'s if it names one this
/// CPU has, else the best. Programs call `requested_level` first, so that
/// a wrong value is an error the user sees, not a silent fallback.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        requested_level()
            .ok()
            .flatten()
            .unwrap_or_else(SimdLevel::best)
    })
}

/// AVX-512 with byte permutes (`vpermb`, `vpermt2b`): F, BW and VBMI.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// Where a test meets a kernel path this CPU cannot run: rather than pass
/// having tested nothing, it says so on stderr and, when the
/// `KERNELS_NOT_TESTED` environment variable names a file (`make unit`
/// sets it, and prints the file after the tests), appends a line there.
#[cfg(test)]
pub(crate) fn not_tested_here(what: &str) {
    use std::io::Write;
    let line = format!("not tested on this CPU: {what}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("KERNELS_NOT_TESTED") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_and_portable_is_always_there() {
        let levels = SimdLevel::supported_levels();
        assert_eq!(levels[0], SimdLevel::Portable);
        assert!(levels.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*levels.last().expect("one"), SimdLevel::best());
        // A CPU with a level has every narrower one (x86-64 implies SSE2;
        // AVX2 CPUs all have SSSE3).
        let best = SimdLevel::best();
        assert!(SimdLevel::ALL
            .into_iter()
            .filter(|&l| l <= best)
            .all(SimdLevel::supported));
        // The kernels' tests run every level in `levels`; say which they
        // could not.
        for level in SimdLevel::ALL.into_iter().filter(|l| !l.supported()) {
            not_tested_here(&format!(
                "the {} path of every kernel (delta undo, crop rows, float32 rows, \
                 RGB moments, stats sweep)",
                level.name()
            ));
        }
    }

    #[test]
    fn names_round_trip() {
        for level in SimdLevel::ALL {
            let found = SimdLevel::ALL
                .into_iter()
                .find(|l| l.name() == level.name());
            assert_eq!(found, Some(level));
        }
    }
}
