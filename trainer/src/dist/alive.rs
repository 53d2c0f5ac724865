//! Which ranks are still there. Each rank raises its own counter in the
//! c10d store every `BEAT`; when a collective fails, the ranks whose
//! counters stand still over a few beats are the ones gone, and the error
//! can name them. (A rank that hangs with its process alive keeps beating:
//! it is found by its own timeout, not here.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::sys::dist::ProcessGroup;

/// How often a rank says it is alive.
const BEAT: Duration = Duration::from_millis(500);

fn key(rank: usize) -> String {
    format!("alive/{rank}")
}

/// This rank's beat, until dropped.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(group: Arc<ProcessGroup>, rank: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("heartbeat-{rank}"))
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if group.store_add(&key(rank), 1).is_err() {
                        return; // the store is gone; nothing left to tell
                    }
                    sleep_unless(&flag, BEAT);
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `total` in short steps, returning early once `stop` is set.
fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let mut left = total;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let now = left.min(step);
        std::thread::sleep(now);
        left -= now;
    }
}

/// Who is gone, in words: the ranks whose beats stopped, or why that
/// cannot be told.
pub fn who_is_gone(group: &ProcessGroup, world: usize) -> String {
    let read = |r: usize| group.store_add(&key(r), 0);
    let Ok(before) = (0..world).map(read).collect::<Result<Vec<_>, _>>() else {
        return "rank 0 (which hosts the ranks' store) is gone".into();
    };
    std::thread::sleep(BEAT * 5);
    let Ok(after) = (0..world).map(read).collect::<Result<Vec<_>, _>>() else {
        return "rank 0 (which hosts the ranks' store) is gone".into();
    };
    let silent: Vec<String> = (0..world)
        .filter(|&r| after[r] == before[r])
        .map(|r| r.to_string())
        .collect();
    match silent.len() {
        0 => "every rank is still alive: one may hang, or have failed with its own error".into(),
        1 => format!("rank {} stopped", silent[0]),
        _ => format!("ranks {} stopped", silent.join(", ")),
    }
}
