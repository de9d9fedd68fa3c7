//! Path resolution inside untrusted trees with `openat2(2)`, never by string joining.
//!
//! Two policies:
//! - [`open_beneath`]: every component must be a real directory beneath the root; any symlink
//!   on the way is an error (ELOOP). Used while unpacking layers: a layer that puts a symlink
//!   where a parent directory should be is refused.
//! - [`open_in_root`]: symlinks are followed but `/` and `..` are clamped to the root, as the
//!   kernel would do after a chroot. Used for mount targets inside an app's root filesystem.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

fn openat2_retry(dir: impl AsFd, path: &Path, flags: OFlags, mode: Mode, resolve: ResolveFlags) -> io::Result<OwnedFd> {
    loop {
        match rustix::fs::openat2(dir.as_fd(), path, flags | OFlags::CLOEXEC, mode, resolve) {
            // openat2 returns EAGAIN when a concurrent rename raced the lookup; retrying is the
            // documented answer.
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}

/// Opens `path` beneath `dir` refusing any symlink and any escape.
pub fn open_beneath(dir: impl AsFd, path: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    openat2_retry(
        dir,
        path,
        flags,
        mode,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens `path` as if `dir` were the root directory (symlinks clamped to it).
pub fn open_in_root(dir: impl AsFd, path: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let path = if path.as_os_str().is_empty() { Path::new(".") } else { path };
    openat2_retry(dir, path, flags, mode, ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS)
}

/// Opens a directory for use as a resolution root.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(Into::into)
}

/// An `O_PATH` fd of an existing file or directory (symlinks followed), to act on what it names
/// without opening it for reading or writing.
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(Into::into)
}

/// The `/proc/self/fd/N` path of an fd, through which a mount can target exactly the inode that
/// was resolved safely (the technique runc uses against symlink-exchange races).
pub fn proc_fd_path(fd: &impl std::os::fd::AsRawFd) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinked_parent_is_refused_beneath() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), d.path().join("link")).unwrap();
        let root = open_dir(d.path()).unwrap();
        let err =
            open_beneath(&root, Path::new("link/x"), OFlags::CREATE | OFlags::WRONLY, Mode::from(0o644)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(!outside.path().join("x").exists());
        assert!(open_beneath(&root, Path::new("../x"), OFlags::RDONLY, Mode::empty()).is_err());
    }

    #[test]
    fn in_root_clamps_absolute_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/target"), b"inside").unwrap();
        symlink("/etc/target", d.path().join("abs")).unwrap();
        symlink("../../../../etc/target", d.path().join("rel")).unwrap();
        let root = open_dir(d.path()).unwrap();
        for name in ["abs", "rel"] {
            let fd = open_in_root(&root, Path::new(name), OFlags::RDONLY, Mode::empty()).unwrap();
            let content = std::fs::read_to_string(proc_fd_path(&fd)).unwrap();
            assert_eq!(content, "inside", "{name} escaped the root");
        }
    }
}
