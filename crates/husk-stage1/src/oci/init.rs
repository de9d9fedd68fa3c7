//! The processes husk-oci forks: the helper (joins namespaces by path, clones the container's
//! init or forks an exec'd process, reports its host pid, exits, so that the new process is
//! re-parented to the caller: conmon or containerd's shim, which are subreapers), the container
//! init (mounts, pivot_root, console, the process's privileges, then waits on the exec fifo)
//! and an exec'd process. They talk to husk-oci with [`Message`]s over a socket.

use std::collections::BTreeSet;
use std::io::{BufReader, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use husk_types::msg::{self, Message};
use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::Hook;

use super::plan::{ContainerPlan, ProcessPlan, SeccompPlan};
use crate::apply::{apply, MountSys as _};
use crate::common::{Context, Fail, Step};
use crate::process::Never;
use crate::rootfs::RealRoot;

/// What the helper and the init need, inherited across `fork`.
pub struct Spawn<'a> {
    pub plan: &'a ContainerPlan,
    pub create_container: Option<Vec<Hook>>,
    pub start_container: Option<Vec<Hook>>,
    /// The child's end of the socket to husk-oci.
    pub chan: UnixStream,
    /// `O_PATH` fd of the exec fifo, reopened for writing through /proc/self/fd.
    pub fifo: OwnedFd,
    /// The caller's console socket, connected.
    pub console: Option<OwnedFd>,
    pub preserve_fds: u32,
    pub no_pivot: bool,
    /// `--no-new-keyring` not given: the container's own session keyring, named after it.
    pub keyring: Option<std::ffi::CString>,
}

fn report(chan: &UnixStream, e: &Fail) {
    let mut w = chan;
    let _ = msg::send(&mut w, &Message::Failed { reason: e.chain() });
}

fn expect(chan: &UnixStream, what: &[&str]) -> Result<Message, Fail> {
    let mut r = BufReader::new(chan);
    msg::expect(&mut r, what).map_err(|e| Fail::Invalid(format!("talking to husk-oci: {e}")))
}

fn send(chan: &UnixStream, m: &Message) -> Result<(), Fail> {
    let mut w = chan;
    msg::send(&mut w, m).map_err(|e| Fail::Invalid(format!("talking to husk-oci: {e}")))
}

/// Opens every namespace path first (a joined mount namespace changes what later paths name),
/// then joins them in order (user first).
fn join_namespaces(join: &[(CloneFlags, PathBuf)]) -> Result<(), Fail> {
    // Keeps /proc/self/stat open: fork's thread check reads it, and a joined mount
    // namespace's /proc may not show this process.
    husk_sys::proc::check_single_threaded().ctx(Step::Pod, || "cannot check the thread count".into())?;
    let fds = join
        .iter()
        .map(|(flag, p)| {
            let f = std::fs::File::open(p).ctx(Step::Pod, || format!("cannot open namespace {}", p.display()))?;
            Ok((*flag, p, OwnedFd::from(f)))
        })
        .collect::<Result<Vec<_>, Fail>>()?;
    for (flag, p, fd) in fds {
        nix::sched::setns(fd.as_fd(), flag).ctx(Step::Pod, || format!("cannot join namespace {}", p.display()))?;
    }
    Ok(())
}

/// The helper of `create`, in a child of husk-oci: returns its exit status.
pub fn helper(s: Spawn) -> i32 {
    match helper_inner(&s) {
        Ok(pid) => {
            let _ = send(&s.chan, &Message::Spawned { pid });
            0
        }
        Err(e) => {
            report(&s.chan, &e);
            1
        }
    }
}

