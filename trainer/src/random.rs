//! Normal draws from a local, seeded generator.
//!
//! libtorch's `randn` draws from one global generator that every thread
//! shares: two threads seeding and drawing at once (the unit tests run in
//! parallel) interleave their draws, and a result can then not be
//! reproduced. The model's initial weights and the tests' random inputs
//! come from here instead: the same seed gives the same tensor whatever
//! else runs. (Dropout's masks still come from the global generator,
//! reseeded before each step, since they are drawn on the device.)

use pipeline::rng::SplitMix64;
use tch::{Device, Kind, Tensor};

/// A float32 CPU tensor of `shape` with independent N(0, 1) entries, the
/// same for the same `seed`.
pub fn randn(shape: &[i64], seed: u64) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut rng = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(n as usize);
    while values.len() < n as usize {
        let (a, b) = rng.normal_pair();
        values.extend([a as f32, b as f32]);
    }
    values.truncate(n as usize);
    Tensor::from_slice(&values).view(shape)
}

/// `randn` as `kind` on `device`.
pub fn randn_on(shape: &[i64], seed: u64, kind: Kind, device: Device) -> Tensor {
    randn(shape, seed).to_kind(kind).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_standard_moments() {
        let a = randn(&[301, 7], 5);
        assert_eq!(a.size(), [301, 7]);
        assert!(a.equal(&randn(&[301, 7], 5)));
        assert!(!a.equal(&randn(&[301, 7], 6)));
        let big = randn(&[200_000], 1).to_kind(Kind::Double);
        let mean = big.mean(Kind::Double).double_value(&[]);
        let std = big.std(true).double_value(&[]);
        assert!(
            mean.abs() < 0.01 && (std - 1.0).abs() < 0.01,
            "{mean} {std}"
        );
        // A normal's fourth moment is 3: uniform draws would give 1.8.
        let kurtosis = big
            .pow_tensor_scalar(4)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!((kurtosis - 3.0).abs() < 0.1, "{kurtosis}");
    }
}
