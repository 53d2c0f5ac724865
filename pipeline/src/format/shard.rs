//! The shard file format: read and write. The whole format is in this file;
//! `shards/README.md` describes it for people and other languages.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "ALXSHARD"
//! 8       4     version (3; 1 and 2 are still read, see below)
//! 12      4     height        } geometry of every image, uint8 HWC
//! 16      4     width         }
//! 20      4     channels      }
//! 24      4     pixel filter (0 none, 1 delta: see `PixelFilter`)
//! 28      4     zstd level (i32, informative; 0 with the raw codec)
//! 32      8     plan id: hash of what this shard was made from (resume)
//! 40      4     zstd match search (0 full, 1 sparse: see `MatchSearch`)
//! 44      4     split (0 train, 1 val)                 } identity: which
//! 48      4     shard number within its split          } place in its set
//! 52      4     files planned into this shard          } this file holds
//! 56      8     split position of the first of them    } (`ShardIdentity`)
//! 64      4     codec (0 zstd, 1 raw: see `Codec`)
//! 68      12    reserved, zero
//! 80      ...   records, back to back: one zstd frame per image, or with
//!               the raw codec the image's bytes as they are
//! I       ...   index (at footer.index_offset):
//!                 u32 record count, then per record:
//!                   u64 offset, u32 length, u32 label, u64 xxh3-64 of the raw
//!                   (unfiltered) pixels, u64 xxh3-64 of the stored frame,
//!                   u32 name length, name (UTF-8)
//!                 u32 skipped count, then per skipped source file:
//!                   u32 name length, name, u32 reason length, reason
//! end-32  32    footer: u64 index offset, u64 index length,
//!               u64 xxh3-64 of the index bytes, magic "ALXSHEND"
//! ```
//! All integers little-endian. A file whose footer is missing or whose index
//! checksum fails is truncated or damaged. Every read of a record checks its
//! stored frame against the frame checksum before zstd sees it (a few
//! microseconds a frame: the damage that still decompresses, a flipped bit
//! in a literal, is caught too); `verify` also checks the pixels. A raw
//! frame is its pixels, so its two checksums are one. Files are written
//! under a temporary name and renamed when complete, so a finished-looking
//! shard is always whole.
//!
//! Version 2 is version 3 with a 64-byte header and zstd frames. Version 1
//! (48-byte header, no identity, no frame checksums, zstd) is read as well:
//! its records are checked by their pixel checksums instead, which needs
//! every pixel unfiltered, so it is slower to load.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::checksum::xxh3_64;
use crate::ingest::Split;

pub const MAGIC: &[u8; 8] = b"ALXSHARD";
pub const FOOTER_MAGIC: &[u8; 8] = b"ALXSHEND";
pub const VERSION: u32 = 3;
/// The largest image side a header may give (the format stores 256).
const MAX_SIDE: u32 = 1 << 14;
/// Header bytes by version.
const HEADER_LEN: u64 = 80;
const HEADER_LEN_V2: u64 = 64;
const HEADER_LEN_V1: u64 = 48;
const FOOTER_LEN: u64 = 32;

/// A reversible byte filter applied before zstd.
///
/// `Delta` stores each byte minus the same channel of the pixel to its left
/// (wrapping), row by row. On ImageNet photos at zstd level 1 it takes the
/// ratio from 1.19x to 1.67x and decompression gets no slower (fewer bytes to
/// entropy-decode); undoing it is one pass of adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFilter {
    None,
    Delta,
}

impl PixelFilter {
    fn code(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Delta => 1,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Delta),
            _ => None,
        }
    }

    /// Filters `pixels` (rows of `row_len` bytes, `channels` per pixel) into `out`.
    pub fn apply(self, pixels: &[u8], row_len: usize, channels: usize, out: &mut Vec<u8>) {
        if self == Self::None {
            out.clear();
            out.extend_from_slice(pixels);
            return;
        }
        // Same length as last time (one image after another): no zeroing.
        out.resize(pixels.len(), 0);
        // A partial last row (never in an image) stays as it is, as `undo`
        // leaves it.
        let whole = pixels.len() / row_len * row_len;
        out[whole..].copy_from_slice(&pixels[whole..]);
        for (src, dst) in pixels
            .chunks_exact(row_len)
            .zip(out.chunks_exact_mut(row_len))
        {
            let head = channels.min(src.len());
            dst[..head].copy_from_slice(&src[..head]);
            // From one buffer into another, so the loop vectorises: 64
            // subtractions an instruction, where the in-place version ran
            // one byte at a time (4% of `pipeline shards`).
            for ((d, &x), &left) in dst[head..].iter_mut().zip(&src[head..]).zip(src) {
                *d = x.wrapping_sub(left);
            }
        }
    }

    /// Undoes `apply` in place.
    pub fn undo(self, data: &mut [u8], row_len: usize, channels: usize) {
        if self == Self::Delta {
            crate::format::delta::undo(data, row_len, channels);
        }
    }
}

/// How hard zstd looks for repeated bytes before it entropy-codes the rest.
///
/// Delta-filtered photos hold few repeats. On the 1000-photo ImageNet sample
/// level 1's match finder is two thirds of the compression time and saves
/// 2.6% of the bytes; the frames it writes are also slower to decode (every
/// match is a sequence to execute between literal runs). `Sparse` keeps
/// level 1 but looks for 7-byte matches only, in a 4K-entry table, and steps
/// faster through data without them (zstd's acceleration 8). zstd turns the
/// Huffman coding of literals off whenever acceleration is set; photos need
/// it (without it frames are 30% larger), so `Sparse` turns it back on.
/// Measured on the sample (README, performance): compression 0.45 -> 0.25 ms
/// an image, decompression 0.160 -> 0.135 ms, bytes +2.6%; `pipeline shards`
/// 11% faster, the loader 14% faster.
///
/// Either way a frame is a standard zstd frame: readers need not know which.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchSearch {
    /// zstd's own parameters for the level. The default when reading a
    /// manifest that predates the choice.
    #[default]
    Full,
    /// Few, long matches and literal Huffman coding kept (level 1 only).
    Sparse,
}

impl MatchSearch {
    /// What `pipeline shards` uses when not told: `Sparse` where it is
    /// defined (level 1), zstd's own search elsewhere.
    pub fn default_for(level: i32) -> Self {
        if level == Self::SPARSE_LEVEL {
            Self::Sparse
        } else {
            Self::Full
        }
    }

    /// The only level `Sparse` is tuned for: its parameters mean other
    /// things to the lazy and optimal searches of higher levels.
    pub const SPARSE_LEVEL: i32 = 1;

    /// The one rule on levels: `Sparse` only at `SPARSE_LEVEL`.
    pub fn check_level(self, level: i32) -> Result<(), SparseLevelError> {
        if self == Self::Sparse && level != Self::SPARSE_LEVEL {
            return Err(SparseLevelError { level });
        }
        Ok(())
    }

