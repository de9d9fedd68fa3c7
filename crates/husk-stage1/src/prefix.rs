//! `--log-prefix`: a foreground pod's output, each line led by `[APP] `, for journald.
//!
//! A process of its own reads each app's stdout and stderr pipes and writes whole lines to
//! stage1's stdout and stderr (a partial line waits for its end, or for the stream's end).

use std::io::Write;
use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use crate::common::{Context, Fail, Step};

/// One stream's pending partial line, and what a chunk of it makes.
#[derive(Debug, Default)]
pub struct Lines {
    prefix: Vec<u8>,
    pending: Vec<u8>,
}

impl Lines {
    pub fn new(app: &str) -> Lines {
        Lines { prefix: format!("[{app}] ").into_bytes(), pending: Vec::new() }
    }

    /// The complete lines `chunk` finishes, each prefixed; the rest waits. A line longer than
    /// 64 KiB is cut there, so that a stream without newlines cannot grow us without bound.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in chunk {
            self.pending.push(b);
            if b == b'\n' || self.pending.len() >= 64 << 10 {
                out.extend_from_slice(&self.prefix);
                out.append(&mut self.pending);
                if out.last() != Some(&b'\n') {
                    out.push(b'\n');
                }
            }
        }
        out
    }

    /// What is left at the end of the stream (a last line without a newline gets one).
    pub fn finish(&mut self) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        self.push(b"\n")
    }
}

/// Forks the prefixer for `apps`; returns its pid and, per app, the write ends of its stdout
/// and stderr pipes (close-on-exec; the app's child dup2s them).
pub fn spawn(apps: &[String]) -> Result<(Pid, Vec<(OwnedFd, OwnedFd)>), Fail> {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for app in apps {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(Step::Log, || "cannot create a pipe".into());
        let (or, ow) = pipe()?;
        let (er, ew) = pipe()?;
        reads.push((or, false, Lines::new(app)));
        reads.push((er, true, Lines::new(app)));
        writes.push((ow, ew));
    }
    match husk_sys::proc::fork().ctx(Step::Log, || "cannot start the output prefixer".into())? {
        husk_sys::proc::ForkResult::Child => {
            drop(writes);
            std::process::exit(copy_loop(reads));
        }
        husk_sys::proc::ForkResult::Parent { child } => Ok((child, writes)),
    }
}

fn copy_loop(streams: Vec<(OwnedFd, bool, Lines)>) -> i32 {
    let emit = |to_stderr: bool, bytes: &[u8]| {
        let _ = if to_stderr { std::io::stderr().write_all(bytes) } else { std::io::stdout().write_all(bytes) };
    };
    let (reads, mut state): (Vec<OwnedFd>, Vec<(bool, Lines)>) =
        streams.into_iter().map(|(f, e, l)| (f, (e, l))).unzip();
    let lines = std::cell::RefCell::new(&mut state);
    crate::logger::pump(
        reads,
        |i, bytes| {
            let (to_stderr, l) = &mut lines.borrow_mut()[i];
            emit(*to_stderr, &l.push(bytes));
        },
        |i| {
            let (to_stderr, l) = &mut lines.borrow_mut()[i];
            emit(*to_stderr, &l.finish());
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_get_the_prefix_partial_ones_wait() {
        let mut l = Lines::new("web");
        assert_eq!(l.push(b"hel"), b"");
        assert_eq!(l.push(b"lo\nwor"), b"[web] hello\n");
        assert_eq!(l.push(b"ld\n\n"), b"[web] world\n[web] \n");
        assert_eq!(l.push(b"tail"), b"");
        assert_eq!(l.finish(), b"[web] tail\n");
        assert_eq!(l.finish(), b"");
    }

    #[test]
    fn an_endless_line_is_cut() {
        let mut l = Lines::new("a");
        let out = l.push(&vec![b'x'; (64 << 10) + 10]);
        assert_eq!(out.len(), 4 + (64 << 10) + 1);
        assert!(out.starts_with(b"[a] x") && out.ends_with(b"x\n"));
        assert_eq!(l.finish().len(), 4 + 10 + 1);
    }
}
