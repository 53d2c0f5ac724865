//! AlexNet as Krizhevsky, Sutskever and Hinton (2012) describe it: the whole
//! network in this one file.
//!
//! Two columns ("GPU A" and "GPU B" in the paper's figure 2), each holding
//! half of every layer's kernels:
//!
//! | layer | kernels (both columns) | input |
//! |---|---|---|
//! | conv1 | 96 x 11x11x3, stride 4, then ReLU, LRN, max-pool 3/2 | the image |
//! | conv2 | 256 x 5x5x48, then ReLU, LRN, max-pool 3/2 | own column |
//! | conv3 | 384 x 3x3x256, ReLU | both columns |
//! | conv4 | 384 x 3x3x192, ReLU | own column |
//! | conv5 | 256 x 3x3x192, ReLU, max-pool 3/2 | own column |
//! | fc6 | 4096, ReLU (dropout 0.5 on its input) | both columns |
//! | fc7 | 4096, ReLU (dropout 0.5 on its input) | both columns |
//! | fc8 | 1000, softmax (in the loss) | both columns |
//!
//! The paper's 224x224 input does not divide evenly under an 11x11 stride-4
//! kernel; a padding of 2 gives the paper's 55x55 maps (as torchvision does).
//!
//! Parameters are kept per column, named `a.conv1.weight`, `b.fc6.bias`...
//! On one device the net runs as its grouped equivalent (conv2, conv4 and
//! conv5 with groups=2, one kernel for both columns); on two devices each
//! column's layers run on its own device and only conv3, fc6, fc7 and fc8
//! read across (`Placement::Split`). Both forms compute the same function
//! (tested), and checkpoints are the same for both.
//!
//! LRN (paper section 3.3) is defined in `crate::lrn`; on one CUDA device,
//! training steps compute the same ReLU + LRN with fused kernels and a
//! hand-written backward (`crate::kernels::lrn`, `loss_and_gradients`).

use tch::{Device, Kind, Tensor};

use crate::kernels::lrn::{FusedLrn, FusedLrnError};
use crate::lrn::{local_response_norm, lrn_band, Lrn, LrnParams};
use crate::named_tensors::{copy_by_name, NamedTensorError};

/// How the weights start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The paper: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6
    /// and fc7, 0 elsewhere.
    Paper,
    /// He et al. (2015): weights N(0, 2/fan_in) (1/fan_in for fc8), biases 0.
    /// A deviation for short runs; pair it with inputs scaled to unit
    /// variance (the trainer does).
    Kaiming,
}

/// Arithmetic of the forward and backward passes. Weights stay float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// Convolutions, matrix products and LRN in bfloat16; loss in float32.
    Bf16,
    /// Everything in float64: slow, for comparing with a reference
    /// implementation, where float32 rounding can tip a near-tie in a max
    /// pool or a ReLU one way here and the other way there.
    F64,
}

impl Precision {
    fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
            Self::F64 => Kind::Double,
        }
    }
}

/// Where the two columns run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Both columns on one device, as the grouped network.
    One(Device),
    /// Column A on the first device, column B on the second (paper, section 3.2).
    Split(Device, Device),
}

impl Placement {
    /// The device of column `c` (0 = A, 1 = B).
    pub fn device(self, c: usize) -> Device {
        match (self, c) {
            (Self::One(d), _) | (Self::Split(d, _), 0) => d,
            (Self::Split(_, d), _) => d,
        }
    }

    /// Where inputs go and logits come out.
    pub fn first(self) -> Device {
        self.device(0)
    }

    /// The one device of both columns (None when they are split).
    pub fn single(self) -> Option<Device> {
        match self {
            Self::One(d) => Some(d),
            Self::Split(..) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub classes: i64,
    /// Scales every layer's width (1.0 = the paper); widths stay even so
    /// that each column gets half.
    pub width_mult: f64,
    /// Side of the square input (224 in the paper).
    pub input_side: i64,
    /// Dropout probability before fc6 and fc7 (0.5 in the paper).
    pub dropout: f64,
}

impl ModelConfig {
    pub fn paper(classes: i64) -> Self {
        Self {
            classes,
            width_mult: 1.0,
            input_side: 224,
            dropout: 0.5,
        }
    }
}

/// Kernels per layer for both columns together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widths {
    pub conv: [i64; 5],
    pub fc: i64,
}

impl Widths {
    pub const PAPER: Widths = Widths {
        conv: [96, 256, 384, 384, 256],
        fc: 4096,
    };

