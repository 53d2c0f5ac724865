//! `alexnet_pipeline._native`: the pipeline crate's loader for Python. The
//! Python package (`python/alexnet_pipeline`) wraps it; this module keeps
//! to what must be native:
//!
//! - `Loader`: the prefetching loader, whose `__next__` waits for a batch
//!   with the GIL released (the workers never take it), looking for
//!   Ctrl-C every 100 ms;
//! - `BatchBuffer`: one batch's pixels, lent to numpy through the buffer
//!   protocol with no copy. The loader's buffer goes back to its pool only
//!   when Python drops the last array that views it.
//!
//! Errors become Python exceptions with the message the CLI prints.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pipeline::format::shard::ReadMode;
use pipeline::ingest::Split;
use pipeline::loader::augment::{Mode, View};
use pipeline::loader::sampler::{Order, RecordId};
use pipeline::loader::{
    check_config, Batch, BatchData, BufferPool, Dataset, Loader as RustLoader, LoaderConfig,
    LoaderError, Output, TimedOut,
};
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyByteArray;
use pyo3::{create_exception, ffi};

create_exception!(
    _native,
    DamagedShardError,
    PyException,
    "A shard file or record failed its checks; the message names the file and the record."
);

/// How long `__next__` waits with the GIL released before it looks for
/// Ctrl-C.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The loader error as the Python exception a caller expects.
fn to_py(e: LoaderError) -> PyErr {
    let text = pipeline::error_line(&e);
    match &e {
        LoaderError::Manifest(pipeline::format::manifest::ManifestError::Missing(_)) => {
            PyFileNotFoundError::new_err(text)
        }
        LoaderError::Shard(_) => DamagedShardError::new_err(text),
        LoaderError::Config(_) | LoaderError::Sampler(_) => PyValueError::new_err(text),
        _ => PyRuntimeError::new_err(text),
    }
}

fn parse<T>(what: &str, value: &str, choices: &[(&str, T)]) -> PyResult<T>
where
    T: Copy,
{
    choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            PyValueError::new_err(format!(
                "{what} {value:?}: expected one of {}",
                names.join(", ")
            ))
        })
}

/// The split, crop mode and output type named by `Loader`'s string
/// arguments.
fn parse_choices(split: &str, mode: &str, output: &str) -> PyResult<(Split, Mode, Output)> {
    let split = parse(
        "split",
        split,
        &[("train", Split::Train), ("val", Split::Val)],
    )?;
    let mode = parse(
        "mode",
        mode,
        &[
            ("train", Mode::Train),
            ("center", Mode::Center),
            ("tencrop", Mode::Tencrop),
        ],
    )?;
    let output = parse(
        "output",
        output,
        &[("u8", Output::U8), ("f32", Output::F32)],
    )?;
    Ok((split, mode, output))
}

/// Opens one split of the shard folder `shards`; a missing folder is
/// FileNotFoundError, with the command that makes one.
fn open_dataset(shards: &str, split: Split) -> PyResult<Dataset> {
    let dir = Path::new(shards);
    if !dir.is_dir() {
        return Err(PyFileNotFoundError::new_err(format!(
            "{shards}: no such folder (make one with `pipeline shards`)"
        )));
    }
    Dataset::open_with(dir, split, ReadMode::Auto).map_err(to_py)
}

/// A batch for Python: pixels, then labels (int64), views and records as
/// packed little-endian bytes that `numpy.frombuffer` reads with the
/// dtypes in `alexnet_pipeline` (`VIEW_DTYPE`, `RECORD_DTYPE`): a few
/// objects a batch instead of several per image.
type NextBatch = (
    BatchBuffer,
    Py<PyByteArray>,
    Py<PyByteArray>,
    Py<PyByteArray>,
);

/// Bytes a view takes: x u16, y u16, mirrored u8, 3 padding, lighting 3 x f32.
const VIEW_BYTES: usize = 20;

fn packed_labels(labels: &[u32]) -> Vec<u8> {
    labels
        .iter()
        .flat_map(|&l| i64::from(l).to_le_bytes())
        .collect()
}

