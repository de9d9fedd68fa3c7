//! Process creation and fd hygiene: the parts of the clone/exec dance that need `unsafe`.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _};

pub use nix::unistd::ForkResult;

/// This process's `/proc/self/stat`, opened once per process (a forked child reopens its own):
/// the fd keeps naming this task after the process joins a mount namespace whose /proc does
/// not show it (`enter`).
static SELF_STAT: std::sync::Mutex<Option<(u32, std::fs::File)>> = std::sync::Mutex::new(None);

/// How many threads this process has (from `/proc/self/stat`).
fn thread_count() -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let pid = std::process::id();
    let mut cached = SELF_STAT.lock().unwrap_or_else(|e| e.into_inner());
    if cached.as_ref().is_none_or(|(p, _)| *p != pid) {
        *cached = Some((pid, std::fs::File::open("/proc/self/stat")?));
    }
    let (_, f) = cached.as_ref().expect("just set");
    let mut buf = vec![0u8; 4096];
    let n = f.read_at(&mut buf, 0)?;
    let stat = String::from_utf8_lossy(&buf[..n]);
    // The command name (field 2) may contain spaces; fields after its ')' are plain numbers.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    // State is field 3 (first after the name), num_threads field 20.
    after
        .split_whitespace()
        .nth(17)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "cannot read the thread count in /proc/self/stat"))
}

/// Checks that this process is single-threaded, and keeps what the check reads open: call it
/// before joining another mount namespace if [`fork`] is to work there.
pub fn check_single_threaded() -> io::Result<()> {
    ensure_single_threaded("fork")
}

/// Refuses to continue in a multi-threaded process: the precondition of [`fork_unchecked`] and
/// [`clone_unchecked`], checked at run time so that [`fork`] and [`clone_process`] are sound
/// to call from safe code.
fn ensure_single_threaded(what: &str) -> io::Result<()> {
    match thread_count()? {
        1 => Ok(()),
        n => Err(io::Error::other(format!(
            "{what} from a process with {n} threads: the child could inherit a lock held by another thread"
        ))),
    }
}

/// `fork(2)`.
///
/// # Safety
///
/// The calling process must be single-threaded. In the child of a multi-threaded process only
/// async-signal-safe functions may run (another thread may have held the allocator's lock at the
/// moment of the fork); husk's child code allocates.
pub unsafe fn fork_unchecked() -> io::Result<ForkResult> {
    // SAFETY: the caller guarantees the process is single-threaded (this function's contract),
    // the condition under which running arbitrary code in the child is sound.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// `fork(2)`, after checking that this process is single-threaded (the stage1 supervisor and
/// pod init are); fails otherwise instead of forking unsoundly.
pub fn fork() -> io::Result<ForkResult> {
    ensure_single_threaded("fork")?;
    // SAFETY: single-threaded, checked just above; the process creates no threads in between.
    unsafe { fork_unchecked() }
}

/// Clears close-on-exec on fds `first..first + count` (socket-activated fds handed to an app
/// after [`cloexec_from`] marked every fd).
pub fn keep_across_exec(first: i32, count: u32) -> io::Result<()> {
    for fd in first..first.saturating_add(count as i32) {
        // SAFETY: the fd is only borrowed for the fcntl; an fd that is not open fails with EBADF,
        // which is reported, and no ownership is taken.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    Ok(())
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

/// Whether this process may hand over to code of its own as `execve` would to another program
/// (husk's built-in `ns` stage1, `husk_stage1::ns::run_handed_over`): it has a single thread,
/// and no fd that an `execve` would close (see [`open_exec_closed_fds`]). `Err` names what
/// stands in the way; the caller then `exec`s instead. Checking rather than closing: an fd
/// still open here is owned by a live object, which closing would leave pointing at whatever
/// reuses the number.
pub fn may_hand_over(keep: std::os::fd::RawFd) -> io::Result<()> {
    ensure_single_threaded("hand over")?;
    match open_exec_closed_fds(keep)?.as_slice() {
        [] => Ok(()),
        fds => Err(io::Error::other(format!("fds {fds:?} are open, and an exec would close them"))),
    }
}

/// The fds from 3 up with close-on-exec set, other than `keep` and this module's own
/// `/proc/self/stat`: those an `execve` would close.
fn open_exec_closed_fds(keep: std::os::fd::RawFd) -> io::Result<Vec<std::os::fd::RawFd>> {
    let stat = SELF_STAT.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, f)| f.as_raw_fd());
    let dir = std::fs::read_dir("/proc/self/fd")?;
    // The listing's own fd is among those listed; it is closed with `dir`, before the check.
    let listed: Vec<std::os::fd::RawFd> =
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect();
    let mut open = Vec::new();
    for fd in listed {
        if fd == keep || Some(fd) == stat {
            continue;
        }
        // SAFETY: F_GETFD reads a flag of the fd number; it neither takes pointers nor changes the
        // fd. A number closed since it was listed (the listing's own) gives EBADF, skipped.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
            open.push(fd);
        }
    }
    Ok(open)
}

