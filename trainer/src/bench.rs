//! `trainer bench`: training steps per second on synthetic data, the
//! network and optimiser exactly as in `trainer run` (input in the same
//! channels-last layout the loader hand-over produces), no loader.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::model::{AlexNet, Init, ModelConfig, Placement, Precision};
use crate::sgd::Sgd;

pub struct BenchOptions {
    pub placement: Placement,
    pub batch_size: i64,
    pub precision: Precision,
    pub width_mult: f64,
    pub warmup: usize,
    pub steps: usize,
}

pub struct BenchResult {
    pub img_per_sec: f64,
    pub step_ms: f64,
}

pub fn bench(opts: &BenchOptions) -> BenchResult {
    let device = opts.placement.first();
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let config = ModelConfig {
        width_mult: opts.width_mult,
        ..ModelConfig::paper(1000)
    };
    let net = AlexNet::new(config, Init::Paper, 0, opts.placement, opts.precision);
    let params = net.named_parameters();
    let mut sgd = Sgd::new(&params, 0.9, 5e-4);
    let b = opts.batch_size;
    let inputs: Vec<Tensor> = (0..2)
        .map(|_| {
            Tensor::randn([b, 224, 224, 3], (Kind::Float, device)).permute([0, 3, 1, 2]) * 50.0
        })
        .collect();
    let labels = Tensor::randint(1000, [b], (Kind::Int64, device));
    let mut step = |i: usize| {
        let loss = net
            .forward(&inputs[i % 2], true)
            .cross_entropy_for_logits(&labels);
        sgd.minimize(&loss, &params, 0.01);
    };
    for i in 0..opts.warmup {
        step(i);
    }
    sync(opts.placement);
    let t = Instant::now();
    for i in 0..opts.steps {
        step(i);
    }
    sync(opts.placement);
    let secs = t.elapsed().as_secs_f64();
    BenchResult {
        img_per_sec: (b as f64 * opts.steps as f64) / secs,
        step_ms: 1e3 * secs / opts.steps as f64,
    }
}

fn sync(placement: Placement) {
    for c in 0..2 {
        if let Device::Cuda(i) = placement.device(c) {
            tch::Cuda::synchronize(i as i64);
        }
    }
}
