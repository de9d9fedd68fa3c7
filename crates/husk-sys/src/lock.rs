//! Advisory file locks (`flock`), the only coordination between concurrent husk commands.
//!
//! A lock is tried first; when busy the caller may be told (so the user learns who holds it)
//! and then wait, with or without a timeout. `flock` locks belong to the open file description,
//! so a lock fd inherited across `exec` (the pod lock handed to stage1) stays locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("failed to open lock {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to lock {path}")]
    Flock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {timeout:?} waiting for the lock on {path}")]
    Timeout { path: PathBuf, timeout: Duration },
}

/// A held lock on a file or directory. Dropping it unlocks (by closing the fd).
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

/// What is locked: a lock file (created when missing) or a directory, locked in place and never
/// created. The two are distinct on purpose: a directory that was just renamed away (a pod moving
/// to its next phase) must make the lock fail with ENOENT, not leave a new file at its old path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    File,
    Dir,
}

fn open(path: &Path, target: Target) -> Result<File, LockError> {
    let mut o = OpenOptions::new();
    match target {
        Target::Dir => o.read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW),
        // Group-readable: a lock file another user created (root, or a member of the husk group
        // in a shared store) is opened read-only below, which is all flock needs. Who may reach
        // the file at all is the directory's business.
        Target::File => {
            o.read(true).write(true).create(true).mode(0o640).custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        }
    };
    match o.open(path) {
        Err(e) if target == Target::File && e.kind() == std::io::ErrorKind::PermissionDenied => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| LockError::Open { path: path.to_path_buf(), source }),
        r => r.map_err(|source| LockError::Open { path: path.to_path_buf(), source }),
    }
}

fn op(kind: LockKind, nonblock: bool) -> FlockOperation {
    match (kind, nonblock) {
        (LockKind::Shared, false) => FlockOperation::LockShared,
        (LockKind::Shared, true) => FlockOperation::NonBlockingLockShared,
        (LockKind::Exclusive, false) => FlockOperation::LockExclusive,
        (LockKind::Exclusive, true) => FlockOperation::NonBlockingLockExclusive,
    }
}

impl Lock {
    /// Tries to lock a lock file without waiting; `Ok(None)` when someone else holds a
    /// conflicting lock. The file is created when missing.
    pub fn try_lock(path: &Path, kind: LockKind) -> Result<Option<Lock>, LockError> {
        Self::try_lock_at(path, kind, Target::File)
    }

    /// Tries to lock an existing directory without waiting. A missing directory is an
    /// [`LockError::Open`] with `NotFound`; nothing is ever created.
    pub fn try_lock_dir(path: &Path, kind: LockKind) -> Result<Option<Lock>, LockError> {
        Self::try_lock_at(path, kind, Target::Dir)
    }

