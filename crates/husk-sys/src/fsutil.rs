//! The one atomic-write helper every state file goes through.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `data` to `path` atomically: a temp file in the same directory, fsync, rename over the
/// target, fsync the directory. Readers see the old content or the new one, never a mix, and a
/// crash leaves at most a `.tmp-` file that [`is_temp_name`] recognises for cleanup.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replace(path, data, mode, true)
}

/// Like [`atomic_write`] (readers never see a partial file) but without the fsyncs: for runtime
/// state that is meaningless after a reboot (a running pod's files), where durability buys
/// nothing and each fsync costs a fraction of a millisecond on the pod's start path.
pub fn atomic_write_volatile(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_replace(path, data, mode, false)
}

/// A file written under a temp name beside its destination, put in place later by
/// [`Staged::commit`]: for a new version of a file in a directory about to be renamed, which
/// must neither change while the directory is still where it was nor need an fsync.
#[derive(Debug)]
pub struct Staged {
    tmp: std::ffi::OsString,
    name: std::ffi::OsString,
}

/// Writes `data` to a new temp file `.tmp-NAME-…` in `dir` (no fsync), to become `dir/NAME` by
/// [`Staged::commit`], called with the directory's path at that time.
pub fn stage_volatile(dir: &Path, name: &str, data: &[u8], mode: u32) -> io::Result<Staged> {
    let (tmp, mut f) = create_temp(dir, name, mode)?;
    let written = f.set_permissions(std::fs::Permissions::from_mode(mode)).and_then(|_| f.write_all(data));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let tmp = tmp.file_name().expect("a temp file has a name").to_os_string();
    Ok(Staged { tmp, name: name.into() })
}

impl Staged {
    /// Renames the temp file over `dir/NAME`: readers see the old file or the new one.
    pub fn commit(self, dir: &Path) -> io::Result<()> {
        std::fs::rename(dir.join(&self.tmp), dir.join(&self.name))
    }

    /// Removes the temp file (the change is not wanted after all).
    pub fn discard(self, dir: &Path) {
        let _ = std::fs::remove_file(dir.join(&self.tmp));
    }
}

/// Opens a file for reading only if it is a regular file. The open is non-blocking, so a FIFO
/// placed where a file is expected (an OCI layout's `index.json` or a blob) cannot hang the
/// caller; anything but a regular file is refused with `InvalidInput` naming what it is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_flags(path, 0)
}

/// [`open_regular`], refusing a symlink at `path` itself: for files in a directory another
/// user may write (the store's shared directories, which members of the husk group write).
pub fn open_regular_nofollow(path: &Path) -> io::Result<File> {
    open_regular_flags(path, libc::O_NOFOLLOW)
}

fn open_regular_flags(path: &Path, extra: i32) -> io::Result<File> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | extra).open(path)?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "a device or special file"
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is {what}, not a file", path.display())));
    }
    // Regular files ignore O_NONBLOCK; nothing to undo.
    Ok(f)
}

fn write_replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let (tmp, mut f) = create_temp(dir, &name.to_string_lossy(), mode)?;
    let result = (|| {
        // The mode asked for, whatever the umask: a store file root writes must stay readable
        // by the husk group (and a member's by root), under any umask.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            fsync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates a new temp file `.tmp-NAME-…` in `dir`. The suffix is this process's id, a
/// per-process counter and the clock's nanoseconds: unique among this process's files and
/// unlikely to meet another's. It need not be secret: the file is created exclusively (`O_EXCL`
/// never follows a link planted at the name), and a name that exists is skipped. Not `rand`:
/// seeding its thread-local generator (getrandom, ChaCha, CPU feature detection, each `cpuid` a
/// VM exit on a guest) costs about 30 µs in each process that writes a state file, which is
/// husk and stage1 in every pod start.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(std::path::PathBuf, File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last = None;
    for _ in 0..64 {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let suffix = format!("{:x}-{:x}{:08x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos);
        let tmp = dir.join(format!(".tmp-{name}-{suffix}"));
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether a file name is a leftover of [`atomic_write`].
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(".tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_where_a_file_is_expected_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("index.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("a FIFO"), "{e}");
        std::fs::write(d.path().join("f"), b"x").unwrap();
        assert!(open_regular(&d.path().join("f")).is_ok());
        assert!(open_regular(d.path()).is_err());
    }

    #[test]
    fn replaces_content_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_staged_file_replaces_the_old_one_only_when_committed_wherever_its_directory_moved() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("pod.json"), "old").unwrap();
        let staged = stage_volatile(&a, "pod.json", b"new", 0o644).unwrap();
        // Until the commit the file is the old one, the new bytes in a temp file beside it.
        assert_eq!(std::fs::read_to_string(a.join("pod.json")).unwrap(), "old");
        let names = |dir: &Path| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&a).len(), 2);
        assert!(names(&a).iter().any(|n| is_temp_name(n)));
        std::fs::rename(&a, &b).unwrap();
        staged.commit(&b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("pod.json")).unwrap(), "new");
        assert_eq!(std::fs::metadata(b.join("pod.json")).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(names(&b), ["pod.json"]);
        // Discarded: the old file stays, the temp file goes.
        stage_volatile(&b, "pod.json", b"unwanted", 0o644).unwrap().discard(&b);
        assert_eq!(names(&b), ["pod.json"]);
        assert_eq!(std::fs::read_to_string(b.join("pod.json")).unwrap(), "new");
    }

    #[test]
    fn failure_leaves_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        atomic_write(&p, b"old", 0o644).unwrap();
        // A directory in the way of the rename makes it fail; the old content must survive.
        let q = d.path().join("sub");
        std::fs::create_dir(&q).unwrap();
        std::fs::write(q.join("inner"), b"").unwrap();
        assert!(atomic_write(&q, b"new", 0o644).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(std::fs::read_dir(d.path()).unwrap().all(|e| !is_temp_name(&e.unwrap().file_name().to_string_lossy())));
    }

    #[test]
    fn temp_names_are_distinct_and_leftovers_beside_them_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let (a, _) = create_temp(d.path(), "x", 0o600).unwrap();
        let (b, _) = create_temp(d.path(), "x", 0o600).unwrap();
        assert_ne!(a, b);
        assert!(is_temp_name(&a.file_name().unwrap().to_string_lossy()));
        // Leftovers (links to another file among them) are neither followed nor reused.
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        for i in 0..4 {
            let _ = std::os::unix::fs::symlink(&victim, d.path().join(format!(".tmp-f-{i}")));
        }
        atomic_write(&d.path().join("f"), b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"new");
    }
}