fn helper_inner(s: &Spawn) -> Result<i32, Fail> {
    expect(&s.chan, &["go"])?;
    join_namespaces(&s.plan.join)?;
    let time = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
    let mut flags = s.plan.create;
    if flags.contains(time) {
        // clone(2) cannot create a time namespace: unshare makes one for the children, whose
        // clocks are set before the first (the init) enters it.
        flags.remove(time);
        nix::sched::unshare(time).ctx(Step::Pod, || "cannot create the time namespace".into())?;
        let offsets: String = s.plan.time_offsets.iter().map(|(c, secs, ns)| format!("{c} {secs} {ns}\n")).collect();
        if !offsets.is_empty() {
            std::fs::write("/proc/self/timens_offsets", offsets)
                .ctx(Step::Pod, || "cannot write linux.timeOffsets".into())?;
        }
    }
    // Idmapped mounts are made here, as the host's root where their sources are; the init
    // attaches them in its own mount namespace.
    let trees = idmapped_trees(&s.plan.idmapped)?;
    match husk_sys::proc::clone_process(flags).ctx(Step::Pod, || "cannot create the container's init".into())? {
        husk_sys::proc::ForkResult::Child => {
            let code = match init(s, trees) {
                Ok(never) => match never {},
                Err((code, e)) => {
                    report(&s.chan, &e);
                    code
                }
            };
            std::process::exit(code);
        }
        husk_sys::proc::ForkResult::Parent { child } => {
            let pid = child.as_raw();
            if let (Some(u), Some(g)) = (&s.plan.uid_map, &s.plan.gid_map) {
                let maps = (|| {
                    std::fs::write(format!("/proc/{pid}/gid_map"), g)
                        .ctx(Step::Pod, || "cannot write linux.gidMappings".into())?;
                    std::fs::write(format!("/proc/{pid}/uid_map"), u)
                        .ctx(Step::Pod, || "cannot write linux.uidMappings".into())
                })();
                if let Err(e) = maps {
                    let _ = husk_sys::proc::kill(pid, libc::SIGKILL);
                    return Err(e);
                }
            }
            Ok(pid)
        }
    }
}

/// A user namespace with these id maps, for idmapped mounts: a child is cloned into a new one,
/// the maps are written, the namespace is kept open by fd and the child ends.
fn userns_with(uid_map: &str, gid_map: &str) -> Result<OwnedFd, Fail> {
    let (r, w) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ctx(Step::Mount, || "cannot create a pipe".into())?;
    match husk_sys::proc::clone_process(CloneFlags::CLONE_NEWUSER)
        .ctx(Step::Mount, || "cannot create a user namespace for an idmapped mount".into())?
    {
        husk_sys::proc::ForkResult::Child => {
            drop(w);
            let mut b = [0u8; 1];
            let _ = rustix::io::read(&r, &mut b);
            std::process::exit(0);
        }
        husk_sys::proc::ForkResult::Parent { child } => {
            drop(r);
            let pid = child.as_raw();
            let made = (|| {
                std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)
                    .ctx(Step::Mount, || "cannot write an idmapped mount's uidMappings".into())?;
                std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)
                    .ctx(Step::Mount, || "cannot write an idmapped mount's gidMappings".into())?;
                let f = std::fs::File::open(format!("/proc/{pid}/ns/user"))
                    .ctx(Step::Mount, || "cannot open an idmapped mount's user namespace".into())?;
                Ok(OwnedFd::from(f))
            })();
            drop(w);
            let _ = nix::sys::wait::waitpid(child, None);
            made
        }
    }
}

fn idmapped_trees(mounts: &[super::plan::IdmapMount]) -> Result<Vec<OwnedFd>, Fail> {
    let mut namespaces: Vec<((String, String), OwnedFd)> = Vec::new();
    let mut trees = Vec::new();
    for m in mounts {
        let key = (m.uid_map.clone(), m.gid_map.clone());
        let ns = match namespaces.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                namespaces.push((key, userns_with(&m.uid_map, &m.gid_map)?));
                namespaces.len() - 1
            }
        };
        let tree = husk_sys::idmap::idmapped_tree(&m.source, &namespaces[ns].1, m.recursive)
            .ctx(Step::Mount, || format!("cannot make an idmapped clone of {}", m.source.display()))?;
        trees.push(tree);
    }
    Ok(trees)
}

