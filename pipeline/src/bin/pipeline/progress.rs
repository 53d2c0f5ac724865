//! The library's progress reports as an indicatif bar on a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use pipeline::progress::Progress;

/// A progress bar on a terminal, nothing otherwise (notes still print).
pub fn bar(len: u64, template: &str) -> Bar {
    if !std::io::stderr().is_terminal() {
        return Bar(ProgressBar::hidden());
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    Bar(bar)
}

/// The library's progress reports drawn as an indicatif bar.
pub struct Bar(pub ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn status(&self, text: String) {
        self.0.set_message(text);
    }
    fn note(&self, text: &str) {
        self.0.suspend(|| eprintln!("{text}"));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
