//! `confine --uuid=UUID --dir=DIR -- PROGRAM ARGS…`: runs a kvm pod's vsock daemon
//! (vhost-device-vsock, which has no sandbox of its own) confined:
//! - in the pod's `vm` cgroup (joined first, so that everything it starts is counted there);
//! - in its own mount, network, IPC, UTS and PID namespaces: its root is an empty read-only
//!   tmpfs with the host's `/usr` (and the `/lib*` it links through) read-only, for the dynamic
//!   loader and libc, and `DIR`, its socket directory, read-write: nothing else of the host's
//!   files; no network but its Unix sockets; no process but itself to signal;
//! - with no capability at all (bounding set emptied before exec, so root's exec gains none) and
//!   no_new_privs;
//! - under a seccomp allow-list of the system calls it makes (traced while it served the kvm
//!   tests: threads, epoll, Unix sockets with fd passing, eventfds, mapped guest memory);
//!   `socket` only for `AF_UNIX`, `clone` without namespace flags, `clone3` (whose flags a
//!   filter cannot read) made to fail with ENOSYS so that glibc falls back to `clone`. Anything
//!   else fails with EPERM rather than killing it: a refused call is an error the daemon reports
//!   in `kvm/vsock.log`, not a pod that dies silently.
//!
//! This process stays outside as the namespace's parent, waits for the daemon and exits with
//! its status; both die with the supervisor (parent-death SIGKILL).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;

use super::super::seccomp::{Action, CmpOp, Cond, Filter, Rule};
use crate::common::{flag_value, Context, Fail, Step};

/// The host directories the daemon's root shows read-only: what its dynamic loader needs (`/usr`,
/// and the `/lib*` it reaches its libraries through). No `/bin`: it may execute nothing.
const SHARED: [&str; 3] = ["usr", "lib", "lib64"];
/// The mount point of the new root, in the socket directory (private to the daemon's mount
/// namespace; the directory goes with the pod's run dir).
const ROOT_DIR: &str = ".root";

/// The system calls the daemon may make, by name.
const ALLOWED: &[&str] = &[
    // memory, threads, time, signals
    "brk",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "futex",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "arch_prctl",
    "sched_getaffinity",
    "sched_yield",
    "gettid",
    "getpid",
    "tgkill",
    "exit",
    "exit_group",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "restart_syscall",
    "nanosleep",
    "clock_nanosleep",
    "clock_gettime",
    "getrandom",
    "prlimit64",
    "prctl",
    // files: the loader's libraries and its sockets' directory
    "openat",
    "read",
    "pread64",
    "readv",
    "write",
    "writev",
    "pwrite64",
    "lseek",
    "close",
    "dup",
    "dup3",
    "fcntl",
    "ioctl",
    "newfstatat",
    "fstat",
    "statx",
    "access",
    "faccessat2",
    "unlink",
    "unlinkat",
    "readlink",
    "getcwd",
    "memfd_create",
    "ftruncate",
    // events and sockets (Unix only: see the socket rule)
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "eventfd2",
    "poll",
    "ppoll",
    "pipe2",
    "bind",
    "listen",
    "accept4",
    "connect",
    "shutdown",
    "sendmsg",
    "recvmsg",
    "sendto",
    "recvfrom",
    "getsockopt",
    "setsockopt",
    "getsockname",
    "getpeername",
    "socketpair",
    // the exec of the daemon itself (fexecve) is the filter's first call
    "execveat",
    // the filter is several programs, installed one after the other under the first; a
    // program can only narrow what is allowed
    "seccomp",
];

/// The daemon's seccomp filter (see the module's doc).
pub fn filter() -> Result<Filter, Fail> {
    let nr = |name: &str| {
        husk_types::syscalls::number(name)
            .ok_or_else(|| Fail::Invalid(format!("no system call {name} on this architecture")))
    };
    let mut rules = Vec::new();
    for name in ALLOWED {
        rules.push(Rule { nr: nr(name)?, action: Action::Allow, conds: vec![] });
    }
    rules.push(Rule {
        nr: nr("socket")?,
        action: Action::Allow,
        conds: vec![Cond { arg: 0, op: CmpOp::Eq, value: libc::AF_UNIX as u64 }],
    });
    let namespaces = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP) as u64;
    rules.push(Rule {
        nr: nr("clone")?,
        action: Action::Allow,
        conds: vec![Cond { arg: 0, op: CmpOp::MaskedEq(namespaces), value: 0 }],
    });
    rules.push(Rule { nr: nr("clone3")?, action: Action::Errno(libc::ENOSYS as u32), conds: vec![] });
    Ok(Filter { default: Action::Errno(libc::EPERM as u32), rules })
}

