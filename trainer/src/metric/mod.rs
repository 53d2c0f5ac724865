//! What a run records: `metrics.jsonl`, one line per step and per epoch
//! (`log`), and the curves PNG drawn from it (`plot`).

pub mod log;
pub mod plot;
