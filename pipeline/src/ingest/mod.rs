//! Finding the images of an ILSVRC-2012 tree and their labels.
//!
//! Classes are the folders of `train/`; a class's index is its position in
//! sorted order (the torchvision / TFDS / timm convention). Validation labels
//! come in any of the three forms found in the wild:
//! 1. `val/<wnid>/*.JPEG` (already sorted into folders);
//! 2. flat `val/` + `LOC_val_solution.csv` (Kaggle: `ImageId,PredictionString`,
//!    the string starting with the wnid);
//! 3. flat `val/` + `ILSVRC2012_validation_ground_truth.txt` (1-based
//!    ILSVRC2012_ID per line, line n for `ILSVRC2012_val_<n>`) + an ID-to-wnid
//!    mapping: a text file with one wnid per line in ID order, or `ID wnid`
//!    lines (`--val-id-map`, or `ILSVRC2012_mapping.txt` found beside it).
//!
//! Nothing here decodes images. Unreadable folders and files are reported,
//! never fatal; a tree that cannot be what the user meant is an error.
//!
//! This folder is the ingest stage: this module finds the files and labels,
//! `codec` turns one file into a 256x256 image, `make_shards` runs
//! `pipeline shards` (plan, resume, parallel write).

pub mod codec;
pub mod make_shards;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::shard::Skipped;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    pub index: u32,
    pub wnid: String,
    pub name: String,
}

/// One source image to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path relative to the split folder, '/'-separated: what the shard records.
    pub name: String,
    pub label: u32,
    /// File size: part of a shard's plan id, so a changed file is redone.
    pub bytes: u64,
}

