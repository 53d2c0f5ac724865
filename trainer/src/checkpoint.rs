//! Checkpoints: everything a run needs to continue as if never stopped.
//!
//! `RUN/checkpoints/step-00001234/` holds `model.safetensors` (the
//! weights), `momentum.safetensors` (the SGD buffers) and `state.json`
//! (step, epoch and next batch of the loader, schedule, seed, model
//! configuration). Random state needs no saving: dropout is reseeded from
//! (seed, step) before every step, and the loader's draws are a function of
//! (seed, epoch, position). A checkpoint is written under a hidden
//! `.NAME.partial` folder and renamed when complete; `LATEST` names the
//! newest, and only the newest `keep` are kept.
//!
//! `checksums.json`, written last, holds the xxh3-64 of each of the three
//! files. Loading checks them (a flipped bit, a truncated file or an edited
//! state.json is an error naming the file), and `resume_point` falls back
//! to the newest intact checkpoint, saying what was wrong with the newer
//! ones. Checkpoints from before checksums were written load unchecked.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::model::{AlexNet, Init, ModelConfig, Precision};
use crate::named_tensors::NamedTensorError;
use crate::optim::schedule::Schedule;
use crate::optim::sgd::Sgd;

pub const LATEST: &str = "LATEST";
const MODEL_FILE: &str = "model.safetensors";
const MOMENTUM_FILE: &str = "momentum.safetensors";
const STATE_FILE: &str = "state.json";
const CHECKSUMS_FILE: &str = "checksums.json";
/// The files a checksum covers.
const CHECKED: [&str; 3] = [MODEL_FILE, MOMENTUM_FILE, STATE_FILE];

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Tensors {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}: not a checkpoint (no state.json) nor a run folder with checkpoints/LATEST")]
    NotACheckpoint(PathBuf),
    #[error("{path}: damaged: {why}")]
    Damaged { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Mismatch {
        path: PathBuf,
        #[source]
        source: NamedTensorError,
    },
}

/// Where a run stands, in `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// The epoch in progress and its next batch.
    pub epoch: u64,
    pub batch: usize,
    pub schedule: Schedule,
    pub seed: u64,
    pub model: ModelConfig,
    pub init: Init,
    pub precision: Precision,
    pub batch_size: usize,
    /// Per-channel input scale (Some with --init kaiming).
    pub input_scale: Option<[f32; 3]>,
    /// The shard set trained on (`manifest.json` id).
    pub manifest_id: String,
    /// The run's own flags that `--resume` reuses when not given again.
    /// Absent in checkpoints written before they were recorded.
    #[serde(default)]
    pub settings: Option<RunSettings>,
}

/// Flags of `trainer run` that the rest of the state does not hold and that
/// a resumed run should keep: without them `trainer run --out RUN --resume`
/// would fall back to `--shards shards` and 90 epochs, and a changed
/// momentum or weight decay would break the exact continuation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Absolute where it could be made so.
    pub shards: PathBuf,
    pub epochs: u64,
    pub momentum: f64,
    pub weight_decay: f64,
}

/// What a checkpoint folder holds, loaded on the CPU.
pub struct Checkpoint {
    pub path: PathBuf,
    pub state: TrainState,
    pub weights: Vec<(String, Tensor)>,
    pub momentum: Vec<(String, Tensor)>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn tensors(path: &Path) -> impl FnOnce(tch::TchError) -> CheckpointError + '_ {
    move |source| CheckpointError::Tensors {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a checkpoint into `dir` and makes it the latest; returns its path.
pub fn save(
    dir: &Path,
    state: &TrainState,
    net: &AlexNet,
    sgd: &Sgd,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = format!("step-{:08}", state.step);
    let final_path = dir.join(&name);
    let temp = dir.join(format!(".{name}.partial"));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(io(&temp))?;
    }
    std::fs::create_dir_all(&temp).map_err(io(&temp))?;
    let params = net.named_parameters();
    let weights: Vec<(String, Tensor)> = params
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(tch::Device::Cpu)))
        .collect();
    let path = temp.join(MODEL_FILE);
    Tensor::write_safetensors(&weights, &path).map_err(tensors(&path))?;
    let momentum: Vec<(String, Tensor)> = sgd
        .named_buffers(&params)
        .into_iter()
        .map(|(n, t)| (n, t.to_device(tch::Device::Cpu)))
        .collect();
    let path = temp.join(MOMENTUM_FILE);
    Tensor::write_safetensors(&momentum, &path).map_err(tensors(&path))?;
    let path = temp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    std::fs::write(&path, json).map_err(io(&path))?;
    write_checksums(&temp)?;
    if final_path.exists() {
        std::fs::remove_dir_all(&final_path).map_err(io(&final_path))?;
    }
    std::fs::rename(&temp, &final_path).map_err(io(&final_path))?;
    let latest = dir.join(LATEST);
    pipeline::format::atomic::write(&latest, format!("{name}\n").as_bytes())
        .map_err(io(&latest))?;
    prune(dir, keep.max(1))?;
    Ok(final_path)
}