fn packed_views(views: &[View]) -> Vec<u8> {
    let mut out = Vec::with_capacity(views.len() * VIEW_BYTES);
    for v in views {
        out.extend_from_slice(&v.x.to_le_bytes());
        out.extend_from_slice(&v.y.to_le_bytes());
        out.extend_from_slice(&[u8::from(v.flip), 0, 0, 0]);
        for c in v.light {
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
    out
}

fn packed_records(records: &[RecordId]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|r| {
            let mut both = [0u8; 8];
            both[..4].copy_from_slice(&r.shard.to_le_bytes());
            both[4..].copy_from_slice(&r.index.to_le_bytes());
            both
        })
        .collect()
}

/// Where iteration stands: the epoch, and the running loader once started.
/// A loader that finished its epoch is kept: its workers are already
/// making the next epoch's first batches, which `set_epoch(epoch + 1)`
/// takes over instead of starting anew.
struct State {
    epoch: u64,
    /// Batch of `epoch` to start from (`load_state_dict`).
    start: usize,
    running: Option<RustLoader>,
}

impl State {
    /// Whether the running loader stands where the next iteration starts.
    fn loader_is_ready(&self) -> bool {
        self.running
            .as_ref()
            .is_some_and(|l| l.epoch() == self.epoch && RustLoader::position(l) == self.start)
    }
}

#[pyclass(frozen, module = "alexnet_pipeline._native")]
struct Loader {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    /// Batch buffers, shared by every epoch's loader: made resident once,
    /// not at each epoch's start.
    pool: BufferPool,
    /// Batches this rank gets in each epoch (fixed by the configuration).
    batches_per_epoch: usize,
    state: Mutex<State>,
}

impl Loader {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic cannot happen while the lock is held (no user code runs
        // under it), so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (shards, split, batch_size, mode, output, threads, prefetch, seed,
                        rank, world, drop_last, skip_damaged))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        shards: &str,
        split: &str,
        batch_size: usize,
        mode: &str,
        output: &str,
        threads: usize,
        prefetch: usize,
        seed: u64,
        rank: usize,
        world: usize,
        drop_last: bool,
        skip_damaged: bool,
    ) -> PyResult<Self> {
        let (split, mode, output) = parse_choices(split, mode, output)?;
        if batch_size == 0 || world == 0 || rank >= world {
            return Err(PyValueError::new_err(format!(
                "batch_size must be at least 1 and rank ({rank}) below world ({world})"
            )));
        }
        let dataset = Arc::new(open_dataset(shards, split)?);
        let config = LoaderConfig {
            batch_size,
            threads,
            prefetch,
            mode,
            output,
            seed,
            order: if mode == Mode::Train {
                Order::Random
            } else {
                Order::Sequential
            },
            rank,
            world,
            drop_last,
            skip_damaged,
            // The next epoch's first batches are made while the caller
            // finishes this one (taken over by `set_epoch(epoch + 1)`).
            prefetch_next_epoch: true,
            ..LoaderConfig::default()
        };
        // Checked now (threads, prefetch, the mean for f32), not at the
        // first batch.
        let sampler = check_config(&dataset, &config).map_err(to_py)?;
        Ok(Self {
            dataset,
            pool: BufferPool::for_config(&config),
            batches_per_epoch: sampler.batches_per_epoch(),
            config,
            state: Mutex::new(State {
                epoch: 0,
                start: 0,
                running: None,
            }),
        })
    }

    /// Starts `epoch` from its first batch at the next iteration.
    fn set_epoch(&self, epoch: u64) {
        let mut state = self.state();
        if let Some(loader) = state.running.as_mut() {
            if loader.epoch() + 1 == epoch && loader.remaining() == 0 {
                loader.advance_epoch();
            }
        }
        state.epoch = epoch;
        state.start = 0;
    }

    /// Batches this rank gets in each epoch.
    fn __len__(&self) -> usize {
        self.batches_per_epoch
    }

    /// (epoch, batches of it already handed out).
    fn position(&self) -> (u64, usize) {
        let state = self.state();
        let done = state
            .running
            .as_ref()
            .map_or(state.start, RustLoader::position);
        (state.epoch, done)
    }

    /// Continue `epoch` from batch `start` at the next iteration.
    fn seek(&self, epoch: u64, start: usize) {
        let mut state = self.state();
        state.running = None;
        state.epoch = epoch;
        state.start = start;
    }

    /// Starts (or restarts) the current epoch's iteration.
    fn start(&self) -> PyResult<()> {
        let mut state = self.state();
        if !state.loader_is_ready() {
            state.running = None; // its workers stop before new ones start
            let loader = RustLoader::with_pool(
                self.dataset.clone(),
                self.config.clone(),
                self.pool.clone(),
                state.epoch,
                state.start,
            )
            .map_err(to_py)?;
            state.running = Some(loader);
        }
        // Iterating again without `set_epoch` repeats the epoch.
        state.start = 0;
        Ok(())
    }

    /// The next batch as (buffer, labels, views, records), or None at the
    /// epoch's end; records are (shard, index in shard). Waits with the GIL
    /// released; Ctrl-C stops the workers and raises KeyboardInterrupt.
    fn next_batch(&self, py: Python<'_>) -> PyResult<Option<NextBatch>> {
        loop {
            let got = py.detach(|| {
                let mut state = self.state();
                match state.running.as_mut() {
                    Some(loader) => loader.next_within(Some(SIGNAL_CHECK)),
                    None => Ok(None),
                }
            });
            match got {
                Err(TimedOut) => {
                    if let Err(interrupt) = py.check_signals() {
                        self.state().running = None; // joins the workers
                        return Err(interrupt);
                    }
                }
                Ok(None) => return Ok(None),
                Ok(Some(batch)) => {
                    let batch = batch.map_err(to_py)?;
                    for damaged in &batch.damaged {
                        eprintln!("warning: {damaged}");
                    }
                    let bytes = |b: Vec<u8>| PyByteArray::new(py, &b).unbind();
                    let labels = bytes(packed_labels(&batch.labels));
                    let views = bytes(packed_views(&batch.views));
                    let records = bytes(packed_records(&batch.records));
                    return Ok(Some((BatchBuffer::new(batch), labels, views, records)));
                }
            }
        }
    }
}

