//! Everything a run holds, and how it starts: the shards, the state (fresh
//! or the latest checkpoint), the network, optimiser, kernels and loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pipeline::ingest::Split;
use pipeline::loader::augment::Mode;
use pipeline::loader::sampler::{mix, Order, Sampler};
use pipeline::loader::{BufferPool, Dataset, Loader, LoaderConfig, LoaderError, Output};

use super::recorder::Recorder;
use super::{RunOptions, RunSummary, TrainError};
use crate::checkpoint::{self, Checkpoint, CheckpointError, RunSettings, TrainState};
use crate::dist::Dist;
use crate::input::{unit_variance_scale, InputNorm};
use crate::kernels::Kernels;
use crate::metric::log::{self, MetricsLog};
use crate::model::{AlexNet, Init, ModelConfig};
use crate::optim::schedule::Schedule;
use crate::optim::sgd::Sgd;
use crate::step::Steps;
use tch::Tensor;

/// The side of the crops the network sees (paper: 224).
pub const CROP: usize = 224;

/// The shard set's splits; train has its mean.npy and stats.json (checked
/// in `open_data`).
pub(super) struct Data {
    pub train: Arc<Dataset>,
    pub val: Option<Arc<Dataset>>,
    pub classes: i64,
}

/// A run in progress: what `epoch` and `stop` work on.
pub(super) struct Run<'a> {
    pub opts: &'a RunOptions,
    pub data: Data,
    pub state: TrainState,
    pub net: AlexNet,
    pub sgd: Sgd,
    pub steps: Steps,
    pub norm: InputNorm,
    pub loader: Loader,
    pub rec: Recorder,
    pub summary: RunSummary,
    pub checkpoints: PathBuf,
    pub part: Part,
}

impl<'a> Run<'a> {
    /// Opens the data, restores or creates the state, and builds the rest.
    pub fn start(opts: &'a RunOptions) -> Result<Self, TrainError> {
        let data = open_data(&opts.shards)?;
        std::fs::create_dir_all(&opts.out).map_err(|source| TrainError::Io {
            path: opts.out.clone(),
            source,
        })?;
        let (state, resumed) = start_state(opts, &data)?;
        let part = Part::of(opts.dist.as_deref(), state.batch_size)?;
        let (net, sgd, kernels) = build_model(opts, &state, resumed.as_ref())?;
        if let Some(dist) = &opts.dist {
            start_equal(dist, &net, &sgd)?;
        }
        let log = match part.root {
            true => Some(open_log(&opts.out, resumed.as_ref())?),
            false => None,
        };
        let steps_per_epoch = steps_per_epoch(opts, &data, &state, &part)?;
        let total = (opts.epochs * steps_per_epoch).min(opts.max_steps.unwrap_or(u64::MAX));
        let rec = Recorder::new(
            log,
            opts.dist.clone(),
            opts.progress && part.root,
            total,
            state.step,
        );
        let graph = opts
            .cuda_graph
            .resolve(opts.placement.single(), opts.dist.is_some())?;
        let steps = Steps::new(
            graph,
            opts.placement.first(),
            opts.dist.clone(),
            opts.grad_comm,
        )?;
        let run = Self {
            opts,
            norm: input_norm(opts, &data, &state),
            loader: train_loader(opts, &data, &state, &part)?,
            data,
            summary: RunSummary {
                steps: state.step,
                last_eval: None,
                interrupted: false,
                checkpoint: None,
                curves: None,
                damaged_skipped: 0,
            },
            state,
            net,
            sgd,
            steps,
            rec,
            checkpoints: opts.out.join("checkpoints"),
            part,
        };
        let what = Plan {
            kernels: &kernels,
            graph,
            steps_per_epoch,
            total,
        };
        run.rec.announce(|| run.describe(&what));
        Ok(run)
    }

    /// The run in one line: data, network, devices, kernels, where it starts.
    fn describe(&self, plan: &Plan) -> String {
        let (opts, state) = (self.opts, &self.state);
        let ranks = match &opts.dist {
            Some(d) => format!(
                " over {} ranks ({} each, gradients averaged by {})",
                d.world(),
                self.part.batch_size,
                d.backend()
            ),
            None => String::new(),
        };
        let val = self
            .data
            .val
            .as_ref()
            .map_or("none".to_string(), |v| format!("{} images", v.len()));
        let steps = match plan.graph {
            true => "steps replayed from a CUDA graph",
            false => "eager steps",
        };
        format!(
            "{}: train {} images ({} steps of {}{ranks} an epoch), val {val}; \
             AlexNet {:.1}M parameters (width {}, {:?} init, {:?}) on {:?}; {}; {steps}; step {} of {}",
            opts.shards.display(),
            self.data.train.len(),
            plan.steps_per_epoch,
            state.batch_size,
            self.net.parameter_count() as f64 / 1e6,
            state.model.width_mult,
            state.init,
            state.precision,
            opts.placement,
            plan.kernels.describe(),
            state.step,
            plan.total,
        )
    }
}