    fn code(self) -> u32 {
        match self {
            Self::Full => 0,
            Self::Sparse => 1,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Full),
            1 => Some(Self::Sparse),
            _ => None,
        }
    }

    /// A compressor at `level` with this search (what `pipeline shards`
    /// writes frames with).
    pub fn compressor(self, level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
        use zstd::zstd_safe::{CParameter, ParamSwitch};
        self.check_level(level)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        let mut compressor = zstd::bulk::Compressor::new(level)?;
        if self == Self::Sparse {
            for parameter in [
                CParameter::MinMatch(7),
                CParameter::HashLog(12),
                CParameter::TargetLength(8),
                CParameter::LiteralCompressionMode(ParamSwitch::Enable),
            ] {
                compressor.set_parameter(parameter)?;
            }
        }
        Ok(compressor)
    }
}

/// How a record's pixels are stored.
///
/// `Zstd` (the default) keeps ImageNet in ~155 GB; each read decompresses.
/// `Raw` stores the 196,608 bytes of a 256x256 image as they are (~250 GB
/// for ImageNet): a reader whose shards stay in the page cache crops
/// straight from the mapped file, with no decode at all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    Zstd,
    Raw,
}

impl Codec {
    fn code(self) -> u32 {
        match self {
            Self::Zstd => 0,
            Self::Raw => 1,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Zstd),
            1 => Some(Self::Raw),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Raw => "raw",
        }
    }
}

/// Geometry and encoding shared by every record of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub filter: PixelFilter,
    pub zstd_level: i32,
    pub zstd_search: MatchSearch,
    pub codec: Codec,
    pub plan_id: u64,
    /// Where in its set this shard belongs; `None` only in files of
    /// format version 1, which did not record it. Every shard written
    /// has one.
    pub identity: Option<ShardIdentity>,
}

/// The place in its shard set that a file holds, written into its header:
/// a file copied over another (a swapped, stale or foreign shard) then
/// says so when it is opened against the manifest, instead of being
/// trained on in the other's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardIdentity {
    pub split: Split,
    /// Position in its split's shard list (the number in its file name).
    pub number: u32,
    /// Position of its first source file in the split's planned order.
    pub first: u64,
    /// Source files planned into it: stored records plus skipped files.
    pub planned: u32,
}

impl ShardIdentity {
    /// "train shard 3 (files 3000..3999)".
    pub fn describe(&self) -> String {
        format!(
            "{} shard {} (files {}..{})",
            self.split.name(),
            self.number,
            self.first,
            (self.first + self.planned as u64).saturating_sub(1)
        )
    }
}

fn split_code(split: Split) -> u32 {
    match split {
        Split::Train => 0,
        Split::Val => 1,
    }
}

fn split_from_code(code: u32) -> Option<Split> {
    match code {
        0 => Some(Split::Train),
        1 => Some(Split::Val),
        _ => None,
    }
}

impl ShardHeader {
    /// Bytes of one raw image.
    pub fn image_len(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    pub fn row_len(&self) -> usize {
        self.width as usize * self.channels as usize
    }

    fn to_bytes(self) -> [u8; HEADER_LEN as usize] {
        let id = self
            .identity
            .expect("shards are written with their identity (format 2)");
        let mut b = [0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.height.to_le_bytes());
        b[16..20].copy_from_slice(&self.width.to_le_bytes());
        b[20..24].copy_from_slice(&self.channels.to_le_bytes());
        b[24..28].copy_from_slice(&self.filter.code().to_le_bytes());
        b[28..32].copy_from_slice(&self.zstd_level.to_le_bytes());
        b[32..40].copy_from_slice(&self.plan_id.to_le_bytes());
        b[40..44].copy_from_slice(&self.zstd_search.code().to_le_bytes());
        b[44..48].copy_from_slice(&split_code(id.split).to_le_bytes());
        b[48..52].copy_from_slice(&id.number.to_le_bytes());
        b[52..56].copy_from_slice(&id.planned.to_le_bytes());
        b[56..64].copy_from_slice(&id.first.to_le_bytes());
        b[64..68].copy_from_slice(&self.codec.code().to_le_bytes());
        b
    }

    /// `b`: the first `HEADER_LEN` bytes of the file (or all of it, when
    /// shorter). Returns the header and its length, which the version
    /// sets: the first record starts there.
    fn from_bytes(b: &[u8], path: &Path) -> Result<(Self, u64), ShardError> {
        let bad = |detail: String| damaged(path, detail);
        let (version, len) = Self::version_and_len(b, path)?;
        let filter = PixelFilter::from_code(le_u32(&b[24..28]))
            .ok_or_else(|| bad(format!("unknown pixel filter {}", le_u32(&b[24..28]))))?;
        let zstd_search = MatchSearch::from_code(le_u32(&b[40..44]))
            .ok_or_else(|| bad(format!("unknown zstd match search {}", le_u32(&b[40..44]))))?;
        let identity = Self::identity_from(b, version, path)?;
        let codec = Self::codec_from(b, version, path)?;
        if codec == Codec::Raw && filter != PixelFilter::None {
            return Err(bad("raw records with a pixel filter".into()));
        }
        let (height, width, channels) = Self::geometry_from(b, path)?;
        let header = Self {
            height,
            width,
            channels,
            filter,
            zstd_level: le_u32(&b[28..32]) as i32,
            zstd_search,
            codec,
            plan_id: le_u64(&b[32..40]),
            identity,
        };
        Ok((header, len))
    }

    /// The format version and the header length it sets, once the magic
    /// and that length are checked against `b`.
    fn version_and_len(b: &[u8], path: &Path) -> Result<(u32, u64), ShardError> {
        if b.len() < HEADER_LEN_V1 as usize || &b[0..8] != MAGIC {
            return Err(damaged(path, "not a shard file (bad magic)".into()));
        }
        let version = le_u32(&b[8..12]);
        let len = match version {
            1 => HEADER_LEN_V1,
            2 => HEADER_LEN_V2,
            VERSION => HEADER_LEN,
            _ => {
                return Err(damaged(
                    path,
                    format!("format version {version}, this build reads 1 to {VERSION}"),
                ))
            }
        };
        if b.len() < len as usize {
            return Err(damaged(path, "header cut short".into()));
        }
        Ok((version, len))
    }

    /// The shard's place in its split; version 1 headers did not record it.
    fn identity_from(
        b: &[u8],
        version: u32,
        path: &Path,
    ) -> Result<Option<ShardIdentity>, ShardError> {
        if version == 1 {
            return Ok(None);
        }
        let split = split_from_code(le_u32(&b[44..48]))
            .ok_or_else(|| damaged(path, format!("unknown split code {}", le_u32(&b[44..48]))))?;
        Ok(Some(ShardIdentity {
            split,
            number: le_u32(&b[48..52]),
            planned: le_u32(&b[52..56]),
            first: le_u64(&b[56..64]),
        }))
    }

    /// The records' codec; headers before the current version held only
    /// zstd records, and in the current one the bytes after it are zero.
    fn codec_from(b: &[u8], version: u32, path: &Path) -> Result<Codec, ShardError> {
        if version != VERSION {
            return Ok(Codec::Zstd);
        }
        if b[68..80].iter().any(|&x| x != 0) {
            return Err(damaged(path, "reserved header bytes are not zero".into()));
        }
        Codec::from_code(le_u32(&b[64..68]))
            .ok_or_else(|| damaged(path, format!("unknown codec {}", le_u32(&b[64..68]))))
    }

    /// Height, width and channels. Every size a reader computes comes from
    /// these: bounded here, so that no damaged header can make one overflow
    /// or come out zero.
    fn geometry_from(b: &[u8], path: &Path) -> Result<(u32, u32, u32), ShardError> {
        let (height, width, channels) =
            (le_u32(&b[12..16]), le_u32(&b[16..20]), le_u32(&b[20..24]));
        if !(1..=MAX_SIDE).contains(&height)
            || !(1..=MAX_SIDE).contains(&width)
            || !(1..=4).contains(&channels)
        {
            return Err(damaged(
                path,
                format!("implausible geometry {height}x{width}x{channels}"),
            ));
        }
        Ok((height, width, channels))
    }
}

/// One stored image's place and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry {
    pub offset: u64,
    pub len: u32,
    pub label: u32,
    /// xxh3-64 of the raw, unfiltered pixels.
    pub checksum: u64,
    /// xxh3-64 of the stored (compressed) frame; `None` in version 1 files.
    pub frame_checksum: Option<u64>,
    /// Source file, relative to its split folder.
    pub name: String,
}

