//! Top-1 / top-5 on a split: the centre crop (every epoch) or the paper's
//! ten crops (four corners and centre, and their mirrors) with the softmax
//! averaged over the ten.
//!
//! Data-parallel, each rank scores its part of the split (`EvalOptions::part`)
//! and the ranks' `EvalSums` are added up: counts add exactly, so the
//! numbers are the one process's. A limit (`EvalOptions::limit`) takes the
//! split's first images before the ranks share them, so that holds too.

use std::sync::Arc;

use pipeline::loader::augment::Mode;
use pipeline::loader::sampler::Order;
use pipeline::loader::{Dataset, Loader, LoaderConfig, LoaderError, Output};
use pipeline::progress::Progress;
use tch::{Kind, Tensor};

use crate::input::InputNorm;
use crate::model::AlexNet;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalResult {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// Mean cross-entropy of the (averaged) softmax.
    pub loss: f64,
}

pub struct EvalOptions {
    pub mode: Mode,
    /// Images per batch (ten-crop batches hold ten views per image).
    pub batch_size: usize,
    pub threads: usize,
    /// This rank's part of the split: (rank, world); (0, 1) is all of it.
    pub part: (usize, usize),
    /// Only the split's first this many images, all ranks together (None:
    /// all of them).
    pub limit: Option<usize>,
}

/// What an evaluation adds up: images, top-1 and top-5 hits, and summed
/// cross-entropy. Sums of parts are the sums of the whole.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EvalSums {
    pub images: f64,
    pub hit1: f64,
    pub hit5: f64,
    pub loss: f64,
}

impl EvalSums {
    pub fn to_array(self) -> [f64; 4] {
        [self.images, self.hit1, self.hit5, self.loss]
    }

    pub fn from_array([images, hit1, hit5, loss]: [f64; 4]) -> Self {
        Self {
            images,
            hit1,
            hit5,
            loss,
        }
    }

    /// The rates of these sums.
    pub fn result(self) -> EvalResult {
        let d = self.images.max(1.0);
        EvalResult {
            images: self.images as usize,
            top1: self.hit1 / d,
            top5: self.hit5 / d,
            loss: self.loss / d,
        }
    }
}

