//! `manifest.json`: what a shard folder holds (splits, shards, classes,
//! geometry, encoding) and every source file that was skipped, with its reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::shard::{Codec, MatchSearch, PixelFilter, Skipped};
use crate::ingest::codec::PreprocessOptions;
use crate::ingest::{ClassInfo, Split};

pub const FILE_NAME: &str = "manifest.json";
pub const FORMAT: &str = "alexnet-rs shards";
/// 3: `codec`; 2: each shard's `plan_id` and `index_xxh3`.
pub const VERSION: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
}

/// One shard file as its set lists it. `plan_id` and `index_xxh3` are
/// absent from manifests written before format 2 (their shards carry no
/// identity to check them against).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub file: String,
    pub records: u64,
    /// The file's size.
    pub bytes: u64,
    /// The plan id in its header (hex), which `Manifest::id` is a hash of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// The xxh3-64 of its index (hex), as in its footer: the index holds
    /// every frame's checksum, so this one stands for every stored byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_xxh3: Option<String>,
}

/// How `manifest.json` writes a 64-bit hash.
pub fn hex64(value: u64) -> String {
    format!("{value:016x}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub images: u64,
    pub shards: Vec<ShardInfo>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Hash of every shard's plan id: names this exact data set (stats.json
    /// records it so that stale statistics can be told apart).
    pub id: String,
    pub created_by: String,
    pub source: String,
    pub geometry: Geometry,
    pub preprocess: PreprocessOptions,
    pub zstd_level: i32,
    /// Absent from manifests written before the choice: those used `full`.
    #[serde(default)]
    pub zstd_search: MatchSearch,
    pub pixel_filter: PixelFilter,
    /// How records are stored. Absent from manifests written before the
    /// choice: those are zstd.
    #[serde(default)]
    pub codec: Codec,
    /// Seed of the train split's shuffled order.
    pub seed: u64,
    pub classes: Vec<ClassInfo>,
    pub splits: BTreeMap<Split, SplitInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{0}: no {FILE_NAME} (is this a shard folder? make one with `pipeline shards`)")]
    Missing(PathBuf),
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(ManifestError::Missing(dir.to_owned()));
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Self = serde_json::from_str(&text).map_err(|e| ManifestError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        if manifest.format != FORMAT {
            return Err(ManifestError::Invalid {
                path,
                detail: format!("format {:?}, expected {FORMAT:?}", manifest.format),
            });
        }
        Ok(manifest)
    }

    /// Writes `manifest.json` atomically (temporary file, then rename).
    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(FILE_NAME);
        let text = serde_json::to_string_pretty(self).map_err(|e| ManifestError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        crate::format::atomic::write(&path, (text + "\n").as_bytes())
            .map_err(|source| ManifestError::Io { path, source })
    }

    pub fn split(&self, split: Split) -> Option<&SplitInfo> {
        self.splits.get(&split)
    }

    /// Bytes of one raw image.
    pub fn image_len(&self) -> usize {
        let g = self.geometry;
        g.height as usize * g.width as usize * g.channels as usize
    }
}