/// Brings the loopback interface of the current network namespace up (SIOCSIFFLAGS), without
/// exec'ing `ip`: one ioctl instead of a process.
pub fn loopback_up() -> io::Result<()> {
    loopback_up_raw().map_err(io::Error::from)
}

/// [`loopback_up`] in raw system calls (rustix's ioctl: no errno, no allocation), for children
/// that share their parent's memory (crate::netns::make_spare).
pub(crate) fn loopback_up_raw() -> Result<(), rustix::io::Errno> {
    use rustix::ioctl::{ioctl, Opcode, Updater};
    let sock = rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?;
    // SAFETY: ifreq is a plain C struct/union of integers and byte arrays; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: both opcodes take a `struct ifreq`, which `req` is, naming "lo"; the kernel reads
    // and writes only within it.
    unsafe {
        ioctl(&sock, Updater::<{ libc::SIOCGIFFLAGS as Opcode }, libc::ifreq>::new(&mut req))?;
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        ioctl(&sock, Updater::<{ libc::SIOCSIFFLAGS as Opcode }, libc::ifreq>::new(&mut req))?;
    }
    Ok(())
}

/// Borrows a raw fd after checking it is open (for an `F_GETFD` probe only).
fn borrow_fd(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: probed with F_GETFD below before any use; callers use the borrow only briefly
    // while the fd is known to stay open (it is one of their own).
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(b)?;
    Ok(b)
}

/// Takes ownership of a raw fd number, after checking it is open.
///
/// # Safety
///
/// Nothing else in the process may own `fd` (no `File`, `OwnedFd` or other owner that would
/// close it), now or later: the returned `OwnedFd` closes it when dropped.
pub unsafe fn adopt_fd_unchecked(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    borrow_fd(fd)?;
    // SAFETY: the fd is open (checked above); the caller guarantees no other owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The fd numbers [`take_inherited_fd`] handed out: each at most once per process.
static ADOPTED: std::sync::Mutex<Vec<std::os::fd::RawFd>> = std::sync::Mutex::new(Vec::new());

/// Takes ownership of an fd inherited across `exec` and named by environment variable `var`
/// (the stage1 ABI's `HUSK_LOCK_FD` and `HUSK_READY_FD`). `Ok(None)` when the variable is not
/// set; an error when it does not name an open fd (0 to 2 are never taken: they are stdio).
///
/// Sound because an fd inherited across exec has no owner in this process until this function
/// creates one, and it creates at most one per fd number (a second call for the same number,
/// through another variable, is refused).
pub fn take_inherited_fd(var: &str) -> io::Result<Option<std::os::fd::OwnedFd>> {
    let Some(value) = std::env::var_os(var) else { return Ok(None) };
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("{var}={value:?} is not an inherited fd number"));
    let fd: std::os::fd::RawFd = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    if fd <= 2 {
        return Err(bad());
    }
    let mut adopted = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    if adopted.contains(&fd) {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("fd {fd} ({var}) was already taken")));
    }
    // SAFETY: an fd inherited across exec is owned by nothing in this process until adopted,
    // and `ADOPTED` ensures it is adopted only once.
    let owned = unsafe { adopt_fd_unchecked(fd) }?;
    adopted.push(fd);
    Ok(Some(owned))
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

/// Spawns `cmd` bound to the calling process: the kernel kills it (SIGKILL) when the spawning
/// thread ends, so that a helper never outlives its supervisor (a kill -9 included). Spawned by
/// the main thread of a single-threaded supervisor, that is the supervisor's own end.
pub fn spawn_bound(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec in the child and makes only prctl(2) and
    // getppid(2) system calls, which are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent died before the prctl: it would never fire.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other("the spawning process has already exited"));
            }
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