pub fn evaluate(
    net: &AlexNet,
    norm: &InputNorm,
    dataset: Arc<Dataset>,
    options: &EvalOptions,
    progress: &dyn Progress,
) -> Result<EvalSums, LoaderError> {
    let config = LoaderConfig {
        batch_size: options.batch_size,
        threads: options.threads.max(1),
        prefetch: 2 * options.threads.max(1),
        mode: options.mode,
        output: Output::U8,
        order: Order::Sequential,
        drop_last: false,
        lighting_std: 0.0,
        rank: options.part.0,
        world: options.part.1,
        limit: options.limit,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(dataset, config, 0, 0)?;
    progress.start(loader.records_this_epoch() as u64);
    let mut sums = EvalSums::default();
    for batch in loader {
        let batch = batch?;
        let pixels = crate::input::batch_pixels(&batch)?;
        let x = norm.apply(pixels, &batch.views);
        let labels = crate::input::batch_labels(&batch, norm.device());
        let n = labels.size()[0];
        let (h1, h5, loss) = tch::no_grad(|| {
            let probs = image_probs(&net.forward(&x, false), batch.views_per_image);
            score(&probs, &labels)
        });
        sums.images += n as f64;
        sums.hit1 += h1;
        sums.hit5 += h5;
        sums.loss += loss;
        progress.advance(n as u64);
    }
    Ok(sums)
}

/// Class probabilities per image from the logits of its `views`
/// consecutive views: each view's softmax, averaged (the paper's ten-crop
/// prediction; one view: its softmax).
pub fn image_probs(logits: &Tensor, views: usize) -> Tensor {
    let probs = logits.softmax(-1, Kind::Float);
    let classes = probs.size()[1];
    probs
        .view([-1, views as i64, classes])
        .mean_dim(1, false, Kind::Float)
}

/// (top-1 hits, top-5 hits, summed cross-entropy) of class probabilities.
pub fn score(probs: &Tensor, labels: &Tensor) -> (f64, f64, f64) {
    let k = probs.size()[1].min(5);
    let (_, top) = probs.topk(k, 1, true, true);
    let hits = top.eq_tensor(&labels.unsqueeze(1));
    let h1 = hits.narrow(1, 0, 1).sum(Kind::Float).double_value(&[]);
    let h5 = hits.sum(Kind::Float).double_value(&[]);
    let p = probs
        .gather(1, &labels.unsqueeze(1), false)
        .clamp_min(1e-12);
    let loss = -p.log().sum(Kind::Float).double_value(&[]);
    (h1, h5, loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_top1_top5_and_loss() {
        // Three images, six classes.
        let probs = Tensor::from_slice(&[
            0.5f32, 0.1, 0.1, 0.1, 0.1, 0.1, // label 0: top-1
            0.3, 0.25, 0.2, 0.12, 0.08, 0.05, // label 3: 4th
            0.3, 0.25, 0.2, 0.12, 0.08, 0.05, // label 5: 6th, outside top-5
        ])
        .view([3, 6]);
        let labels = Tensor::from_slice(&[0i64, 3, 5]);
        let (h1, h5, loss) = score(&probs, &labels);
        assert_eq!((h1, h5), (1.0, 2.0));
        let want = -(0.5f64.ln() + 0.12f64.ln() + 0.05f64.ln());
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    }

    /// Ten views of two images, three classes, with logits the logs of
    /// known probabilities, worked by hand:
    /// - image A (label 1): view 0 says [.05 .05 .9], views 1-9 [.3 .4 .3];
    ///   the mean is [.275 .365 .36]: class 1, a hit. View 0 alone would
    ///   say class 2, and so would averaging the logits (the geometric
    ///   mean: class 2 by 0.03).
    /// - image B (label 0): views 0-4 say [.2 .5 .3], views 5-9 [.6 .1 .3];
    ///   the mean is [.4 .3 .3]: class 0, a hit; view 0 alone says class 1.
    #[test]
    fn ten_crop_averages_the_views_softmax() {
        let a0 = [0.05f32, 0.05, 0.9];
        let a = [0.3f32, 0.4, 0.3];
        let (b0, b1) = ([0.2f32, 0.5, 0.3], [0.6f32, 0.1, 0.3]);
        let mut probs: Vec<f32> = a0.to_vec();
        (0..9).for_each(|_| probs.extend(a));
        (0..5).for_each(|_| probs.extend(b0));
        (0..5).for_each(|_| probs.extend(b1));
        // Logits: log-probabilities plus a per-view constant, which the
        // softmax must remove.
        let logits: Vec<f32> = probs
            .iter()
            .enumerate()
            .map(|(i, p)| p.ln() + (i / 3) as f32)
            .collect();
        let logits = Tensor::from_slice(&logits).view([20, 3]);
        let got = image_probs(&logits, 10);
        let want = Tensor::from_slice(&[0.275f32, 0.365, 0.36, 0.4, 0.3, 0.3]).view([2, 3]);
        assert!(got.allclose(&want, 1e-6, 1e-6, false), "{got}");
        let labels = Tensor::from_slice(&[1i64, 0]);
        let (h1, h5, loss) = score(&got, &labels);
        assert_eq!((h1, h5), (2.0, 2.0));
        let want_loss = -(0.365f64.ln() + 0.4f64.ln());
        assert!((loss - want_loss).abs() < 1e-5, "{loss} vs {want_loss}");
        // One view per image: view 0 of each alone misses both.
        let firsts = logits.view([2, 10, 3]).select(1, 0);
        let (h1, _, _) = score(&image_probs(&firsts, 1), &labels);
        assert_eq!(h1, 0.0);
    }
}
