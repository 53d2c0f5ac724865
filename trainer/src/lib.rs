//! AlexNet training on libtorch (tch), in layers that only look down:
//!
//! | layer | modules | what |
//! |---|---|---|
//! | loops | `learner`, `bench`, `launch` | `trainer run` (set-up, epochs, stops), `trainer bench`, and `trainer launch` (a node's ranks) |
//! | run state | `checkpoint`, `eval`, `metric` | checkpoints, top-1/top-5, metrics.jsonl and its curves |
//! | the step | `step` | forward, backward, update; eager or replayed from a CUDA graph |
//! | model | `model`, `optim`, `input` | the network, SGD and its schedule, the loader's batches as tensors |
//! | kernels, ranks | `kernels`, `dist` | our CUDA kernels (fused ReLU + LRN, one-pass SGD) and `--kernels`; data-parallel ranks and their reductions |
//! | definitions | `lrn`, `named_tensors` | the LRN as the paper defines it; tensors restored by name |
//! | plumbing | `sys` | CUDA driver, NVRTC, streams, graphs, autograd calls and c10d process groups tch lacks |
//! | randomness | `random` | normal draws from a seeded local generator (initial weights, tests' inputs) |
//!
//! `tests/layering.rs` fails when a module reaches up. The binary
//! (`src/bin/trainer/`, a module per command) is the CLI on top of all of
//! them.

pub mod bench;
pub mod checkpoint;
pub mod dist;
pub mod eval;
pub mod input;
pub mod kernels;
pub mod launch;
pub mod learner;
pub mod lrn;
pub mod metric;
pub mod model;
pub mod named_tensors;
pub mod optim;
pub mod random;
pub mod step;
pub mod sys;