/// Removes all but the newest `keep` checkpoints (and stray partials).
fn prune(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry
            .map_err(io(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("step-") {
            names.push(name);
        } else if pipeline::format::atomic::is_partial(&name) {
            let p = dir.join(&name);
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        let p = dir.join(name);
        std::fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(())
}

/// The newest checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let pointer = dir.join(LATEST);
    if !pointer.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(io(&pointer))?;
    Ok(Some(dir.join(name.trim())))
}

/// Loads a checkpoint folder (or a run folder, meaning its latest), its
/// checksums checked.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let path = resolve(path)?;
    verify(&path)?;
    let state = read_state(&path)?;
    let model_path = path.join(MODEL_FILE);
    let weights = Tensor::read_safetensors(&model_path).map_err(tensors(&model_path))?;
    let momentum_path = path.join(MOMENTUM_FILE);
    let momentum = Tensor::read_safetensors(&momentum_path).map_err(tensors(&momentum_path))?;
    Ok(Checkpoint {
        path,
        state,
        weights,
        momentum,
    })
}

/// The state of a checkpoint folder, or of the latest one of a run folder,
/// without its tensors (checksums checked).
pub fn load_state(path: &Path) -> Result<TrainState, CheckpointError> {
    let path = resolve(path)?;
    verify(&path)?;
    read_state(&path)
}

/// The newest intact checkpoint in `dir` (a run's `checkpoints/`): the
/// one LATEST names, else the newest `step-*` that passes its checksums
/// and whose state reads. Returns it with what was wrong with each newer
/// one (to be reported); the error is the newest one's when none is intact.
pub fn resume_point(dir: &Path) -> Result<(PathBuf, Vec<CheckpointError>), CheckpointError> {
    let mut candidates: Vec<PathBuf> = latest(dir)?.into_iter().collect();
    let mut older = step_folders(dir)?;
    older.sort();
    candidates.extend(older.into_iter().rev().map(|name| dir.join(name)));
    candidates.dedup();
    let mut skipped = Vec::new();
    for path in candidates {
        match verify(&path).and_then(|()| read_state(&path)) {
            Ok(_) => return Ok((path, skipped)),
            Err(e) => skipped.push(e),
        }
    }
    Err(match skipped.into_iter().next() {
        Some(first) => first,
        None => CheckpointError::NotACheckpoint(dir.to_path_buf()),
    })
}

/// Names of the `step-*` folders in `dir`.
fn step_folders(dir: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("step-") {
            names.push(name.into_owned());
        }
    }
    Ok(names)
}

/// xxh3-64 of `path`'s bytes, as 16 hex digits.
fn file_hash(path: &Path) -> Result<String, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)))
}

fn write_checksums(folder: &Path) -> Result<(), CheckpointError> {
    let mut sums = serde_json::Map::new();
    for file in CHECKED {
        sums.insert(file.into(), file_hash(&folder.join(file))?.into());
    }
    let path = folder.join(CHECKSUMS_FILE);
    let json = serde_json::to_vec_pretty(&sums).expect("checksums serialise");
    std::fs::write(&path, json).map_err(io(&path))
}

/// Checks each file against `checksums.json` (none: an older checkpoint,
/// taken as is).
fn verify(folder: &Path) -> Result<(), CheckpointError> {
    let sums_path = folder.join(CHECKSUMS_FILE);
    let text = match std::fs::read_to_string(&sums_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&sums_path)(e)),
    };
    let damaged = |path: &Path, why: String| CheckpointError::Damaged {
        path: path.to_path_buf(),
        why,
    };
    let sums: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .map_err(|e| damaged(&sums_path, format!("not a checksum list ({e})")))?;
    for file in CHECKED {
        let path = folder.join(file);
        let Some(want) = sums.get(file).and_then(|v| v.as_str()) else {
            return Err(damaged(&sums_path, format!("no checksum for {file}")));
        };
        if !path.exists() {
            return Err(damaged(&path, "missing".into()));
        }
        let got = file_hash(&path)?;
        if got != want {
            return Err(damaged(
                &path,
                format!("its xxh3-64 is {got}, checksums.json says {want} (a changed or corrupted file)"),
            ));
        }
    }
    Ok(())
}

fn read_state(checkpoint: &Path) -> Result<TrainState, CheckpointError> {
    let state_path = checkpoint.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::State {
        path: state_path.clone(),
        source,
    })
}

