//! The log writer of a detached pod: one small process that reads every app's output from a
//! pipe and writes it to `logs/<app>.log`, rotating to `.log.1`, `.log.2`, … so that what a pod
//! keeps is bounded by [`LogLimits`] (`max_size` × `max_files` per app), whatever the app
//! prints. Apps write to the pipe; the process ends when every writer has closed it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use husk_sys::proc::{fork, ForkResult};
use husk_types::pod::LogLimits;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::common::{Context, Fail, Step};

/// `logs/<app>.log` and its rotated predecessors (`logs` is the pod's logs directory).
pub fn log_path(logs: &Path, app: &str, generation: u32) -> PathBuf {
    let file = husk_types::abi::PodDir::new("").app_log(app, generation);
    logs.join(file.file_name().expect("a log file name"))
}

/// One app's log: appends, and rotates before a write would exceed `max_size`.
pub struct Rotating {
    logs: PathBuf,
    app: String,
    limits: LogLimits,
    file: File,
    size: u64,
}

impl Rotating {
    pub fn open(logs: &Path, app: &str, limits: LogLimits) -> std::io::Result<Rotating> {
        let path = log_path(logs, app, 0);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Rotating { logs: logs.to_path_buf(), app: app.to_string(), limits, file, size })
    }

    /// Writes all of `data`, splitting it at file boundaries so that no file grows past
    /// `max_size`.
    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        let max = self.limits.max_size.max(1);
        while !data.is_empty() {
            if self.size >= max {
                self.rotate()?;
            }
            let room = (max - self.size).min(data.len() as u64) as usize;
            self.file.write_all(&data[..room])?;
            self.size += room as u64;
            data = &data[room..];
        }
        Ok(())
    }

    /// `.log.{n-1}` → `.log.{n}` down to `.log` → `.log.1`; the oldest beyond `max_files` is
    /// dropped. With one file, the log starts over.
    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.limits.max_files.max(1);
        let _ = std::fs::remove_file(log_path(&self.logs, &self.app, keep - 1));
        for g in (0..keep - 1).rev() {
            let _ = std::fs::rename(log_path(&self.logs, &self.app, g), log_path(&self.logs, &self.app, g + 1));
        }
        let path = log_path(&self.logs, &self.app, 0);
        self.file = OpenOptions::new().create(true).append(true).truncate(false).open(&path)?;
        self.file.set_len(0)?;
        self.size = 0;
        Ok(())
    }
}

/// Forks the log writer for `apps`; returns its pid and, per app in order, the write end of its
/// pipe (close-on-exec: the app's child dup2s it onto stdout and stderr). The caller must close
/// its copies once every app has started, so that the writer sees the end of each stream.
pub fn spawn(pod_dir: &Path, apps: &[String], limits: LogLimits) -> Result<(Pid, Vec<OwnedFd>), Fail> {
    let logs = husk_types::abi::PodDir::new(pod_dir).logs_dir();
    std::fs::create_dir_all(&logs).ctx(Step::Log, || format!("cannot create {}", logs.display()))?;
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for _ in apps {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(Step::Log, || "cannot create a log pipe".into())?;
        reads.push(r);
        writes.push(w);
    }
    let files: Vec<Rotating> = apps
        .iter()
        .map(|a| Rotating::open(&logs, a, limits).ctx(Step::Log, || format!("cannot open the log of app {a}")))
        .collect::<Result<_, _>>()?;
    match fork().ctx(Step::Log, || "cannot start the log writer".into())? {
        ForkResult::Child => {
            drop(writes);
            std::process::exit(copy_loop(reads, files));
        }
        ForkResult::Parent { child } => Ok((child, writes)),
    }
}

fn copy_loop(reads: Vec<OwnedFd>, mut files: Vec<Rotating>) -> i32 {
    pump(
        reads,
        |app, bytes| {
            if let Err(e) = files[app].write(bytes) {
                eprintln!("husk stage1: cannot write the log of app {}: {e}", files[app].app);
            }
        },
        |_| {},
    )
}

/// Reads every pipe of `reads` until each ends, in one process: `data(i, bytes)` for what pipe
/// `i` yields, `end(i)` once when it ends. The log writer and `--log-prefix`'s prefixer.
pub fn pump(reads: Vec<OwnedFd>, mut data: impl FnMut(usize, &[u8]), mut end: impl FnMut(usize)) -> i32 {
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    let mut open: Vec<(OwnedFd, usize)> = reads.into_iter().enumerate().map(|(i, r)| (r, i)).collect();
    let mut buf = vec![0u8; 64 << 10];
    while !open.is_empty() {
        let mut fds: Vec<PollFd> = open.iter().map(|(r, _)| PollFd::new(r.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut closed = Vec::new();
        for (k, is_ready) in ready.into_iter().enumerate() {
            if !is_ready {
                continue;
            }
            let (fd, i) = &open[k];
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => closed.push(k),
                Ok(n) => data(*i, &buf[..n]),
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => closed.push(k),
            }
        }
        for k in closed.into_iter().rev() {
            end(open[k].1);
            open.remove(k);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 MB of output was 300 MB on the host: what a pod keeps is now bounded.
    #[test]
    fn a_detached_pods_log_is_bounded_and_keeps_the_newest_output() {
        let d = tempfile::tempdir().unwrap();
        let limits = LogLimits { max_size: 1000, max_files: 3 };
        let mut r = Rotating::open(d.path(), "app", limits).unwrap();
        for i in 0..100u32 {
            r.write(format!("line {i:05} {}\n", "x".repeat(40)).as_bytes()).unwrap();
        }
        let sizes: Vec<u64> =
            (0..5).map(|g| std::fs::metadata(log_path(d.path(), "app", g)).map(|m| m.len()).unwrap_or(0)).collect();
        assert!(sizes.iter().all(|s| *s <= 1000), "{sizes:?}");
        assert_eq!(sizes[3], 0, "more files than max_files: {sizes:?}");
        assert_eq!(sizes[4], 0);
        assert_eq!(sizes[1], 1000);
        let newest = std::fs::read_to_string(log_path(d.path(), "app", 0)).unwrap();
        assert!(newest.ends_with(&format!("line 00099 {}\n", "x".repeat(40))));
        let all: String =
            (0..3).rev().map(|g| std::fs::read_to_string(log_path(d.path(), "app", g)).unwrap_or_default()).collect();
        // What is kept is the contiguous newest tail of the output.
        let full: String = (0..100u32).map(|i| format!("line {i:05} {}\n", "x".repeat(40))).collect();
        assert!(full.ends_with(&all), "kept output is not the newest tail");
        assert_eq!(all.len() as u64, 2000 + sizes[0], "two full files and the current one");
        assert_eq!(sizes[0], 5200 % 1000);
    }

    #[test]
    fn one_file_starts_over() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Rotating::open(d.path(), "a", LogLimits { max_size: 10, max_files: 1 }).unwrap();
        r.write(b"0123456789abc").unwrap();
        assert_eq!(std::fs::read(log_path(d.path(), "a", 0)).unwrap(), b"abc");
        assert!(!log_path(d.path(), "a", 1).exists());
    }
}