/// One batch's pixels, lent to numpy (`numpy.frombuffer`) without a copy.
#[pyclass(frozen, module = "alexnet_pipeline._native")]
struct BatchBuffer {
    batch: Batch,
    /// Values in the buffer and bytes per value: the shape and strides the
    /// buffer protocol hands out point here.
    shape: [ffi::Py_ssize_t; 1],
    strides: [ffi::Py_ssize_t; 1],
}

impl BatchBuffer {
    fn new(batch: Batch) -> Self {
        let (values, size) = match &batch.data {
            BatchData::U8(d) => (d.len(), 1),
            BatchData::F32(d) => (d.len(), 4),
        };
        Self {
            batch,
            shape: [values as ffi::Py_ssize_t],
            strides: [size],
        }
    }
}

#[pymethods]
impl BatchBuffer {
    /// "u8" or "f32".
    #[getter]
    fn dtype(&self) -> &'static str {
        match self.batch.data {
            BatchData::U8(_) => "u8",
            BatchData::F32(_) => "f32",
        }
    }

    /// Views per image (10 for ten-crop).
    #[getter]
    fn views_per_image(&self) -> usize {
        self.batch.views_per_image
    }

    /// The batch's position in its epoch.
    #[getter]
    fn index(&self) -> usize {
        self.batch.index
    }

    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyValueError::new_err("no view to fill"));
        }
        let this = slf.get();
        let (ptr, format): (*const u8, &'static std::ffi::CStr) = match &this.batch.data {
            BatchData::U8(d) => (d.as_ptr(), c"B"),
            BatchData::F32(d) => (d.as_ptr().cast(), c"f"),
        };
        let view = &mut *view;
        // The batch is this object's alone: writing into it harms no one
        // (torch warns on read-only arrays), so the buffer is writable.
        view.buf = ptr as *mut _;
        view.len = this.shape[0] * this.strides[0];
        view.itemsize = this.strides[0];
        view.readonly = 0;
        view.ndim = 1;
        view.format = if flags & ffi::PyBUF_FORMAT != 0 {
            format.as_ptr() as *mut _
        } else {
            std::ptr::null_mut()
        };
        view.shape = this.shape.as_ptr() as *mut _;
        view.strides = this.strides.as_ptr() as *mut _;
        view.suboffsets = std::ptr::null_mut();
        view.internal = std::ptr::null_mut();
        // The view keeps this object, and so the batch, alive.
        view.obj = slf.into_any().into_ptr();
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DamagedShardError", m.py().get_type::<DamagedShardError>())?;
    m.add_class::<Loader>()?;
    m.add_class::<BatchBuffer>()?;
    Ok(())
}
