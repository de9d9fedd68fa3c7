//! Progress of fetches, never with --quiet: bars on a terminal; elsewhere (a CI log, a pipe)
//! one line per layer once it is done, so that a long fetch is not silent.

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

/// One line per layer when it is done: `layer 976d8709f809 16.0 MiB in 0.42 s`.
pub struct Lines {
    started: Mutex<HashMap<Digest, (u64, std::time::Instant)>>,
}

impl Progress for Lines {
    fn layer_start(&self, digest: &Digest, size: u64) {
        self.started.lock().unwrap().insert(digest.clone(), (size, std::time::Instant::now()));
    }
    fn layer_done(&self, digest: &Digest, cached: bool) {
        let Some((size, t)) = self.started.lock().unwrap().remove(digest) else { return };
        if cached {
            eprintln!("layer {} {} already in the store", digest.short(), crate::output::human_size(size));
        } else {
            eprintln!(
                "layer {} {} in {:.2} s",
                digest.short(),
                crate::output::human_size(size),
                t.elapsed().as_secs_f64()
            );
        }
    }
}

/// What to show while fetching: bars on a terminal, lines elsewhere, nothing when `quiet`.
pub fn for_fetch(quiet: bool) -> Box<dyn Progress> {
    use std::io::IsTerminal;
    if quiet {
        return Box::new(husk_image::NoProgress);
    }
    match Bars::new(false) {
        Some(b) if std::io::stderr().is_terminal() => Box::new(b),
        _ => Box::new(Lines { started: Mutex::new(HashMap::new()) }),
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}
