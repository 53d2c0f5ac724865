//! Files appear under their final name only when complete: each is written as
//! `.NAME.partial` beside its final path, then renamed. A crash leaves at most
//! a partial file, which `pipeline shards` removes when it starts again.

use std::io;
use std::path::{Path, PathBuf};

/// The temporary name `path` is written under.
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.partial"))
}

/// Whether a file name is one of our temporary names.
pub fn is_partial(file_name: &str) -> bool {
    file_name.starts_with('.') && file_name.ends_with(".partial")
}

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = partial_path(path);
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_hidden_and_recognised() {
        let p = partial_path(Path::new("/x/train-00001.shard"));
        assert_eq!(p, Path::new("/x/.train-00001.shard.partial"));
        assert!(is_partial(".train-00001.shard.partial"));
        assert!(!is_partial("train-00001.shard"));
    }

    #[test]
    fn write_leaves_only_the_final_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(&dir.path().join("a.json"), b"{}").expect("write");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["a.json"]);
    }
}