/// Drops this process's page-table entries for its own executable's read-only mappings (its
/// code and read-only data, `MADV_DONTNEED`) and trims the heap. For a long-lived, mostly idle
/// process (the pod supervisor and pod init) whose resident set is dominated by what it used
/// once at startup: the pages stay in the page cache, shared, and the few still used fault back
/// in. A private file mapping is dropped only if none of its pages was ever written (smaps:
/// `Anonymous: 0 kB`): DONTNEED repopulates it from the file, which is exact for such pages but
/// would undo the relocations in the RELRO part of the data segment, whose pages are written
/// copies. Best effort: errors are ignored.
///
/// On kernel 6.18 a fault maps a whole large folio of the file when it fits, and a binary
/// installed by copying (or read back from disk) has large folios: dropping the read-only data
/// too, not only the code, keeps more of that out of an installed supervisor (docs/BENCHMARKS.md).
pub fn release_startup_memory() -> IdleMemory {
    let idle = IdleMemory::find();
    // SAFETY: malloc_trim only returns free heap memory to the kernel; no pointer is affected.
    unsafe {
        libc::malloc_trim(0);
    }
    // Last: what runs after this faults back in.
    idle.drop_pages();
    idle
}

/// The mappings [`release_startup_memory`] drops, found once, to drop again each time the
/// process goes idle: called just before a blocking wait, it leaves resident only the code
/// that runs between it and the wait (and, after a wake-up, what that handled until the next
/// one). An installed binary's large folios make each page touched cost a whole folio (128 KiB
/// here), so code touched once after the first release (a signal handled, a child reaped)
/// would otherwise stay resident for the pod's life.
#[derive(Debug, Default)]
pub struct IdleMemory {
    ranges: Vec<(usize, usize)>,
}

impl IdleMemory {
    fn find() -> IdleMemory {
        let ranges = match (std::fs::read_link("/proc/self/exe"), std::fs::read_to_string("/proc/self/smaps")) {
            (Ok(exe), Ok(smaps)) => never_written_mappings_of(&smaps, exe.to_str().unwrap_or("")),
            _ => vec![],
        };
        IdleMemory { ranges }
    }

