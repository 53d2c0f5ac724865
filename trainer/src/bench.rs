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
/// each against the band step in float64.
///
/// The reference is float64 because neither step is exact: "float32"
/// convolutions run on TF32 tensor cores on recent GPUs (cuDNN's default),
/// and conv1's weight gradient is a sum with so much cancellation that TF32
/// rounding moves it by a few percent. Two steps that round differently
/// (another cuDNN algorithm behind another memory layout is enough) can
/// therefore be that far apart while both are right; what must hold is that
/// the fused step is no further from the exact answer than the band step.
pub struct LrnComparison {
    /// Loss of the band step, the fused step and the float64 reference.
    pub loss: [f64; 3],
    /// Per parameter, how far each step's gradient is from the reference's.
    pub distances: Vec<GradientDistance>,
}

/// One parameter's gradient in the band and the fused step, each as
/// ||g - g_ref|| / ||g_ref|| from the float64 reference.
pub struct GradientDistance {
    pub name: String,
    pub band: f64,
    pub fused: f64,
}

impl LrnComparison {
    /// Whether the fused step is as close to the float64 reference as the
    /// band step: its loss no further than twice the band step's distance
    /// plus 1e-5 of the loss, and every gradient no further than twice the
    /// band step's distance for that parameter plus a floor (1e-4 in
    /// float32, 1e-3 in bfloat16) for parameters the band step gets almost
    /// exactly. The error names the parameter and both distances.
    pub fn verdict(&self, precision: Precision) -> Result<(), String> {
        let [band_loss, fused_loss, ref_loss] = self.loss;
        let loss_allowed = 2.0 * (band_loss - ref_loss).abs() + 1e-5 * ref_loss.abs();
        let loss_off = (fused_loss - ref_loss).abs();
        if loss_off.is_nan() || loss_off > loss_allowed {
            return Err(format!(
                "losses: fused {fused_loss:.6}, band {band_loss:.6}, float64 {ref_loss:.6}"
            ));
        }
        let floor = match precision {
            Precision::F32 | Precision::F64 => 1e-4,
            Precision::Bf16 => 1e-3,
        };
        for GradientDistance { name, band, fused } in &self.distances {
            let allowed = 2.0 * band + floor;
            if fused.is_nan() || *fused > allowed {
                return Err(format!(
                    "gradient of {name} is {fused:.2e} from the float64 reference, the band \
                     step's {band:.2e} (allowed {allowed:.2e})"
                ));
            }
        }
        Ok(())
    }

    /// The parameter furthest from the reference in one step (`|d| d.band`
    /// or `|d| d.fused`), and that distance.
    pub fn worst(&self, step: fn(&GradientDistance) -> f64) -> (&str, f64) {
        self.distances
            .iter()
            .map(|d| (d.name.as_str(), step(d)))
            .fold(("", 0.0), |worst, d| {
                if d.1 > worst.1 || d.1.is_nan() {
                    d
                } else {
                    worst
                }
            })
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
    let reference = net.to_placement(opts.placement, Precision::F64);
    let b = opts.batch_size;
    let x = Tensor::randn([b, 224, 224, 3], (Kind::Float, device)).permute([0, 3, 1, 2]);
    let labels = Tensor::randint(1000, [b], (Kind::Int64, device));
    let (ref_loss, want) = reference.loss_and_gradients(&x, &labels)?;
    let (band_loss, band) = net.loss_and_gradients(&x, &labels)?;
    net.set_fused_lrn(Some(fused))?;
    let (fused_loss, ours) = net.loss_and_gradients(&x, &labels)?;
    let distance = |g: &Tensor, want: &Tensor| {
        let want = want.to_kind(Kind::Double);
        let scale = want.norm().double_value(&[]).max(1e-30);
        (g.to_kind(Kind::Double) - want).norm().double_value(&[]) / scale
    };
    let distances = net
        .named_parameters()
        .into_iter()
        .zip(band.iter().zip(&ours).zip(&want))
        .map(|((name, _), ((band, fused), want))| GradientDistance {
            name,
            band: distance(band, want),
            fused: distance(fused, want),
        })
        .collect();
    Ok(LrnComparison {
        loss: [band_loss, fused_loss, ref_loss].map(|l| l.double_value(&[])),
        distances,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(loss: [f64; 3], distances: &[(&str, f64, f64)]) -> LrnComparison {
        LrnComparison {
            loss,
            distances: distances
                .iter()
                .map(|&(name, band, fused)| GradientDistance {
                    name: name.to_string(),
                    band,
                    fused,
                })
                .collect(),
        }
    }

    #[test]
    fn fused_step_as_far_from_float64_as_the_band_step_passes() {
        // A float32 step on TF32 tensor cores: conv1's gradient a few
        // percent from float64 in both steps, the rest close.
        let c = comparison(
            [7.966285, 7.966222, 7.966250],
            &[
                ("a.conv1.weight", 3.1e-2, 3.7e-2),
                ("a.fc6.weight", 2e-4, 2.5e-4),
            ],
        );
        assert!(c.verdict(Precision::F32).is_ok());
        assert_eq!(c.worst(|d| d.band), ("a.conv1.weight", 3.1e-2));
        assert_eq!(c.worst(|d| d.fused), ("a.conv1.weight", 3.7e-2));
    }

    #[test]
    fn a_gradient_further_than_twice_the_band_step_fails_naming_it() {
        let c = comparison(
            [2.0, 2.0, 2.0],
            &[
                ("a.conv1.weight", 3e-2, 3e-2),
                ("b.conv2.bias", 1e-3, 2.2e-3),
            ],
        );
        let why = c.verdict(Precision::F32).unwrap_err();
        assert!(why.contains("b.conv2.bias"), "{why}");
        // The bfloat16 floor (1e-3) lets the same distance pass.
        assert!(c.verdict(Precision::Bf16).is_ok());
    }

    #[test]
    fn a_loss_further_than_the_band_step_or_nan_fails() {
        let far = comparison([2.0, 2.001, 2.0], &[("a.conv1.weight", 0.0, 0.0)]);
        assert!(far.verdict(Precision::F32).unwrap_err().contains("losses"));
        let nan = comparison([2.0, f64::NAN, 2.0], &[]);
        assert!(nan.verdict(Precision::Bf16).is_err());
        let nan_gradient = comparison([2.0, 2.0, 2.0], &[("a.fc8.bias", 1e-3, f64::NAN)]);
        assert!(nan_gradient.verdict(Precision::Bf16).is_err());
    }
}