/// The container's init. Never returns on success (it becomes the container's process).
fn init(s: &Spawn, trees: Vec<OwnedFd>) -> Result<Never, (i32, Fail)> {
    let setup = |e: Fail| (1, e);
    expect(&s.chan, &["go"]).map_err(setup)?;
    let p = s.plan;
    if p.uid_map.is_some() {
        // Root of the new user namespace, if the mappings map it.
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(Step::Pod, || "cannot become gid 0 in the user namespace (is it mapped?)".into())
            .map_err(setup)?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(Step::Pod, || "cannot become uid 0 in the user namespace (is it mapped?)".into())
            .map_err(setup)?;
    }
    if let Some(adj) = p.process.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .ctx(Step::Process, || format!("cannot set process.oomScoreAdj to {adj}"))
            .map_err(setup)?;
    }
    if let Some(name) = &s.keyring {
        // A kernel without keyrings (ENOSYS) has nothing to share either.
        match husk_sys::proc::join_session_keyring(name) {
            Err(e) if e.raw_os_error() != Some(libc::ENOSYS) => {
                return Err(setup(Fail::step(Step::Process, "cannot create the container's session keyring", e)))
            }
            _ => {}
        }
    }
    mount_root(p).map_err(setup)?;
    let rootfd = husk_sys::resolve::open_dir(&p.rootfs)
        .ctx(Step::Mount, || format!("cannot open root.path {}", p.rootfs.display()))
        .map_err(setup)?;
    let mut real = RealRoot::new(rootfd, p.rootfs.clone());
    real.trees = trees;
    apply(&p.mounts, &mut real).map_err(setup)?;
    drop(real);
    send(&s.chan, &Message::Mounted).map_err(setup)?;
    let state = match expect(&s.chan, &["continue"]).map_err(setup)? {
        Message::Continue { state } => state,
        _ => unreachable!("expect returns only the messages asked for"),
    };
    super::hooks::run_all("createContainer", &s.create_container, &state).map_err(|e| (1, Fail::Invalid(e)))?;
    if s.no_pivot {
        move_root(&p.rootfs).map_err(setup)?;
    } else {
        crate::rootfs::pivot(&p.rootfs).map_err(setup)?;
    }
    let rootfd =
        husk_sys::resolve::open_dir(Path::new("/")).ctx(Step::Mount, || "cannot open /".into()).map_err(setup)?;
    let mut real = RealRoot::new(rootfd, PathBuf::from("/"));
    if p.process.terminal {
        let Some(sock) = &s.console else {
            return Err(setup(Fail::Invalid("process.terminal is set but no --console-socket was given".into())));
        };
        console(sock, p.process.console_size, Some(&mut real)).map_err(setup)?;
    }
    for (key, value) in &p.sysctl {
        std::fs::write(Path::new("/proc/sys").join(key), value)
            .ctx(Step::Pod, || format!("cannot set linux.sysctl {} to {value:?}", key.replace('/', ".")))
            .map_err(setup)?;
    }
    if let Some(h) = &p.hostname {
        nix::unistd::sethostname(h).ctx(Step::Pod, || format!("cannot set hostname {h:?}")).map_err(setup)?;
    }
    if let Some(d) = &p.domainname {
        rustix::system::setdomainname(d.as_bytes())
            .ctx(Step::Pod, || format!("cannot set domainname {d:?}"))
            .map_err(setup)?;
    }
    // Read-only paths (/proc/sys) last: the sysctls above are written through them.
    apply(&p.finish, &mut real).map_err(setup)?;
    drop(real);
    if let Some(per) = p.personality {
        nix::sys::personality::set(nix::sys::personality::Persona::from_bits_retain(per as i32))
            .ctx(Step::Pod, || "cannot set linux.personality".into())
            .map_err(setup)?;
    }
    become_process(&p.process, p.seccomp.as_ref()).map_err(setup)?;
    // Once created, the init (a copy of husk-oci until it execs) can be seen by a process exec'd
    // into the container: non-dumpable, its /proc/PID/exe and memory are closed to that
    // process, so the host's binary cannot be reopened for writing through them
    // (CVE-2019-5736). Not earlier: a non-dumpable process's /proc/self files belong to the
    // host's root, which a user namespace's root may not write (oom_score_adj).
    nix::sys::prctl::set_dumpable(false)
        .ctx(Step::Process, || "cannot make the init non-dumpable".into())
        .map_err(setup)?;
    send(&s.chan, &Message::Ready).map_err(setup)?;
    // From here on errors go to the container's stderr: husk-oci create has returned.
    let started = (|| -> Result<(), Fail> {
        let fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(husk_sys::resolve::proc_fd_path(&s.fifo))
            .ctx(Step::Pod, || "cannot open the exec fifo".into())?;
        (&fifo).write_all(b"0").ctx(Step::Pod, || "cannot write the exec fifo".into())?;
        Ok(())
    })();
    if let Err(e) = started {
        eprintln!("husk-oci init: {}", e.chain());
        std::process::exit(1);
    }
    if let Err(e) = super::hooks::run_all("startContainer", &s.start_container, &state) {
        eprintln!("husk-oci init: {e}");
        std::process::exit(1);
    }
    let e = exec(&p.process, p.seccomp.as_ref(), s.preserve_fds);
    eprintln!("husk-oci init: {}", e.1.chain());
    std::process::exit(e.0);
}

