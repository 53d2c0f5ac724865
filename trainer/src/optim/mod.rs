//! The optimiser: the paper's SGD update rule with its momentum buffers
//! (`sgd`) and its learning-rate schedule (`schedule`).

pub mod schedule;
pub mod sgd;