    /// Drops the page-table entries of the mappings (one `madvise` each; best effort).
    pub fn drop_pages(&self) {
        for &(start, end) in &self.ranges {
            // SAFETY: the range is a private, read-only file mapping of our own binary none of
            // whose pages was ever written (checked in smaps when found; read-only mappings
            // cannot be written since). MADV_DONTNEED on it only drops page-table entries; later
            // accesses repopulate the identical contents from the file, so no code or data the
            // process relies on changes.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

/// [`release_startup_memory`] for a process that waits in a loop (the pod supervisor and pod
/// init): once it has been running `after`, and then again (the pages only) each time it goes
/// back to waiting. A pod that ends sooner, as most runs of a short command do, never pays for
/// the release (reading smaps, the refaults): about 0.2 ms of each such pod's start here.
#[derive(Debug)]
pub struct IdleRelease {
    due: Option<std::time::Instant>,
    idle: IdleMemory,
}

impl IdleRelease {
    pub fn after(after: std::time::Duration) -> IdleRelease {
        IdleRelease { due: Some(std::time::Instant::now() + after), idle: IdleMemory::default() }
    }

    /// Waits for one of `set`'s signals (blocked by the caller), releasing the memory when
    /// due: `Ok(None)` when the wait ended without one (call again). The release is the last
    /// thing before the blocking call, and both are here, so that only the little code between
    /// them (this function and libc's wait) is resident while the process waits.
    pub fn wait(&mut self, set: &nix::sys::signal::SigSet) -> io::Result<Option<nix::sys::signal::Signal>> {
        let timeout = self.before_wait();
        sigtimedwait(set, timeout)
    }

    /// To be called just before each blocking wait: releases the memory when due (or drops
    /// the pages again once released) and returns how long the wait may last before it must be
    /// called again (`None`: as long as it takes).
    pub fn before_wait(&mut self) -> Option<std::time::Duration> {
        match self.due {
            Some(due) => match due.checked_duration_since(std::time::Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    self.due = None;
                    self.idle = release_startup_memory();
                    None
                }
            },
            None => {
                self.idle.drop_pages();
                None
            }
        }
    }
}

/// Waits for one of `set`'s signals (blocked by the caller) at most `timeout` (`None`: as long
/// as it takes); `Ok(None)` when the time passed or the wait was interrupted.
pub fn sigtimedwait(
    set: &nix::sys::signal::SigSet,
    timeout: Option<std::time::Duration>,
) -> io::Result<Option<nix::sys::signal::Signal>> {
    let Some(t) = timeout else {
        let mut signo: libc::c_int = 0;
        // SAFETY: `set` is a valid sigset_t and `signo` a valid int for the call's duration.
        let r = unsafe { libc::sigwait(set.as_ref(), &mut signo) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        return nix::sys::signal::Signal::try_from(signo).map(Some).map_err(io::Error::from);
    };
    let ts = libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid sigset_t for the call's duration, a null siginfo is allowed, and
    // `ts` outlives the call. No memory is written but the return value.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    nix::sys::signal::Signal::try_from(r).map(Some).map_err(io::Error::from)
}

/// The address ranges, in `/proc/self/smaps` text, of `exe`'s read-only private mappings (code or
/// read-only data) with no anonymous (written, copied-on-write) page.
fn never_written_mappings_of(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((a, b)) = first.split_once('-').filter(|(a, _)| a.bytes().all(|c| c.is_ascii_hexdigit())) {
            // A mapping's header: range, perms, offset, dev, inode, path.
            let perms = f.next().unwrap_or("");
            let path = f.nth(3).unwrap_or("");
            current = match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                (Ok(s), Ok(e)) if !exe.is_empty() && path == exe && (perms == "r-xp" || perms == "r--p") => {
                    Some((s, e))
                }
                _ => None,
            };
        } else if first == "Anonymous:" {
            if let Some(range) = current.take() {
                if f.next() == Some("0") {
                    found.push(range);
                }
            }
        }
    }
    found
}

/// `clone(2)` with namespace flags and fork-like semantics (no new stack: the child continues
/// from the call on a copy of the address space), so that the child is created directly in new
/// namespaces: with `CLONE_NEWUSER | CLONE_NEWPID` the PID namespace is owned by the new user
/// namespace, which `unshare` then `fork` cannot achieve.
///
/// Checks that the process is single-threaded, as [`fork`] does.
pub fn clone_process(flags: nix::sched::CloneFlags) -> io::Result<ForkResult> {
    ensure_single_threaded("clone")?;
    // SAFETY: single-threaded, checked just above.
    unsafe { clone_unchecked(flags) }
}

/// [`clone_process`] without the check.
///
/// # Safety
///
/// As for [`fork_unchecked`]: the calling process must be single-threaded.
pub unsafe fn clone_unchecked(flags: nix::sched::CloneFlags) -> io::Result<ForkResult> {
    // SAFETY: a raw clone without CLONE_VM or a new stack behaves like fork(2): the child gets a
    // copy-on-write copy of the address space and returns here with 0. The caller guarantees a
    // single-threaded process, so no lock can be held by another thread in the child. Only
    // flags and SIGCHLD are passed; the pointer arguments are null.
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

/// Gives SIGPIPE its default disposition in a command-line program: Rust's runtime ignores it,
/// so that printing into a closed pipe (`husk list | head -1`) fails with EPIPE and `println!`
/// panics; with the default, the process ends quietly, as other command-line tools do.
pub fn default_sigpipe() {
    sigpipe(false);
}

/// Ignores SIGPIPE again, as Rust's runtime does when a program starts: for code that a
/// command-line program hands over to instead of exec'ing it (see [`may_hand_over`]), so that
/// it runs as it would in its own program (a write into a closed pipe fails with EPIPE).
pub fn ignore_sigpipe() {
    sigpipe(true);
}

fn sigpipe(ignore: bool) {
    use nix::sys::signal::{signal, SigHandler, Signal};
    let how = if ignore { SigHandler::SigIgn } else { SigHandler::SigDfl };
    // SAFETY: installing SIG_DFL or SIG_IGN registers no handler code, so no async-signal-safety
    // requirement applies; it only changes what the kernel does with the signal.
    let _ = unsafe { signal(Signal::SIGPIPE, how) };
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

/// Installs a seccomp BPF program with `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)`, without
/// setting no_new_privs first (unlike seccompiler's `apply_filter`): an OCI container that did
/// not ask for `noNewPrivileges` must still be able to run setuid programs, so its init installs
/// the filter while it holds CAP_SYS_ADMIN instead.
pub fn install_seccomp(program: &[libc::sock_filter], flags: u32) -> io::Result<()> {
    if program.is_empty() || program.len() > u16::MAX as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a seccomp program has 1 to 65535 instructions"));
    }
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `prog` points at `program`, which outlives the call; the kernel copies the
    // instructions and keeps no pointer into our memory. The remaining arguments are integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_long,
            flags as libc::c_long,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kill(2)` with any signal number, real-time ones included (nix's `Signal` lacks them; an
/// OCI runtime's `kill` takes whatever number its caller sends).
pub fn kill_raw(pid: i32, signo: i32) -> io::Result<()> {
    if !(1..=64).contains(&signo) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{signo} is not a signal number")));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    let r = unsafe { libc::kill(pid, signo) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Joins a new session keyring named `name` (`keyctl(KEYCTL_JOIN_SESSION_KEYRING)`), so that a
/// container does not share the keys of whoever started it (runc does the same unless
/// `--no-new-keyring`). No wrapper exists in nix or rustix.
pub fn join_session_keyring(name: &std::ffi::CStr) -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call; the kernel
    // copies it and keeps no pointer.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

    #[test]
    fn fork_refuses_a_multi_threaded_process() {
        // The test harness runs tests on threads: this process has several.
        let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        assert!(thread_count().unwrap() > 1);
        let e = fork().expect_err("fork from a multi-threaded process is refused");
        assert!(e.to_string().contains("threads"), "{e}");
        assert!(clone_process(nix::sched::CloneFlags::empty()).is_err());
        // Another thread would run on in the memory a spawned child shares.
        let e = spawn_shared(|| 0).expect_err("a shared-memory child of a multi-threaded process is refused");
        assert!(e.to_string().contains("threads"), "{e}");
    }

    #[test]
    fn handing_over_is_refused_with_threads_or_fds_an_exec_would_close() {
        use std::os::fd::AsRawFd;
        let _t = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        let e = may_hand_over(-1).expect_err("a multi-threaded process cannot hand over");
        assert!(e.to_string().contains("threads"), "{e}");
        // Other tests open and close fds meanwhile: only this test's own are asserted on.
        let kept = std::fs::File::open("/dev/null").unwrap();
        let closed_by_exec = std::fs::File::open("/dev/null").unwrap();
        let inherited = std::fs::File::open("/dev/null").unwrap();
        rustix::io::fcntl_setfd(&inherited, rustix::io::FdFlags::empty()).unwrap();
        let open = open_exec_closed_fds(kept.as_raw_fd()).unwrap();
        assert!(open.contains(&closed_by_exec.as_raw_fd()), "{open:?}");
        assert!(!open.contains(&kept.as_raw_fd()), "the fd handed over is kept: {open:?}");
        assert!(!open.contains(&inherited.as_raw_fd()), "an exec keeps an fd without close-on-exec: {open:?}");
        assert!(open.iter().all(|&fd| fd > 2), "{open:?}");
    }

    #[test]
    fn an_inherited_fd_is_taken_once() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::IntoRawFd;
        let raw = f.into_raw_fd();
        std::env::set_var("HUSK_TEST_FD_A", raw.to_string());
        std::env::set_var("HUSK_TEST_FD_B", raw.to_string());
        assert!(take_inherited_fd("HUSK_TEST_FD_A").unwrap().is_some());
        assert_eq!(take_inherited_fd("HUSK_TEST_FD_B").unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(take_inherited_fd("HUSK_TEST_FD_UNSET").unwrap().is_none());
        std::env::set_var("HUSK_TEST_FD_C", "1");
        assert!(take_inherited_fd("HUSK_TEST_FD_C").is_err());
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;

    #[test]
    fn only_never_written_read_only_mappings_of_the_executable_are_dropped() {
        let smaps = "\
55550000-55560000 r--p 00000000 fe:00 7 /usr/bin/husk-stage1-ns
Rss:                  64 kB
Anonymous:             0 kB
55560000-55590000 r-xp 00010000 fe:00 7 /usr/bin/husk-stage1-ns
Anonymous:             0 kB
55590000-555a0000 r--p 00040000 fe:00 7 /usr/bin/husk-stage1-ns
Anonymous:            60 kB
555a0000-555b0000 rw-p 00050000 fe:00 7 /usr/bin/husk-stage1-ns
Anonymous:             4 kB
7f000000-7f010000 r-xp 00000000 fe:00 9 /usr/lib/libc.so.6
Anonymous:             0 kB
7ffc0000-7ffd0000 rw-p 00000000 00:00 0                          [stack]
Anonymous:            16 kB
";
        let got = never_written_mappings_of(smaps, "/usr/bin/husk-stage1-ns");
        // Read-only data and code; not the relocated RELRO part, not data, not a library.
        assert_eq!(got, vec![(0x55550000, 0x55560000), (0x55560000, 0x55590000)]);
        assert!(never_written_mappings_of(smaps, "").is_empty());
        assert!(never_written_mappings_of("garbage\nAnonymous: 0 kB\n", "/x").is_empty());
    }

    #[test]
    fn in_this_test_binary_the_code_is_dropped_and_the_relocated_data_kept() {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe = exe.to_str().unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let dropped = never_written_mappings_of(&smaps, exe);
        // The code of this function is in one of them.
        let here = in_this_test_binary_the_code_is_dropped_and_the_relocated_data_kept as *const () as usize;
        assert!(dropped.iter().any(|&(s, e)| (s..e).contains(&here)), "{dropped:x?}");
        // A table of pointers (&str) lives in relocated, hence written, RELRO pages: kept.
        static TABLE: [&str; 3] = ["relocated", "read-only", "data"];
        let table = TABLE.as_ptr() as usize;
        assert!(!dropped.iter().any(|&(s, e)| (s..e).contains(&table)), "{dropped:x?} holds {table:x}");
        // Dropping them for real leaves the process working and the table intact.
        let idle = release_startup_memory();
        assert_eq!(idle.ranges, dropped);
        idle.drop_pages();
        release_startup_memory();
        assert_eq!(TABLE.concat(), "relocatedread-onlydata");
    }

    #[test]
    fn idle_release_waits_its_time_then_releases_once_and_drops_after() {
        let mut r = IdleRelease::after(std::time::Duration::from_millis(50));
        let left = r.before_wait().expect("not due yet");
        assert!(left <= std::time::Duration::from_millis(50) && !left.is_zero(), "{left:?}");
        assert!(r.idle.ranges.is_empty(), "nothing released before it is due");
        std::thread::sleep(left);
        assert_eq!(r.before_wait(), None, "due: released, and the wait may be endless");
        assert!(!r.idle.ranges.is_empty(), "the ranges were found");
        assert_eq!(r.before_wait(), None);
    }

    #[test]
    fn sigtimedwait_times_out_or_returns_the_pending_signal() {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
        // In a thread of its own, so that blocking and raising stay in it.
        std::thread::spawn(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGUSR2);
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).unwrap();
            let started = std::time::Instant::now();
            assert_eq!(sigtimedwait(&set, Some(std::time::Duration::from_millis(20))).unwrap(), None);
            assert!(started.elapsed() >= std::time::Duration::from_millis(15));
            nix::sys::signal::raise(Signal::SIGUSR2).unwrap(); // to this thread
            assert_eq!(sigtimedwait(&set, Some(std::time::Duration::from_secs(5))).unwrap(), Some(Signal::SIGUSR2));
            nix::sys::signal::raise(Signal::SIGUSR2).unwrap(); // to this thread
            assert_eq!(sigtimedwait(&set, None).unwrap(), Some(Signal::SIGUSR2));
        })
        .join()
        .unwrap();
    }
}

/// The stack of a [`spawn_shared`] child. Setting up an app's root runs deep (mount planning,
/// formatting, the seccomp compiler): 1 MiB, reserved, not committed: only the pages the child
/// touches are ever allocated.
const SHARED_CHILD_STACK: usize = 1024 * 1024;

/// Starts `f` in a child process that shares this process's memory while this process waits,
/// as `posix_spawn` does (`clone(CLONE_VM | CLONE_VFORK)`, on a stack of its own), and returns
/// its pid once the child has exec'd or exited. The child exits with `f`'s return value
/// (`_exit`: no atexit handlers, no stdio flush, nothing of this process's cleanup).
///
/// Unlike [`fork`], nothing is copied: no page tables, and no copy-on-write faults afterwards in
/// either process. For a pod init starting an app, that is most of the 0.2–0.4 ms a pod's start
/// gained with it (docs/BENCHMARKS.md, fifth pass). The price is the discipline `f` must keep,
/// as in any vfork child: it runs with this process's memory and thread state, so what it
/// allocates and does not free before its `execve` stays allocated here (about 8 KiB for an
/// app), what it changes in memory this process sees, and it must end in `execve` or by
/// returning, never by `std::process::exit` (which would run this process's exit handlers); a
/// panic cannot unwind out of it and aborts the child. Its fd table, signal
/// dispositions, credentials, namespaces, working directory and root are its own: changing those
/// is what it is for. Every signal is blocked in the child when it starts (no handler of this
/// process runs there before `f` sets its own mask). Fails in a multi-threaded process, where
/// another thread would run on in the shared memory meanwhile.
pub fn spawn_shared<F: FnOnce() -> i32>(f: F) -> io::Result<nix::unistd::Pid> {
    ensure_single_threaded("spawn")?;
    extern "C" fn trampoline<F: FnOnce() -> i32>(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Option<F>` on the suspended caller's stack (`spawn_shared`),
        // alive until this child execs or exits; taking it leaves `None` there, so the caller
        // never drops what the child consumed.
        let slot = unsafe { &mut *arg.cast::<Option<F>>() };
        let code = slot.take().map_or(127, |f| f());
        // SAFETY: `_exit` ends this process without touching the shared memory (no atexit
        // handlers, no stdio flush).
        unsafe { libc::_exit(code) }
    }
    let mut slot = Some(f);
    // SAFETY: a fresh private anonymous mapping that nothing else references; MAP_NORESERVE and
    // MAP_STACK only describe its use. Checked for MAP_FAILED below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SHARED_CHILD_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the lowest page of the new mapping becomes a guard (best effort: a child that
    // overflows dies of SIGSEGV instead of writing below it). The child runs `trampoline::<F>`
    // on the new stack (its top: stacks grow down; mmap returns page-aligned memory), with every
    // signal blocked, and a pointer to `slot`, which outlives it: with CLONE_VFORK this thread is
    // suspended until the child has exec'd or exited, and only then is the stack unmapped. The
    // process is single-threaded (checked above), so no other thread runs in the shared memory
    // meanwhile; the child keeps the rules this function's documentation gives `f`.
    let cloned = unsafe {
        libc::mprotect(stack, 4096, libc::PROT_NONE);
        let top = stack.cast::<u8>().add(SHARED_CHILD_STACK).cast::<libc::c_void>();
        let cloned = crate::vmchild::clone_vm_on(
            top,
            trampoline::<F>,
            libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut slot).cast::<libc::c_void>(),
        );
        libc::munmap(stack, SHARED_CHILD_STACK);
        cloned
    };
    let pid = cloned?;
    // What the child did not take (it never ran) is dropped here; what it took is gone.
    drop(slot);
    Ok(nix::unistd::Pid::from_raw(pid))
}

/// A system call a seccomp filter decides on, made with arguments the kernel refuses (or
/// ignores) before it reads any memory, so that making it is harmless whatever the filter says:
/// what a test app calls to see its filter's verdict (`husk-workload probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `clone3(NULL, 0)`: EINVAL (a size below the smallest `clone_args`) unless filtered.
    Clone3,
    /// `getpid` through the x32 ABI (its number with bit 30 set): the pid where the kernel
    /// has x32, ENOSYS where it has not.
    X32Getpid,
}

/// Makes `probe`; returns its errno, 0 if it succeeded.
pub fn probe_syscall(probe: Probe) -> i32 {
    let r = match probe {
        // SAFETY: with size 0 the kernel fails the call at its size check, before it reads the
        // (null) argument or creates anything.
        Probe::Clone3 => unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0usize) },
        // SAFETY: getpid takes no arguments and changes nothing.
        Probe::X32Getpid => unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) },
    };
    if r == -1 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}
