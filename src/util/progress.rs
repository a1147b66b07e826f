//! The progress bar of long loops (decoding a split, an epoch).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `n` steps labelled `msg`, with rate and ETA.
pub fn progress(n: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(msg.to_string());
    bar
}