    pub fn scaled(mult: f64) -> Self {
        let scale = |n: i64| (((n as f64 * mult) / 2.0).round() as i64).max(1) * 2;
        Self {
            conv: Self::PAPER.conv.map(scale),
            fc: scale(Self::PAPER.fc),
        }
    }
}

/// Side of the maps after pool5 for an input of side `input`.
pub fn pool5_side(input: i64) -> i64 {
    let pool = |s: i64| (s - 3) / 2 + 1;
    let conv1 = (input + 2 * 2 - 11) / 4 + 1;
    pool(pool(pool(conv1)))
}

/// One layer's parameters in one column.
pub struct Layer {
    pub weight: Tensor,
    pub bias: Tensor,
}

pub const LAYERS: [&str; 8] = [
    "conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8",
];

const COLUMNS: [&str; 2] = ["a", "b"];

/// The layers whose biases the paper starts at 1.
const BIAS_ONE: [&str; 5] = ["conv2", "conv4", "conv5", "fc6", "fc7"];

/// Indices into `AlexNet::named_parameters` (column A's weight and bias of
/// each layer, then column B's) of the layers in `layers`, both columns.
fn parameter_indices(layers: std::ops::Range<usize>) -> Vec<usize> {
    let per_column = 2 * LAYERS.len();
    (0..COLUMNS.len())
        .flat_map(|c| {
            layers.clone().flat_map(move |l| {
                let weight = c * per_column + 2 * l;
                [weight, weight + 1]
            })
        })
        .collect()
}

pub struct AlexNet {
    pub config: ModelConfig,
    pub widths: Widths,
    pub placement: Placement,
    pub precision: Precision,
    /// `columns[c][l]`: layer `LAYERS[l]` of column `c`.
    columns: [Vec<Layer>; 2],
    /// Banded summing matrices of the LRN after conv1 and conv2, per column
    /// device (one block-diagonal matrix for both columns on one device).
    lrn_bands: Vec<[Tensor; 2]>,
    lrn: Lrn,
    /// When set, training steps run ReLU + LRN through it with the
    /// backward spliced in by hand (`loss_and_gradients`).
    fused_lrn: Option<FusedLrn>,
}

/// (padding, stride, groups) of conv1..conv5 on one device.
const CONV_GEOMETRY: [(i64, i64, i64); 5] = [(2, 4, 1), (2, 1, 2), (1, 1, 1), (1, 1, 2), (1, 1, 2)];

impl AlexNet {
    /// A freshly initialised network; the same `seed` gives the same
    /// weights on any placement.
    pub fn new(
        config: ModelConfig,
        init: Init,
        seed: i64,
        placement: Placement,
        precision: Precision,
    ) -> Self {
        let widths = Widths::scaled(config.width_mult);
        let shapes = layer_shapes(&config, &widths);
        let columns = [0, 1].map(|c| {
            shapes
                .iter()
                .enumerate()
                .map(|(l, (w_shape, b_len))| {
                    let (std, bias) = init_of(init, LAYERS[l], w_shape);
                    let out = b_len[c];
                    let mut shape = w_shape.clone();
                    shape[0] = out;
                    // Each tensor its own stream of the seed: the same
                    // weights whatever else draws meanwhile.
                    let stream = (seed as u64) ^ ((c * LAYERS.len() + l + 1) as u64) << 56;
                    let weight = (crate::random::randn(&shape, stream) * std)
                        .to_device(placement.device(c))
                        .set_requires_grad(true);
                    let bias = Tensor::full([out], bias, (Kind::Float, placement.device(c)))
                        .set_requires_grad(true);
                    Layer { weight, bias }
                })
                .collect()
        });
        Self::assemble(config, widths, placement, precision, columns)
    }

    fn assemble(
        config: ModelConfig,
        widths: Widths,
        placement: Placement,
        precision: Precision,
        columns: [Vec<Layer>; 2],
    ) -> Self {
        let lrn = Lrn::PAPER;
        let lrn_bands = match placement {
            Placement::One(d) => vec![[0, 1].map(|l| lrn_band(widths.conv[l], 2, lrn, d))],
            Placement::Split(a, b) => [a, b]
                .into_iter()
                .map(|d| [0, 1].map(|l| lrn_band(widths.conv[l] / 2, 1, lrn, d)))
                .collect(),
        };
        Self {
            config,
            widths,
            placement,
            precision,
            columns,
            lrn_bands,
            lrn,
            fused_lrn: None,
        }
    }

