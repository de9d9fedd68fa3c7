//! Progress bars for fetches: drawn only on a terminal, never with --quiet.

use std::collections::HashMap;
use std::sync::Mutex;

use husk_image::Progress;
use husk_types::Digest;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    layers: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    /// Bars when stderr is a terminal and not `quiet`; None otherwise.
    pub fn new(quiet: bool) -> Option<Bars> {
        use std::io::IsTerminal;
        if quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "total  {bytes:>10} / {total_bytes:<10} {binary_bytes_per_sec:>12} {elapsed:>4}",
            )
            .unwrap(),
        );
        Some(Bars { multi, total, layers: Mutex::new(HashMap::new()) })
    }
}

impl Progress for Bars {
    fn layer_start(&self, digest: &Digest, size: u64) {
        let bar = self.multi.insert_before(&self.total, ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes:>10} / {total_bytes:<10} {binary_bytes_per_sec:>12}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        bar.set_prefix(digest.short().to_string());
        self.total.inc_length(size);
        self.layers.lock().unwrap().insert(digest.clone(), bar);
    }
    fn layer_bytes(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.layers.lock().unwrap().get(digest) {
            b.inc(bytes);
        }
        self.total.inc(bytes);
    }
    fn layer_done(&self, digest: &Digest, cached: bool) {
        if let Some(b) = self.layers.lock().unwrap().remove(digest) {
            if cached {
                self.total.inc(b.length().unwrap_or(0));
                b.finish_with_message("already in store");
            }
            b.finish();
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}