/// A source file that was assigned to this shard but could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: damaged or truncated shard: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{path}: {found} images, the manifest says {expected}")]
    Geometry {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{path}: not the file manifest.json lists in its place: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("{path}: record {index} ({name}): {detail}")]
    BadRecord {
        path: PathBuf,
        index: usize,
        name: String,
        detail: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShardError + '_ {
    move |source| ShardError::Io {
        path: path.to_owned(),
        source,
    }
}

fn damaged(path: &Path, detail: String) -> ShardError {
    ShardError::Damaged {
        path: path.to_owned(),
        detail,
    }
}

/// A shard's index as the footer places it, checked against the footer's
/// checksum, and where it starts (the data area ends there).
struct StoredIndex {
    bytes: Vec<u8>,
    offset: u64,
    checksum: u64,
}

fn read_index(
    file: &File,
    file_len: u64,
    data_start: u64,
    path: &Path,
) -> Result<StoredIndex, ShardError> {
    let mut foot = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut foot, file_len - FOOTER_LEN)
        .map_err(io_err(path))?;
    if &foot[24..32] != FOOTER_MAGIC {
        return Err(damaged(path, "no footer (the file ends early)".into()));
    }
    let (offset, len) = (le_u64(&foot[0..8]), le_u64(&foot[8..16]));
    if offset < data_start || offset.checked_add(len) != Some(file_len - FOOTER_LEN) {
        return Err(damaged(path, "footer points outside the file".into()));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, offset)
        .map_err(io_err(path))?;
    let checksum = le_u64(&foot[16..24]);
    if xxh3_64(&bytes) != checksum {
        return Err(damaged(path, "index checksum mismatch".into()));
    }
    Ok(StoredIndex {
        bytes,
        offset,
        checksum,
    })
}

/// Every record lies inside the data area, and a raw record is exactly
/// one image (it is handed out as the image).
fn check_places(
    records: &[RecordEntry],
    header: &ShardHeader,
    data: std::ops::Range<u64>,
    path: &Path,
) -> Result<(), ShardError> {
    // checked_add: an offset near u64::MAX must not wrap around into the
    // data area.
    let outside = |r: &&RecordEntry| {
        r.offset < data.start
            || r.offset
                .checked_add(r.len as u64)
                .is_none_or(|end| end > data.end)
    };
    if let Some(r) = records.iter().find(outside) {
        return Err(damaged(
            path,
            format!("record {} lies outside the data area", r.name),
        ));
    }
    let image_len = header.image_len();
    if header.codec == Codec::Raw {
        if let Some(r) = records.iter().find(|r| r.len as usize != image_len) {
            return Err(damaged(
                path,
                format!(
                    "raw record {} holds {} bytes, an image is {image_len}",
                    r.name, r.len
                ),
            ));
        }
    }
    Ok(())
}

/// Turns one image into a record frame (compressed, or as it is with the
/// raw codec); reuse one per thread.
pub struct RecordEncoder {
    header: ShardHeader,
    /// `None` with the raw codec.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    filtered: Vec<u8>,
}

impl RecordEncoder {
    pub fn new(header: ShardHeader) -> io::Result<Self> {
        let compressor = match header.codec {
            Codec::Zstd => Some(header.zstd_search.compressor(header.zstd_level)?),
            Codec::Raw => None,
        };
        Ok(Self {
            header,
            compressor,
            filtered: Vec::new(),
        })
    }

    /// Replaces `frame`'s contents with the record frame of `pixels` and
    /// returns the checksum of the raw pixels. The caller owns and reuses the
    /// frame buffers: a fresh one per image cost page faults on every frame
    /// (README, performance).
    pub fn encode(&mut self, pixels: &[u8], frame: &mut Vec<u8>) -> io::Result<u64> {
        assert_eq!(pixels.len(), self.header.image_len(), "image size");
        let checksum = xxh3_64(pixels);
        frame.clear();
        let Some(compressor) = &mut self.compressor else {
            frame.extend_from_slice(pixels);
            return Ok(checksum);
        };
        let h = self.header;
        h.filter
            .apply(pixels, h.row_len(), h.channels as usize, &mut self.filtered);
        // zstd's worst case, so that the frame is always written in one go.
        frame.reserve(zstd::zstd_safe::compress_bound(pixels.len()));
        compressor.compress_to_buffer(&self.filtered, frame)?;
        Ok(checksum)
    }
}

/// Writes one shard under a temporary name; `finish` makes it visible.
pub struct ShardWriter {
    final_path: PathBuf,
    temp_path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    records: Vec<RecordEntry>,
    skipped: Vec<Skipped>,
}

