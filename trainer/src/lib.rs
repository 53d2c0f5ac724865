//! AlexNet training on libtorch (tch): the model, its optimiser and
//! schedule, the input hand-over from the pipeline loader, checkpoints,
//! metrics, and the training and evaluation loops.

pub mod input;
pub mod model;
pub mod schedule;
pub mod sgd;
