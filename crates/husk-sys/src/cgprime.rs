//! Starting early the wait that a pod's first cgroup migration would otherwise pay late.
//!
//! Every write to a `cgroup.procs` (v1 or v2) takes the kernel's global
//! `cgroup_threadgroup_rwsem` for writing. After a quiet spell that rwsem's RCU-sync is idle, and
//! the first writer waits for a full RCU grace period before it gets in: 5–10 ms measured on
//! this kind of host (2 vCPUs), more than all of husk's own work in a pod start. Writers that
//! come within a grace period of the previous one do not wait. So `husk run` starts that wait
//! as its first act: a short-lived grandchild moves itself into the cgroup it is already in (a
//! no-op migration that takes the rwsem all the same) while stage0 and stage1 prepare the pod,
//! and by the time the app joins its cgroups the grace period has passed.
//!
//! Nothing is moved and nothing is waited for: the grandchild is reparented and exits on its
//! own, holding none of the caller's fds. Both children share the caller's memory
//! (crate::vmchild): two forks of the 14 MB `husk` process cost 0.27 ms of CPU a pod more
//! (copying its page tables, then write-protect faults in the caller).

use crate::vmchild::{self, Stack};
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd as _, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// The `cgroup.procs` of the calling process's own cgroup, from `/proc/self/cgroup`: in the v2
/// hierarchy (at /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host), else in the first
/// v1 hierarchy mounted at /sys/fs/cgroup/NAME. `exists` says whether a path exists.
pub fn own_cgroup_procs(self_cgroup: &str, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let (mut v2, mut v1) = (Vec::new(), Vec::new());
    for line in self_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        // Only absolute paths under the hierarchy's root; a cgroup namespace shows "/" for its
        // own root, whose cgroup.procs is then that of the namespace's root.
        let Some(rel) = path.strip_prefix('/') else { continue };
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
                v2.push(Path::new(root).join(rel).join("cgroup.procs"));
            }
        } else if let Some(name) = controllers.split(',').find(|c| !c.is_empty() && !c.starts_with("name=")) {
            v1.push(Path::new("/sys/fs/cgroup").join(name).join(rel).join("cgroup.procs"));
        }
    }
    // A v2 hierarchy at /sys/fs/cgroup itself has cgroup.procs at its root; on a hybrid host
    // /sys/fs/cgroup is a tmpfs and only /sys/fs/cgroup/unified qualifies.
    v2.into_iter().chain(v1).find(|p| exists(p))
}

/// Starts the grace period (module doc). Best effort: does nothing when no cgroup.procs of its
/// own is found, and at most once per process.
pub fn prime_cgroup_migration() {
    let Ok(self_cgroup) = std::fs::read_to_string("/proc/self/cgroup") else { return };
    let Some(procs) = own_cgroup_procs(&self_cgroup, |p| p.exists()) else { return };
    let Ok(procs) = CString::new(procs.as_os_str().as_bytes()) else { return };
    let _ = prime_with(&procs);
}

static CHILD_STACK: Stack = Stack::new();
static GRANDCHILD_STACK: Stack = Stack::new();

/// Runs the primer on `procs` (a `cgroup.procs`; any writable file in tests): a child that shares
/// this process's memory and suspends it until the child exits (`CLONE_VM | CLONE_VFORK`, as
/// `posix_spawn` does) opens `procs`, closes every other fd it inherited, and starts the
/// grandchild, which shares its memory and that one fd, writes `0` and exits. Returns once the
/// child has been reaped, whatever the grandchild is doing. Only the first call in a process
/// does anything.
pub fn prime_with(procs: &CStr) -> io::Result<()> {
    // Taken for good: the grandchild is never reaped here, so its stack is never known free.
    if !CHILD_STACK.take() || !GRANDCHILD_STACK.take() {
        return Ok(());
    }
    // SAFETY: `primer_child` runs while this thread is suspended (CLONE_VFORK), so it is the only
    // user of this thread's state (errno included); `procs` outlives it because this call returns
    // only after it exited.
    let child = unsafe {
        vmchild::clone_vm(
            &CHILD_STACK,
            primer_child,
            libc::CLONE_VFORK | libc::SIGCHLD,
            procs.as_ptr().cast_mut().cast(),
        )?
    };
    loop {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
}

/// The primer's child, run while its parent is suspended: opens `procs`, keeps only that fd, and
/// leaves the write to a grandchild that outlives it. Its exit status means nothing.
extern "C" fn primer_child(procs: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `procs` is the NUL-terminated path `prime_with` passed, alive while it is suspended.
    let procs = unsafe { CStr::from_ptr(procs.cast::<libc::c_char>()) };
    use rustix::fs::{Mode, OFlags};
    let Ok(fd) = rustix::fs::open(procs, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty()) else { return 0 };
    let fd = fd.into_raw_fd();
    // None of the caller's fds (a captured stdout, a lock) may outlive it in the grandchild,
    // which shares this child's (copied) fd table. rustix has no close_range.
    // SAFETY: plain syscalls on integers; errno, if set, is the suspended caller's.
    unsafe {
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0, fd - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, libc::c_uint::MAX, 0);
        // SAFETY: the grandchild runs `primer_grandchild` on the other static stack, touching
        // nothing else of the shared memory; `fd` is passed by value.
        let _ = vmchild::clone_vm(
            &GRANDCHILD_STACK,
            primer_grandchild,
            libc::CLONE_FILES | libc::SIGCHLD,
            fd as isize as *mut libc::c_void,
        );
    }
    0
}