/// What the daemon's root holds of the host's top level: a directory to bind read-only, or the
/// symlink the host has there (`/lib -> usr/lib` on a merged-/usr system). `link` reads the
/// host's symlink, `is_dir` says whether the host has a directory there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Bind(PathBuf),
    Link(PathBuf, PathBuf),
}

pub fn root_entries(link: impl Fn(&Path) -> Option<PathBuf>, is_dir: impl Fn(&Path) -> bool) -> Vec<Entry> {
    SHARED
        .iter()
        .filter_map(|name| {
            let host = Path::new("/").join(name);
            match link(&host) {
                Some(target) => Some(Entry::Link(PathBuf::from(name), target)),
                None if is_dir(&host) => Some(Entry::Bind(PathBuf::from(name))),
                None => None,
            }
        })
        .collect()
}

pub fn main(args: &[String], cmd: Option<Vec<husk_types::ByteStr>>) -> Result<i32, Fail> {
    let uuid = flag_value(args, "uuid").ok_or_else(|| Fail::Invalid("confine needs --uuid".into()))?;
    let dir = PathBuf::from(flag_value(args, "dir").ok_or_else(|| Fail::Invalid("confine needs --dir".into()))?);
    if !dir.is_absolute() {
        return Err(Fail::Invalid(format!("confine: --dir={} is not absolute", dir.display())));
    }
    let cmd = cmd.filter(|c| !c.is_empty()).ok_or_else(|| Fail::Invalid("confine needs a program".into()))?;
    let argv: Vec<std::ffi::CString> = cmd
        .iter()
        .map(|a| std::ffi::CString::new(a.as_bytes().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|_| Fail::Invalid("confine: an argument holds a NUL byte".into()))?;
    let program = std::fs::File::open(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(cmd[0].as_bytes()))
        .ctx(Step::Process, || format!("cannot open {}", cmd[0]))?;
    let seccomp = super::super::seccomp::compile_filter(&filter()?)?;
    crate::cgroup::detect()?.join(&uuid, super::host::VM_CGROUP, 0)?;
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWPID;
    nix::sched::unshare(flags).ctx(Step::Process, || "cannot create the daemon's namespaces".into())?;
    let parent = std::process::id();
    match husk_sys::proc::fork().ctx(Step::Process, || "cannot fork".into())? {
        husk_sys::proc::ForkResult::Parent { child } => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Fail::step(Step::Process, "waiting for the daemon", e)),
            }
        },
        husk_sys::proc::ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            // Across the PID namespace getppid() is 0: check the parent through the host's /proc
            // (still mounted here); had it died before the prctl, nothing would kill us.
            if !Path::new(&format!("/proc/{parent}")).exists() {
                std::process::exit(husk_types::pod::exit::STAGE1_FAILED);
            }
            let e = match sandbox(&dir).and_then(|_| drop_privileges(&seccomp)) {
                Ok(()) => {
                    let env: [std::ffi::CString; 0] = [];
                    let e = nix::unistd::fexecve(program.as_fd(), &argv, &env).unwrap_err();
                    Fail::step(Step::Process, format!("cannot execute {}", cmd[0]), e)
                }
                Err(e) => e,
            };
            eprintln!("husk stage1 (confine): {}", e.chain());
            std::process::exit(husk_types::pod::exit::STAGE1_FAILED)
        }
    }
}