/// What `Run::start` chose that the run does not keep, for its first line.
struct Plan<'k> {
    kernels: &'k Kernels,
    graph: bool,
    steps_per_epoch: u64,
    total: u64,
}

/// The replicas start equal: rank 0's weights and momentum, sent to all.
fn start_equal(dist: &Dist, net: &AlexNet, sgd: &Sgd) -> Result<(), TrainError> {
    let params = net.named_parameters();
    let buffers = sgd.named_buffers(&params);
    let tensors: Vec<&Tensor> = params
        .iter()
        .map(|(_, t)| *t)
        .chain(buffers.iter().map(|(_, t)| t))
        .collect();
    Ok(dist.broadcast_from_root(&tensors)?)
}

/// metrics.jsonl, cut back to the resumed checkpoint's step.
fn open_log(out: &Path, resumed: Option<&Checkpoint>) -> Result<MetricsLog, TrainError> {
    MetricsLog::open(out, resumed.map(|c| c.state.step)).map_err(|source| TrainError::Io {
        path: out.join(log::FILE),
        source,
    })
}

/// The loader's uint8 crops to the network's input: the train split's
/// mean image, and the unit-variance scale of `--init kaiming`.
fn input_norm(opts: &RunOptions, data: &Data, state: &TrainState) -> InputNorm {
    let mean = data.train.mean().expect("checked in open_data");
    InputNorm::new(
        mean,
        data.train.side(),
        CROP,
        state.input_scale,
        opts.placement.first(),
    )
}

/// This process's share of the training: all of it, or one rank's.
pub(super) struct Part {
    pub rank: usize,
    pub world: usize,
    /// Images per step on this rank: the global batch / world.
    pub batch_size: usize,
    /// Whether this process writes the run folder (rank 0).
    pub root: bool,
}

impl Part {
    fn of(dist: Option<&Dist>, global_batch: usize) -> Result<Self, TrainError> {
        let (rank, world) = dist.map_or((0, 1), |d| (d.rank(), d.world()));
        if !global_batch.is_multiple_of(world) {
            return Err(TrainError::BatchNotDivisible {
                batch_size: global_batch,
                world,
            });
        }
        Ok(Self {
            rank,
            world,
            batch_size: global_batch / world,
            root: rank == 0,
        })
    }
}

fn open_data(shards: &Path) -> Result<Data, TrainError> {
    let train = Dataset::open(shards, Split::Train)?;
    if train.mean().is_none() || train.stats().is_none() {
        return Err(TrainError::NoStats {
            shards: shards.to_path_buf(),
        });
    }
    let val = match train.manifest.split(Split::Val) {
        Some(_) => Some(Arc::new(Dataset::open(shards, Split::Val)?)),
        None => None,
    };
    let classes = train.manifest.classes.len() as i64;
    Ok(Data {
        train: Arc::new(train),
        val,
        classes,
    })
}

/// The state a run starts from: fresh, or the latest checkpoint.
fn start_state(
    opts: &RunOptions,
    data: &Data,
) -> Result<(TrainState, Option<Checkpoint>), TrainError> {
    let ckpt_dir = opts.out.join("checkpoints");
    let manifest_id = data.train.manifest.id.clone();
    if opts.resume {
        let (newest_intact, skipped) = checkpoint::resume_point(&ckpt_dir)?;
        for damaged in skipped {
            eprintln!("warning: {damaged}: resuming from an earlier checkpoint");
        }
        let ck = checkpoint::load(&newest_intact)?;
        if ck.state.manifest_id != manifest_id {
            return Err(TrainError::OtherShardSet {
                checkpoint: ck.path.clone(),
                trained_on: ck.state.manifest_id.clone(),
                shards: opts.shards.clone(),
                shard_set: manifest_id,
            });
        }
        let mut state = ck.state.clone();
        // `opts` holds the run's own settings unless some were given again
        // (the CLI fills the rest from this checkpoint): those are now the
        // run's. Checkpoints from before settings were kept get them too.
        state.settings = Some(settings_of(opts));
        return Ok((state, Some(ck)));
    }
    if checkpoint::latest(&ckpt_dir)?.is_some() {
        return Err(TrainError::RunExists(opts.out.clone()));
    }
    let stats = data.train.stats().expect("checked in open_data");
    let input_scale = match opts.init {
        Init::Paper => None,
        Init::Kaiming => Some(unit_variance_scale(stats)),
    };
    let state = TrainState {
        step: 0,
        epoch: 0,
        batch: 0,
        schedule: Schedule::new(opts.lr, opts.patience, opts.max_drops)
            .with_warmup(warmup_steps(opts, data)),
        seed: opts.seed,
        model: ModelConfig {
            width_mult: opts.width_mult,
            dropout: opts.dropout,
            ..ModelConfig::paper(data.classes)
        },
        init: opts.init,
        precision: opts.precision,
        batch_size: opts.batch_size,
        input_scale,
        manifest_id,
        settings: Some(settings_of(opts)),
    };
    Ok((state, None))
}

