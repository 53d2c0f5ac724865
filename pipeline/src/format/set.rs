//! A shard set: the files a manifest lists, checked to be those files.
//!
//! A shard file put in another's place (a copy of another train shard, of
//! the val shard, or of a shard from another set) is whole, and passes its
//! own checksums. What gives it away is its place: each file's header says
//! which shard of which split it is, with its plan id, and the manifest
//! lists each file's size, plan id and index checksum (which covers every
//! frame's checksum, so every stored byte). Opening a split checks all of
//! it, from the headers and footers alone, before a record is read.

use std::collections::BTreeSet;
use std::path::Path;

use crate::format::manifest::{hex64, Geometry, Manifest, ShardInfo};
use crate::format::shard::{ReadMode, ShardError, ShardReader};
use crate::ingest::Split;

/// Opens every shard of `split` that `manifest` (of the folder `dir`)
/// lists, each checked to be the file listed in its place.
pub fn open_split(
    dir: &Path,
    manifest: &Manifest,
    split: Split,
) -> Result<Vec<ShardReader>, ShardError> {
    let Some(info) = manifest.split(split) else {
        return Ok(Vec::new());
    };
    info.shards
        .iter()
        .enumerate()
        .map(|(number, listed)| {
            let shard = ShardReader::open(&dir.join(&listed.file))?;
            check_listed(&shard, split, number, listed)?;
            check_geometry(&shard, manifest.geometry)?;
            Ok(shard)
        })
        .collect()
}

/// As `open_split`, then reading frames as `read` says: `ReadMode::Auto`
/// maps the shards when they fit in half of this machine's memory.
pub fn open_split_read(
    dir: &Path,
    manifest: &Manifest,
    split: Split,
    read: ReadMode,
) -> Result<Vec<ShardReader>, ShardError> {
    let shards = open_split(dir, manifest, split)?;
    let bytes = shards.iter().map(ShardReader::file_len).sum();
    if read.resolve(bytes) != ReadMode::Map {
        return Ok(shards);
    }
    shards.into_iter().map(ShardReader::map_frames).collect()
}

/// Whether `shard` holds images of the set's geometry: readers size their
/// buffers by the manifest.
pub fn check_geometry(shard: &ShardReader, g: Geometry) -> Result<(), ShardError> {
    let h = shard.header();
    if (h.height, h.width, h.channels) == (g.height, g.width, g.channels) {
        return Ok(());
    }
    Err(ShardError::Geometry {
        path: shard.path().to_owned(),
        found: format!("{}x{}x{}", h.height, h.width, h.channels),
        expected: format!("{}x{}x{}", g.height, g.width, g.channels),
    })
}

/// Whether `shard` is the file the manifest lists as shard `number` of
/// `split`; the error names the file and what differs.
pub fn check_listed(
    shard: &ShardReader,
    split: Split,
    number: usize,
    listed: &ShardInfo,
) -> Result<(), ShardError> {
    let mismatch = |detail: String| ShardError::Mismatch {
        path: shard.path().to_owned(),
        detail,
    };
    if shard.file_len() != listed.bytes {
        return Err(mismatch(format!(
            "{} bytes, where manifest.json lists {} (resized, or another file)",
            shard.file_len(),
            listed.bytes
        )));
    }
    if let Some(id) = shard.header().identity {
        if id.split != split || id.number as usize != number {
            return Err(mismatch(format!(
                "it holds {}, not {} shard {number} (files swapped, or one copied over another)",
                id.describe(),
                split.name()
            )));
        }
    }
    let plan_id = hex64(shard.header().plan_id);
    if let Some(want) = listed.plan_id.as_ref().filter(|&want| *want != plan_id) {
        return Err(mismatch(format!(
            "plan id {plan_id}, where manifest.json lists {want}: a shard of another set"
        )));
    }
    let index = hex64(shard.index_checksum());
    if let Some(want) = listed.index_xxh3.as_ref().filter(|&want| *want != index) {
        return Err(mismatch(format!(
            "index checksum {index}, where manifest.json lists {want}: written by another run"
        )));
    }
    if shard.len() as u64 != listed.records {
        return Err(mismatch(format!(
            "{} records, where manifest.json lists {}",
            shard.len(),
            listed.records
        )));
    }
    Ok(())
}

/// Shard files in `dir` that no split of `manifest` lists (sorted): a set
/// never reads them, so a manifest that lost an entry would silently train
/// on less. Partial files of a run in progress are not counted.
pub fn unlisted_files(dir: &Path, manifest: &Manifest) -> std::io::Result<Vec<String>> {
    let listed: BTreeSet<&str> = manifest
        .splits
        .values()
        .flat_map(|s| s.shards.iter().map(|i| i.file.as_str()))
        .collect();
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".shard") && !listed.contains(name.as_str()) {
            unlisted.push(name);
        }
    }
    unlisted.sort();
    Ok(unlisted)
}