/// The daemon's root: an empty tmpfs, the shared host directories read-only, `dir` read-write.
fn sandbox(dir: &Path) -> Result<(), Fail> {
    let m = |src: Option<&Path>, target: &Path, fs: Option<&str>, flags: MsFlags, data: Option<&str>| {
        mount::<Path, Path, str, str>(src, target, fs, flags, data)
            .ctx(Step::Mount, || format!("the vsock daemon's root: cannot mount {}", target.display()))
    };
    m(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    let root = dir.join(ROOT_DIR);
    std::fs::create_dir_all(&root).ctx(Step::Mount, || format!("cannot create {}", root.display()))?;
    m(Some(Path::new("tmpfs")), &root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    let entries = root_entries(|p| std::fs::read_link(p).ok(), |p| p.is_dir());
    for e in &entries {
        match e {
            Entry::Link(name, target) => std::os::unix::fs::symlink(target, root.join(name))
                .ctx(Step::Mount, || format!("cannot create {}", name.display()))?,
            Entry::Bind(name) => {
                let target = root.join(name);
                std::fs::create_dir(&target).ctx(Step::Mount, || format!("cannot create {}", target.display()))?;
                m(Some(&Path::new("/").join(name)), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
                m(None, &target, None, ro, None)?;
            }
        }
    }
    let inner = root.join(dir.strip_prefix("/").unwrap_or(dir));
    std::fs::create_dir_all(&inner).ctx(Step::Mount, || format!("cannot create {}", inner.display()))?;
    m(Some(dir), &inner, None, MsFlags::MS_BIND, None)?;
    let nosuid = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    m(None, &inner, None, nosuid, None)?;
    crate::rootfs::pivot(&root)?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    m(None, Path::new("/"), None, ro, None)?;
    std::env::set_current_dir(dir).ctx(Step::Mount, || format!("cannot enter {}", dir.display()))
}

/// No capability (the bounding set emptied: an exec as root gains none), no_new_privs, the
/// filter.
fn drop_privileges(seccomp: &[seccompiler::BpfProgram]) -> Result<(), Fail> {
    use caps::CapSet;
    for c in caps::all() {
        caps::drop(None, CapSet::Bounding, c).ctx(Step::Process, || format!("cannot drop {c}"))?;
    }
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).ctx(Step::Process, || "cannot clear the capabilities".into())?;
    }
    let _ = caps::clear(None, CapSet::Ambient);
    nix::sys::prctl::set_no_new_privs().ctx(Step::Process, || "cannot set no_new_privs".into())?;
    super::super::seccomp::install(seccomp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_allows_only_unix_sockets_and_threads_without_namespaces() {
        let f = filter().unwrap();
        assert_eq!(f.default, Action::Errno(libc::EPERM as u32));
        let find = |name: &str| {
            let nr = husk_types::syscalls::number(name).unwrap();
            f.rules.iter().find(|r| r.nr == nr).cloned()
        };
        let socket = find("socket").unwrap();
        assert_eq!(socket.conds, vec![Cond { arg: 0, op: CmpOp::Eq, value: libc::AF_UNIX as u64 }]);
        let clone = find("clone").unwrap();
        assert!(matches!(clone.conds[0].op, CmpOp::MaskedEq(m) if m & libc::CLONE_NEWUSER as u64 != 0));
        assert_eq!(find("clone3").unwrap().action, Action::Errno(libc::ENOSYS as u32));
        for denied in ["mount", "unshare", "setns", "ptrace", "execve", "kill", "bpf", "init_module", "chroot"] {
            assert!(find(denied).is_none(), "{denied} is allowed");
        }
        assert!(!super::super::super::seccomp::compile_filter(&f).unwrap().is_empty());
    }

    /// The compiled filter, applied for real: in a child test process (the filter cannot be
    /// taken back, and fork is refused in the threaded test harness), which checks what the
    /// daemon could and could not do under it.
    #[test]
    fn a_confined_daemon_keeps_unix_sockets_and_threads_but_cannot_reach_the_network_mount_exec_or_signal() {
        const CHILD: &str = "HUSK_TEST_CONFINE_FILTER_CHILD";
        if std::env::var_os(CHILD).is_some() {
            use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
            let prog = super::super::super::seccomp::compile_filter(&filter().unwrap()).unwrap();
            nix::sys::prctl::set_no_new_privs().unwrap();
            super::super::super::seccomp::install(&prog).unwrap();
            let eperm = Err(nix::errno::Errno::EPERM);
            assert!(socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).is_ok());
            assert_eq!(socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map(drop), eperm);
            assert_eq!(socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map(drop), eperm);
            assert_eq!(nix::sched::unshare(CloneFlags::CLONE_NEWNET), eperm);
            assert_eq!(mount::<str, str, str, str>(Some("none"), "/mnt", Some("tmpfs"), MsFlags::empty(), None), eperm);
            assert_eq!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), None), eperm);
            // clone3 fails with ENOSYS: glibc falls back to clone, which creates threads.
            assert_eq!(std::thread::spawn(|| 42).join().unwrap(), 42);
            assert!(std::process::Command::new("/bin/true").status().is_err(), "exec is refused");
            return;
        }
        let name = "kvm::confine::tests::a_confined_daemon_keeps_unix_sockets_and_threads_but_cannot_reach_the_network_mount_exec_or_signal";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains("1 passed"), "the child test failed:\n{text}");
    }

    #[test]
    fn the_root_shows_the_hosts_lib_links_as_links_and_its_directories_as_binds() {
        // A merged-/usr host: /lib, /lib64 and /bin are links into /usr.
        let merged = root_entries(
            |p| match p.to_str() {
                Some("/lib") => Some("usr/lib".into()),
                Some("/lib64") => Some("usr/lib64".into()),
                _ => None,
            },
            |p| p == Path::new("/usr"),
        );
        assert_eq!(
            merged,
            vec![
                Entry::Bind("usr".into()),
                Entry::Link("lib".into(), "usr/lib".into()),
                Entry::Link("lib64".into(), "usr/lib64".into()),
            ]
        );
        // A split host without /lib64: directories bound, the missing one left out.
        let split = root_entries(|_| None, |p| p != Path::new("/lib64"));
        assert_eq!(split, vec![Entry::Bind("usr".into()), Entry::Bind("lib".into())]);
    }
}
