//! Spare network namespaces: made ahead of the pod that uses them, pinned by a bind mount of
//! their namespace file, and taken (unpinned, held by an fd) by the pod's supervisor, which
//! clones the pod init into one. Creating a network namespace is the costliest kernel work of a
//! pod's start here (about 0.45 ms inside `clone`, with its sysctl tables and loopback device).
//!
//! Up to [`SPARE_SLOTS`] fresh namespaces wait in a directory of slots, each made by the cleanup
//! of a pod that could have used one ([`make_spare`], in raw system calls: it runs in a child
//! sharing the supervisor's memory) and taken by the next such pod ([`take_spare`]). A spare is
//! never reused: it is made with loopback up and nothing else, and entered by no process before
//! the pod that takes it.
//!
//! Both sides hold `<dir>/lock` (flock) while they look at the slots: without it, a taker that
//! opened a slot could unmount the namespace a maker pinned there after another taker unpinned
//! the first one, and two pods would share a namespace.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;

/// How many spares a host keeps at most: enough for a few pods started together. Each is about
/// 0.3 MiB of kernel memory, and none outlives a reboot (`/run`).
pub const SPARE_SLOTS: usize = 4;

/// `NSFS_MAGIC`: the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The spares' directory and its file names, as C strings made before a raw child runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareDir {
    parent: CString,
    dir: CString,
    lock: CString,
    slots: Vec<CString>,
}

impl SpareDir {
    /// `None` for a path with a NUL byte, or without a parent.
    pub fn new(dir: &Path) -> Option<SpareDir> {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).ok();
        Some(SpareDir {
            parent: c(dir.parent()?)?,
            dir: c(dir)?,
            lock: c(&dir.join("lock"))?,
            slots: (0..SPARE_SLOTS).map(|i| c(&dir.join(i.to_string()))).collect::<Option<_>>()?,
        })
    }
}

fn is_nsfs(path: &CStr) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == NSFS_MAGIC)
}

/// Makes one spare if a slot is free, and says whether it did. Raw system calls only, no
/// allocation (the caller may be a child sharing its parent's memory). Leaves the calling
/// thread in the new namespace: it is the last thing such a child does. The namespace is made
/// before the lock is taken, so that a pod's supervisor never waits for that.
pub fn make_spare(d: &SpareDir) -> Result<bool, Errno> {
    if d.slots.iter().all(|s| is_nsfs(s)) {
        return Ok(false);
    }
    // SAFETY: a new network namespace for this thread only; no file table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)? };
    crate::proc::loopback_up_raw()?;
    for (dir, mode) in [(&d.parent, Mode::from_raw_mode(0o755)), (&d.dir, Mode::RWXU)] {
        match rustix::fs::mkdir(dir.as_c_str(), mode) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let lock = rustix::fs::open(d.lock.as_c_str(), OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC, Mode::RUSR)?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive)?;
    let mut failed = None;
    for slot in &d.slots {
        if is_nsfs(slot) {
            continue;
        }
        // Free: absent, or a file a taker left (it unlinks after unpinning, but may die between).
        // Anything else there (a directory, a symlink) is not ours to use: the next slot is.
        let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::open(slot.as_c_str(), flags, Mode::RUSR) {
            Ok(f) => drop(f),
            Err(e) => {
                failed = Some(e);
                continue;
            }
        }
        match rustix::mount::mount_bind(c"/proc/thread-self/ns/net", slot.as_c_str()) {
            Ok(()) => return Ok(true),
            Err(e) => {
                let _ = rustix::fs::unlink(slot.as_c_str());
                failed = Some(e);
            }
        }
    }
    // Filled meanwhile (this namespace goes with the caller), or no slot could be used.
    failed.map_or(Ok(false), Err)
}

/// Takes a spare: its namespace, unpinned, as an fd to `setns` into; `None` when there is none
/// (or the directory cannot be used: the caller makes a namespace as it would without spares).
pub fn take_spare(dir: &Path) -> Option<OwnedFd> {
    let d = SpareDir::new(dir)?;
    let lock = rustix::fs::open(d.lock.as_c_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).ok()?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive).ok()?;
    d.slots.iter().find_map(|slot| take_pinned(slot))
}