/// A checkpoint folder as given, or the latest one of a run folder or of
/// its `checkpoints/`.
fn resolve(path: &Path) -> Result<PathBuf, CheckpointError> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    for dir in [path.to_path_buf(), path.join("checkpoints")] {
        if let Some(found) = latest(&dir)? {
            return Ok(found);
        }
    }
    Err(CheckpointError::NotACheckpoint(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Placement;
    use tch::Device;

    /// A tiny network of `classes` classes, its optimiser, and a state
    /// (step 0, seed `seed`) to checkpoint them with.
    fn tiny_run(classes: i64, seed: u64) -> (ModelConfig, AlexNet, Sgd, TrainState) {
        let config = ModelConfig {
            classes,
            width_mult: 0.0625,
            input_side: 67,
            dropout: 0.5,
        };
        let net = AlexNet::new(
            config,
            Init::Paper,
            1,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        let sgd = Sgd::new(&net.named_parameters(), 0.9, 5e-4);
        let state = TrainState {
            step: 0,
            epoch: 0,
            batch: 0,
            schedule: Schedule::new(0.01, 3, 3),
            seed,
            model: config,
            init: Init::Paper,
            precision: Precision::F32,
            batch_size: 4,
            input_scale: None,
            manifest_id: "m".into(),
            settings: None,
        };
        (config, net, sgd, state)
    }

    #[test]
    fn round_trips_and_keeps_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let (config, net, sgd, mut state) = tiny_run(5, 9);
        state.batch = 1;
        state.settings = Some(RunSettings {
            shards: "/data/shards".into(),
            epochs: 7,
            momentum: 0.8,
            weight_decay: 1e-3,
        });
        for step in 1..=3 {
            state.step = step;
            save(dir.path(), &state, &net, &sgd, 2).unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["LATEST", "step-00000002", "step-00000003"]);
        let ck = load(dir.path()).unwrap();
        assert_eq!(ck.state, state);
        assert_eq!(load_state(dir.path()).unwrap(), state);
        let mut other = AlexNet::new(
            config,
            Init::Paper,
            2,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        other.load(&ck.weights).unwrap();
        for ((_, a), (_, b)) in net.named_parameters().iter().zip(other.named_parameters()) {
            assert!(a.equal(b));
        }
        assert_eq!(ck.momentum.len(), ck.weights.len());
    }

    /// Three checkpoints; the newest has a flipped byte in its weights and
    /// the middle one an edited state.json: both loads fail naming the file
    /// and why, and the resume point is the oldest, with both reasons.
    #[test]
    fn damage_is_named_and_resume_falls_back_to_the_newest_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (_, net, sgd, mut state) = tiny_run(3, 1);
        let mut paths = Vec::new();
        for step in 1..=3 {
            state.step = step;
            paths.push(save(dir.path(), &state, &net, &sgd, 3).unwrap());
        }
        let model = paths[2].join(MODEL_FILE);
        let mut bytes = std::fs::read(&model).unwrap();
        let at = bytes.len() - 100; // inside the tensor data, past the header
        bytes[at] ^= 0x01;
        std::fs::write(&model, bytes).unwrap();
        let state_file = paths[1].join(STATE_FILE);
        let edited = std::fs::read_to_string(&state_file)
            .unwrap()
            .replace("\"seed\": 1", "\"seed\": 2");
        std::fs::write(&state_file, edited).unwrap();

        let err = load(&paths[2]).err().expect("damaged weights load");
        assert!(
            matches!(&err, CheckpointError::Damaged { path, .. } if *path == model),
            "{err}"
        );
        let err = load(&paths[1])
            .err()
            .expect("edited state loads")
            .to_string();
        assert!(err.contains("state.json: damaged: its xxh3-64 is"), "{err}");

        let (point, skipped) = resume_point(dir.path()).unwrap();
        assert_eq!(point, paths[0]);
        let reasons: Vec<String> = skipped.iter().map(|e| e.to_string()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("step-00000003") && reasons[1].contains("step-00000002"));
        assert_eq!(load(&point).unwrap().state.step, 1);

        // Nothing intact: the newest one's error.
        std::fs::remove_file(paths[0].join(MOMENTUM_FILE)).unwrap();
        let err = resume_point(dir.path())
            .expect_err("none intact")
            .to_string();
        assert!(err.contains("step-00000003"), "{err}");
    }

    /// state.json written before run settings were kept still loads.
    #[test]
    fn state_without_settings_loads() {
        let text = r#"{"step": 3, "epoch": 0, "batch": 3,
            "schedule": {"lr": 0.01, "patience": 3, "max_drops": 3, "drops": 0,
                         "best_error": null, "epochs_since_best": 0},
            "seed": 0, "model": {"classes": 10, "width_mult": 0.25, "input_side": 224,
                                 "dropout": 0.5},
            "init": "kaiming", "precision": "f32", "batch_size": 32,
            "input_scale": null, "manifest_id": "m"}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), text).unwrap();
        let state = load_state(dir.path()).unwrap();
        assert_eq!((state.step, state.settings), (3, None));
    }

    #[test]
    fn a_missing_checkpoint_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("not a checkpoint"), "{err}");
    }
}
