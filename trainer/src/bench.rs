//! `trainer bench`: training steps per second on synthetic data, the
//! network and optimiser exactly as in `trainer run` (input in the same
//! channels-last layout the loader hand-over produces), no loader.
//! Under a launcher, each rank benches its steps with the gradients
//! averaged over the ranks, and says how much of a step it waited for them.

use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::dist::grads::GradComm;
use crate::dist::Dist;
use crate::kernels::lrn::FusedLrn;
use crate::kernels::Kernels;
use crate::model::{AlexNet, Init, ModelConfig, Placement, Precision};
use crate::optim::sgd::Sgd;
use crate::step::{StepError, Steps};

pub struct BenchOptions {
    pub placement: Placement,
    pub batch_size: i64,
    pub precision: Precision,
    pub width_mult: f64,
    pub warmup: usize,
    pub steps: usize,
    /// Our kernels in use (none: libtorch's operations).
    pub kernels: Kernels,
    /// Steps replayed from a captured CUDA graph.
    pub cuda_graph: bool,
    /// Data-parallel: this rank, and how gradients travel.
    pub dist: Option<Arc<Dist>>,
    pub grad_comm: GradComm,
}

/// One training step's loss and gradients with the fused LRN and with the
/// band LRN under autograd, from the same weights and batch (dropout off),
/// each against the band LRN in float32 (the reference when the step runs
/// in bfloat16; itself otherwise).
pub struct LrnComparison {
    /// Loss of the band step, the fused step and the float32 reference.
    pub loss: [f64; 3],
    /// For the band and the fused step: the parameter whose gradient is
    /// furthest from the reference's, ||g - g_ref|| / ||g_ref||, and that
    /// distance.
    pub worst: [(String, f64); 2],
}

impl LrnComparison {
    /// Whether the fused step agrees with the band step as the two must:
    /// in float32 both are the float32 reference up to rounding (loss to
    /// 1e-5 of itself, every gradient to 1e-4); in bfloat16 the fused
    /// step's gradients may be no further from the float32 reference than
    /// twice the band step's (the rounding of bfloat16 itself) plus 1e-3.
    /// The error says which gradient and by how much.
    pub fn verdict(&self, precision: Precision) -> Result<(), String> {
        let [band_loss, fused_loss, _] = self.loss;
        let [(_, band), (name, fused)] = &self.worst;
        let (allowed, loss_ok) = match precision {
            Precision::F32 | Precision::F64 => (
                1e-4,
                (band_loss - fused_loss).abs() <= 1e-5 * band_loss.abs(),
            ),
            Precision::Bf16 => (2.0 * band + 1e-3, fused_loss.is_finite()),
        };
        if !loss_ok {
            return Err(format!(
                "losses differ: band {band_loss:.6}, fused {fused_loss:.6}"
            ));
        }
        if fused.is_nan() || *fused > allowed {
            return Err(format!(
                "gradient of {name} is {fused:.2e} from the float32 reference (allowed {allowed:.1e})"
            ));
        }
        Ok(())
    }
}

/// Compares the fused and band LRN at the benchmark's sizes.
pub fn compare_lrn(opts: &BenchOptions, fused: FusedLrn) -> Result<LrnComparison, StepError> {
    let device = opts.placement.first();
    let config = ModelConfig {
        width_mult: opts.width_mult,
        dropout: 0.0,
        ..ModelConfig::paper(1000)
    };
    let mut net = AlexNet::new(config, Init::Kaiming, 1, opts.placement, opts.precision);
    let reference = net.to_placement(opts.placement, Precision::F32);
    let b = opts.batch_size;
    let x = Tensor::randn([b, 224, 224, 3], (Kind::Float, device)).permute([0, 3, 1, 2]);
    let labels = Tensor::randint(1000, [b], (Kind::Int64, device));
    let (ref_loss, want) = reference.loss_and_gradients(&x, &labels)?;
    let (band_loss, band) = net.loss_and_gradients(&x, &labels)?;
    net.set_fused_lrn(Some(fused))?;
    let (fused_loss, ours) = net.loss_and_gradients(&x, &labels)?;
    let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
    let worst = |grads: &[Tensor]| {
        let mut worst = (String::new(), 0.0);
        for (name, (a, w)) in names.iter().zip(grads.iter().zip(&want)) {
            let scale = w.norm().double_value(&[]).max(1e-30);
            let diff = (a - w).norm().double_value(&[]) / scale;
            if diff > worst.1 || diff.is_nan() {
                worst = (name.clone(), diff);
            }
        }
        worst
    };
    Ok(LrnComparison {
        loss: [band_loss, fused_loss, ref_loss].map(|l| l.double_value(&[])),
        worst: [worst(&band), worst(&ours)],
    })
}

pub struct BenchResult {
    /// This rank's images per second (`batch_size` a step).
    pub img_per_sec: f64,
    pub step_ms: f64,
    /// Of a step, the time spent waiting for gradient sums the backward did
    /// not hide (host clock; zero for one process).
    pub comm_wait_ms: f64,
}

pub fn bench(opts: &BenchOptions) -> Result<BenchResult, StepError> {
    let device = opts.placement.first();
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let config = ModelConfig {
        width_mult: opts.width_mult,
        ..ModelConfig::paper(1000)
    };
    let mut net = AlexNet::new(config, Init::Paper, 0, opts.placement, opts.precision);
    net.set_fused_lrn(opts.kernels.lrn.clone())?;
    let params = net.named_parameters();
    let mut sgd = Sgd::new(&params, 0.9, 5e-4);
    let b = opts.batch_size;
    let inputs: Vec<Tensor> = (0..2)
        .map(|_| {
            Tensor::randn([b, 224, 224, 3], (Kind::Float, device)).permute([0, 3, 1, 2]) * 50.0
        })
        .collect();
    let labels = Tensor::randint(1000, [b], (Kind::Int64, device));
    sgd.set_kernel(opts.kernels.sgd.clone());
    let mut steps = Steps::new(opts.cuda_graph, device, opts.dist.clone(), opts.grad_comm)?;
    let mut step = |steps: &mut Steps, i: usize| -> Result<(), StepError> {
        let x = &inputs[i % 2];
        let _loss = steps.run(&net, &mut sgd, &params, x, &labels, 0.01, false)?;
        Ok(())
    };
    for i in 0..opts.warmup {
        step(&mut steps, i)?;
    }
    sync(opts.placement);
    steps.take_comm_wait();
    let t = Instant::now();
    for i in 0..opts.steps {
        step(&mut steps, i)?;
    }
    sync(opts.placement);
    let secs = t.elapsed().as_secs_f64();
    Ok(BenchResult {
        img_per_sec: (b as f64 * opts.steps as f64) / secs,
        step_ms: 1e3 * secs / opts.steps as f64,
        comm_wait_ms: 1e3 * steps.take_comm_wait().as_secs_f64() / opts.steps as f64,
    })
}

fn sync(placement: Placement) {
    for c in 0..2 {
        if let Device::Cuda(i) = placement.device(c) {
            tch::Cuda::synchronize(i as i64);
        }
    }
}