/// The container's view of `/`: the host's mounts stop propagating in (slave, or as
/// `rootfsPropagation` says), and the root becomes a mount point of its own for pivot_root.
fn mount_root(p: &ContainerPlan) -> Result<(), Fail> {
    mount::<str, str, str, str>(None, "/", None, MsFlags::from_bits_truncate(p.root_propagation), None)
        .ctx(Step::Mount, || "cannot set the propagation of /".into())?;
    mount::<Path, Path, str, str>(Some(&p.rootfs), &p.rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
        .ctx(Step::Mount, || format!("cannot bind root.path {} onto itself", p.rootfs.display()))?;
    if p.rootfs_shared {
        mount::<str, Path, str, str>(None, &p.rootfs, None, MsFlags::MS_SHARED, None)
            .ctx(Step::Mount, || "cannot make the root shared".into())?;
    }
    Ok(())
}

/// `--no-pivot`: move the root over / and chroot into it (for a root on a ramfs, where
/// pivot_root is refused).
fn move_root(root: &Path) -> Result<(), Fail> {
    std::env::set_current_dir(root).ctx(Step::Mount, || format!("cannot enter {}", root.display()))?;
    mount::<str, str, str, str>(Some("."), "/", None, MsFlags::MS_MOVE, None)
        .ctx(Step::Mount, || "cannot move the root over /".into())?;
    nix::unistd::chroot(".").ctx(Step::Mount, || "cannot chroot into the root".into())?;
    std::env::set_current_dir("/").ctx(Step::Mount, || "cannot chdir to /".into())
}

/// A pty from the container's devpts, its master sent to the caller's console socket (with
/// the pty's name, as runc does), its slave the controlling terminal and stdio; bound over
/// /dev/console for the init.
pub fn console(sock: &OwnedFd, size: Option<(u16, u16)>, dev_console: Option<&mut RealRoot>) -> Result<(), Fail> {
    let pty = husk_sys::tty::open_pty().ctx(Step::Process, || "cannot open a pty in the container".into())?;
    if let Some((rows, cols)) = size {
        husk_sys::tty::set_winsize(&pty.slave, rows, cols).ctx(Step::Process, || "cannot size the pty".into())?;
    }
    husk_sys::tty::send_fd_with(sock, pty.path.as_os_str().as_encoded_bytes(), pty.master.as_fd())
        .ctx(Step::Process, || "cannot send the pty to the console socket".into())?;
    drop(pty.master);
    if let Some(root) = dev_console {
        let t = root.target(&crate::plan::Target::File("dev/console".into()))?;
        root.bind_flags(&pty.path, &t, false, 0)?;
    }
    husk_sys::tty::make_controlling(&pty.slave).ctx(Step::Process, || "cannot make the pty the terminal".into())
}

fn caps_of(names: &BTreeSet<String>) -> caps::CapsHashSet {
    names.iter().filter_map(|n| caps::Capability::from_str(n).ok()).collect()
}

/// rlimits, umask, the seccomp filter (here when no_new_privs is off: installing it needs
/// CAP_SYS_ADMIN, which is dropped next), ids and the five capability sets, no_new_privs, the
/// working directory.
pub fn become_process(p: &ProcessPlan, seccomp: Option<&SeccompPlan>) -> Result<(), Fail> {
    use caps::CapSet;
    for (res, soft, hard) in &p.rlimits {
        nix::sys::resource::setrlimit(*res, *soft, *hard).map_err(|e| {
            let hint = if e == nix::errno::Errno::EPERM {
                " (raising a hard limit needs CAP_SYS_RESOURCE, which this runtime lacks; lower it in process.rlimits)"
            } else {
                ""
            };
            Fail::Invalid(format!("process.rlimits: cannot set {res:?} to {soft}/{hard}: {e}{hint}"))
        })?;
    }
    if let Some(m) = p.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m & 0o777));
    }
    if let (Some(sc), false) = (seccomp, p.no_new_privileges) {
        install_seccomp(sc)?;
    }
    let bounding = caps_of(&p.caps.bounding);
    for c in caps::all() {
        if !bounding.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c)
                .ctx(Step::Process, || format!("cannot drop {c} from the bounding set"))?;
        }
    }
    // Inheritable first, while CAP_SETPCAP is still effective.
    let inheritable: caps::CapsHashSet = caps_of(&p.caps.inheritable).intersection(&bounding).copied().collect();
    caps::set(None, CapSet::Inheritable, &inheritable)
        .ctx(Step::Process, || "cannot set process.capabilities.inheritable".into())?;
    nix::sys::prctl::set_keepcaps(true).ctx(Step::Process, || "cannot keep capabilities across setuid".into())?;
    let groups: Vec<Gid> = p.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        // A user namespace whose gid_map was written with setgroups denied.
        if !(groups.is_empty() && e == nix::errno::Errno::EPERM) {
            return Err(Fail::Invalid(format!("process.user.additionalGids: cannot set them: {e}")));
        }
    }
    let (uid, gid) = (Uid::from_raw(p.uid), Gid::from_raw(p.gid));
    nix::unistd::setresgid(gid, gid, gid).ctx(Step::Process, || format!("cannot set process.user.gid {}", p.gid))?;
    nix::unistd::setresuid(uid, uid, uid).ctx(Step::Process, || format!("cannot set process.user.uid {}", p.uid))?;
    nix::sys::prctl::set_keepcaps(false).ctx(Step::Process, || "cannot reset keepcaps".into())?;
    // A capability this runtime itself does not hold cannot be given (root lacks
    // CAP_SYS_RESOURCE on some hosts); crun behaves the same.
    let have = caps::read(None, CapSet::Permitted).ctx(Step::Process, || "cannot read capabilities".into())?;
    let permitted: caps::CapsHashSet = caps_of(&p.caps.permitted).intersection(&have).copied().collect();
    let effective: caps::CapsHashSet = caps_of(&p.caps.effective).intersection(&permitted).copied().collect();
    caps::set(None, CapSet::Effective, &effective)
        .ctx(Step::Process, || "cannot set process.capabilities.effective".into())?;
    caps::set(None, CapSet::Permitted, &permitted)
        .ctx(Step::Process, || "cannot set process.capabilities.permitted".into())?;
    let _ = caps::clear(None, CapSet::Ambient);
    for c in caps_of(&p.caps.ambient) {
        if permitted.contains(&c) && inheritable.contains(&c) {
            caps::raise(None, CapSet::Ambient, c).ctx(Step::Process, || format!("cannot raise ambient {c}"))?;
        }
    }
    if p.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().ctx(Step::Process, || "cannot set no_new_privs".into())?;
    }
    std::env::set_current_dir(&p.cwd).ctx(Step::Process, || format!("cannot enter process.cwd {}", p.cwd.display()))
}

