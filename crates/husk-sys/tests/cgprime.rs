//! The cgroup primer's children (husk_sys::cgprime), watched from outside. In a test binary of
//! its own: no other test forks while it looks for the grandchild among the host's processes.

use std::ffi::CString;
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pids of processes other than this one that hold `path` open.
fn holders(path: &Path) -> Vec<(u32, usize)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else { continue };
        let links: Vec<_> = fds.flatten().filter_map(|f| std::fs::read_link(f.path()).ok()).collect();
        if links.iter().any(|l| l == path) {
            found.push((pid, links.len()));
        }
    }
    found
}

#[test]
fn the_primers_grandchild_holds_only_its_target_writes_once_and_outlives_the_call() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cgroup.procs");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // A reader first, so that the child's open for writing does not block; then the FIFO filled,
    // so that the grandchild's write blocks and keeps it alive to be looked at.
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let mut filler = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let mut filled = 0usize;
    loop {
        match filler.write(&[b'x'; 4096]) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the FIFO: {e}"),
        }
    }
    // An fd of the caller's that the grandchild must not keep (not close-on-exec, like a pipe
    // handed to a child).
    let (_keep_r, keep_w) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&keep_w, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();

    let started = Instant::now();
    husk_sys::cgprime::prime_with(&CString::new(fifo.as_os_str().as_bytes()).unwrap()).unwrap();
    let returned = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(10);
    let (pid, fds) = loop {
        let mut h = holders(&fifo);
        if let Some(one) = h.pop() {
            assert!(h.is_empty(), "more than one other process holds the FIFO: {h:?} and {one:?}");
            break one;
        }
        assert!(Instant::now() < deadline, "no primer grandchild holds the FIFO");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(fds, 1, "the grandchild {pid} holds other fds than its target");
    assert!(returned < Duration::from_secs(5), "the call waited for the grandchild's write ({returned:?})");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Threads:") && l.ends_with("\t1")), "{status}");

    // Room in the FIFO: the grandchild writes its one byte and exits (the FIFO then reads EOF).
    drop(filler);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = [0u8; 65536];
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the grandchild never wrote and exited");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    assert_eq!(got.len(), filled + 1);
    assert_eq!(got.last(), Some(&b'0'));
    assert!(holders(&fifo).is_empty());
    // A second primer in the same process does nothing (its stacks are used once): no byte
    // follows, and the FIFO has no writer.
    husk_sys::cgprime::prime_with(&CString::new(fifo.as_os_str().as_bytes()).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(holders(&fifo).is_empty());
    assert_eq!(reader.read(&mut [0u8; 16]).unwrap(), 0);
}