impl ShardWriter {
    /// `header` must carry the shard's identity.
    pub fn create(final_path: &Path, header: ShardHeader) -> Result<Self, ShardError> {
        let temp_path = crate::format::atomic::partial_path(final_path);
        let file = File::create(&temp_path).map_err(io_err(&temp_path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header.to_bytes())
            .map_err(io_err(&temp_path))?;
        Ok(Self {
            final_path: final_path.to_owned(),
            temp_path,
            out,
            offset: HEADER_LEN,
            records: Vec::new(),
            skipped: Vec::new(),
        })
    }

    pub fn add(
        &mut self,
        label: u32,
        name: &str,
        frame: &[u8],
        checksum: u64,
    ) -> Result<(), ShardError> {
        self.out.write_all(frame).map_err(io_err(&self.temp_path))?;
        // Hashed here even for a raw frame, whose checksum the caller
        // gave: the index then says what was written, whoever wrote it.
        let frame_checksum = xxh3_64(frame);
        self.records.push(RecordEntry {
            offset: self.offset,
            len: frame.len() as u32,
            label,
            checksum,
            frame_checksum: Some(frame_checksum),
            name: name.to_owned(),
        });
        self.offset += frame.len() as u64;
        Ok(())
    }

    pub fn skip(&mut self, skipped: Skipped) {
        self.skipped.push(skipped);
    }

    /// Writes index and footer, syncs, and renames into place.
    pub fn finish(mut self) -> Result<PathBuf, ShardError> {
        let index = encode_index(&self.records, &self.skipped);
        let footer = encode_footer(self.offset, &index);
        let path = &self.temp_path;
        self.out.write_all(&index).map_err(io_err(path))?;
        self.out.write_all(&footer).map_err(io_err(path))?;
        self.out.flush().map_err(io_err(path))?;
        self.out.get_ref().sync_all().map_err(io_err(path))?;
        std::fs::rename(path, &self.final_path).map_err(io_err(&self.final_path))?;
        Ok(self.final_path.clone())
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        // An abandoned writer leaves no partial file behind (after finish the
        // temporary name no longer exists and this does nothing).
        let _ = std::fs::remove_file(&self.temp_path);
    }
}

/// The footer of an index that starts at `index_offset`.
fn encode_footer(index_offset: u64, index: &[u8]) -> [u8; FOOTER_LEN as usize] {
    let mut footer = [0u8; FOOTER_LEN as usize];
    footer[0..8].copy_from_slice(&index_offset.to_le_bytes());
    footer[8..16].copy_from_slice(&(index.len() as u64).to_le_bytes());
    footer[16..24].copy_from_slice(&xxh3_64(index).to_le_bytes());
    footer[24..32].copy_from_slice(FOOTER_MAGIC);
    footer
}

fn encode_index(records: &[RecordEntry], skipped: &[Skipped]) -> Vec<u8> {
    let mut b = Vec::with_capacity(records.len() * 64 + 8);
    let put_str = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u32).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    b.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        b.extend_from_slice(&r.offset.to_le_bytes());
        b.extend_from_slice(&r.len.to_le_bytes());
        b.extend_from_slice(&r.label.to_le_bytes());
        b.extend_from_slice(&r.checksum.to_le_bytes());
        b.extend_from_slice(&r.frame_checksum.unwrap_or_default().to_le_bytes());
        put_str(&mut b, &r.name);
    }
    b.extend_from_slice(&(skipped.len() as u32).to_le_bytes());
    for s in skipped {
        put_str(&mut b, &s.path);
        put_str(&mut b, &s.reason);
    }
    b
}

/// Reads the index bytes back; every length is checked against what is left.
struct IndexReader<'a> {
    bytes: &'a [u8],
}

impl IndexReader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(le_u32)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(le_u64)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        self.take(n)
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
}

/// The index of a file whose records carry frame checksums (version 2)
/// or not (version 1).
fn decode_index(bytes: &[u8], frame_checksums: bool) -> Option<(Vec<RecordEntry>, Vec<Skipped>)> {
    let mut r = IndexReader { bytes };
    let count = r.u32()? as usize;
    // No more entries than the bytes could hold: a damaged count must not
    // reserve memory the file does not back.
    let mut records = Vec::with_capacity(count.min(bytes.len() / 28));
    for _ in 0..count {
        records.push(RecordEntry {
            offset: r.u64()?,
            len: r.u32()?,
            label: r.u32()?,
            checksum: r.u64()?,
            frame_checksum: if frame_checksums {
                Some(r.u64()?)
            } else {
                None
            },
            name: r.string()?,
        });
    }
    let skipped_count = r.u32()? as usize;
    let mut skipped = Vec::with_capacity(skipped_count.min(bytes.len() / 8));
    for _ in 0..skipped_count {
        skipped.push(Skipped {
            path: r.string()?,
            reason: r.string()?,
        });
    }
    r.bytes.is_empty().then_some((records, skipped))
}

/// `MatchSearch::Sparse` asked for at a level it is not tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "zstd match search `sparse` is tuned for level {}, not {level}",
    MatchSearch::SPARSE_LEVEL
)]
pub struct SparseLevelError {
    pub level: i32,
}

/// How a reader gets a record's compressed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// `map` while the shards fit in half of this machine's memory (so the
    /// page cache can hold them), `pread` beyond.
    Auto,
    /// Map each shard file; frames are decompressed straight from the page
    /// cache, with no copy and no system call. The mapped pages count in
    /// the process's resident memory; they are the page cache that `pread`
    /// copies from, and the kernel can drop them like any cached file page.
    Map,
    /// Copy each frame out of the file with one `pread`.
    Pread,
}

impl ReadMode {
    /// `Map` or `Pread` for shards of `shard_bytes` in all.
    pub fn resolve(self, shard_bytes: u64) -> ReadMode {
        match self {
            ReadMode::Auto => match usable_memory() {
                Some(memory) if shard_bytes <= memory / 2 => ReadMode::Map,
                // Shards the cache cannot keep are read from disk every
                // epoch; then the copy is not what costs, and pread keeps
                // the process's resident memory bounded.
                _ => ReadMode::Pread,
            },
            mode => mode,
        }
    }
}

/// Bytes of memory this process may use: the machine's, or its cgroup's
/// limit where that is lower (a container).
fn usable_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let physical = u64::try_from(pages).ok()? * u64::try_from(page).ok()?;
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(limit.map_or(physical, |l| l.min(physical)))
}

impl Drop for ShardReader {
    fn drop(&mut self) {
        if let Some(map) = &self.map {
            super::map_fault::unwatch(map.as_ptr());
        }
    }
}

/// An open shard: header and index in memory, records read on demand.
pub struct ShardReader {
    path: PathBuf,
    file: File,
    header: ShardHeader,
    records: Vec<RecordEntry>,
    skipped: Vec<Skipped>,
    file_len: u64,
    /// xxh3-64 of the index (from the footer, checked): with the frame
    /// checksums in the index it stands for every stored byte, so the
    /// manifest lists it to tie each file to its set.
    index_checksum: u64,
    /// The whole file, once `map_frames` has been called.
    map: Option<memmap2::Mmap>,
}

