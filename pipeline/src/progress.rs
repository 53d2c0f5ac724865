//! How long library calls report progress. The library draws nothing: a
//! binary passes an implementation that draws a bar (`pipeline` uses
//! indicatif), a test passes `Silent`.

/// Progress of one long call: `start` once, then `advance` as items finish.
/// Called from worker threads, hence `Sync`.
pub trait Progress: Sync {
    /// The call will do `total` items.
    fn start(&self, total: u64) {
        let _ = total;
    }
    /// `n` more items are done.
    fn advance(&self, n: u64) {
        let _ = n;
    }
    /// A short status shown beside the count (e.g. problems so far).
    fn status(&self, text: String) {
        let _ = text;
    }
    /// A line for the user (e.g. a skipped file and why); shown above any
    /// bar. `Silent` prints it to stderr, so that nothing is lost.
    fn note(&self, text: &str) {
        eprintln!("{text}");
    }
    /// The call is over: clear what was drawn.
    fn finish(&self) {}
}

/// Draws nothing; notes still go to stderr.
pub struct Silent;

impl Progress for Silent {}