/// `--warmup-epochs` in steps: an epoch is N / batch steps whatever the
/// number of ranks.
fn warmup_steps(opts: &RunOptions, data: &Data) -> u64 {
    let steps_per_epoch = data.train.len() / opts.batch_size.max(1);
    (opts.warmup_epochs * steps_per_epoch as f64).round() as u64
}

/// What `--resume` reuses of this run's flags.
fn settings_of(opts: &RunOptions) -> RunSettings {
    RunSettings {
        shards: std::fs::canonicalize(&opts.shards).unwrap_or_else(|_| opts.shards.clone()),
        epochs: opts.epochs,
        momentum: opts.momentum,
        weight_decay: opts.weight_decay,
    }
}

/// The network and optimiser with the kernels `--kernels` asks for, from
/// `resumed` where given.
fn build_model(
    opts: &RunOptions,
    state: &TrainState,
    resumed: Option<&Checkpoint>,
) -> Result<(AlexNet, Sgd, Kernels), TrainError> {
    let mut net = AlexNet::new(
        state.model,
        state.init,
        mix(state.seed, 0x1417) as i64,
        opts.placement,
        state.precision,
    );
    // After the weights are drawn: the kernels' start-up checks draw from
    // the generators that `AlexNet::new` seeded.
    let (kernels, warnings) = opts.kernels.resolve(opts.placement.single())?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    net.set_fused_lrn(kernels.lrn.clone())?;
    let mut sgd = Sgd::new(&net.named_parameters(), opts.momentum, opts.weight_decay);
    sgd.set_kernel(kernels.sgd.clone());
    if let Some(ck) = resumed {
        let mismatch = |source| CheckpointError::Mismatch {
            path: ck.path.clone(),
            source,
        };
        net.load(&ck.weights).map_err(mismatch)?;
        sgd.load(&net.named_parameters(), &ck.momentum)
            .map_err(mismatch)?;
    }
    Ok((net, sgd, kernels))
}

fn steps_per_epoch(
    opts: &RunOptions,
    data: &Data,
    state: &TrainState,
    part: &Part,
) -> Result<u64, TrainError> {
    let sampler = Sampler::new(
        data.train.shard_lens(),
        state.seed,
        Order::Random,
        (part.rank, part.world),
        part.batch_size,
        true,
    )
    .map_err(LoaderError::from)?;
    match sampler.batches_per_epoch() {
        0 => Err(TrainError::TooFewImages {
            shards: opts.shards.clone(),
            images: data.train.len(),
            batch_size: state.batch_size,
        }),
        n => Ok(n as u64),
    }
}

/// The training loader (this rank's part), positioned at the state's epoch
/// and batch.
fn train_loader(
    opts: &RunOptions,
    data: &Data,
    state: &TrainState,
    part: &Part,
) -> Result<Loader, TrainError> {
    let config = LoaderConfig {
        batch_size: part.batch_size,
        rank: part.rank,
        world: part.world,
        threads: opts.loader_threads.max(1),
        prefetch: 2 * opts.loader_threads.max(1),
        mode: Mode::Train,
        output: Output::U8,
        crop: CROP,
        seed: state.seed,
        order: Order::Random,
        drop_last: true,
        skip_damaged: opts.skip_damaged,
        // The workers start the next epoch while this one's last batches
        // train and the eval runs.
        prefetch_next_epoch: true,
        ..LoaderConfig::default()
    };
    let pool = BufferPool::for_config(&config);
    Ok(Loader::with_pool(
        data.train.clone(),
        config,
        pool,
        state.epoch,
        state.batch,
    )?)
}