/// The primer's grandchild: the no-op migration itself, which waits out the grace period. It runs
/// alongside the caller in the caller's memory, so it makes only raw syscalls (rustix's: no errno,
/// no allocation) on its own stack.
extern "C" fn primer_grandchild(fd: *mut libc::c_void) -> libc::c_int {
    let fd = fd as isize as RawFd;
    // SAFETY: `fd` is open in this process's fd table (shared with the primer's child, which
    // opened it and never closes it).
    let _ = rustix::io::write(unsafe { BorrowedFd::borrow_raw(fd) }, b"0");
    0
}

/// Keeps the grace period passed for as long as it lives: a helper process repeats the no-op
/// migration every 2 ms (for at most 2 s, and dies with its parent). For a pod whose app joins
/// its cgroups only after a long set-up (CNI plugins: tens of ms, longer than the window a single
/// [`prime_cgroup_migration`] opens). The helper is a fresh program, spawned (vfork + exec), not
/// a fork: a fork would leave the long-lived caller (a pod's supervisor) with its pages
/// copied-on-write, about 120 KiB more resident for the pod's whole life. Dropping it stops it.
pub struct KeepWarm {
    child: std::process::Child,
}

impl KeepWarm {
    /// Runs `program args…`, which must call [`keep_warm_loop`] with this process's pid.
    /// Best effort: `None` when it cannot start.
    pub fn spawn(program: &Path, args: &[&str]) -> Option<KeepWarm> {
        use std::process::{Command, Stdio};
        let child = Command::new(program)
            .args(args)
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(KeepWarm { child })
    }
}

impl Drop for KeepWarm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The helper of [`KeepWarm`]: `parent` is the pid of the process that spawned it (it stops
/// when that one is gone).
pub fn keep_warm_loop(parent: u32) {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return;
    }
    let Ok(self_cgroup) = std::fs::read_to_string("/proc/self/cgroup") else { return };
    let Some(procs) = own_cgroup_procs(&self_cgroup, |p| p.exists()) else { return };
    let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(procs) else { return };
    for _ in 0..1000 {
        use std::io::Write as _;
        let _ = f.write_all(b"0");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str =
        "10:hugetlb:/\n8:pids:/user.slice\n4:memory:/user.slice/x\n1:name=systemd:/u\n0::/user.slice\n";

    #[test]
    fn a_hybrid_host_uses_the_unified_hierarchy() {
        let got = own_cgroup_procs(HYBRID, |p| p.starts_with("/sys/fs/cgroup/unified"));
        assert_eq!(got, Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice/cgroup.procs")));
    }

    #[test]
    fn a_pure_v2_host_uses_sys_fs_cgroup() {
        let got = own_cgroup_procs("0::/system.slice/a.service\n", |p| !p.starts_with("/sys/fs/cgroup/unified"));
        assert_eq!(got, Some(PathBuf::from("/sys/fs/cgroup/system.slice/a.service/cgroup.procs")));
    }

    #[test]
    fn without_v2_the_first_v1_controller_hierarchy_is_used() {
        let v1 = |p: &Path| !p.starts_with("/sys/fs/cgroup/unified") && !p.starts_with("/sys/fs/cgroup/user.slice");
        let got = own_cgroup_procs(HYBRID, v1);
        assert_eq!(got, Some(PathBuf::from("/sys/fs/cgroup/hugetlb/cgroup.procs")));
    }

    #[test]
    fn named_hierarchies_and_odd_lines_are_skipped() {
        let got = own_cgroup_procs("1:name=systemd:/u\ngarbage\n2:pids:../../etc\n3:cpu:/../x\n", |_| true);
        assert_eq!(got, None);
    }

    #[test]
    fn nothing_found_is_none() {
        assert_eq!(own_cgroup_procs(HYBRID, |_| false), None);
    }
}