    /// Runs the LRNs of training steps through `fused` (None: the band LRN
    /// under autograd). Only with both columns on one device.
    pub fn set_fused_lrn(&mut self, fused: Option<FusedLrn>) -> Result<(), FusedLrnError> {
        if fused.is_some() && matches!(self.placement, Placement::Split(..)) {
            return Err(FusedLrnError::two_devices());
        }
        self.fused_lrn = fused;
        Ok(())
    }

    /// The same weights on another placement or precision (copies).
    pub fn to_placement(&self, placement: Placement, precision: Precision) -> Self {
        let columns = [0, 1].map(|c| {
            self.columns[c]
                .iter()
                .map(|layer| {
                    let copy = |t: &Tensor| {
                        t.detach()
                            .to_device(placement.device(c))
                            .copy()
                            .set_requires_grad(true)
                    };
                    Layer {
                        weight: copy(&layer.weight),
                        bias: copy(&layer.bias),
                    }
                })
                .collect()
        });
        Self::assemble(self.config, self.widths, placement, precision, columns)
    }

    /// Every parameter with its name (`a.conv1.weight` ...), column A first.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (c, column) in self.columns.iter().enumerate() {
            for (l, layer) in column.iter().enumerate() {
                let name = format!("{}.{}", COLUMNS[c], LAYERS[l]);
                out.push((format!("{name}.weight"), &layer.weight));
                out.push((format!("{name}.bias"), &layer.bias));
            }
        }
        out
    }

    /// Scalar parameters in the network.
    pub fn parameter_count(&self) -> i64 {
        self.named_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }

    /// Replaces the weights by `tensors` (from a checkpoint), by name.
    pub fn load(&mut self, tensors: &[(String, Tensor)]) -> Result<(), NamedTensorError> {
        let names: Vec<String> = self
            .named_parameters()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for name in names {
            let dst = self.parameter_mut(&name);
            copy_by_name([(name, dst)], tensors)?;
        }
        Ok(())
    }

    fn parameter_mut(&mut self, name: &str) -> &mut Tensor {
        let mut parts = name.split('.');
        let (c, l, which) = (parts.next(), parts.next(), parts.next());
        let c = COLUMNS.iter().position(|x| Some(*x) == c);
        let l = LAYERS.iter().position(|x| Some(*x) == l);
        let layer = &mut self.columns[c.expect("column")][l.expect("layer")];
        match which {
            Some("weight") => &mut layer.weight,
            _ => &mut layer.bias,
        }
    }

    /// Logits (float32, on `placement.first()`) of an NCHW float batch.
    /// `train` turns dropout on.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let x = x.to_kind(self.precision.kind());
        let logits = match self.placement {
            Placement::One(_) => self.forward_grouped(&x, train),
            Placement::Split(..) => self.forward_split(&x, train),
        };
        logits.to_kind(Kind::Float)
    }

    /// Weight and bias of layer `l` in column `c`, in the compute precision.
    fn params(&self, c: usize, l: usize) -> (Tensor, Tensor) {
        let layer = &self.columns[c][l];
        let kind = self.precision.kind();
        (layer.weight.to_kind(kind), layer.bias.to_kind(kind))
    }

    /// Both columns' kernels of layer `l` as one grouped layer.
    fn params_both(&self, l: usize) -> (Tensor, Tensor) {
        let (wa, ba) = self.params(0, l);
        let (wb, bb) = self.params(1, l);
        (Tensor::cat(&[wa, wb], 0), Tensor::cat(&[ba, bb], 0))
    }

    fn lrn_apply(&self, x: &Tensor, column_device: usize, which: usize) -> Tensor {
        let band = &self.lrn_bands[column_device][which];
        local_response_norm(x, band, self.lrn)
    }

    /// Layer `l` (a convolution) of both columns as one grouped
    /// convolution, before its ReLU.
    fn grouped_conv(&self, x: &Tensor, l: usize) -> Tensor {
        let (pad, stride, groups) = CONV_GEOMETRY[l];
        let (w, b) = self.params_both(l);
        x.conv2d(&w, Some(&b), [stride], [pad], [1], groups)
    }

    /// conv -> ReLU (-> LRN) (-> pool), the blocks of the feature stack.
    fn forward_grouped(&self, x: &Tensor, train: bool) -> Tensor {
        let h = pool(&self.lrn_apply(&self.grouped_conv(x, 0).relu(), 0, 0));
        let h = pool(&self.lrn_apply(&self.grouped_conv(&h, 1).relu(), 0, 1));
        self.grouped_from_conv3(&h, train)
    }

    /// conv3 to fc8 on one device, from pool2's output.
    fn grouped_from_conv3(&self, h: &Tensor, train: bool) -> Tensor {
        let h = self.grouped_conv(h, 2).relu();
        let h = self.grouped_conv(&h, 3).relu();
        let h = pool(&self.grouped_conv(&h, 4).relu());
        let mut f = h.flatten(1, -1);
        for l in 5..8 {
            if l < 7 {
                f = f.dropout(self.config.dropout, train);
            }
            // Two products on the shared input rather than one on
            // concatenated weights: no per-step copy of the big matrices.
            let halves: Vec<Tensor> = (0..2)
                .map(|c| {
                    let (w, b) = self.params(c, l);
                    f.linear(&w, Some(&b))
                })
                .collect();
            f = Tensor::cat(&halves, 1);
            if l < 7 {
                f = f.relu();
            }
        }
        f
    }

    /// The cross-entropy loss of a training batch (dropout on) and the
    /// gradient of every parameter, in `named_parameters` order.
    pub fn loss_and_gradients(
        &self,
        x: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>), FusedLrnError> {
        self.loss_and_gradients_with(x, labels, &mut |_, _| {})
    }

    /// The same, telling `ready` which gradients exist as soon as they do
    /// (parameter indices and their gradients), while the rest of the
    /// backward is still to run: data-parallel training starts averaging
    /// those over the ranks meanwhile. With the fused LRN that is three
    /// times (conv3 to fc8, over 99% of the parameters, come first); else
    /// once, at the end.
    pub fn loss_and_gradients_with(
        &self,
        x: &Tensor,
        labels: &Tensor,
        ready: &mut dyn FnMut(&[usize], &[&Tensor]),
    ) -> Result<(Tensor, Vec<Tensor>), FusedLrnError> {
        if let Some(fused) = &self.fused_lrn {
            return self.loss_and_gradients_fused(fused, x, labels, ready);
        }
        let loss = self.forward(x, true).cross_entropy_for_logits(labels);
        let params: Vec<&Tensor> = self
            .named_parameters()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let grads = Tensor::run_backward(&[&loss], &params, false, false);
        let all: Vec<usize> = (0..grads.len()).collect();
        ready(&all, &grads.iter().collect::<Vec<_>>());
        Ok((loss.detach(), grads))
    }

    /// The same, with both ReLU + LRN blocks run by `fused` and their
    /// backward spliced between three autograd segments:
    ///
    /// ```text
    /// A: input -> conv1 = x1            LRN1: z1 = LRN(ReLU(x1))
    /// B: z1 -> pool -> conv2 = x2       LRN2: z2 = LRN(ReLU(x2))
    /// C: z2 -> pool -> conv3 ... fc8 -> loss
    /// ```
    ///
    /// Autograd takes C back to z2 (a leaf); the fused backward turns dL/dz2
    /// into dL/dx2; autograd takes B from dL/dx2 back to z1
    /// (`autograd::grad`, with an output gradient); and the same again for A.
    fn loss_and_gradients_fused(
        &self,
        fused: &FusedLrn,
        x: &Tensor,
        labels: &Tensor,
        ready: &mut dyn FnMut(&[usize], &[&Tensor]),
    ) -> Result<(Tensor, Vec<Tensor>), FusedLrnError> {
        let half = |l: usize| LrnParams::new(self.lrn, self.widths.conv[l] / 2);
        let x = x.to_kind(self.precision.kind());
        let x1 = self.grouped_conv(&x, 0);
        let z1 = fused.forward(&x1, &half(0))?.set_requires_grad(true);
        let x2 = self.grouped_conv(&pool(&z1), 1);
        let z2 = fused.forward(&x2, &half(1))?.set_requires_grad(true);
        let loss = self
            .grouped_from_conv3(&pool(&z2), true)
            .to_kind(Kind::Float)
            .cross_entropy_for_logits(labels);

        let params = self.named_parameters();
        let mut grads: Vec<Option<Tensor>> = params.iter().map(|_| None).collect();
        // Differentiates `output` (the loss when `grad` is None) back to
        // the parameters of `layers` and to `leaf`, whose gradient it returns.
        let mut segment = |output: &Tensor,
                           grad: Option<&Tensor>,
                           leaf: Option<&Tensor>,
                           layers: std::ops::Range<usize>|
         -> Result<Option<Tensor>, FusedLrnError> {
            let index = parameter_indices(layers);
            let mut inputs: Vec<&Tensor> = index.iter().map(|&i| params[i].1).collect();
            inputs.extend(leaf);
            let mut out = match grad {
                None => Tensor::run_backward(&[output], &inputs, false, false),
                Some(g) => crate::sys::autograd::grad(&[output], &[g], &inputs)?,
            };
            let leaf_grad = leaf.map(|_| out.pop().expect("one gradient per input"));
            ready(&index, &out.iter().collect::<Vec<_>>());
            for (i, g) in index.into_iter().zip(out) {
                grads[i] = Some(g);
            }
            Ok(leaf_grad)
        };
        let dz2 = segment(&loss, None, Some(&z2), 2..8)?.expect("asked for");
        let dx2 = fused.backward(&x2.detach(), &dz2, &half(1))?;
        let dz1 = segment(&x2, Some(&dx2), Some(&z1), 1..2)?.expect("asked for");
        let dx1 = fused.backward(&x1.detach(), &dz1, &half(0))?;
        segment(&x1, Some(&dx1), None, 0..1)?;
        let grads = grads
            .into_iter()
            .map(|g| g.expect("every layer is in one segment"))
            .collect();
        Ok((loss.detach(), grads))
    }

    /// Each column on its own device; conv3 and the FC layers gather both.
    fn forward_split(&self, x: &Tensor, train: bool) -> Tensor {
        let dev = |c: usize| self.placement.device(c);
        let conv = |x: &Tensor, c: usize, l: usize, pad: i64, stride: i64| {
            let (w, b) = self.params(c, l);
            x.conv2d(&w, Some(&b), [stride], [pad], [1], 1).relu()
        };
        let gather = |h: &[Tensor; 2], c: usize| {
            Tensor::cat(&[h[0].to_device(dev(c)), h[1].to_device(dev(c))], 1)
        };
        let x = [0, 1].map(|c| x.to_device(dev(c)));
        let h = [0, 1].map(|c| pool(&self.lrn_apply(&conv(&x[c], c, 0, 2, 4), c, 0)));
        let h = [0, 1].map(|c| pool(&self.lrn_apply(&conv(&h[c], c, 1, 2, 1), c, 1)));
        let h = [0, 1].map(|c| conv(&gather(&h, c), c, 2, 1, 1));
        let h = [0, 1].map(|c| conv(&h[c], c, 3, 1, 1));
        let mut f = [0, 1].map(|c| pool(&conv(&h[c], c, 4, 1, 1)).flatten(1, -1));
        for l in 5..8 {
            if l < 7 {
                f = f.map(|t| t.dropout(self.config.dropout, train));
            }
            f = [0, 1].map(|c| {
                let (w, b) = self.params(c, l);
                let y = gather(&f, c).linear(&w, Some(&b));
                if l < 7 {
                    y.relu()
                } else {
                    y
                }
            });
        }
        let [a, b] = f;
        Tensor::cat(&[a, b.to_device(dev(0))], 1)
    }
}

