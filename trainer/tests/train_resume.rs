//! The training loop end to end on a tiny generated shard set: a run that is
//! stopped and resumed ends with exactly the weights, momentum and losses of
//! the run that went straight through; and its outputs are all there.

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use pipeline::ingest::make_shards::{make_shards, ShardsConfig};
use pipeline::rng::SplitMix64;
use tch::Tensor;
use trainer::checkpoint;
use trainer::kernels::KernelChoice;
use trainer::learner::{run, RunOptions};
use trainer::metric::log::{self as metrics, Line};
use trainer::model::{Init, Placement, Precision};

/// 3 classes x 8 train images and 3 x 2 val images (val/<wnid>/ form):
/// noise around a class colour, so there is something to learn.
fn make_tree(root: &Path) {
    let mut rng = SplitMix64::new(11);
    for (split, per_class) in [("train", 8), ("val", 2)] {
        for label in 0..3u32 {
            let dir = root.join(split).join(format!("n0000000{label}"));
            fs::create_dir_all(&dir).unwrap();
            for k in 0..per_class {
                let img = image::RgbImage::from_fn(64, 48, |_, _| {
                    let base = [(label * 80) as u8, 120, 200 - (label * 60) as u8];
                    image::Rgb(base.map(|b| b.saturating_add((rng.next_u64() % 40) as u8)))
                });
                img.save_with_format(dir.join(format!("{k}.png")), image::ImageFormat::Png)
                    .unwrap();
            }
        }
    }
}

fn make_shard_set(root: &Path) -> std::path::PathBuf {
    make_tree(&root.join("tree"));
    let mut config = ShardsConfig::new(root.join("tree"), root.join("shards"));
    config.shard_size = 10;
    config.jobs = 1;
    make_shards(&config, &pipeline::progress::Silent).unwrap();
    let (stats, mean) = pipeline::stats::compute(&config.out, &pipeline::progress::Silent).unwrap();
    pipeline::stats::write(&config.out, &stats, &mean).unwrap();
    config.out
}

fn options(shards: &Path, out: &Path, max_steps: u64, resume: bool) -> RunOptions {
    RunOptions {
        shards: shards.to_path_buf(),
        out: out.to_path_buf(),
        placement: Placement::One(tch::Device::Cpu),
        epochs: 5,
        batch_size: 4,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
        patience: 1,
        max_drops: 3,
        warmup_epochs: 0.0,
        init: Init::Kaiming,
        dropout: 0.5,
        width_mult: 0.0625,
        max_steps: Some(max_steps),
        precision: Precision::F32,
        // The fused LRN's spliced backward (its tensor form on the CPU);
        // the e2e tests run the band LRN, which `auto` picks on the CPU.
        kernels: KernelChoice::On,
        cuda_graph: trainer::step::GraphChoice::Auto,
        seed: 3,
        loader_threads: 2,
        resume,
        keep_checkpoints: 2,
        skip_damaged: false,
        progress: false,
        dist: None,
        grad_comm: Default::default(),
    }
}

/// Weights and momentum buffers, sorted by name.
fn tensors(ck: &checkpoint::Checkpoint) -> Vec<(String, Tensor)> {
    let mut all: Vec<(String, Tensor)> = ck
        .weights
        .iter()
        .chain(&ck.momentum)
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// 24 images / batch 4 = 6 steps an epoch; 9 steps cross an epoch end (with
/// its val evaluation and schedule update), and the stop at 4 is mid-epoch.
#[test]
fn stopped_and_resumed_equals_straight_through() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = make_shard_set(tmp.path());
    let never = AtomicBool::new(false);

    let straight = tmp.path().join("straight");
    let summary = run(&options(&shards, &straight, 9, false), &never).unwrap();
    assert_eq!(summary.steps, 9);

    let split = tmp.path().join("split");
    assert_eq!(
        run(&options(&shards, &split, 4, false), &never)
            .unwrap()
            .steps,
        4
    );
    // A second fresh run into the same folder would lose the first: refused.
    let err = run(&options(&shards, &split, 9, false), &never)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    assert_eq!(
        run(&options(&shards, &split, 9, true), &never)
            .unwrap()
            .steps,
        9
    );

    let a = checkpoint::load(&straight).unwrap();
    let b = checkpoint::load(&split).unwrap();
    assert_eq!(a.state, b.state);
    assert_eq!((a.state.step, a.state.epoch, a.state.batch), (9, 1, 3));
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(ta.len(), 64, "32 parameters and 32 momentum buffers");
    for ((name, x), (other, y)) in ta.iter().zip(tb.iter()) {
        assert_eq!(name, other);
        assert!(x.equal(y), "{name} differs after resume");
    }
    // The training moved the weights, and the losses agree step by step.
    let conv1 = &ta.iter().find(|(n, _)| n == "a.conv1.weight").unwrap().1;
    assert!(!AlexNetAt::fresh(&a).equal(conv1), "weights never moved");
    let losses = |run: &Path| -> Vec<(u64, f64)> {
        metrics::read(&run.join(metrics::FILE))
            .unwrap()
            .into_iter()
            .filter_map(|l| match l {
                Line::Step(s) => Some((s.step, s.loss)),
                _ => None,
            })
            .collect()
    };
    let (la, lb) = (losses(&straight), losses(&split));
    assert_eq!(la.len(), 9);
    assert_eq!(la, lb);
    // One epoch line for epoch 0 (full) and one for the stop at step 9.
    let epochs: Vec<_> = metrics::read(&straight.join(metrics::FILE))
        .unwrap()
        .into_iter()
        .filter_map(|l| match l {
            Line::Epoch(e) => Some((e.epoch, e.step, e.partial)),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, vec![(0, 6, false), (1, 9, true)]);
    assert!(straight.join(trainer::metric::plot::FILE).is_file());
}

/// The first parameter as a fresh model of the checkpoint's configuration
/// would have it.
struct AlexNetAt;

impl AlexNetAt {
    fn fresh(ck: &checkpoint::Checkpoint) -> Tensor {
        let net = trainer::model::AlexNet::new(
            ck.state.model,
            ck.state.init,
            pipeline::loader::sampler::mix(ck.state.seed, 0x1417) as i64,
            Placement::One(tch::Device::Cpu),
            Precision::F32,
        );
        net.named_parameters()[0].1.detach().copy()
    }
}
