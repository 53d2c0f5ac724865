//! AlexNet training on libtorch (tch): the model, its optimiser and
//! schedule, the input hand-over from the pipeline loader, checkpoints,
//! metrics, and the training and evaluation loops.

pub mod autograd;
pub mod bench;
pub mod checkpoint;
pub mod cuda;
pub mod eval;
pub mod fused_lrn;
pub mod fused_sgd;
pub mod graph;
pub mod input;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod schedule;
pub mod sgd;
pub mod train;