fn pool(x: &Tensor) -> Tensor {
    x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
}

/// `(weight shape with both columns' rows, rows per column)` of each layer.
fn layer_shapes(config: &ModelConfig, widths: &Widths) -> Vec<(Vec<i64>, [i64; 2])> {
    let [c1, c2, c3, c4, c5] = widths.conv;
    let fc = widths.fc;
    let flat = c5 * pool5_side(config.input_side).pow(2);
    let halves = |n: i64| [n - n / 2, n / 2];
    vec![
        (vec![c1, 3, 11, 11], halves(c1)),
        (vec![c2, c1 / 2, 5, 5], halves(c2)),
        (vec![c3, c2, 3, 3], halves(c3)),
        (vec![c4, c3 / 2, 3, 3], halves(c4)),
        (vec![c5, c4 / 2, 3, 3], halves(c5)),
        (vec![fc, flat], halves(fc)),
        (vec![fc, fc], halves(fc)),
        (vec![config.classes, fc], halves(config.classes)),
    ]
}

/// (weight standard deviation, bias value) of a layer.
fn init_of(init: Init, layer: &str, weight_shape: &[i64]) -> (f64, f64) {
    match init {
        Init::Paper => (0.01, if BIAS_ONE.contains(&layer) { 1.0 } else { 0.0 }),
        Init::Kaiming => {
            let fan_in: i64 = weight_shape[1..].iter().product();
            let gain = if layer == "fc8" { 1.0 } else { 2.0 };
            ((gain / fan_in as f64).sqrt(), 0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused step's gradient segments name their layers by index;
    /// these must be the layers' places in `named_parameters`.
    #[test]
    fn parameter_indices_name_both_columns_weights_and_biases() {
        let net = AlexNet::new(
            small(7),
            Init::Kaiming,
            5,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
        let picked: Vec<&str> = parameter_indices(1..3)
            .into_iter()
            .map(|i| names[i].as_str())
            .collect();
        assert_eq!(
            picked,
            [
                "a.conv2.weight",
                "a.conv2.bias",
                "a.conv3.weight",
                "a.conv3.bias",
                "b.conv2.weight",
                "b.conv2.bias",
                "b.conv3.weight",
                "b.conv3.bias",
            ]
        );
        let every: usize = [0..1, 1..2, 2..8]
            .into_iter()
            .map(|r| parameter_indices(r).len())
            .sum();
        assert_eq!(every, names.len());
    }

    fn small(classes: i64) -> ModelConfig {
        ModelConfig {
            classes,
            width_mult: 0.125,
            input_side: 99,
            dropout: 0.0,
        }
    }

    /// Parameters counted from the paper's table by hand, independently of
    /// `layer_shapes`: 60,965,224 for the paper network.
    #[test]
    fn parameter_count_matches_the_paper_arithmetic() {
        let conv = |out: i64, inp: i64, k: i64| out * inp * k * k + out;
        let fc = |out: i64, inp: i64| out * inp + out;
        let expected = conv(96, 3, 11)
            + conv(256, 48, 5)
            + conv(384, 256, 3)
            + conv(384, 192, 3)
            + conv(256, 192, 3)
            + fc(4096, 256 * 6 * 6)
            + fc(4096, 4096)
            + fc(1000, 4096);
        assert_eq!(expected, 60_965_224);
        let net = AlexNet::new(
            ModelConfig::paper(1000),
            Init::Paper,
            0,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        assert_eq!(net.parameter_count(), expected);
    }

    #[test]
    fn shapes_through_the_network() {
        assert_eq!(pool5_side(224), 6);
        assert_eq!(pool5_side(227), 6);
        let net = AlexNet::new(
            small(10),
            Init::Paper,
            0,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        let x = crate::random::randn(&[3, 3, 99, 99], 1);
        assert_eq!(net.forward(&x, false).size(), vec![3, 10]);
        // Column B of conv2 reads only its own column's 6 conv1 maps; conv3
        // reads both columns' 16 + 16.
        let params = net.named_parameters();
        let shape = |name: &str| params.iter().find(|(n, _)| n == name).unwrap().1.size();
        assert_eq!(shape("b.conv2.weight"), vec![16, 6, 5, 5]);
        assert_eq!(shape("a.conv3.weight"), vec![24, 32, 3, 3]);
        assert_eq!(shape("b.fc6.weight"), vec![256, 32 * 4]);
        assert_eq!(shape("a.fc8.weight"), vec![5, 512]);
    }

    /// The LRN against the paper's formula, written out as loops, with the
    /// window cut at the column boundary.
    #[test]
    fn lrn_matches_the_formula_within_each_column() {
        let (n, c, hw) = (2i64, 12i64, 3i64);
        let x = crate::random::randn(&[n, c, hw, hw], 2) * 30.0;
        let band = lrn_band(c, 2, Lrn::PAPER, Device::Cpu);
        let got = Vec::<f32>::try_from(local_response_norm(&x, &band, Lrn::PAPER).flatten(0, -1))
            .unwrap();
        let a = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
        let at = |b: i64, ch: i64, p: i64| a[((b * c + ch) * hw * hw + p) as usize] as f64;
        let per_column = c / 2;
        for b in 0..n {
            for ch in 0..c {
                let lo = (ch - 2).max(ch / per_column * per_column);
                let hi = (ch + 2).min(ch / per_column * per_column + per_column - 1);
                for p in 0..hw * hw {
                    let sum: f64 = (lo..=hi).map(|j| at(b, j, p).powi(2)).sum();
                    let want = at(b, ch, p) / (2.0 + 1e-4 * sum).powf(0.75);
                    let have = got[((b * c + ch) * hw * hw + p) as usize] as f64;
                    assert!(
                        (want - have).abs() <= 1e-5 * want.abs().max(1.0),
                        "b={b} ch={ch} p={p}: {have} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn paper_init_statistics_and_biases() {
        let net = AlexNet::new(
            ModelConfig::paper(1000),
            Init::Paper,
            7,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        for (name, t) in net.named_parameters() {
            let layer = name.split('.').nth(1).unwrap();
            if name.ends_with("weight") {
                let std = t.std(true).double_value(&[]);
                let mean = t.mean(Kind::Float).double_value(&[]);
                assert!((std - 0.01).abs() < 0.0015, "{name}: std {std}");
                assert!(mean.abs() < 0.001, "{name}: mean {mean}");
            } else {
                let want = if BIAS_ONE.contains(&layer) { 1.0 } else { 0.0 };
                assert_eq!(t.min().double_value(&[]), want, "{name}");
                assert_eq!(t.max().double_value(&[]), want, "{name}");
            }
        }
    }

    /// The seed alone decides the weights (they come from a local
    /// generator, not libtorch's global one, which other threads draw
    /// from), and no two tensors share their draws.
    #[test]
    fn the_seed_alone_decides_the_weights() {
        let make = |seed| {
            AlexNet::new(
                small(10),
                Init::Paper,
                seed,
                Placement::One(Device::Cpu),
                Precision::F32,
            )
        };
        let (a, b) = (make(3), make(3));
        let _ = Tensor::randn([1000], (Kind::Float, Device::Cpu)); // moves the global generator
        let (c, d) = (make(3), make(4));
        for (((name, x), (_, y)), ((_, z), (_, w))) in a
            .named_parameters()
            .iter()
            .zip(b.named_parameters().iter())
            .zip(c.named_parameters().iter().zip(d.named_parameters().iter()))
        {
            assert!(x.equal(y) && x.equal(z), "{name}: same seed, other weights");
            if name.ends_with("weight") {
                assert!(!x.equal(w), "{name}: seeds 3 and 4 give the same weights");
            }
        }
        let params = a.named_parameters();
        let firsts: Vec<f64> = params
            .iter()
            .filter(|(n, _)| n.ends_with("weight"))
            .map(|(_, t)| t.flatten(0, -1).double_value(&[0]))
            .collect();
        let mut distinct = firsts.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            firsts.len(),
            "tensors start with the same draw"
        );
    }

    #[test]
    fn kaiming_init_scales_with_fan_in() {
        let net = AlexNet::new(
            ModelConfig::paper(1000),
            Init::Kaiming,
            7,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        let params = net.named_parameters();
        let std = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .std(true)
                .double_value(&[])
        };
        let close = |a: f64, b: f64| (a - b).abs() < 0.03 * b;
        assert!(close(std("a.conv1.weight"), (2.0 / 363.0f64).sqrt()));
        assert!(close(
            std("b.conv3.weight"),
            (2.0 / (256.0 * 9.0f64)).sqrt()
        ));
        assert!(close(std("a.fc8.weight"), (1.0 / 4096.0f64).sqrt()));
    }

    /// The same weights on one device (grouped convolutions) and split over
    /// two device slots (per-column layers, cross-column gathers) give the
    /// same logits and the same gradients. In float64, so that the two
    /// ways of rounding cannot tip a near-tie in a max pool apart.
    #[test]
    fn split_columns_compute_what_the_grouped_net_computes() {
        let one = AlexNet::new(
            small(7),
            Init::Kaiming,
            3,
            Placement::One(Device::Cpu),
            Precision::F64,
        );
        let split = one.to_placement(Placement::Split(Device::Cpu, Device::Cpu), Precision::F64);
        let x = crate::random::randn(&[4, 3, 99, 99], 3);
        let weights = crate::random::randn(&[4, 7], 4);
        let mut logits = Vec::new();
        for net in [&one, &split] {
            let y = net.forward(&x, true);
            (&y * &weights).sum(Kind::Float).backward();
            logits.push(y);
        }
        let diff = (&logits[0] - &logits[1]).abs().max().double_value(&[]);
        let scale = logits[0].abs().max().double_value(&[]);
        assert!(
            scale > 0.0 && diff <= 1e-5 * scale,
            "logits differ by {diff} (scale {scale})"
        );
        for ((name, a), (_, b)) in one
            .named_parameters()
            .into_iter()
            .zip(split.named_parameters())
        {
            let (ga, gb) = (a.grad(), b.grad());
            let diff = (&ga - &gb).abs().max().double_value(&[]);
            let scale = ga.abs().max().double_value(&[]);
            assert!(scale > 0.0, "{name}: no gradient");
            assert!(
                diff <= 1e-5 * scale,
                "{name}: gradients differ by {diff} (scale {scale})"
            );
        }
    }

    /// bfloat16 arithmetic (the --amp bf16 path) tracks float32 to bf16's
    /// precision, and its gradients reach the float32 weights.
    #[test]
    fn bf16_forward_tracks_f32() {
        let net = AlexNet::new(
            small(7),
            Init::Kaiming,
            4,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        let half = net.to_placement(Placement::One(Device::Cpu), Precision::Bf16);
        let x = crate::random::randn(&[2, 3, 99, 99], 5);
        let (a, b) = (net.forward(&x, false), half.forward(&x, false));
        assert_eq!(b.kind(), Kind::Float);
        let err = (&a - &b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]);
        assert!(err < 0.05, "bf16 off by {err}");
        b.sum(Kind::Float).backward();
        let (_, w) = &half.named_parameters()[0];
        assert_eq!(w.kind(), Kind::Float);
        assert!(w.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    /// Dropout (p = 0.5 before fc6 and fc7) acts in training only: eval
    /// logits are deterministic, training logits change with the draw.
    /// (That a seed repeats its draw is left to the exact-resume test, in a
    /// process of its own: here tests running in parallel draw from the
    /// same global generator.)
    #[test]
    fn dropout_only_in_training() {
        let config = ModelConfig {
            dropout: 0.5,
            ..small(7)
        };
        let net = AlexNet::new(
            config,
            Init::Kaiming,
            4,
            Placement::One(Device::Cpu),
            Precision::F32,
        );
        let x = crate::random::randn(&[2, 3, 99, 99], 6);
        let run = |train: bool, seed: i64| {
            tch::manual_seed(seed);
            net.forward(&x, train)
        };
        assert!(run(false, 1).equal(&run(false, 2)));
        assert!(!run(true, 1).equal(&run(true, 2)));
        assert!(!run(true, 1).equal(&run(false, 1)));
    }

    /// A training step with the fused LRN (its backward spliced between
    /// three autograd segments) gives the loss and every gradient that
    /// autograd gives through the band LRN, from the same weights and
    /// batch; in NCHW and in the channels-last layout the GPU runs, and at
    /// the paper's width. Dropout is off: its draws come from libtorch's
    /// global generator, which tests running in parallel share.
    #[test]
    fn fused_lrn_step_matches_autograd() {
        for (config, batch, nhwc) in [
            (small(7), 3, false),
            (small(7), 2, true),
            (
                ModelConfig {
                    input_side: 67,
                    dropout: 0.0,
                    ..ModelConfig::paper(5)
                },
                2,
                true,
            ),
        ] {
            let mut net = AlexNet::new(
                config,
                Init::Kaiming,
                5,
                Placement::One(Device::Cpu),
                Precision::F32,
            );
            let side = config.input_side;
            let mut x = crate::random::randn(&[batch, 3, side, side], 7 + batch as u64);
            if nhwc {
                x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
            }
            let labels = Tensor::from_slice(&[1i64, 4, 6][..batch as usize]);
            let step = |net: &AlexNet| net.loss_and_gradients(&x, &labels).unwrap();
            let (loss, grads) = step(&net);
            net.set_fused_lrn(Some(FusedLrn::tensors())).unwrap();
            let (fused_loss, fused_grads) = step(&net);
            let (a, b) = (loss.double_value(&[]), fused_loss.double_value(&[]));
            assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} vs {b}");
            for ((name, _), (g, f)) in net
                .named_parameters()
                .iter()
                .zip(grads.iter().zip(&fused_grads))
            {
                let scale = g.abs().max().double_value(&[]);
                let diff = (g - f).abs().max().double_value(&[]);
                assert!(scale > 0.0, "{name}: no gradient");
                assert!(diff <= 1e-4 * scale, "{name}: {diff} off (scale {scale})");
            }
        }
        // Not on two devices: the splice is written for the grouped net.
        let mut split = AlexNet::new(
            small(7),
            Init::Kaiming,
            5,
            Placement::Split(Device::Cpu, Device::Cpu),
            Precision::F32,
        );
        assert!(split.set_fused_lrn(Some(FusedLrn::tensors())).is_err());
    }
}
