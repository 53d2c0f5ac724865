//! The uint8 hand-over, normalised on the device.
//!
//! The loader sends each view's crop as uint8 HWC (mirror applied) with its
//! View (window position, mirror flag, lighting offset): 4x fewer bytes than
//! float32. Here, on the training device, each pixel becomes
//! `((pixel - mean) + light) * scale`, with the mean image cropped and
//! mirrored like the view: the loader's float32 output (`normalise::to_f32_chw`),
//! bit for bit (tested), times an optional per-channel scale.
//!
//! The mean crops of a whole batch are one gather: row indices `y + i` and
//! column indices `x + j` (or `x + crop - 1 - j` when mirrored) index the
//! mean image held on the device.

use pipeline::loader::augment::View;
use pipeline::loader::{Batch, BatchData, LoaderError};
use tch::{Device, Kind, Tensor};

pub struct InputNorm {
    /// side x side x 3, float32, on `device`.
    mean: Tensor,
    crop: i64,
    /// Per-channel multiplier applied last (None: 1).
    scale: Option<Tensor>,
    device: Device,
}

impl InputNorm {
    /// `mean`: the stored-size mean image (HWC); `scale`: per-channel
    /// factors (for unit-variance inputs), or None for the paper's raw units.
    pub fn new(
        mean: &[f32],
        side: usize,
        crop: usize,
        scale: Option<[f32; 3]>,
        device: Device,
    ) -> Self {
        let side = side as i64;
        Self {
            mean: Tensor::from_slice(mean)
                .view([side, side, 3])
                .to_device(device),
            crop: crop as i64,
            scale: scale.map(|s| Tensor::from_slice(&s).to_device(device)),
            device,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Normalised NCHW float32 input (channels-last in memory) from the
    /// views' uint8 crops (`views.len() x crop x crop x 3`).
    pub fn apply(&self, pixels: &[u8], views: &[View]) -> Tensor {
        let (n, crop) = (views.len() as i64, self.crop);
        let images = upload_bytes(pixels, &[n, crop, crop, 3], self.device);
        let (rows, cols) = mean_indices(views, crop);
        let rows = upload(&Tensor::from_slice(&rows).view([n, crop, 1]), self.device);
        let cols = upload(&Tensor::from_slice(&cols).view([n, 1, crop]), self.device);
        let mean = self.mean.index(&[Some(rows), Some(cols)]);
        let light: Vec<f32> = views.iter().flat_map(|v| v.light).collect();
        let light = upload(&Tensor::from_slice(&light).view([n, 1, 1, 3]), self.device);
        let mut x = (images.to_kind(Kind::Float) - mean) + light;
        if let Some(scale) = &self.scale {
            x *= scale;
        }
        x.permute([0, 3, 1, 2])
    }
}

/// uint8 `bytes` of `shape` on `device`, copied once on the host (into
/// pinned memory for CUDA): a batch is 19 MB at 128 x 224 x 224 x 3, and a
/// second host copy would cost the training thread milliseconds a step.
fn upload_bytes(bytes: &[u8], shape: &[i64], device: Device) -> Tensor {
    assert_eq!(shape.iter().product::<i64>(), bytes.len() as i64);
    // SAFETY: the tensor borrows `bytes`, which outlive it: both `upload`
    // paths copy out of it (_pin_memory and to_device make new storage) before
    // this function returns, and the borrowed tensor is dropped here.
    let borrowed =
        unsafe { Tensor::from_blob(bytes.as_ptr(), shape, &[], Kind::Uint8, Device::Cpu) };
    let out = upload(&borrowed, device);
    if device == Device::Cpu {
        // to_device on the same device returns the same storage: copy it.
        return out.copy();
    }
    out
}

/// Host tensor -> `device`. To a CUDA device the bytes go through pinned
/// memory and the copy is queued without waiting: a copy from pageable
/// memory makes the host wait until the device has drained its queue, which
/// would stall every step. libtorch's caching host allocator keeps the
/// pinned block until its copy has completed.
pub fn upload(host: &Tensor, device: Device) -> Tensor {
    if device.is_cuda() {
        // `_pin_memory` is what `pin_memory` calls; the public one warns on
        // every call that its device argument is deprecated, and tch always
        // passes one.
        host.internal_pin_memory(device)
            .to_device_(device, host.kind(), true, false)
    } else {
        host.to_device(device)
    }
}

/// A batch's labels as an int64 tensor on `device`.
pub fn batch_labels(batch: &Batch, device: Device) -> Tensor {
    let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    upload(&Tensor::from_slice(&labels), device)
}

/// The uint8 pixels of a batch (the trainer always asks for uint8).
pub fn batch_pixels(batch: &Batch) -> Result<&[u8], LoaderError> {
    match &batch.data {
        BatchData::U8(pixels) => Ok(pixels),
        BatchData::F32(_) => Err(LoaderError::Config(
            "the trainer takes the uint8 hand-over, got float32".into(),
        )),
    }
}

/// Row and column of the stored mean image behind every output pixel.
fn mean_indices(views: &[View], crop: i64) -> (Vec<i64>, Vec<i64>) {
    let mut rows = Vec::with_capacity(views.len() * crop as usize);
    let mut cols = Vec::with_capacity(views.len() * crop as usize);
    for view in views {
        let (x, y) = (view.x as i64, view.y as i64);
        rows.extend((0..crop).map(|i| y + i));
        if view.flip {
            cols.extend((0..crop).map(|j| x + crop - 1 - j));
        } else {
            cols.extend((0..crop).map(|j| x + j));
        }
    }
    (rows, cols)
}

/// Per-channel 1/std of the training pixels, from the covariance diagonal:
/// the scale that gives unit-variance inputs.
pub fn unit_variance_scale(stats: &pipeline::stats::Stats) -> [f32; 3] {
    std::array::from_fn(|c| (1.0 / stats.covariance[c][c].sqrt()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::loader::{augment, normalise};
    use pipeline::rng::SplitMix64;

    /// Device normalisation of the uint8 crops equals the loader's float32
    /// reference on the stored images, bit for bit, for random views.
    #[test]
    fn matches_the_loaders_float32_output() {
        let (side, crop, n) = (40usize, 32usize, 6usize);
        let mut rng = SplitMix64::new(5);
        let images: Vec<Vec<u8>> = (0..n)
            .map(|_| (0..side * side * 3).map(|_| rng.next_u64() as u8).collect())
            .collect();
        let mean: Vec<f32> = (0..side * side * 3)
            .map(|_| rng.uniform() as f32 * 255.0)
            .collect();
        let views: Vec<View> = (0..n)
            .map(|i| View {
                x: rng.below(9) as u16,
                y: rng.below(9) as u16,
                flip: i % 2 == 1,
                light: [rng.normal() as f32 * 20.0, -3.5, rng.normal() as f32],
            })
            .collect();
        let mut pixels = vec![0u8; n * crop * crop * 3];
        let mut want = vec![0f32; n * 3 * crop * crop];
        let planes = normalise::MeanPlanes::from_hwc(&mean, side);
        for i in 0..n {
            let px = &mut pixels[i * crop * crop * 3..][..crop * crop * 3];
            augment::crop_u8(&images[i], side, &views[i], crop, px);
            let dst = &mut want[i * 3 * crop * crop..][..3 * crop * crop];
            normalise::to_f32_chw(&images[i], &planes, &views[i], crop, dst);
        }
        let norm = InputNorm::new(&mean, side, crop, None, Device::Cpu);
        let got = norm.apply(&pixels, &views);
        assert_eq!(got.size(), vec![n as i64, 3, crop as i64, crop as i64]);
        let got = Vec::<f32>::try_from(got.contiguous().flatten(0, -1)).unwrap();
        let mismatches = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(mismatches, 0, "of {} values", want.len());

        let scaled = InputNorm::new(&mean, side, crop, Some([0.5, 2.0, 0.25]), Device::Cpu)
            .apply(&pixels, &views);
        let channel1 =
            Vec::<f32>::try_from(scaled.select(1, 1).contiguous().flatten(0, -1)).unwrap();
        assert_eq!(channel1[7], want[crop * crop + 7] * 2.0);
    }
}