fn install_seccomp(sc: &SeccompPlan) -> Result<(), Fail> {
    let programs = crate::seccomp::compile_filter(&sc.filter)?;
    crate::seccomp::install_with_flags(&programs, sc.flags)
}

/// The last steps before the process's program: the seccomp filter when no_new_privs is on,
/// fds 3.. closed except the preserved ones, default signal dispositions, execve.
pub fn exec(p: &ProcessPlan, seccomp: Option<&SeccompPlan>, preserve_fds: u32) -> (i32, Fail) {
    let path_var = p
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let arg0 = std::ffi::OsStr::new(&p.args[0]);
    let Some(prog) = crate::common::lookup_path(arg0, &path_var) else {
        return (127, Fail::Invalid(format!("exec {:?}: not found in $PATH ({path_var})", p.args[0])));
    };
    let cstr =
        |s: &str| std::ffi::CString::new(s).map_err(|_| (126, Fail::Invalid(format!("{s:?} contains a NUL byte"))));
    let built = (|| {
        let prog_c = std::ffi::CString::new(prog.as_os_str().as_encoded_bytes())
            .map_err(|_| (126, Fail::Invalid("bad program path".into())))?;
        let argv = p.args.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
        let env = p.env.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
        Ok::<_, (i32, Fail)>((prog_c, argv, env))
    })();
    let (prog_c, argv, env) = match built {
        Ok(b) => b,
        Err(e) => return e,
    };
    if let Err(e) = husk_sys::proc::cloexec_from(3 + preserve_fds) {
        return (126, Fail::Invalid(format!("cannot close the runtime's fds: {e}")));
    }
    if preserve_fds > 0 {
        if let Err(e) = husk_sys::proc::keep_across_exec(3, preserve_fds) {
            return (126, Fail::Invalid(format!("--preserve-fds {preserve_fds}: {e}")));
        }
    }
    husk_sys::proc::reset_signal_dispositions();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    if let (Some(sc), true) = (seccomp, p.no_new_privileges) {
        if let Err(e) = install_seccomp(sc) {
            return (126, e);
        }
    }
    let e = nix::unistd::execve(&prog_c, &argv, &env).unwrap_err();
    let code = if e == nix::errno::Errno::ENOENT { 127 } else { 126 };
    (code, Fail::Invalid(format!("exec {}: {e}", prog.display())))
}

