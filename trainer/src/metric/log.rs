//! `metrics.jsonl`: one JSON object per line. Step lines carry `step`,
//! `epoch`, `loss`, `lr`, `img_per_sec` and `loader_wait` (seconds the step
//! waited for its batch; data-parallel: the loss averaged over the ranks,
//! the img/s of all ranks together, the slowest rank's wait); epoch lines carry `epoch`, `step`, `val_top1`,
//! `val_top5`, `val_loss` and `lr`. On resume, lines after the checkpoint's
//! step are dropped so that the file reads as one uninterrupted run.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const FILE: &str = "metrics.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLine {
    pub step: u64,
    pub epoch: u64,
    pub loss: f64,
    pub lr: f64,
    pub img_per_sec: f64,
    pub loader_wait: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLine {
    pub epoch: u64,
    pub step: u64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub val_loss: f64,
    pub lr: f64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// True when the run stopped inside the epoch (--max-steps).
    #[serde(default)]
    pub partial: bool,
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Epoch(EpochLine),
    Step(StepLine),
}

impl Line {
    fn step(&self) -> u64 {
        match self {
            Line::Epoch(e) => e.step,
            Line::Step(s) => s.step,
        }
    }
}

pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Opens `run/metrics.jsonl`; `keep_until` keeps the lines up to that
    /// step (resume), None starts it afresh.
    pub fn open(run: &Path, keep_until: Option<u64>) -> std::io::Result<Self> {
        let path = run.join(FILE);
        let kept = match keep_until {
            Some(step) if path.exists() => read(&path)?
                .into_iter()
                .filter(|l| l.step() <= step)
                .collect(),
            _ => Vec::new(),
        };
        let mut out = BufWriter::new(File::create(&path)?);
        for line in &kept {
            writeln!(out, "{}", serde_json::to_string(line).expect("serialises"))?;
        }
        out.flush()?;
        Ok(Self { path, out })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, line: &Line) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{}",
            serde_json::to_string(line).expect("serialises")
        )
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Every line of a metrics file (lines that do not parse are skipped).
pub fn read(path: &Path) -> std::io::Result<Vec<Line>> {
    let file = BufReader::new(File::open(path)?);
    let mut lines = Vec::new();
    for line in file.lines() {
        if let Ok(parsed) = serde_json::from_str::<Line>(&line?) {
            lines.push(parsed);
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64) -> Line {
        Line::Step(StepLine {
            step,
            epoch: 0,
            loss: 2.0,
            lr: 0.01,
            img_per_sec: 10.0,
            loader_wait: 0.001,
        })
    }

    #[test]
    fn resume_drops_lines_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=5 {
            log.write(&step(s)).unwrap();
        }
        log.write(&Line::Epoch(EpochLine {
            epoch: 0,
            step: 5,
            val_top1: 0.5,
            val_top5: 0.9,
            val_loss: 1.0,
            lr: 0.01,
            train_loss: 1.5,
            partial: false,
        }))
        .unwrap();
        log.write(&step(6)).unwrap();
        log.flush().unwrap();
        drop(log);
        let mut log = MetricsLog::open(dir.path(), Some(5)).unwrap();
        log.flush().unwrap();
        let lines = read(&dir.path().join(FILE)).unwrap();
        assert_eq!(lines.len(), 6);
        assert!(matches!(lines[5], Line::Epoch(_)));
        assert_eq!(lines[4], step(5));
    }
}