impl ShardReader {
    /// Opens and validates header, footer and index (not the records).
    pub fn open(path: &Path) -> Result<Self, ShardError> {
        let file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        if file_len < HEADER_LEN_V1 + FOOTER_LEN {
            return Err(damaged(path, format!("only {file_len} bytes")));
        }
        let mut head = [0u8; HEADER_LEN as usize];
        let head_len = (file_len - FOOTER_LEN).min(HEADER_LEN) as usize;
        file.read_exact_at(&mut head[..head_len], 0)
            .map_err(io_err(path))?;
        let (header, data_start) = ShardHeader::from_bytes(&head[..head_len], path)?;
        let index = read_index(&file, file_len, data_start, path)?;
        let frame_checksums = header.identity.is_some();
        let (records, skipped) = decode_index(&index.bytes, frame_checksums)
            .ok_or_else(|| damaged(path, "malformed index".into()))?;
        check_places(&records, &header, data_start..index.offset, path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            header,
            records,
            skipped,
            file_len,
            index_checksum: index.checksum,
            map: None,
        })
    }

    /// From now on, reads frames from a memory map of the file instead of
    /// with pread (see `ReadMode::Map`). Shards are only ever replaced by a
    /// rename, which leaves a mapped file whole; a program that truncated
    /// one in place while it is mapped would make a read fault (SIGBUS),
    /// which `map_fault` turns into an error naming the shard and an exit.
    pub fn map_frames(mut self) -> Result<Self, ShardError> {
        // SAFETY: the map is read-only, and see above for a file changed
        // underneath it.
        let map = unsafe { memmap2::Mmap::map(&self.file) }.map_err(io_err(&self.path))?;
        if map.len() as u64 != self.file_len {
            return Err(ShardError::Damaged {
                path: self.path.clone(),
                detail: format!(
                    "changed while it was opened ({} bytes, now {})",
                    self.file_len,
                    map.len()
                ),
            });
        }
        super::map_fault::watch(map.as_ptr(), map.len(), &self.path);
        self.map = Some(map);
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }
    pub fn records(&self) -> &[RecordEntry] {
        &self.records
    }
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn is_mapped(&self) -> bool {
        self.map.is_some()
    }
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
    pub fn index_checksum(&self) -> u64 {
        self.index_checksum
    }
    /// Whether each record's stored frame has a checksum (format 2), so
    /// that a read can be checked without unfiltering every pixel.
    pub fn has_frame_checksums(&self) -> bool {
        self.header.identity.is_some()
    }

    /// Checks record `index`'s stored frame against its checksum (nothing
    /// to check in a version 1 file).
    fn check_frame(&self, index: usize, frame: &[u8]) -> Result<(), ShardError> {
        match self.records[index].frame_checksum {
            Some(sum) if xxh3_64(frame) != sum => Err(self.record_error(
                index,
                "stored bytes changed since it was written (frame checksum mismatch)",
            )),
            _ => Ok(()),
        }
    }

    /// Record `index`'s compressed frame: from the memory map if there is
    /// one, else read into the start of `buffer`. The buffer only ever
    /// grows: zero-filling it to each frame's length cost as much as
    /// copying the frame in.
    pub fn read_frame<'a>(
        &'a self,
        index: usize,
        buffer: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], ShardError> {
        if let Some(frame) = self.mapped_frame(index) {
            return Ok(frame);
        }
        let r = &self.records[index];
        let len = r.len as usize;
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        let frame = &mut buffer[..len];
        self.file
            .read_exact_at(frame, r.offset)
            .map_err(io_err(&self.path))?;
        Ok(frame)
    }

    /// Record `index`'s stored frame in the memory map, if there is one.
    fn mapped_frame(&self, index: usize) -> Option<&[u8]> {
        let r = &self.records[index];
        // `open` checked that every record lies inside the file.
        let map = self.map.as_ref()?;
        Some(&map[r.offset as usize..][..r.len as usize])
    }

    /// Record `index`'s pixels straight from the memory map, checked (with
    /// `verify`, against the pixel checksum too), for a raw shard that is
    /// mapped: the image is used where it lies, with no
    /// copy. `None` for other shards, whose records must be decoded.
    pub fn mapped_pixels(&self, index: usize, verify: bool) -> Option<Result<&[u8], ShardError>> {
        if self.header.codec != Codec::Raw {
            return None;
        }
        // `open` checked that raw records are one image long.
        let pixels = self.mapped_frame(index)?;
        Some(self.check_raw(index, pixels, verify).map(|()| pixels))
    }

    /// Reads record `index` of a raw shard into `out` (one image long) and
    /// checks it.
    fn read_raw(&self, index: usize, out: &mut [u8], verify: bool) -> Result<(), ShardError> {
        let r = &self.records[index];
        let out = out
            .get_mut(..r.len as usize)
            .ok_or_else(|| self.record_error(index, "image larger than the buffer for it"))?;
        match self.mapped_frame(index) {
            Some(frame) => out.copy_from_slice(frame),
            None => self
                .file
                .read_exact_at(out, r.offset)
                .map_err(io_err(&self.path))?,
        }
        self.check_raw(index, out, verify)
    }

    /// A raw frame is its pixels: one hash checks it against its frame
    /// checksum and, with `verify`, its pixel checksum.
    fn check_raw(&self, index: usize, pixels: &[u8], verify: bool) -> Result<(), ShardError> {
        let r = &self.records[index];
        let sum = xxh3_64(pixels);
        if r.frame_checksum.is_some_and(|frame| frame != sum) {
            return Err(self.record_error(
                index,
                "stored bytes changed since it was written (frame checksum mismatch)",
            ));
        }
        if verify && sum != r.checksum {
            return Err(self.record_error(index, "pixel checksum mismatch"));
        }
        Ok(())
    }

    /// Error for record `index` with a reason.
    pub fn record_error(&self, index: usize, detail: impl Into<String>) -> ShardError {
        ShardError::BadRecord {
            path: self.path.clone(),
            index,
            name: self.records[index].name.clone(),
            detail: detail.into(),
        }
    }
}

impl ShardReader {
    /// Decodes every record and checks it against its checksums; the first
    /// problem, naming the record, or Ok. (`pipeline verify` lists them all.)
    /// `image_len` is the size the caller expects (its plan's, its
    /// manifest's): the header's own could be damaged, and must not decide
    /// how much memory is taken.
    pub fn check_records(&self, image_len: usize) -> Result<(), ShardError> {
        if self.header.image_len() != image_len {
            return Err(ShardError::Damaged {
                path: self.path.clone(),
                detail: format!(
                    "images of {} bytes, expected {image_len}",
                    self.header.image_len()
                ),
            });
        }
        let mut decoder = RecordDecoder::new().map_err(io_err(&self.path))?;
        let mut pixels = vec![0; image_len];
        (0..self.len()).try_for_each(|i| decoder.decode(self, i, &mut pixels, true))
    }
}

/// Turns frames back into pixels; reuse one per thread.
pub struct RecordDecoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    frame: Vec<u8>,
}