/// Takes the namespace pinned at `pin`: opens it, unmounts it there and removes the file. `None`
/// when nothing is pinned there. The caller must be the only one taking from `pin` (it holds
/// the spares' lock).
fn take_pinned(pin: &CStr) -> Option<OwnedFd> {
    let fd = rustix::fs::open(pin, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty()).ok()?;
    if !rustix::fs::fstatfs(fd.as_fd()).is_ok_and(|s| s.f_type == NSFS_MAGIC) {
        return None;
    }
    rustix::mount::unmount(pin, rustix::mount::UnmountFlags::DETACH).ok()?;
    let _ = rustix::fs::unlink(pin);
    Some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_id(fd: &OwnedFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    fn own_netns() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap()
    }

    /// Spares are made into free slots only, each a fresh namespace with loopback up, taken
    /// once each, and the directory is empty of pins after; a stale slot file is reused. Runs in
    /// a thread of its own, which `make_spare` moves to a new namespace.
    #[test]
    fn spares_fill_free_slots_and_are_taken_once() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("spares");
        let sd = SpareDir::new(&dir).unwrap();
        let host = own_netns();
        let made: Vec<bool> = std::thread::spawn(move || {
            (0..SPARE_SLOTS + 1)
                .map(|_| {
                    let r = make_spare(&sd).unwrap();
                    // Loopback is up in the namespace just made (the thread is in it now): a
                    // datagram to itself arrives.
                    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.send_to(b"up", s.local_addr().unwrap()).unwrap();
                    assert_eq!(s.recv(&mut [0u8; 8]).unwrap(), 2);
                    r
                })
                .collect()
        })
        .join()
        .unwrap();
        assert_eq!(made.iter().filter(|r| **r).count(), SPARE_SLOTS, "{made:?}");
        assert!(!made.last().unwrap(), "no free slot: nothing pinned");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..SPARE_SLOTS {
            let fd = take_spare(&dir).expect("a spare");
            let id = ns_id(&fd);
            assert_ne!(id, host);
            assert!(seen.insert(id), "a spare was taken twice");
        }
        assert!(take_spare(&dir).is_none());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("lock")]);
        // A slot file left by a taker that died before its unlink is used again.
        std::fs::write(dir.join("0"), "").unwrap();
        let sd = SpareDir::new(&dir).unwrap();
        assert!(std::thread::spawn(move || make_spare(&sd).unwrap()).join().unwrap());
        assert!(take_spare(&dir).is_some());
        // What is not a file in a slot (a directory, a symlink) is passed over for the next.
        std::fs::create_dir(dir.join("0")).unwrap();
        std::os::unix::fs::symlink("/proc/self/ns/net", dir.join("1")).unwrap();
        let sd = SpareDir::new(&dir).unwrap();
        assert!(std::thread::spawn(move || make_spare(&sd).unwrap()).join().unwrap());
        assert!(dir.join("0").is_dir() && dir.join("1").is_symlink() && is_nsfs(&c_path(&dir.join("2"))));
        let taken = take_spare(&dir).expect("the spare in slot 2");
        assert_ne!(ns_id(&taken), own_netns(), "a symlink to a namespace is never taken");
        assert!(take_spare(&dir).is_none());
        // No slot usable at all: an error, nothing pinned.
        for i in 2..SPARE_SLOTS {
            std::fs::create_dir(dir.join(i.to_string())).unwrap();
        }
        let sd = SpareDir::new(&dir).unwrap();
        assert!(std::thread::spawn(move || make_spare(&sd)).join().unwrap().is_err());
    }

    fn c_path(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    #[test]
    fn only_a_namespace_file_is_taken() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert!(take_pinned(&c_path(&plain)).is_none());
        assert!(plain.exists(), "not a pin: left alone");
        assert!(take_pinned(&c_path(&d.path().join("absent"))).is_none());
        assert!(take_spare(&d.path().join("no-such-dir")).is_none());
    }
}
