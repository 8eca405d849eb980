//! Progress on stderr for long commands, drawn only when stderr is a terminal (indicatif hides
//! itself otherwise, so scripts and CI logs stay clean).

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Shows that a new stage started.
pub fn stage(name: &str) {
    let Ok(mut bar) = BAR.lock() else { return };
    let b = bar.get_or_insert_with(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").unwrap_or(ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    });
    b.set_message(format!("running {name}"));
}

/// Clears the progress line.
pub fn done() {
    if let Ok(mut bar) = BAR.lock() {
        if let Some(b) = bar.take() {
            b.finish_and_clear();
        }
    }
}
