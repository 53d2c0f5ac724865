//! model.rs against an independent PyTorch definition of the paper's net
//! (tests/reference/torch_alexnet.py: nn.Conv2d with groups=2,
//! nn.LocalResponseNorm per column, nn.Linear): same weights and input, so
//! the same logits and gradients, on one device and split.
//!
//! Both sides compute in float64. In float32 the two implementations round
//! differently (a grouped convolution here, two there; LRN as a 1x1
//! convolution here, as an average pool there), and with random inputs a
//! near-tie in some max pool or ReLU then tips one way on one side and the
//! other way on the other, moving a few per cent of conv1's gradient: the
//! comparison would fail by chance, not because a layer is wrong.
//!
//! Needs PyTorch in `python` (the torch virtualenv that `make` puts first
//! on PATH); set TORCH_PYTHON to use another interpreter.

use std::path::Path;
use std::process::Command;

use tch::{Device, Kind, Tensor};
use trainer::model::{AlexNet, Init, ModelConfig, Placement, Precision};

fn reference(dir: &Path, net: &AlexNet, input: &Tensor, weights: &Tensor) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<(String, Tensor)> = net
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu)))
        .collect();
    tensors.push(("input".into(), input.shallow_clone()));
    tensors.push(("grad_weights".into(), weights.shallow_clone()));
    let (src, dst) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    Tensor::write_safetensors(&tensors, &src).unwrap();
    let python = std::env::var("TORCH_PYTHON").unwrap_or_else(|_| "python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/torch_alexnet.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--double")
        .arg(&src)
        .arg(&dst)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (PyTorch reference; run through make): {e}")
        });
    assert!(
        out.status.success(),
        "{python} {}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Tensor::read_safetensors(&dst).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).abs().max().double_value(&[]);
    diff / b.abs().max().double_value(&[]).max(1e-30)
}

#[test]
fn logits_and_gradients_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig {
        classes: 11,
        width_mult: 0.125,
        input_side: 131,
        dropout: 0.5,
    };
    // Paper init (biases of 1 included) on inputs of pixel scale, so that
    // LRN works in its non-linear range.
    let one = AlexNet::new(
        config,
        Init::Paper,
        5,
        Placement::One(Device::Cpu),
        Precision::F64,
    );
    let input = trainer::random::randn(&[3, 3, 131, 131], 11) * 60.0;
    let weights = trainer::random::randn(&[3, 11], 12);
    let want = reference(dir.path(), &one, &input, &weights);
    let find = |name: &str| &want.iter().find(|(n, _)| n == name).unwrap().1;
    let split = one.to_placement(Placement::Split(Device::Cpu, Device::Cpu), Precision::F64);
    for net in [&one, &split] {
        let logits = net.forward(&input, false);
        (&logits * &weights).sum(Kind::Float).backward();
        let err = max_rel(&logits, find("logits"));
        assert!(err < 1e-5, "{:?}: logits off by {err}", net.placement);
        for (name, p) in net.named_parameters() {
            let err = max_rel(&p.grad(), find(&format!("grad.{name}")));
            assert!(
                err < 1e-5,
                "{:?}: {name} gradient off by {err}",
                net.placement
            );
        }
    }
}