    /// Locks an already open directory (or file) without waiting.
    pub fn try_lock_file(file: File, path: &Path, kind: LockKind) -> Result<Option<Lock>, LockError> {
        match flock(&file, op(kind, true)) {
            Ok(()) => Ok(Some(Lock { file, path: path.to_path_buf() })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(LockError::Flock { path: path.to_path_buf(), source: e.into() }),
        }
    }

    fn try_lock_at(path: &Path, kind: LockKind, target: Target) -> Result<Option<Lock>, LockError> {
        Self::try_lock_file(open(path, target)?, path, kind)
    }

    /// Locks a lock file, waiting as long as it takes. `on_busy` runs once if the lock is not
    /// free at once.
    pub fn acquire(path: &Path, kind: LockKind, on_busy: impl FnOnce()) -> Result<Lock, LockError> {
        if let Some(l) = Self::try_lock(path, kind)? {
            return Ok(l);
        }
        on_busy();
        let file = open(path, Target::File)?;
        retry_eintr(|| flock(&file, op(kind, false)))
            .map_err(|e| LockError::Flock { path: path.to_path_buf(), source: e.into() })?;
        Ok(Lock { file, path: path.to_path_buf() })
    }

    /// Locks, waiting at most `timeout` (None: forever). The wait is a blocking `flock` in a helper
    /// thread, not polling, so the lock is taken the moment it is released.
    pub fn lock_timeout(
        path: &Path,
        kind: LockKind,
        timeout: Option<Duration>,
        on_busy: impl FnOnce(),
    ) -> Result<Lock, LockError> {
        Self::lock_timeout_at(path, kind, timeout, on_busy, Target::File)
    }

    /// [`Lock::lock_timeout`] for an existing directory (a pod's lock), never creating it.
    pub fn lock_dir_timeout(
        path: &Path,
        kind: LockKind,
        timeout: Option<Duration>,
        on_busy: impl FnOnce(),
    ) -> Result<Lock, LockError> {
        Self::lock_timeout_at(path, kind, timeout, on_busy, Target::Dir)
    }

    fn lock_timeout_at(
        path: &Path,
        kind: LockKind,
        timeout: Option<Duration>,
        on_busy: impl FnOnce(),
        target: Target,
    ) -> Result<Lock, LockError> {
        if let Some(l) = Self::try_lock_at(path, kind, target)? {
            return Ok(l);
        }
        on_busy();
        let file = open(path, target)?;
        let Some(timeout) = timeout else {
            retry_eintr(|| flock(&file, op(kind, false)))
                .map_err(|e| LockError::Flock { path: path.to_path_buf(), source: e.into() })?;
            return Ok(Lock { file, path: path.to_path_buf() });
        };
        let (tx, rx) = mpsc::channel();
        let waiter = file.try_clone().map_err(|source| LockError::Open { path: path.to_path_buf(), source })?;
        std::thread::spawn(move || {
            let r = retry_eintr(|| flock(&waiter, op(kind, false)));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(())) => Ok(Lock { file, path: path.to_path_buf() }),
            Ok(Err(e)) => Err(LockError::Flock { path: path.to_path_buf(), source: e.into() }),
            Err(_) => Err(LockError::Timeout { path: path.to_path_buf(), timeout }),
        }
    }

    /// Adopts the locked fd inherited from stage0, named by environment variable `var` (the
    /// stage1 ABI's `HUSK_LOCK_FD`), through [`crate::proc::take_inherited_fd`]; `Ok(None)` when
    /// the variable is not set.
    pub fn from_inherited(var: &str, path: PathBuf) -> io::Result<Option<Lock>> {
        Ok(crate::proc::take_inherited_fd(var)?.map(|fd| Lock { file: File::from(fd), path }))
    }

    /// The raw number of the locked fd (for the stage1 ABI's `HUSK_LOCK_FD`).
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the locked inode is still the one at `path` (it may have been renamed to another
    /// phase or removed while we waited for it).
    pub fn still_at(&self, path: &Path) -> bool {
        match (self.file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Clears close-on-exec so that the lock survives `exec` into stage1.
    pub fn inherit_across_exec(&self) -> io::Result<RawFd> {
        rustix::io::fcntl_setfd(&self.file, rustix::io::FdFlags::empty())?;
        Ok(self.file.as_raw_fd())
    }

    /// Converts a held exclusive lock into a shared one without a window where it is unlocked.
    pub fn downgrade(&self) -> io::Result<()> {
        flock(&self.file, FlockOperation::LockShared).map_err(Into::into)
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

impl AsFd for Lock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn retry_eintr(mut f: impl FnMut() -> rustix::io::Result<()>) -> rustix::io::Result<()> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_shared_shares() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let a = Lock::try_lock(&p, LockKind::Exclusive).unwrap().unwrap();
        assert!(Lock::try_lock(&p, LockKind::Exclusive).unwrap().is_none());
        assert!(Lock::try_lock(&p, LockKind::Shared).unwrap().is_none());
        drop(a);
        let s1 = Lock::try_lock(&p, LockKind::Shared).unwrap().unwrap();
        let _s2 = Lock::try_lock(&p, LockKind::Shared).unwrap().unwrap();
        assert!(Lock::try_lock(&p, LockKind::Exclusive).unwrap().is_none());
        drop(s1);
    }

    #[test]
    fn timeout_names_the_resource() {
        let d = tempfile::tempdir().unwrap();
        let _held = Lock::try_lock_dir(d.path(), LockKind::Exclusive).unwrap().unwrap();
        let mut told = false;
        let err =
            Lock::lock_dir_timeout(d.path(), LockKind::Exclusive, Some(Duration::from_millis(50)), || told = true)
                .unwrap_err();
        assert!(told);
        assert!(err.to_string().contains(&d.path().display().to_string()));
    }

    #[test]
    fn waiter_gets_lock_when_released() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().to_path_buf();
        let held = Lock::try_lock_dir(&p, LockKind::Exclusive).unwrap().unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        Lock::lock_dir_timeout(&p, LockKind::Shared, Some(Duration::from_secs(10)), || {}).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn locking_a_directory_that_moved_away_creates_nothing_at_its_old_path() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("pod");
        std::fs::create_dir(&a).unwrap();
        std::fs::rename(&a, d.path().join("moved")).unwrap();
        let err = Lock::try_lock_dir(&a, LockKind::Shared).unwrap_err();
        assert!(matches!(&err, LockError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
        assert!(Lock::lock_dir_timeout(&a, LockKind::Shared, Some(Duration::from_millis(10)), || {}).is_err());
        assert!(!a.exists(), "a lock file appeared where the directory was");
    }

    #[test]
    fn still_at_detects_rename() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let l = Lock::try_lock_dir(&a, LockKind::Exclusive).unwrap().unwrap();
        assert!(l.still_at(&a));
        std::fs::rename(&a, d.path().join("b")).unwrap();
        assert!(!l.still_at(&a));
        assert!(l.still_at(&d.path().join("b")));
    }
}
