//! Process creation and fd hygiene: the parts of the clone/exec dance that need `unsafe`.

use std::io;
use std::os::fd::FromRawFd;

pub use nix::unistd::ForkResult;

/// `fork(2)`.
///
/// Callers must be single-threaded (the stage1 supervisor and pod init are), so the child
/// cannot inherit a lock held by another thread; the child only performs syscalls and `exec`s
/// or exits.
pub fn fork() -> io::Result<ForkResult> {
    // SAFETY: husk calls this only from single-threaded processes (stage1 never spawns threads),
    // which is the condition under which using arbitrary code in the child is sound.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Marks every fd from `first` up close-on-exec, so that nothing of the runtime (the pod lock,
/// pipes, directory fds) leaks into an app (runc CVE-2024-21626 class).
pub fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds; it takes no
    // pointers and cannot invalidate memory. Rust-owned fds stay valid.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Brings the loopback interface of the current network namespace up (SIOCSIFFLAGS), without
/// exec'ing `ip`: one ioctl instead of a process.
pub fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?;
    let mut req: libc::ifreq = zeroed_ifreq();
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: `req` is a properly initialised ifreq naming "lo"; the kernel reads/writes only
    // within it for SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct/union of integers and byte arrays; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Borrows a raw fd after checking it is open.
pub fn borrow_fd(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: probed with F_GETFD below before any use; callers use the borrow only briefly
    // while the fd is known to stay open (it is one of their own).
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(b)?;
    Ok(b)
}

/// Takes ownership of an fd number inherited through the stage1 ABI, after checking it is open.
pub fn adopt_fd(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    borrow_fd(fd)?;
    // SAFETY: the fd is open (checked above) and, per the stage1 ABI, handed to this process
    // alone; nothing else in the process owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Spawns `cmd` in a new session (setsid), detached from the invoker's terminal: the detached
/// pod's supervisor.
pub fn spawn_detached(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec in the child and calls only setsid(2),
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// A pipe whose write end survives exec (for HUSK_READY_FD) and whose read end does not.
pub fn ready_pipe() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::fcntl_setfd(&w, rustix::io::FdFlags::empty())?;
    Ok((r, w))
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    let sig = nix::sys::signal::Signal::try_from(sig).map_err(io::Error::from)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(io::Error::from)
}

/// Drops this process's page-table entries for its own executable code (`MADV_DONTNEED` on the
/// `r-xp` mappings of /proc/self/exe) and trims the heap. For a long-lived, mostly idle process
/// (the pod supervisor and pod init) whose resident set is dominated by code it ran once at
/// startup: the code stays in the page cache, shared, and the few pages still used fault back
/// in. Only never-written text is dropped: for a private file mapping, DONTNEED repopulates
/// from the file, which is exact for text but would undo relocations in the read-only data
/// segment, so that one is left alone. Best effort: errors are ignored.
pub fn release_startup_memory() {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else { continue };
        let path = f.nth(3).unwrap_or("");
        if path != exe.as_os_str() || perms != "r-xp" {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
        // SAFETY: the range is the private, read-only, executable file mapping of our own
        // binary, which is never written (PIE text has no relocations). MADV_DONTNEED on it
        // only drops page-table entries; later accesses repopulate the identical contents from
        // the file, so no code or data the process relies on changes.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
    // SAFETY: malloc_trim only returns free heap memory to the kernel; no pointer is affected.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `clone(2)` with namespace flags and fork-like semantics (no new stack: the child continues
/// from the call on a copy of the address space), so that the child is created directly in new
/// namespaces: with `CLONE_NEWUSER | CLONE_NEWPID` the PID namespace is owned by the new user
/// namespace, which `unshare` then `fork` cannot achieve.
///
/// Callers must be single-threaded, as for [`fork`].
pub fn clone_process(flags: nix::sched::CloneFlags) -> io::Result<ForkResult> {
    // SAFETY: a raw clone without CLONE_VM or a new stack behaves like fork(2): the child gets a
    // copy-on-write copy of the address space and returns here with 0. The caller is
    // single-threaded (the stage1 supervisor), so no lock can be held by another thread in the
    // child. Only flags and SIGCHLD are passed; the pointer arguments are null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() as libc::c_long) | libc::SIGCHLD as libc::c_long,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_long,
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent { child: nix::unistd::Pid::from_raw(pid as i32) }),
    }
}

/// Closes this process's copy of an inherited fd number (after `fork`, in the child, to let go
/// of a lock the parent keeps).
pub fn close_inherited(fd: std::os::fd::RawFd) {
    if borrow_fd(fd).is_ok() {
        // SAFETY: the fd is open (checked) and, in this freshly forked child, no Rust object
        // that owns this number is used again before the process exits.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    }
}

/// Whether process `pid` exists and holds an fd on the directory `dir` (compared by device and
/// inode, so a renamed directory still matches and a recycled pid does not). This is how husk
/// tells a pod's own supervisor, which holds the pod dir's lock fd for the pod's life, from
/// another process that happens to have that pid now.
pub fn holds_dir_open(pid: i32, dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if pid <= 1 {
        return false;
    }
    let Ok(want) = std::fs::metadata(dir) else { return false };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino()))
}

/// Resets every catchable signal's disposition to the default, as runc and crun do before they
/// exec a container's process. Rust's runtime ignores SIGPIPE in husk's own binaries, and an
/// ignored disposition survives `execve`: an app would never die of SIGPIPE (`yes | head` in a
/// pod would spin forever once `head` exits).
pub fn reset_signal_dispositions() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL registers no handler code, so no async-signal-safety
        // requirement applies; it only changes what the kernel does with the signal.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

#[cfg(test)]
mod holder_tests {
    use super::*;

    #[test]
    fn a_process_holding_a_directory_is_recognised_after_a_rename() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let _f = std::fs::File::open(&a).unwrap();
        let me = std::process::id() as i32;
        assert!(holds_dir_open(me, &a));
        std::fs::rename(&a, d.path().join("b")).unwrap();
        assert!(holds_dir_open(me, &d.path().join("b")));
        assert!(!holds_dir_open(me, d.path()));
        assert!(!holds_dir_open(1, &d.path().join("b")));
        assert!(!holds_dir_open(0, &d.path().join("b")));
    }
}