impl RecordDecoder {
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            decompressor: zstd::bulk::Decompressor::new()?,
            frame: Vec::new(),
        })
    }

    /// Reads, checks, decompresses and unfilters record `index` into `out`
    /// (`image_len` bytes). The stored frame is always checked when the
    /// file has frame checksums; `verify` also checks the pixels (which a
    /// version 1 file, lacking frame checksums, always has checked).
    pub fn decode(
        &mut self,
        shard: &ShardReader,
        index: usize,
        out: &mut [u8],
        verify: bool,
    ) -> Result<(), ShardError> {
        if shard.header.codec == Codec::Raw {
            return shard.read_raw(index, out, verify);
        }
        let mut buffer = std::mem::take(&mut self.frame);
        let result = shard
            .read_frame(index, &mut buffer)
            .and_then(|frame| self.decode_bytes(shard, index, frame, out, verify));
        self.frame = buffer; // keep the allocation for the next record
        result
    }

    /// Reads, checks and decompresses record `index` into `out` but leaves
    /// the pixel filter in place, for a caller that undoes it only where it
    /// reads (the loader's crop, the stats kernel); returns the filter still
    /// to undo. A version 1 file's record can only be checked by its pixels:
    /// it comes back unfiltered and checked, with `PixelFilter::None`.
    pub fn decode_filtered(
        &mut self,
        shard: &ShardReader,
        index: usize,
        out: &mut [u8],
    ) -> Result<PixelFilter, ShardError> {
        if !shard.has_frame_checksums() {
            return self
                .decode(shard, index, out, true)
                .map(|()| PixelFilter::None);
        }
        if shard.header.codec == Codec::Raw {
            return shard
                .read_raw(index, out, false)
                .map(|()| PixelFilter::None);
        }
        let mut buffer = std::mem::take(&mut self.frame);
        let result = shard.read_frame(index, &mut buffer).and_then(|frame| {
            shard.check_frame(index, frame)?;
            self.decompress(shard, index, frame, out)
        });
        self.frame = buffer;
        result.map(|()| shard.header.filter)
    }

    fn decompress(
        &mut self,
        shard: &ShardReader,
        index: usize,
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<(), ShardError> {
        let n = self
            .decompressor
            .decompress_to_buffer(frame, out)
            .map_err(|e| shard.record_error(index, format!("zstd: {e}")))?;
        if n != shard.header.image_len() {
            let want = shard.header.image_len();
            return Err(shard.record_error(index, format!("{n} bytes, expected {want}")));
        }
        Ok(())
    }

    /// As `decode`, for a zstd frame the caller already holds (e.g. from a
    /// memory map).
    fn decode_bytes(
        &mut self,
        shard: &ShardReader,
        index: usize,
        frame: &[u8],
        out: &mut [u8],
        verify: bool,
    ) -> Result<(), ShardError> {
        let h = shard.header;
        shard.check_frame(index, frame)?;
        self.decompress(shard, index, frame, out)?;
        h.filter.undo(out, h.row_len(), h.channels as usize);
        let verify = verify || !shard.has_frame_checksums();
        if verify && xxh3_64(out) != shard.records[index].checksum {
            return Err(shard.record_error(index, "pixel checksum mismatch"));
        }
        Ok(())
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(filter: PixelFilter) -> ShardHeader {
        ShardHeader {
            height: 4,
            width: 5,
            channels: 3,
            filter,
            zstd_level: 1,
            zstd_search: MatchSearch::Full,
            codec: Codec::Zstd,
            plan_id: 42,
            identity: Some(ShardIdentity {
                split: Split::Val,
                number: 2,
                first: 8,
                planned: 4,
            }),
        }
    }

    fn image(seed: u8) -> Vec<u8> {
        (0..60u32)
            .map(|i| (i * 37 + seed as u32 * 11) as u8)
            .collect()
    }

    /// The raw codec's header: pixels as they are.
    fn raw_header() -> ShardHeader {
        ShardHeader {
            zstd_level: 0,
            codec: Codec::Raw,
            ..header(PixelFilter::None)
        }
    }

    fn write(dir: &Path, filter: PixelFilter) -> PathBuf {
        write_with(dir, header(filter))
    }

    /// Three images and one skipped file, under `h`.
    fn write_with(dir: &Path, h: ShardHeader) -> PathBuf {
        let mut enc = RecordEncoder::new(h).expect("encoder");
        let mut w = ShardWriter::create(&dir.join("t.shard"), h).expect("create");
        for i in 0..3u8 {
            let mut frame = Vec::new();
            let sum = enc.encode(&image(i), &mut frame).expect("encode");
            w.add(i as u32 * 7, &format!("c/{i}.JPEG"), &frame, sum)
                .expect("add");
        }
        w.skip(Skipped {
            path: "c/bad.JPEG".into(),
            reason: "empty file".into(),
        });
        w.finish().expect("finish")
    }

    #[test]
    fn filters_round_trip() {
        let px = image(3);
        let mut out = Vec::new();
        PixelFilter::Delta.apply(&px, 15, 3, &mut out);
        assert_ne!(out, px);
        assert_eq!(out[..3], px[..3], "first pixel of a row is stored as is");
        assert_eq!(out[3], px[3].wrapping_sub(px[0]));
        PixelFilter::Delta.undo(&mut out, 15, 3);
        assert_eq!(out, px);
    }

    /// The vectorised filter against its definition, byte by byte, with one
    /// output buffer reused across sizes (shrinking and growing).
    #[test]
    fn delta_filter_equals_its_definition() {
        let mut rng = crate::rng::SplitMix64::new(17);
        let mut out = Vec::new();
        for (row_len, rows, channels) in [(768, 4, 3), (15, 3, 3), (8, 2, 1), (768, 256, 3)] {
            let px: Vec<u8> = (0..row_len * rows).map(|_| rng.next_u64() as u8).collect();
            PixelFilter::Delta.apply(&px, row_len, channels, &mut out);
            let want: Vec<u8> = (0..px.len())
                .map(|i| match i % row_len {
                    x if x < channels => px[i],
                    _ => px[i].wrapping_sub(px[i - channels]),
                })
                .collect();
            assert_eq!(out, want, "rows of {row_len}");
            PixelFilter::Delta.undo(&mut out, row_len, channels);
            assert_eq!(out, px, "round trip, rows of {row_len}");
        }
    }

    #[test]
    fn records_round_trip_with_labels_names_and_skips() {
        for filter in [PixelFilter::None, PixelFilter::Delta] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = write(dir.path(), filter);
            let pread = ShardReader::open(&path).expect("open");
            let mapped = ShardReader::open(&path).and_then(ShardReader::map_frames);
            let mapped = mapped.expect("map");
            assert!(mapped.is_mapped() && !pread.is_mapped());
            for shard in [pread, mapped] {
                assert_eq!(shard.header(), &header(filter));
                assert_eq!(shard.len(), 3);
                assert_eq!(shard.skipped()[0].reason, "empty file");
                let mut dec = RecordDecoder::new().expect("decoder");
                let mut out = vec![0; 60];
                for i in 0..3 {
                    dec.decode(&shard, i, &mut out, true).expect("decode");
                    assert_eq!(out, image(i as u8));
                    assert_eq!(shard.records()[i].label, i as u32 * 7);
                    assert_eq!(shard.records()[i].name, format!("c/{i}.JPEG"));
                }
            }
            let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
            assert_eq!(leftovers.len(), 1, "no temporary file is left");
        }
    }

    /// A 64x64 RGB image of noise with a 9-byte motif every 64 bytes. The
    /// delta filter keeps 6 of its bytes the same at each place (the first
    /// pixel's depend on the noise before it): repeats that level 1's search
    /// finds (5-byte matches) and `Sparse`'s (7 bytes and up) does not.
    fn motif_image() -> Vec<u8> {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut px: Vec<u8> = (0..64 * 64 * 3).map(|_| rng.next_u64() as u8).collect();
        for start in (0..px.len() - 9).step_by(64) {
            px[start..start + 9].copy_from_slice(b"MOTIFMOTI");
        }
        px
    }

    #[test]
    fn sparse_search_writes_other_frames_that_decode_to_the_same_pixels() {
        let px = motif_image();
        let mut frames = Vec::new();
        for search in [MatchSearch::Full, MatchSearch::Sparse] {
            let dir = tempfile::tempdir().expect("tempdir");
            let h = ShardHeader {
                height: 64,
                width: 64,
                zstd_search: search,
                ..header(PixelFilter::Delta)
            };
            let path = dir.path().join("t.shard");
            let mut w = ShardWriter::create(&path, h).expect("create");
            let mut frame = Vec::new();
            let sum = RecordEncoder::new(h)
                .expect("encoder")
                .encode(&px, &mut frame)
                .expect("encode");
            w.add(0, "x.JPEG", &frame, sum).expect("add");
            w.finish().expect("finish");
            let shard = ShardReader::open(&path).expect("open");
            assert_eq!(shard.header().zstd_search, search, "kept in the header");
            let mut out = vec![0; px.len()];
            let mut dec = RecordDecoder::new().expect("decoder");
            dec.decode(&shard, 0, &mut out, true).expect("decode");
            assert_eq!(out, px);
            frames.push(frame);
        }
        assert_ne!(frames[0], frames[1], "the search parameters took effect");
    }

    #[test]
    fn sparse_search_refuses_levels_it_is_not_tuned_for() {
        let h = ShardHeader {
            zstd_level: 3,
            zstd_search: MatchSearch::Sparse,
            ..header(PixelFilter::Delta)
        };
        let err = RecordEncoder::new(h).err().expect("level 3");
        assert!(err.to_string().contains("tuned for level 1"), "{err}");
        assert_eq!(MatchSearch::default_for(1), MatchSearch::Sparse);
        assert_eq!(MatchSearch::default_for(3), MatchSearch::Full);
    }

    #[test]
    fn an_unknown_match_search_code_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), PixelFilter::Delta);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[40] = 9;
        std::fs::write(&path, &bytes).expect("write");
        let err = ShardReader::open(&path).err().expect("code 9");
        let text = err.to_string();
        assert!(
            text.contains("t.shard") && text.contains("match search 9"),
            "{text}"
        );
    }

    #[test]
    fn truncation_is_detected_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), PixelFilter::Delta);
        let bytes = std::fs::read(&path).expect("read");
        for cut in [1, 10, 31, 100, bytes.len() - 48] {
            std::fs::write(&path, &bytes[..bytes.len() - cut]).expect("write");
            let err = ShardReader::open(&path).err().expect("must fail");
            assert!(err.to_string().contains("t.shard"), "{err}");
        }
    }

    #[test]
    fn a_flipped_pixel_byte_fails_the_record_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = header(PixelFilter::None);
        let path = dir.path().join("t.shard");
        let mut w = ShardWriter::create(&path, h).expect("create");
        // Level-1 zstd of 60 bytes of this pattern is stored raw enough that a
        // flipped byte inside the frame changes a pixel, not the frame format.
        let mut enc = RecordEncoder::new(h).expect("encoder");
        let mut frame = Vec::new();
        let sum = enc.encode(&image(1), &mut frame).expect("encode");
        w.add(0, "x.JPEG", &frame, sum).expect("add");
        w.finish().expect("finish");
        let mut bytes = std::fs::read(&path).expect("read");
        let last_data_byte = HEADER_LEN as usize + frame.len() - 5;
        bytes[last_data_byte] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        // zstd alone would not notice: the damaged frame still decodes,
        // to other pixels.
        let mut changed = vec![0; 60];
        let n = zstd::bulk::decompress_to_buffer(
            &bytes[HEADER_LEN as usize..][..frame.len()],
            &mut changed,
        );
        assert_eq!(n.expect("still a valid zstd frame"), 60);
        assert_ne!(changed, image(1));

        let pread = ShardReader::open(&path).expect("index is intact");
        let mapped = ShardReader::open(&path).and_then(ShardReader::map_frames);
        for shard in [pread, mapped.expect("map")] {
            let mut out = vec![0; 60];
            let mut decoder = RecordDecoder::new().expect("decoder");
            // Every read path: full decode with and without the pixel
            // check, and the filtered one the loader and stats take.
            let errors = [
                decoder
                    .decode(&shard, 0, &mut out, true)
                    .expect_err("verify"),
                decoder
                    .decode(&shard, 0, &mut out, false)
                    .expect_err("no verify"),
                decoder
                    .decode_filtered(&shard, 0, &mut out)
                    .expect_err("filtered"),
            ];
            for err in errors {
                let text = err.to_string();
                assert!(
                    text.contains("t.shard: record 0 (x.JPEG)") && text.contains("frame checksum"),
                    "{text}"
                );
            }
        }
    }

    /// A format-2 file rewritten as format 1 (48-byte header, no identity,
    /// no frame checksums), as an earlier build wrote it.
    fn as_version_1(path: &Path) -> Vec<u8> {
        let shard = ShardReader::open(path).expect("open");
        let bytes = std::fs::read(path).expect("read");
        let mut out = bytes[..HEADER_LEN_V1 as usize].to_vec();
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
        out[44..48].fill(0);
        let mut records = shard.records().to_vec();
        for r in &mut records {
            let start = r.offset as usize;
            r.offset = out.len() as u64;
            r.frame_checksum = None;
            out.extend_from_slice(&bytes[start..][..r.len as usize]);
        }
        let mut index = encode_index(&records, shard.skipped());
        // encode_index writes format 2's entries: drop the frame checksums.
        let mut v1 = index[..4].to_vec();
        let mut at = 4;
        for r in &records {
            v1.extend_from_slice(&index[at..at + 24]);
            let entry = 24 + 8 + 4 + r.name.len();
            v1.extend_from_slice(&index[at + 32..at + entry]);
            at += entry;
        }
        v1.extend_from_slice(&index[at..]);
        index = v1;
        let index_offset = out.len() as u64;
        out.extend_from_slice(&index);
        out.extend_from_slice(&encode_footer(index_offset, &index));
        out
    }

    #[test]
    fn version_1_files_are_read_and_checked_by_their_pixels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), PixelFilter::Delta);
        let mut v1 = as_version_1(&path);
        std::fs::write(&path, &v1).expect("write");
        let shard = ShardReader::open(&path).expect("a version 1 file opens");
        assert!(!shard.has_frame_checksums());
        assert_eq!(shard.header().identity, None);
        assert_eq!(shard.header().plan_id, 42);
        let mut decoder = RecordDecoder::new().expect("decoder");
        let mut out = vec![0; 60];
        for i in 0..3 {
            let filter = decoder
                .decode_filtered(&shard, i, &mut out)
                .expect("decode");
            assert_eq!(filter, PixelFilter::None, "handed back unfiltered");
            assert_eq!(out, image(i as u8));
        }
        // Damage that zstd decodes is still caught, by the pixel checksum,
        // on the filtered path too.
        let frame = &shard.records()[1];
        let at = (frame.offset + frame.len as u64 / 2) as usize;
        drop(shard);
        v1[at] ^= 0x01;
        std::fs::write(&path, &v1).expect("write");
        let shard = ShardReader::open(&path).expect("open");
        let err = decoder
            .decode_filtered(&shard, 1, &mut out)
            .expect_err("damaged");
        assert!(err.to_string().contains("record 1"), "{err}");
    }

    #[test]
    fn raw_records_are_the_pixels_and_read_back_on_every_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_with(dir.path(), raw_header());
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(le_u32(&bytes[8..12]), VERSION);
        let pread = ShardReader::open(&path).expect("open");
        let mapped = ShardReader::open(&path).and_then(ShardReader::map_frames);
        let mapped = mapped.expect("map");
        for r in pread.records() {
            let stored = &bytes[r.offset as usize..][..r.len as usize];
            assert_eq!(
                xxh3_64(stored),
                r.checksum,
                "{}: the frame is the pixels",
                r.name
            );
            assert_eq!(r.frame_checksum, Some(r.checksum));
        }
        assert!(
            pread.mapped_pixels(0, false).is_none(),
            "pread: decoded into a buffer"
        );
        for shard in [&pread, &mapped] {
            assert_eq!(shard.header(), &raw_header());
            let mut dec = RecordDecoder::new().expect("decoder");
            let mut out = vec![0; 60];
            for i in 0..3 {
                for verify in [true, false] {
                    out.fill(0);
                    dec.decode(shard, i, &mut out, verify).expect("decode");
                    assert_eq!(out, image(i as u8));
                }
                out.fill(0);
                let filter = dec.decode_filtered(shard, i, &mut out).expect("filtered");
                assert_eq!((filter, &out), (PixelFilter::None, &image(i as u8)));
            }
        }
        for i in 0..3 {
            let pixels = mapped.mapped_pixels(i, true).expect("mapped raw");
            assert_eq!(pixels.expect("intact"), image(i as u8));
        }
        // A mapped zstd shard has no pixels to hand out where they lie.
        let zstd_dir = tempfile::tempdir().expect("tempdir");
        let zstd = write(zstd_dir.path(), PixelFilter::None);
        let zstd = ShardReader::open(&zstd).and_then(ShardReader::map_frames);
        assert!(zstd.expect("map").mapped_pixels(0, false).is_none());
    }

    #[test]
    fn a_flipped_byte_in_a_raw_record_fails_its_checksum_on_every_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_with(dir.path(), raw_header());
        let at = {
            let shard = ShardReader::open(&path).expect("open");
            (shard.records()[1].offset + 17) as usize
        };
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[at] ^= 0x04;
        std::fs::write(&path, &bytes).expect("write");
        let pread = ShardReader::open(&path).expect("the index is intact");
        let mapped = ShardReader::open(&path).and_then(ShardReader::map_frames);
        let mapped = mapped.expect("map");
        let mut dec = RecordDecoder::new().expect("decoder");
        let mut out = vec![0; 60];
        let mut errors = vec![
            mapped
                .mapped_pixels(1, false)
                .expect("mapped raw")
                .expect_err("where it lies"),
            mapped
                .mapped_pixels(1, true)
                .expect("mapped raw")
                .expect_err("verified"),
        ];
        for shard in [&pread, &mapped] {
            errors.push(dec.decode(shard, 1, &mut out, true).expect_err("verify"));
            errors.push(
                dec.decode(shard, 1, &mut out, false)
                    .expect_err("no verify"),
            );
            errors.push(
                dec.decode_filtered(shard, 1, &mut out)
                    .expect_err("filtered"),
            );
            dec.decode(shard, 0, &mut out, true)
                .expect("its neighbour is intact");
        }
        for err in errors {
            let text = err.to_string();
            assert!(
                text.contains("t.shard: record 1 (c/1.JPEG)") && text.contains("frame checksum"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_raw_record_that_is_not_one_image_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.shard");
        let mut w = ShardWriter::create(&path, raw_header()).expect("create");
        let short = &image(0)[..59];
        w.add(0, "c/short.JPEG", short, xxh3_64(short))
            .expect("add");
        w.finish().expect("finish");
        let err = ShardReader::open(&path)
            .err()
            .expect("59 bytes is no image");
        let text = err.to_string();
        assert!(
            text.contains("t.shard") && text.contains("raw record c/short.JPEG holds 59 bytes"),
            "{text}"
        );
    }

    /// Header bytes a reader must refuse, each with the reason it gives.
    #[test]
    fn codec_and_reserved_header_fields_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_with(dir.path(), raw_header());
        let bytes = std::fs::read(&path).expect("read");
        let cases: [(usize, u8, &str); 3] = [
            (64, 7, "unknown codec 7"),
            (70, 1, "reserved header bytes are not zero"),
            (24, 1, "raw records with a pixel filter"),
        ];
        for (at, value, reason) in cases {
            let mut changed = bytes.clone();
            changed[at] = value;
            std::fs::write(&path, &changed).expect("write");
            let err = ShardReader::open(&path).err().expect(reason);
            let text = err.to_string();
            assert!(text.contains("t.shard") && text.contains(reason), "{text}");
        }
    }

    /// A format-3 file rewritten as format 2 (64-byte header, zstd), as
    /// the previous build wrote it.
    fn as_version_2(path: &Path) -> Vec<u8> {
        let shard = ShardReader::open(path).expect("open");
        let bytes = std::fs::read(path).expect("read");
        let shift = HEADER_LEN - HEADER_LEN_V2;
        let mut out = bytes[..HEADER_LEN_V2 as usize].to_vec();
        out[8..12].copy_from_slice(&2u32.to_le_bytes());
        let index_offset = shard
            .records()
            .iter()
            .map(|r| r.offset + r.len as u64)
            .max();
        let index_offset = index_offset.expect("records");
        out.extend_from_slice(&bytes[HEADER_LEN as usize..index_offset as usize]);
        let mut records = shard.records().to_vec();
        for r in &mut records {
            r.offset -= shift;
        }
        let index = encode_index(&records, shard.skipped());
        out.extend_from_slice(&index);
        out.extend_from_slice(&encode_footer(index_offset - shift, &index));
        out
    }

    #[test]
    fn version_2_files_are_read_with_their_frame_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), PixelFilter::Delta);
        let mut v2 = as_version_2(&path);
        std::fs::write(&path, &v2).expect("write");
        let shard = ShardReader::open(&path).expect("a version 2 file opens");
        assert_eq!(shard.header(), &header(PixelFilter::Delta));
        assert!(shard.has_frame_checksums());
        let mut decoder = RecordDecoder::new().expect("decoder");
        let mut out = vec![0; 60];
        for i in 0..3 {
            decoder.decode(&shard, i, &mut out, true).expect("decode");
            assert_eq!(out, image(i as u8));
        }
        let at = (shard.records()[2].offset + 3) as usize;
        drop(shard);
        v2[at] ^= 0x10;
        std::fs::write(&path, &v2).expect("write");
        let shard = ShardReader::open(&path).expect("open");
        let err = decoder
            .decode_filtered(&shard, 2, &mut out)
            .expect_err("damaged");
        assert!(err.to_string().contains("frame checksum"), "{err}");
    }

    #[test]
    fn the_identity_is_kept_in_the_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), PixelFilter::Delta);
        let shard = ShardReader::open(&path).expect("open");
        let id = shard.header().identity.expect("format 2");
        assert_eq!(id.describe(), "val shard 2 (files 8..11)");
        assert!(shard.has_frame_checksums());
        assert!(shard.records().iter().all(|r| r.frame_checksum.is_some()));
    }

    #[test]
    fn auto_maps_shards_that_fit_in_half_the_memory() {
        let memory = usable_memory().expect("Linux says how much memory it has");
        assert_eq!(ReadMode::Auto.resolve(memory / 2), ReadMode::Map);
        assert_eq!(ReadMode::Auto.resolve(memory / 2 + 1), ReadMode::Pread);
        assert_eq!(ReadMode::Map.resolve(u64::MAX), ReadMode::Map);
        assert_eq!(ReadMode::Pread.resolve(0), ReadMode::Pread);
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = ShardWriter::create(&dir.path().join("t.shard"), header(PixelFilter::None))
            .expect("create");
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