/// The files of one split, and what could not even be listed.
#[derive(Debug, Default)]
pub struct SplitListing {
    pub files: Vec<SourceFile>,
    pub unreadable: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}: no train/ folder (expected train/<wnid>/*.JPEG)")]
    NoTrain(PathBuf),
    #[error("{0}: no class folders in train/ (expected train/<wnid>/*.JPEG)")]
    NoClasses(PathBuf),
    #[error("{0}: no val/ folder")]
    NoVal(PathBuf),
    #[error("{dir}: val/ is flat and has no labels: {hint}")]
    ValUnlabelled { dir: PathBuf, hint: String },
    #[error("{file}: wnid {wnid} (from {source_of_label}) is not a class of train/")]
    UnknownWnid {
        file: String,
        wnid: String,
        source_of_label: String,
    },
    #[error("{path}:{line}: {detail}")]
    BadLabelFile {
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where labels and names may be found: the tree's root and, for the Kaggle
/// layout (ILSVRC/Data/CLS-LOC/{train,val}), its two parents.
fn search_dirs(root: &Path) -> Vec<PathBuf> {
    root.ancestors().take(3).map(Path::to_owned).collect()
}

fn find_file(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The classes: sorted folder names of `train/`, with names from
/// `LOC_synset_mapping.txt` when present.
pub fn discover_classes(root: &Path) -> Result<Vec<ClassInfo>, IngestError> {
    let train = root.join("train");
    if !train.is_dir() {
        return Err(IngestError::NoTrain(root.to_owned()));
    }
    // A folder we cannot list is still a class (its files are reported).
    let wnids = subfolders(&train)?;
    if wnids.is_empty() {
        return Err(IngestError::NoClasses(root.to_owned()));
    }
    let names = match find_file(&search_dirs(root), "LOC_synset_mapping.txt") {
        Some(path) => read_synset_names(&path)?,
        None => HashMap::new(),
    };
    Ok(wnids
        .into_iter()
        .enumerate()
        .map(|(i, wnid)| ClassInfo {
            index: i as u32,
            name: names.get(&wnid).cloned().unwrap_or_else(|| wnid.clone()),
            wnid,
        })
        .collect())
}

/// Sorted names of the folders in `dir`. `is_dir` follows links, so a link to
/// a folder counts and a dangling link does not.
fn subfolders(dir: &Path) -> Result<Vec<String>, IngestError> {
    let entries = std::fs::read_dir(dir).map_err(|source| IngestError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// `n01440764 tench, Tinca tinca` per line.
fn read_synset_names(path: &Path) -> Result<HashMap<String, String>, IngestError> {
    let text = read_text(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(w, n)| (w.trim().to_owned(), n.trim().to_owned()))
        .collect())
}

fn read_text(path: &Path) -> Result<String, IngestError> {
    std::fs::read_to_string(path).map_err(|source| IngestError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Regular files of `dir` in sorted order; problems are reported in `unreadable`.
fn list_files(dir: &Path, unreadable: &mut Vec<Skipped>) -> Vec<(String, PathBuf, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            unreadable.push(Skipped {
                path: dir.display().to_string(),
                reason: format!("cannot read folder: {e}"),
            });
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    let first_unreadable = unreadable.len();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                unreadable.push(Skipped {
                    path: dir.display().to_string(),
                    reason: format!("cannot read folder entry: {e}"),
                });
                continue;
            }
        };
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                files.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    path,
                    m.len(),
                ));
            }
            Ok(_) => {} // nested folders are not part of the layout
            Err(e) => unreadable.push(Skipped {
                path: path.display().to_string(),
                reason: format!("cannot stat file: {e}"),
            }),
        }
    }
    files.sort();
    // In name order too, so that reports and the manifest do not change
    // with the order the file system lists a folder in.
    unreadable[first_unreadable..].sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// Keeps at most `k` files per label, the first in name order.
fn limit_per_class(files: Vec<SourceFile>, k: Option<usize>) -> Vec<SourceFile> {
    let Some(k) = k else { return files };
    let mut seen: HashMap<u32, usize> = HashMap::new();
    files
        .into_iter()
        .filter(|f| {
            let n = seen.entry(f.label).or_default();
            *n += 1;
            *n <= k
        })
        .collect()
}

/// All files of `train/`, in class then name order.
pub fn list_train(root: &Path, classes: &[ClassInfo], per_class: Option<usize>) -> SplitListing {
    let mut listing = SplitListing::default();
    for class in classes {
        let dir = root.join("train").join(&class.wnid);
        for (file, path, bytes) in list_files(&dir, &mut listing.unreadable) {
            listing.files.push(SourceFile {
                name: format!("{}/{file}", class.wnid),
                path,
                label: class.index,
                bytes,
            });
        }
    }
    listing.files = limit_per_class(listing.files, per_class);
    listing
}

/// Explicit label sources for a flat val/ folder.
#[derive(Debug, Clone, Default)]
pub struct ValLabelOptions {
    /// LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt.
    pub labels: Option<PathBuf>,
    /// ILSVRC2012_ID -> wnid mapping for the ground-truth form.
    pub id_map: Option<PathBuf>,
}

/// All labelled files of `val/`, in name order: in wnid folders like
/// `train/`, or flat with a label file.
pub fn list_val(
    root: &Path,
    classes: &[ClassInfo],
    per_class: Option<usize>,
    options: &ValLabelOptions,
) -> Result<SplitListing, IngestError> {
    let val = root.join("val");
    if !val.is_dir() {
        return Err(IngestError::NoVal(root.to_owned()));
    }
    let labels = ClassLabels::new(classes);
    let wnids = subfolders(&val)?;
    let mut listing = if wnids.is_empty() {
        let by_file = flat_val_labels(root, &val, options)?;
        list_flat_val(&val, &by_file, &labels)?
    } else {
        list_val_folders(&val, &wnids, &labels)?
    };
    listing.files = limit_per_class(listing.files, per_class);
    Ok(listing)
}

/// Class indices by wnid.
struct ClassLabels<'a>(HashMap<&'a str, u32>);

impl<'a> ClassLabels<'a> {
    fn new(classes: &'a [ClassInfo]) -> Self {
        Self(classes.iter().map(|c| (c.wnid.as_str(), c.index)).collect())
    }

    /// The label of `file`, whose wnid came from `source`; a wnid that is
    /// not one of train's classes is an error naming both.
    fn of(&self, file: &str, wnid: &str, source: &str) -> Result<u32, IngestError> {
        self.0
            .get(wnid)
            .copied()
            .ok_or_else(|| IngestError::UnknownWnid {
                file: file.to_owned(),
                wnid: wnid.to_owned(),
                source_of_label: source.to_owned(),
            })
    }
}

/// `val/<wnid>/*`: each file labelled by its folder.
fn list_val_folders(
    val: &Path,
    wnids: &[String],
    labels: &ClassLabels,
) -> Result<SplitListing, IngestError> {
    let mut listing = SplitListing::default();
    for wnid in wnids {
        for (file, path, bytes) in list_files(&val.join(wnid), &mut listing.unreadable) {
            let name = format!("{wnid}/{file}");
            let label = labels.of(&name, wnid, "its folder")?;
            listing.files.push(SourceFile {
                path,
                name,
                label,
                bytes,
            });
        }
    }
    Ok(listing)
}

/// `val/*`: each file labelled by the label file; one it does not name is
/// skipped with the reason.
fn list_flat_val(
    val: &Path,
    by_file: &FlatLabels,
    labels: &ClassLabels,
) -> Result<SplitListing, IngestError> {
    let mut listing = SplitListing::default();
    for (file, path, bytes) in list_files(val, &mut listing.unreadable) {
        let stem = file.rsplit_once('.').map_or(file.as_str(), |(s, _)| s);
        match by_file.wnid_of(stem) {
            Some(wnid) => {
                let label = labels.of(&file, wnid, &by_file.source)?;
                listing.files.push(SourceFile {
                    path,
                    name: file,
                    label,
                    bytes,
                });
            }
            None => listing.unreadable.push(Skipped {
                path: path.display().to_string(),
                reason: format!("no label for it in {}", by_file.source),
            }),
        }
    }
    Ok(listing)
}

/// Labels of a flat val/ folder, by file stem.
struct FlatLabels {
    source: String,
    by_stem: HashMap<String, String>,
    /// Ground-truth form: wnid of line n (index n - 1), matched by number.
    by_number: Vec<String>,
}

impl FlatLabels {
    fn wnid_of(&self, stem: &str) -> Option<&str> {
        if let Some(w) = self.by_stem.get(stem) {
            return Some(w);
        }
        let n: usize = stem.strip_prefix("ILSVRC2012_val_")?.parse().ok()?;
        self.by_number.get(n.checked_sub(1)?).map(String::as_str)
    }
}

fn flat_val_labels(
    root: &Path,
    val: &Path,
    options: &ValLabelOptions,
) -> Result<FlatLabels, IngestError> {
    let mut dirs = search_dirs(root);
    dirs.push(val.to_owned());
    dirs.push(root.join("ILSVRC2012_devkit_t12").join("data"));
    let labels = options
        .labels
        .clone()
        .or_else(|| find_file(&dirs, "LOC_val_solution.csv"))
        .or_else(|| find_file(&dirs, "ILSVRC2012_validation_ground_truth.txt"));
    let Some(labels) = labels else {
        return Err(IngestError::ValUnlabelled {
            dir: val.to_owned(),
            hint: "found neither LOC_val_solution.csv nor ILSVRC2012_validation_ground_truth.txt \
                   beside the tree; pass --val-labels FILE, or sort val/ into <wnid>/ folders"
                .into(),
        });
    };
    let text = read_text(&labels)?;
    if text.starts_with("ImageId") || labels.extension().is_some_and(|e| e == "csv") {
        return parse_kaggle_csv(&labels, &text);
    }
    let id_map = options
        .id_map
        .clone()
        .or_else(|| find_file(&dirs, "ILSVRC2012_mapping.txt"));
    let Some(id_map) = id_map else {
        let mat = find_file(&dirs, "meta.mat").map_or(String::new(), |p| {
            format!(
                " ({} is MATLAB; write its ILSVRC2012_ID and WNID columns as text)",
                p.display()
            )
        });
        return Err(IngestError::ValUnlabelled {
            dir: val.to_owned(),
            hint: format!(
                "{} gives class IDs but no ID-to-wnid mapping was found: pass --val-id-map FILE \
                 (one wnid per line in ILSVRC2012_ID order, or 'ID wnid' lines){mat}",
                labels.display()
            ),
        });
    };
    parse_ground_truth(&labels, &text, &id_map)
}

fn parse_kaggle_csv(path: &Path, text: &str) -> Result<FlatLabels, IngestError> {
    let mut by_stem = HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: &str| IngestError::BadLabelFile {
            path: path.to_owned(),
            line: i + 1,
            detail: detail.to_owned(),
        };
        let (id, prediction) = line
            .split_once(',')
            .ok_or_else(|| bad("expected ImageId,PredictionString"))?;
        let wnid = prediction
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("empty PredictionString"))?;
        by_stem.insert(id.trim().to_owned(), wnid.to_owned());
    }
    Ok(FlatLabels {
        source: file_name(path),
        by_stem,
        by_number: Vec::new(),
    })
}

fn parse_ground_truth(path: &Path, text: &str, id_map: &Path) -> Result<FlatLabels, IngestError> {
    let wnid_of_id = parse_id_map(id_map)?;
    let mut by_number = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| IngestError::BadLabelFile {
            path: path.to_owned(),
            line: i + 1,
            detail,
        };
        let id: usize = line
            .trim()
            .parse()
            .map_err(|_| bad(format!("expected an ILSVRC2012_ID, found {line:?}")))?;
        let wnid = wnid_of_id
            .get(&id)
            .ok_or_else(|| bad(format!("ID {id} is not in {}", id_map.display())))?;
        by_number.push(wnid.clone());
    }
    Ok(FlatLabels {
        source: file_name(path),
        by_stem: HashMap::new(),
        by_number,
    })
}

/// `wnid` per line (ID = line number) or `ID wnid` per line.
fn parse_id_map(path: &Path) -> Result<HashMap<usize, String>, IngestError> {
    let text = read_text(path)?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let mut words = line.split_whitespace();
        let (id, wnid) = match (words.next(), words.next()) {
            (Some(a), Some(b)) if a.parse::<usize>().is_ok() => (a.parse().unwrap_or(i + 1), b),
            (Some(a), _) => (i + 1, a),
            _ => continue,
        };
        map.insert(id, wnid.to_owned());
    }
    Ok(map)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for wnid in ["n02", "n01"] {
            let d = dir.path().join("train").join(wnid);
            fs::create_dir_all(&d).expect("mkdir");
            fs::write(d.join("b.JPEG"), b"x").expect("write");
            fs::write(d.join("a.JPEG"), b"x").expect("write");
        }
        fs::create_dir_all(dir.path().join("val")).expect("mkdir");
        dir
    }

    fn labels(listing: &SplitListing) -> Vec<(String, u32)> {
        listing
            .files
            .iter()
            .map(|f| (f.name.clone(), f.label))
            .collect()
    }

    #[test]
    fn classes_are_sorted_wnids_with_names() {
        let t = tree();
        fs::write(
            t.path().join("LOC_synset_mapping.txt"),
            "n01 tench, Tinca tinca\nn02 goldfish\n",
        )
        .expect("write");
        let classes = discover_classes(t.path()).expect("classes");
        assert_eq!(classes[0].wnid, "n01");
        assert_eq!(classes[0].name, "tench, Tinca tinca");
        assert_eq!(classes[1].index, 1);
        let train = list_train(t.path(), &classes, Some(1));
        assert_eq!(
            labels(&train),
            [("n01/a.JPEG".into(), 0), ("n02/a.JPEG".into(), 1)]
        );
    }

    #[test]
    fn val_in_wnid_folders() {
        let t = tree();
        let d = t.path().join("val").join("n02");
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("v.JPEG"), b"x").expect("write");
        let classes = discover_classes(t.path()).expect("classes");
        let val = list_val(t.path(), &classes, None, &Default::default()).expect("val");
        assert_eq!(labels(&val), [("n02/v.JPEG".into(), 1)]);
    }

    #[test]
    fn val_flat_with_kaggle_csv() {
        let t = tree();
        for n in [1, 2, 3] {
            fs::write(
                t.path().join(format!("val/ILSVRC2012_val_0000000{n}.JPEG")),
                b"x",
            )
            .expect("w");
        }
        fs::write(
            t.path().join("LOC_val_solution.csv"),
            "ImageId,PredictionString\nILSVRC2012_val_00000002,n01 1 2 3 4\nILSVRC2012_val_00000001,n02 1 2 3 4 n02 5 6 7 8\n",
        )
        .expect("write");
        let classes = discover_classes(t.path()).expect("classes");
        let val = list_val(t.path(), &classes, None, &Default::default()).expect("val");
        assert_eq!(
            labels(&val),
            [
                ("ILSVRC2012_val_00000001.JPEG".into(), 1),
                ("ILSVRC2012_val_00000002.JPEG".into(), 0)
            ]
        );
        assert!(
            val.unreadable[0].reason.contains("no label"),
            "{:?}",
            val.unreadable
        );
    }

    #[test]
    fn val_flat_with_ground_truth_and_id_map() {
        let t = tree();
        for n in [1, 2] {
            fs::write(
                t.path().join(format!("val/ILSVRC2012_val_0000000{n}.JPEG")),
                b"x",
            )
            .expect("w");
        }
        fs::write(
            t.path().join("ILSVRC2012_validation_ground_truth.txt"),
            "2\n1\n",
        )
        .expect("w");
        let classes = discover_classes(t.path()).expect("classes");
        let err = list_val(t.path(), &classes, None, &Default::default()).expect_err("no map");
        assert!(err.to_string().contains("--val-id-map"), "{err}");
        // IDs are not sorted-wnid order: ID 1 is n02 here.
        fs::write(t.path().join("ILSVRC2012_mapping.txt"), "1 n02\n2 n01\n").expect("w");
        let val = list_val(t.path(), &classes, None, &Default::default()).expect("val");
        assert_eq!(
            labels(&val),
            [
                ("ILSVRC2012_val_00000001.JPEG".into(), 0),
                ("ILSVRC2012_val_00000002.JPEG".into(), 1)
            ]
        );
        // The one-wnid-per-line form, given explicitly.
        fs::write(t.path().join("ids.txt"), "n01\nn02\n").expect("w");
        let options = ValLabelOptions {
            id_map: Some(t.path().join("ids.txt")),
            ..Default::default()
        };
        let val = list_val(t.path(), &classes, None, &options).expect("val");
        assert_eq!(val.files[0].label, 1);
    }

    #[test]
    fn mistakes_are_named() {
        let t = tempfile::tempdir().expect("tempdir");
        let err = discover_classes(t.path()).expect_err("no train");
        assert!(err.to_string().contains("no train/"), "{err}");
        let t = tree();
        fs::write(t.path().join("val/x.JPEG"), b"x").expect("w");
        let classes = discover_classes(t.path()).expect("classes");
        let err = list_val(t.path(), &classes, None, &Default::default()).expect_err("unlabelled");
        assert!(err.to_string().contains("no labels"), "{err}");
        let d = t.path().join("val/n99");
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("y.JPEG"), b"x").expect("w");
        let err = list_val(t.path(), &classes, None, &Default::default()).expect_err("unknown");
        assert!(err.to_string().contains("n99/y.JPEG: wnid n99"), "{err}");
    }

    #[test]
    fn an_unreadable_class_folder_is_reported_not_fatal() {
        let t = tree();
        // A class folder whose listing fails: replace n02 by a link to a file.
        let d = t.path().join("train/n03");
        std::os::unix::fs::symlink(t.path().join("train/n01/a.JPEG"), &d).expect("link");
        let classes = discover_classes(t.path()).expect("classes");
        assert_eq!(classes.len(), 2, "a link to a file is no class");
        let dir = t.path().join("train/n01");
        let mut unreadable = Vec::new();
        let files = list_files(&dir.join("missing"), &mut unreadable);
        assert!(files.is_empty());
        assert!(unreadable[0].reason.contains("cannot read folder"));
    }
}
