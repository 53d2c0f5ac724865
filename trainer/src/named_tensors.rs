//! Named tensor sets (a model's weights, an optimiser's buffers) restored
//! by name from a checkpoint, with each shape checked.

use tch::Tensor;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NamedTensorError {
    #[error("no tensor named {0}")]
    Missing(String),
    #[error("{name}: shape {saved:?} where {expected:?} is needed (another --width-mult or class count?)")]
    Shape {
        name: String,
        saved: Vec<i64>,
        expected: Vec<i64>,
    },
}

/// Copies `saved[name]` into each `(name, tensor)` of `into`, without
/// autograd history; the first missing or misshapen one is an error (and
/// the tensors before it are already overwritten).
pub fn copy_by_name<'a>(
    into: impl IntoIterator<Item = (String, &'a mut Tensor)>,
    saved: &[(String, Tensor)],
) -> Result<(), NamedTensorError> {
    for (name, dst) in into {
        let Some((_, src)) = saved.iter().find(|(n, _)| *n == name) else {
            return Err(NamedTensorError::Missing(name));
        };
        if src.size() != dst.size() {
            return Err(NamedTensorError::Shape {
                name,
                saved: src.size(),
                expected: dst.size(),
            });
        }
        tch::no_grad(|| dst.copy_(src));
    }
    Ok(())
}