/// What `exec` needs in its helper and process.
pub struct ExecSpawn<'a> {
    pub process: &'a ProcessPlan,
    pub seccomp: Option<&'a SeccompPlan>,
    /// The container's init, whose namespaces are joined.
    pub init_pid: i32,
    pub chan: UnixStream,
    pub console: Option<OwnedFd>,
    pub preserve_fds: u32,
}

/// The helper of `exec`: joins the init's namespaces, forks the process (a child in the
/// container's PID namespace), reports its pid, returns its own exit status.
pub fn exec_helper(s: ExecSpawn) -> i32 {
    let forked = (|| -> Result<i32, Fail> {
        expect(&s.chan, &["go"])?;
        if let Some(adj) = s.process.oom_score_adj {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string())
                .ctx(Step::Process, || format!("cannot set process.oomScoreAdj to {adj}"))?;
        }
        let mine = |n: &str| std::fs::metadata(format!("/proc/self/ns/{n}")).ok();
        let mut join = Vec::new();
        // User first; mnt last (its setns also moves the root and working directory).
        for (flag, n) in [
            (CloneFlags::CLONE_NEWUSER, "user"),
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWPID, "pid"),
            (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
            (CloneFlags::from_bits_retain(libc::CLONE_NEWTIME), "time"),
            (CloneFlags::CLONE_NEWNS, "mnt"),
        ] {
            use std::os::unix::fs::MetadataExt;
            let theirs = format!("/proc/{}/ns/{n}", s.init_pid);
            let Ok(t) = std::fs::metadata(&theirs) else { continue };
            if mine(n).is_some_and(|m| m.ino() == t.ino() && m.dev() == t.dev()) {
                continue;
            }
            join.push((flag, PathBuf::from(theirs)));
        }
        join_namespaces(&join)?;
        match husk_sys::proc::fork().ctx(Step::Pod, || "cannot fork the process".into())? {
            husk_sys::proc::ForkResult::Child => {
                let (code, e) = match exec_process(&s) {
                    Ok(never) => match never {},
                    Err(e) => e,
                };
                report(&s.chan, &e);
                std::process::exit(code);
            }
            husk_sys::proc::ForkResult::Parent { child } => Ok(child.as_raw()),
        }
    })();
    match forked {
        Ok(pid) => {
            let _ = send(&s.chan, &Message::Spawned { pid });
            0
        }
        Err(e) => {
            report(&s.chan, &e);
            1
        }
    }
}

fn exec_process(s: &ExecSpawn) -> Result<Never, (i32, Fail)> {
    let setup = |e: Fail| (126, e);
    std::env::set_current_dir("/").ctx(Step::Process, || "cannot enter the container's root".into()).map_err(setup)?;
    if s.process.terminal {
        let Some(sock) = &s.console else {
            return Err(setup(Fail::Invalid("a terminal needs a console socket".into())));
        };
        console(sock, s.process.console_size, None).map_err(setup)?;
    }
    become_process(s.process, s.seccomp).map_err(setup)?;
    // Visible in the container until it execs: as the init, non-dumpable (CVE-2019-5736).
    nix::sys::prctl::set_dumpable(false)
        .ctx(Step::Process, || "cannot make the process non-dumpable".into())
        .map_err(setup)?;
    Err(exec(s.process, s.seccomp, s.preserve_fds))
}
