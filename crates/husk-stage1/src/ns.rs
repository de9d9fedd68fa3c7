//! The `ns` flavor: `run`, `enter`, `gc` entrypoints.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use husk_sys::proc::{fork, ForkResult};
use husk_types::abi::{self, PodDir};
use husk_types::msg::{self, Message};
use husk_types::pod::{exit, App, AppStatus, NetMode, Notify, Outcome, PodManifest, Stage1State, Stdio, ABI_VERSION};
use husk_types::ByteStr;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use crate::cgroup::{self, Layout};
use crate::cleanup::Cleanup;
use crate::cni;
use crate::common::{
    debug_enabled, flag_value, pod_dir, read_manifest, read_stage1_state, write_json, write_status, Context, Fail, Step,
};
use crate::notify::{Notifier, Proxy};
use crate::plan::PodNet;
use crate::process::{
    become_app_user, exec_in_root, exec_in_root_with, status_of, wire_stdio, ExecExtras, Listen, Never,
};
use crate::rootfs;

/// How long apps get between SIGTERM and SIGKILL when the pod stops itself.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// `args` are the raw arguments: the command of `enter` (after `--`) is bytes, passed unchanged;
/// every other argument must be UTF-8.
pub fn main(raw: Vec<std::ffi::OsString>) -> i32 {
    let (args, cmd) = crate::common::split_args(raw);
    let rest = args.get(2..).unwrap_or(&[]).to_vec();
    let r = match args.get(1).map(String::as_str) {
        Some("run") => run(&rest),
        Some("enter") => enter(&rest, cmd),
        Some("gc") => gc(&rest).map(|_| 0),
        _ => Err(Fail::Invalid("usage: husk-stage1-ns run|enter|gc … (see docs/stage1-abi.md)".into())),
    };
    exit_code(r)
}

fn exit_code(r: Result<i32, Fail>) -> i32 {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk stage1: {}", e.chain());
            exit::STAGE1_FAILED
        }
    }
}

/// How long the supervisor and the pod init run before they give back their startup memory
/// (`husk_sys::proc::IdleRelease`): a pod that ends sooner never pays for it.
const IDLE_AFTER: Duration = Duration::from_millis(100);

pub(crate) fn signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
    ] {
        s.add(sig);
    }
    s
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Fail> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(Step::Pod, || "cannot create a pipe".into())
}

/// `run [--debug] UUID`, in the pod dir, with the pod lock on fd `HUSK_LOCK_FD`.
fn run(args: &[String]) -> Result<i32, Fail> {
    let dir = pod_dir()?;
    let m = read_manifest(&dir)?;
    if args.last().map(String::as_str) != Some(m.uuid.as_str()) {
        return Err(Fail::Invalid(format!("the last argument must be the pod UUID {}", m.uuid)));
    }
    let (lock, ready) = crate::common::take_run_fds(&dir)?;
    run_pod(&dir, &m, lock, ready, debug_enabled(args))
}

/// The `run` entrypoint for a process that hands over to it instead of exec'ing
/// `husk-stage1-ns` (husk's `run` and `run-prepared` in the foreground, when the `ns` stage1
/// installed is the one beside husk): the same work on what stage0 already holds (the pod's
/// directory, its manifest, its lock), without the second program start and the manifest read
/// back. The caller checked `husk_sys::proc::may_hand_over` (one thread, no fd open that an
/// exec would have closed). Returns the pod's exit status, as `run`'s process would exit with.
pub fn run_handed_over(dir: &Path, m: &PodManifest, lock: husk_sys::Lock, debug: bool) -> i32 {
    let r = crate::common::take_handed_over(dir).and_then(|()| run_pod(dir, m, lock, None, debug));
    exit_code(r)
}

fn run_pod(
    dir: &Path,
    m: &PodManifest,
    lock: husk_sys::Lock,
    mut ready: Option<std::fs::File>,
    debug: bool,
) -> Result<i32, Fail> {
    // An app with a terminal: its relay is forked first, holding nothing of the supervisor's
    // but its stdio (the pod lock and the ready pipe must close with the supervisor).
    let relay = if m.stdio.has_terminal() {
        let (relay_end, app_end) = crate::console::sockets()?;
        match fork().ctx(Step::Process, || "cannot start the terminal relay".into())? {
            ForkResult::Child => {
                drop(lock);
                drop(ready);
                drop(app_end);
                std::process::exit(crate::console::relay_process(dir, m, relay_end));
            }
            ForkResult::Parent { child } => Some((child, app_end)),
        }
    } else {
        None
    };
    let (relay_pid, console) = relay.unzip();

    let result = supervise(dir, m, debug, &mut ready, console);
    if let Some(pid) = relay_pid {
        // The app's last output reaches the terminal (or the log) before the pod is over.
        wait_briefly(pid);
    }
    if let Err(e) = &result {
        if let Some(r) = ready.as_mut() {
            let _ = msg::send(r, &Message::Failed { reason: e.chain() });
        }
    }
    // The pod has exited: release its lock before the cleanup starts, so that the cleanup
    // (which holds cleanup.lock, taken in `supervise`) never holds the pod's.
    drop(lock);
    result.map(|Exited { code, cleanup, host_mnt }| {
        cleanup.spawn(&host_mnt);
        crate::common::run_exit_command(m);
        code
    })
}

/// How a pod that started ended: its status, and the cleanup of what it leaves, to be run once
/// the pod lock is released (the supervisor is still in its own mount namespace).
struct Exited {
    code: i32,
    cleanup: Cleanup,
    host_mnt: std::fs::File,
}

fn supervise(
    dir: &Path,
    m: &PodManifest,
    debug: bool,
    ready: &mut Option<std::fs::File>,
    console: Option<OwnedFd>,
) -> Result<Exited, Fail> {
    let layout = cgroup::detect()?;
    let plugin_dirs = match &m.net {
        NetMode::Cni { plugin_dirs, .. } => plugin_dirs.clone(),
        _ => vec![],
    };
    let net_dirs = matches!(m.net, NetMode::Cni { .. }).then_some(plugin_dirs.as_slice());
    let host_mnt =
        std::fs::File::open("/proc/self/ns/mnt").ctx(Step::Pod, || "cannot open the host's mount namespace".into())?;
    // systemd: who says ready, and the socket-activated fds (ours: `husk run` exec'd into us,
    // or handed over to us).
    let notifier = Notifier::from_env()?;
    let notify_mode = crate::notify::mode(m, notifier.is_some());
    let proxy = match &notify_mode {
        Notify::App(_) => Some(Proxy::bind(dir)?),
        _ => None,
    };
    let listen = Listen::from_env();
    let started = (|| -> Result<_, Fail> {
        let cgroups = CgroupsWhen::of(m);
        if cgroups == CgroupsWhen::First {
            create_cgroups(&layout, m)?;
        }
        let (pin, states) = cni::create_and_setup(dir, m)?;
        let netns = match pin {
            Some(pin) => Some(OwnedFd::from(
                std::fs::File::open(&pin).ctx(Step::Pod, || format!("cannot open {}", pin.display()))?,
            )),
            // A `--net=none` pod's namespace made ahead, a spare; none (the first pod after a
            // reboot, or all taken), and the init makes its own.
            None if crate::plan::netns_ahead(m) => husk_sys::netns::take_spare(Path::new(abi::SPARE_NETNS_DIR)),
            None => None,
        };
        rootfs::write_etc(dir, m, cni::dns_from(&states))?;
        start_pod(dir, m, &layout, cgroups, netns, console, listen.as_ref())
    })();
    let (init, rep_r) = match started {
        Ok(x) => x,
        Err(e) => {
            Cleanup::prepare(dir, m, &layout, net_dirs).run_here(&host_mnt);
            return Err(e);
        }
    };
    let supervisor = nix::unistd::getpid();
    let sigs = signals();

    // The pod init reports each app's PID (in the pod's namespace), then ready or failed.
    let mut app_ns_pids = BTreeMap::new();
    let mut start_error = None;
    let mut report = BufReader::new(std::fs::File::from(rep_r));
    loop {
        match msg::expect(&mut report, &["app-started", "ready", "failed"]) {
            Ok(Message::AppStarted { app, pid }) if m.apps.iter().any(|a| a.name == app) && pid > 0 => {
                app_ns_pids.insert(app, pid);
            }
            Ok(Message::Ready) => break,
            Ok(Message::Failed { reason }) => {
                start_error = Some(reason);
                break;
            }
            Ok(other) => {
                start_error = Some(format!("the pod init reported {other:?}, which names no app of this pod"));
                break;
            }
            // The init died before reporting (it says why on stderr), or sent garbage.
            Err(e) => {
                start_error = Some(format!("pod init: {e}"));
                break;
            }
        }
    }
    drop(report);
    let app_pids = host_pids(init.as_raw(), &app_ns_pids);
    // Held for the cleanup (Cleanup::hold): an app that has already exited is simply not held.
    // The init's is the supervisor's own unless it has private users (plan::init_namespaces).
    let mount_namespaces: Vec<std::fs::File> = std::iter::once(init.as_raw())
        .chain(app_pids.values().copied())
        .filter_map(|pid| std::fs::File::open(format!("/proc/{pid}/ns/mnt")).ok())
        .collect();
    let state = Stage1State {
        abi_version: ABI_VERSION,
        supervisor_pid: supervisor.as_raw(),
        init_pid: init.as_raw(),
        started: chrono::Utc::now(),
        cgroup: Some(abi::pod_cgroup(&m.uuid)),
        app_pids,
    };
    write_json(&PodDir::new(dir).stage1_state(), &state)?;
    if debug {
        eprintln!("husk stage1: pod {} running, init pid {}", m.uuid, init);
    }
    if let Some(r) = ready.as_mut() {
        let _ = match &start_error {
            None => msg::send(r, &Message::Ready),
            Some(e) => msg::send(r, &Message::Failed { reason: e.clone() }),
        };
    }
    *ready = None;
    if let (Notify::Pod, Some(n), None) = (&notify_mode, &notifier, &start_error) {
        n.send(&crate::notify::ready(supervisor.as_raw()));
    }

    // The cleanup's lock is taken now, while the apps run, not after the init's exit, where it
    // would delay the status (a file made and locked). Still under the pod lock, so that no `gc`
    // can slip in between; `gc` never collects a pod whose lock is held.
    let mut cleanup = Cleanup::prepare(dir, m, &layout, net_dirs);
    cleanup.hold(mount_namespaces);

    // From here on the supervisor only waits: once the pod has run a while, give back the memory
    // its setup needed (and again each time it goes back to waiting).
    let mut idle = husk_sys::proc::IdleRelease::after(IDLE_AFTER);

    // Supervise: forward signals to the pod init until it exits. The supervisor owns the stop
    // deadline: SIGTERM or SIGINT starts it (`husk stop` says how long in stop.json), and when it
    // passes, or on a SIGALRM from `husk stop --force`, the init is told to kill the apps (its
    // SIGALRM), which it does and records each one's status (137).
    let mut stopping = false;
    // With an app's notify socket, the supervisor waits on it and on the signals together.
    let events = match &proxy {
        Some(p) => Some(Events::new(&sigs, p)?),
        None => None,
    };
    let code = loop {
        let sig = match &events {
            None => match idle.wait(&sigs).ctx(Step::Pod, || "sigwait failed".into())? {
                Some(s) => s,
                None => continue,
            },
            Some(ev) => match ev.next(idle.before_wait())? {
                Event::Signal(s) => s,
                Event::Notify => {
                    ev.proxy.forward(notifier.as_ref(), supervisor.as_raw());
                    continue;
                }
                Event::Timeout => continue,
            },
        };
        match sig {
            Signal::SIGCHLD => match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => break c,
                Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                _ => continue,
            },
            Signal::SIGALRM => {
                let _ = kill(init, Signal::SIGALRM);
            }
            other => {
                let _ = kill(init, other);
                if matches!(other, Signal::SIGTERM | Signal::SIGINT) && !stopping {
                    stopping = true;
                    if let (Notify::Pod, Some(n)) = (&notify_mode, &notifier) {
                        n.send("STOPPING=1\n");
                    }
                    match stop_timeout(dir, m) {
                        t if t.is_zero() => {
                            let _ = kill(init, Signal::SIGALRM);
                        }
                        // alarm(2) counts whole seconds: round up, so apps never get less.
                        t => {
                            nix::unistd::alarm::set(t.as_secs_f64().ceil().min(u32::MAX as f64) as u32);
                        }
                    }
                }
            }
        }
    };
    Ok(Exited { code, cleanup, host_mnt })
}

/// How long the apps get between SIGTERM and SIGKILL: what `husk stop --timeout` asked for, or
/// the pod's `--stop-timeout` (a SIGTERM from systemd or a shell), or [`STOP_GRACE`].
pub(crate) fn stop_timeout(dir: &Path, m: &PodManifest) -> Duration {
    std::fs::read(PodDir::new(dir).stop_request())
        .ok()
        .and_then(|d| serde_json::from_slice::<husk_types::pod::StopRequest>(&d).ok())
        .map(|r| Duration::from_millis(r.timeout_ms))
        .unwrap_or_else(|| pod_stop_timeout(m))
}

fn pod_stop_timeout(m: &PodManifest) -> Duration {
    m.systemd.stop_timeout_ms.map(Duration::from_millis).unwrap_or(STOP_GRACE)
}

/// What the supervisor waits for when an app has a notify socket.
enum Event {
    Signal(Signal),
    Notify,
    /// The wait's time passed.
    Timeout,
}

/// The supervisor's signals as a signalfd (they are blocked already), polled with the app's
/// notify socket.
struct Events<'a> {
    sigfd: nix::sys::signalfd::SignalFd,
    proxy: &'a Proxy,
}

impl<'a> Events<'a> {
    fn new(sigs: &SigSet, proxy: &'a Proxy) -> Result<Events<'a>, Fail> {
        let sigfd = nix::sys::signalfd::SignalFd::with_flags(sigs, nix::sys::signalfd::SfdFlags::SFD_CLOEXEC)
            .ctx(Step::Pod, || "cannot create a signalfd".into())?;
        Ok(Events { sigfd, proxy })
    }

    fn next(&self, timeout: Option<Duration>) -> Result<Event, Fail> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        // Whole milliseconds, rounded up (a zero timeout would spin).
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => {
                PollTimeout::try_from(t.as_millis().clamp(1, i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        loop {
            let mut fds = [
                PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.proxy.sock.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(Event::Timeout),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Fail::step(Step::Pod, "poll failed", e)),
            }
            let sig_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
            let notify_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
            if sig_ready {
                if let Some(info) = self.sigfd.read_signal().ctx(Step::Pod, || "cannot read the signalfd".into())? {
                    if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
                        return Ok(Event::Signal(s));
                    }
                }
            }
            if notify_ready {
                return Ok(Event::Notify);
            }
        }
    }
}

/// Creates the pod: the supervisor's private mount namespace holding the app roots, and the pod
/// init cloned into the pod's namespaces. Returns the init and the read end of its report pipe.
///
/// The init is created with `clone(CLONE_NEWUSER | CLONE_NEWPID | …)` in one step, so that with
/// private users its PID namespace belongs to its user namespace (else /proc could not be mounted
/// inside). Its mount namespace is a copy taken before the roots exist; `<pod>/apps` is a shared
/// mount, so the roots the supervisor mounts afterwards (through idmapped layers, which need the
/// init's user namespace to exist first) propagate into it. The init waits for `Go`. With
/// [`CgroupsWhen::AfterGo`], the pod's cgroups are created and limited after `Go`, while the init
/// and its apps set up their mounts, and each app waits for that before it joins its cgroup.
fn start_pod(
    dir: &Path,
    m: &PodManifest,
    layout: &Layout,
    cgroups: CgroupsWhen,
    netns: Option<OwnedFd>,
    console: Option<OwnedFd>,
    listen: Option<&Listen>,
) -> Result<(Pid, OwnedFd), Fail> {
    use nix::mount::{mount, MsFlags};
    let sigs = signals();
    sigs.thread_block().ctx(Step::Pod, || "cannot block signals".into())?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .ctx(Step::Pod, || "cannot create the supervisor's mount namespace".into())?;
    rootfs::make_root_slave()?;
    let apps = PodDir::new(dir).apps_dir();
    mount::<Path, Path, str, str>(Some(&apps), &apps, None, MsFlags::MS_BIND, None)
        .ctx(Step::Pod, || format!("cannot bind {}", apps.display()))?;
    mount::<str, Path, str, str>(None, &apps, None, MsFlags::MS_SHARED, None)
        .ctx(Step::Pod, || format!("cannot share {}", apps.display()))?;

    let (go_r, go_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    let (cg_r, cg_w) = match cgroups {
        CgroupsWhen::AfterGo => pipe().map(|(r, w)| (Some(r), Some(w)))?,
        CgroupsWhen::First => (None, None),
    };
    let net = crate::plan::pod_net(m, netns.is_some());
    let flags = crate::plan::init_namespaces(m, net);
    // With a namespace made before (CNI networks, or made ahead) the init is born in it.
    let host_net = std::fs::File::open("/proc/self/ns/net")
        .ctx(Step::Pod, || "cannot open the host's network namespace".into())?;
    if let Some(ns) = &netns {
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
            .ctx(Step::Pod, || "cannot enter the pod's network namespace".into())?;
    }
    let supervisor = nix::unistd::getpid();
    let cloned = husk_sys::proc::clone_process(flags);
    drop(netns);
    if net == PodNet::Made && !matches!(cloned, Ok(ForkResult::Child)) {
        nix::sched::setns(&host_net, CloneFlags::CLONE_NEWNET)
            .ctx(Step::Pod, || "cannot return to the host's network namespace".into())?;
    }
    drop(host_net);
    let init = match cloned.ctx(Step::Pod, || "cannot create the pod's namespaces".into())? {
        ForkResult::Child => {
            drop(go_w);
            drop(rep_r);
            // Only the supervisor may end the cgroups' pipe.
            drop(cg_w);
            let ch = InitChannels { go: go_r, report: rep_w, console, cgroups_ready: cg_r };
            let code = match pod_init(dir, m, layout, supervisor, ch, net, listen) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("husk stage1 (pod init): {}", e.chain());
                    exit::STAGE1_FAILED
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            // The init has its copy: the relay sees the socket close if the app never opens
            // its terminal.
            drop(console);
            child
        }
    };
    drop(go_r);
    drop(rep_w);
    drop(cg_r);
    let prepared = (|| -> Result<(), Fail> {
        let userns = match m.private_users {
            Some(r) => {
                let map = format!("0 {} {}\n", r.host_base, r.count);
                std::fs::write(format!("/proc/{init}/uid_map"), &map)
                    .ctx(Step::Pod, || "cannot write the pod's uid map".into())?;
                std::fs::write(format!("/proc/{init}/gid_map"), &map)
                    .ctx(Step::Pod, || "cannot write the pod's gid map".into())?;
                if let Layout::V2(_) = layout {
                    layout.join(&m.uuid, "init", init.as_raw())?;
                }
                Some(OwnedFd::from(
                    std::fs::File::open(format!("/proc/{init}/ns/user"))
                        .ctx(Step::Pod, || "cannot open the pod's user namespace".into())?,
                ))
            }
            None => None,
        };
        rootfs::mount_roots(dir, m, userns.as_ref())
    })();
    if let Err(e) = prepared {
        let _ = kill(init, Signal::SIGKILL);
        let _ = waitpid(init, None);
        return Err(e);
    }
    let mut go = std::fs::File::from(go_w);
    let _ = msg::send(&mut go, &Message::Go);
    if let Some(ready) = cg_w {
        // The init and its apps set up their namespaces and mounts meanwhile.
        let created = create_cgroups(layout, m).and_then(|_| {
            // One byte for each app: each reads its own (see `wait_for_cgroups`). A pod init
            // that is gone already (EPIPE) reports its own failure, or its death, on the report
            // pipe, which the caller reads next: that is the error to show, not this one.
            match std::io::Write::write_all(&mut std::fs::File::from(ready), &vec![CGROUPS_READY; m.apps.len()]) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(Fail::step(Step::Cgroup, "cannot tell the apps their cgroups are ready", e))
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = created {
            let _ = kill(init, Signal::SIGKILL);
            let _ = waitpid(init, None);
            return Err(e);
        }
    }
    Ok((init, rep_r))
}

/// When the supervisor creates the pod's cgroups and writes their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupsWhen {
    /// Before the pod init exists: a pod with private users, whose init joins its delegated
    /// cgroup before it forks any app (a v2 migration needs write access to the common
    /// ancestor's `cgroup.procs`, which the pod's root has only inside the delegated subtree).
    First,
    /// After the init's `Go`, in parallel with the apps' mount set-up; each app waits for its
    /// byte on the cgroups' pipe before it joins.
    AfterGo,
}

impl CgroupsWhen {
    fn of(m: &PodManifest) -> CgroupsWhen {
        if m.private_users.is_some() {
            CgroupsWhen::First
        } else {
            CgroupsWhen::AfterGo
        }
    }
}

/// The pod's cgroups (the pod's, each app's), each app's limits, and with private users their
/// delegation to the pod's root.
fn create_cgroups(layout: &Layout, m: &PodManifest) -> Result<(), Fail> {
    let app_names: Vec<String> = m.apps.iter().map(|a| a.name.clone()).collect();
    layout.create_pod(&m.uuid, &app_names)?;
    for app in &m.apps {
        layout.apply_limits(&m.uuid, &app.name, &app.resources)?;
    }
    if let Some(r) = m.private_users {
        layout.delegate(&m.uuid, &app_names, r.host_base)?;
    }
    Ok(())
}

/// What the supervisor writes on the cgroups' pipe, once per app, when the cgroups are ready.
const CGROUPS_READY: u8 = b'c';

/// In an app, before it joins its cgroup: waits for its byte on the cgroups' pipe (the pod's
/// cgroups exist and are limited). The pipe's end without it means the supervisor died part-way
/// (its cgroups may lack their limits): the app does not go on. Reading one byte, never more,
/// leaves the others' bytes to them.
fn wait_for_cgroups(ready: &OwnedFd) -> Result<(), Fail> {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(ready, &mut byte) {
            Ok(1) if byte[0] == CGROUPS_READY => return Ok(()),
            Ok(0) => return Err(Fail::Invalid("the supervisor ended before the pod's cgroups were ready".into())),
            Ok(_) => return Err(Fail::Invalid(format!("unexpected byte {:#04x} on the cgroups' pipe", byte[0]))),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Fail::step(Step::Cgroup, "waiting for the pod's cgroups", e)),
        }
    }
}

/// Maps the apps' PIDs in the pod's namespace to host PIDs, via the init's children and NSpid.
fn host_pids(init: i32, ns_pids: &BTreeMap<String, i32>) -> BTreeMap<String, i32> {
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for host in children.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
        let ns_pid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i32>().ok());
        if let Some(np) = ns_pid {
            if let Some((name, _)) = ns_pids.iter().find(|(_, p)| **p == np) {
                out.insert(name.clone(), host);
            }
        }
    }
    out
}

/// What the pod init talks to the supervisor (and the terminal relay) over.
struct InitChannels {
    /// The supervisor's go-ahead, once the roots are mounted.
    go: OwnedFd,
    /// Where the init reports each app's pid, then ready or failed.
    report: OwnedFd,
    /// The terminal relay's socket, for an app with a terminal.
    console: Option<OwnedFd>,
    /// Carries one byte for each app once the supervisor created and limited the pod's cgroups
    /// ([`CgroupsWhen::AfterGo`]).
    cgroups_ready: Option<OwnedFd>,
}

/// PID 1 of the pod: finishes the pod's namespaces, starts the apps, reaps, forwards signals,
/// records each app's exit status.
fn pod_init(
    dir: &Path,
    m: &PodManifest,
    layout: &Layout,
    supervisor: Pid,
    ch: InitChannels,
    net: PodNet,
    listen: Option<&Listen>,
) -> Result<i32, Fail> {
    let InitChannels { go, report, console, cgroups_ready } = ch;
    // If the supervisor dies (kill -9), the whole pod dies with it: no orphan pods.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).ctx(Step::Pod, || "cannot set the parent-death signal".into())?;
    // Across the PID namespace boundary getppid() is 0, so check the supervisor through the
    // host's /proc (still mounted here): had it died before the prctl, we would not be killed.
    if !Path::new(&format!("/proc/{}", supervisor.as_raw())).exists() {
        return Ok(exit::STAGE1_FAILED);
    }
    // Not dumpable: apps cannot open /proc/1/exe (the host's stage1 binary) or ptrace us
    // (runc CVE-2019-5736, rkt #3999).
    nix::sys::prctl::set_dumpable(false).ctx(Step::Pod, || "cannot make the pod init non-dumpable".into())?;
    match msg::expect(&mut BufReader::new(std::fs::File::from(go)), &["go"]) {
        Ok(_) => {}
        // Closed: the supervisor failed to prepare the pod and says so itself.
        Err(msg::MsgError::Closed { .. }) => return Ok(exit::STAGE1_FAILED),
        Err(e) => return Err(Fail::step(Step::Pod, "from the supervisor", e)),
    }
    let report = std::fs::File::from(report);
    if m.private_users.is_some() {
        // The maps are written: become the pod's root.
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .ctx(Step::Pod, || "cannot become gid 0 in the pod".into())?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .ctx(Step::Pod, || "cannot become uid 0 in the pod".into())?;
    }
    // Mounts made in the pod never propagate back to the host.
    rootfs::make_root_slave()?;
    nix::unistd::sethostname(&m.hostname).ctx(Step::Pod, || format!("cannot set hostname {}", m.hostname))?;
    if net == PodNet::New {
        husk_sys::proc::loopback_up().ctx(Step::Pod, || "cannot bring up loopback".into())?;
    }
    run_apps(dir, m, layout, report, console, listen, cgroups_ready.as_ref())
}

/// The pod init's work once the pod exists: starts the apps (each reported on `report`, then
/// ready or failed), reaps, forwards signals, records each app's exit status; returns the pod's
/// status. Shared by the `ns` pod init and the `kvm` guest init.
pub(crate) fn run_apps(
    dir: &Path,
    m: &PodManifest,
    layout: &Layout,
    mut report: std::fs::File,
    console: Option<OwnedFd>,
    listen: Option<&Listen>,
    cgroups_ready: Option<&OwnedFd>,
) -> Result<i32, Fail> {
    let mut live: BTreeMap<i32, (String, chrono::DateTime<chrono::Utc>)> = BTreeMap::new();
    // A detached pod's output goes through the log writer, which bounds what is kept; with
    // --log-prefix a foreground pod's goes through the prefixer. Per app: (stdout, stderr).
    let names: Vec<String> = m.apps.iter().map(|a| a.name.clone()).collect();
    let (logger, mut log_fds) = match m.stdio {
        Stdio::Log => {
            let (pid, fds) = crate::logger::spawn(dir, &names, m.log_limits)?;
            (Some(pid), fds.into_iter().map(|f| Some((f, None))).collect())
        }
        Stdio::Inherit if m.systemd.log_prefix => {
            let (pid, fds) = crate::prefix::spawn(&names)?;
            (Some(pid), fds.into_iter().map(|(o, e)| Some((o, Some(e)))).collect())
        }
        _ => (None, m.apps.iter().map(|_| None).collect::<Vec<Option<(OwnedFd, Option<OwnedFd>)>>>()),
    };
    let socket_app = m.systemd.socket_app(m);
    for (k, app) in m.apps.iter().enumerate() {
        let log_fd = log_fds[k].take();
        let out = log_fd.as_ref().map(|(o, e)| (o, e.as_ref().unwrap_or(o)));
        let listen = listen.filter(|_| socket_app == Some(app.name.as_str()));
        let pod = PodOf { dir, m, layout, cgroups_ready };
        let spawned = spawn_app(&pod, app, out, console.as_ref(), listen);
        // Our copy of the app's write end goes now: the writer sees the stream end with the app.
        drop(log_fd);
        match spawned {
            Ok(pid) => {
                let _ = msg::send(&mut report, &Message::AppStarted { app: app.name.clone(), pid: pid.as_raw() });
                live.insert(pid.as_raw(), (app.name.clone(), chrono::Utc::now()));
            }
            Err((code, e)) => {
                let msg = e.chain();
                let _ = write_status(
                    dir,
                    &app.name,
                    &AppStatus {
                        outcome: Outcome::NotStarted { code, reason: msg.clone() },
                        oom_killed: false,
                        started: None,
                        finished: chrono::Utc::now(),
                    },
                );
                eprintln!("husk: app {}: {msg}", app.name);
                let _ = msg::send(&mut report, &Message::Failed { reason: format!("app {}: {msg}", app.name) });
                for pid in live.keys() {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                }
                for (pid, (name, started)) in std::mem::take(&mut live) {
                    let st = waitpid(Pid::from_raw(pid), None);
                    let _ = write_status(dir, &name, &status_of(st.ok(), Some(started)));
                }
                return Ok(code);
            }
        }
    }
    let _ = msg::send(&mut report, &Message::Ready);
    drop(report);
    drop(console);

    let mut idle = husk_sys::proc::IdleRelease::after(IDLE_AFTER);
    let sigs = signals();
    // The statuses of the apps in the order they ended: with the exit policy, the pod's status.
    let mut ended: Vec<i32> = Vec::new();
    let mut stopping = false;
    while !live.is_empty() {
        let Some(sig) = idle.wait(&sigs).ctx(Step::Pod, || "sigwait failed".into())? else { continue };
        match sig {
            Signal::SIGCHLD => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(ws) => {
                        let Some(pid) = ws.pid() else { break };
                        // Zombies of re-parented grandchildren are reaped here too.
                        if let Some((name, started)) = live.remove(&pid.as_raw()) {
                            let mut st = status_of(Some(ws), Some(started));
                            // Any OOM kill in the app's cgroup: the app itself, or one of its
                            // children (after which the app may well exit with an error code).
                            st.oom_killed = layout.oom_killed(&m.uuid, &name);
                            let code = st.shell_status();
                            write_status(dir, &name, &st)?;
                            ended.push(code);
                            if m.exit_policy.stops_pod(code) && !stopping && !live.is_empty() {
                                // This app's end ends the pod (a failure, or any exit): stop the
                                // others.
                                stopping = true;
                                signal_all(&live, Signal::SIGTERM);
                                let grace = pod_stop_timeout(m).as_secs_f64().ceil().min(u32::MAX as f64);
                                nix::unistd::alarm::set((grace as u32).max(1));
                            }
                        }
                    }
                }
            },
            // The stop deadline passed (the supervisor's, or ours after a failed app).
            Signal::SIGALRM => signal_all(&live, Signal::SIGKILL),
            // Forwarded to every app; the supervisor owns the deadline of a stop it forwards.
            other => signal_all(&live, other),
        }
    }
    drop(log_fds);
    if let Some(pid) = logger {
        wait_briefly(pid);
    }
    Ok(m.exit_policy.pod_status(&ended))
}

/// Lets the log writer (or the terminal relay) drain what the apps wrote last (it ends when
/// every writer closed its pipe, or the app's terminal). A process the apps left behind may
/// hold a pipe open: after a short while the pod ends anyway, which ends that process and the
/// writer with it.
pub(crate) fn wait_briefly(pid: Pid) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
            _ => return, // exited, or reaped already by the SIGCHLD loop
        }
    }
}

fn signal_all(live: &BTreeMap<i32, (String, chrono::DateTime<chrono::Utc>)>, sig: Signal) {
    for pid in live.keys() {
        let _ = kill(Pid::from_raw(*pid), sig);
    }
}

/// What every app of a pod is started with.
struct PodOf<'a> {
    dir: &'a Path,
    m: &'a PodManifest,
    layout: &'a Layout,
    /// See [`InitChannels::cgroups_ready`].
    cgroups_ready: Option<&'a OwnedFd>,
}

/// Starts one app: own mount and cgroup namespaces, its root, its user, its capabilities. An
/// exec failure comes back over a close-on-exec pipe, so that `run` can say why an app did not
/// start.
///
/// The app's process shares the init's memory until its `execve`, while the init waits
/// ([`husk_sys::proc::spawn_shared`]): a fork would copy the init's page tables and then fault
/// in copies of every page either process writes, for a process that replaces its memory a
/// millisecond later. `exec_app` keeps that child's rules: it ends in `execve` or returns.
fn spawn_app(
    pod: &PodOf,
    app: &App,
    out: Option<(&OwnedFd, &OwnedFd)>,
    console: Option<&OwnedFd>,
    listen: Option<&Listen>,
) -> Result<Pid, (i32, Fail)> {
    let (err_r, err_w) = pipe().map_err(|e| (exit::STAGE1_FAILED, e))?;
    let err_w = std::fs::File::from(err_w);
    let spawned = husk_sys::proc::spawn_shared(|| {
        let (code, e) = match exec_app(pod, app, out, console, listen) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let _ = msg::send(&mut &err_w, &Message::ExecFailed { code, reason: e.chain() });
        code
    });
    // Our copy of the write end goes now: the pipe closes when the child's copy does (at its
    // execve, or its exit).
    drop(err_w);
    let child = spawned
        .map_err(|e| (exit::STAGE1_FAILED, Fail::step(Step::Pod, format!("cannot start app {}", app.name), e)))?;
    // The pipe is close-on-exec: it closes with nothing sent when the app's execve succeeded,
    // or carries why it failed.
    match msg::recv(&mut BufReader::new(std::fs::File::from(err_r))) {
        Ok(None) => Ok(child),
        Ok(Some(Message::ExecFailed { code, reason })) => {
            let _ = waitpid(child, None);
            Err((code, Fail::Invalid(reason)))
        }
        Ok(Some(other)) => {
            let _ = waitpid(child, None);
            Err((
                exit::STAGE1_FAILED,
                Fail::Invalid(format!("app {}: expected exec-failed, got {}", app.name, other.name())),
            ))
        }
        Err(e) => {
            let _ = waitpid(child, None);
            Err((exit::STAGE1_FAILED, Fail::Invalid(format!("app {}: {e}", app.name))))
        }
    }
}

fn exec_app(
    pod: &PodOf,
    app: &App,
    out: Option<(&OwnedFd, &OwnedFd)>,
    console: Option<&OwnedFd>,
    listen: Option<&Listen>,
) -> Result<Never, (i32, Fail)> {
    let PodOf { dir, m, layout, cgroups_ready } = *pod;
    let setup = |e: Fail| (exit::STAGE1_FAILED, e);
    SigSet::empty().thread_set_mask().map_err(|e| setup(Fail::step(Step::Process, "cannot unblock signals", e)))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| setup(Fail::step(Step::Mount, "cannot create the app's mount namespace", e)))?;
    // `<pod>/apps` is shared with the supervisor: keep this app's mounts to itself.
    rootfs::make_root_slave().map_err(setup)?;
    let root = rootfs::setup(dir, m, app).map_err(setup)?;
    wire_stdio(m, out).map_err(setup)?;
    if let Some(ready) = cgroups_ready {
        wait_for_cgroups(ready).map_err(setup)?;
    }
    layout.join(&m.uuid, &app.name, 0).map_err(setup)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| setup(Fail::step(Step::Cgroup, "cannot create the app's cgroup namespace", e)))?;
    rootfs::mount_cgroups(&root, layout).map_err(setup)?;
    rootfs::pivot(&root).map_err(setup)?;
    if let Some(sock) = console {
        crate::console::take_terminal(sock, app.user.uid, true).map_err(setup)?;
    }
    if let Some(adj) = app.resources.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
            setup(Fail::Invalid(format!("cannot set oom_score_adj {adj}: {e} (lowering it needs CAP_SYS_RESOURCE, which this host's root may lack)")))
        })?;
    }
    become_app_user(app).map_err(setup)?;
    let mut extras = ExecExtras::default();
    if let Notify::App(name) = &m.systemd.notify {
        if *name == app.name {
            extras.env.push(("NOTIFY_SOCKET".into(), husk_types::pod::APP_NOTIFY_SOCKET.into()));
        }
    }
    if let Some(l) = listen {
        // fds 3… are the activator's sockets (inherited from `husk run`); this process's pid is
        // the app's, as it will see it.
        extras.env.extend(l.env(std::process::id()));
        extras.keep_fds = l.count;
    }
    exec_in_root_with(app, &app.exec, &extras)
}

/// `enter --pid=PID --app=NAME [--tty] [--] CMD…`: joins the app's namespaces and cgroup, takes on the
/// app's user, capabilities and no_new_privs (never more than the app has: rkt CVE-2019-10144).
pub(crate) fn enter(args: &[String], cmd: Option<Vec<ByteStr>>) -> Result<i32, Fail> {
    enter_relaying(args, cmd, crate::console::relay_entered)
}

/// [`enter`], with `--tty` relaying the command's terminal with `relay`: it gets the socket the
/// command's child sends the pty master over (and acknowledges), and returns when the terminal
/// ended. A kvm guest's enter service relays it to the host's stream instead of a terminal.
pub(crate) fn enter_relaying(
    args: &[String],
    cmd: Option<Vec<ByteStr>>,
    relay: impl FnOnce(OwnedFd) -> Result<(), Fail>,
) -> Result<i32, Fail> {
    let dir = pod_dir()?;
    let m = read_manifest(&dir)?;
    let name = flag_value(args, "app").ok_or_else(|| Fail::Invalid("enter needs --app".into()))?;
    let app = m
        .apps
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| Fail::Invalid(format!("pod has no app {name:?}")))?
        .clone();
    let pid: i32 = match flag_value(args, "pid") {
        Some(p) => p.parse().ctx(Step::Pod, || format!("bad --pid {p:?}"))?,
        None => *read_stage1_state(&dir)?
            .app_pids
            .get(&name)
            .ok_or_else(|| Fail::Invalid(format!("app {name} is not running")))?,
    };
    let cmd: Vec<ByteStr> = match cmd {
        Some(c) if !c.is_empty() => c,
        _ => vec![ByteStr::from("/bin/sh")],
    };
    let layout = cgroup::detect()?;
    layout.join(&m.uuid, &app.name, 0)?;
    // Before the pod's mount namespace hides our /proc/self: fork checks it.
    husk_sys::proc::check_single_threaded().ctx(Step::Pod, || "enter".into())?;
    let ns = |n: &str| -> Result<std::fs::File, Fail> {
        std::fs::File::open(format!("/proc/{pid}/ns/{n}")).ctx(Step::Pod, || format!("app {name} (pid {pid}) is gone"))
    };
    // The user namespace last: host root may join every namespace of the pod, while after
    // joining the pod's user namespace it could not join those the host's owns (a pinned CNI
    // network namespace of a pod with private users).
    let order = [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("user", CloneFlags::CLONE_NEWUSER),
    ];
    let same_as_ours = |n: &str| {
        std::fs::read_link(format!("/proc/self/ns/{n}")).ok() == std::fs::read_link(format!("/proc/{pid}/ns/{n}")).ok()
    };
    // setns into the user namespace we are already in is an error (EINVAL); skip it then.
    let files: Vec<(std::fs::File, CloneFlags)> = order
        .iter()
        .filter(|(n, _)| *n != "user" || !same_as_ours(n))
        .map(|(n, f)| ns(n).map(|file| (file, *f)))
        .collect::<Result<_, _>>()?;
    for (f, flag) in &files {
        nix::sched::setns(f, *flag).ctx(Step::Pod, || format!("cannot join the {flag:?} namespace of app {name}"))?;
    }
    drop(files);
    // `--tty`: the command gets a terminal of the app's devpts, relayed to ours.
    let terminal = if args.iter().any(|a| a == "--tty") { Some(crate::console::sockets()?) } else { None };
    match fork().ctx(Step::Pod, || "cannot fork".into())? {
        ForkResult::Child => {
            // Until exec this process runs the host's stage1 binary inside the pod's PID
            // namespace: keep /proc/<pid>/exe out of the apps' reach.
            let _ = nix::sys::prctl::set_dumpable(false);
            let r = match &terminal {
                Some((_, sock)) => crate::console::take_terminal(sock, app.user.uid, false),
                None => Ok(()),
            };
            let r = r
                .and_then(|_| become_app_user(&app))
                .map_err(|e| (exit::STAGE1_FAILED, e))
                .and_then(|_| exec_in_root(&app, &cmd));
            let (code, e) = match r {
                Err(e) => e,
                Ok(never) => match never {},
            };
            eprintln!("husk enter: {}", e.chain());
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            // Ctrl-C reaches the entered command (same process group); we only wait for it.
            let mut int = SigSet::empty();
            int.add(Signal::SIGINT);
            let _ = int.thread_block();
            if let Some((relay_end, app_end)) = terminal {
                drop(app_end);
                if let Err(e) = relay(relay_end) {
                    eprintln!("husk enter: {}", e.chain());
                }
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                    Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(Fail::Invalid(format!("waiting for the entered command: {e}"))),
                }
            }
        }
    }
}

/// `gc UUID`: removes what stage1 created outside the pod dir (cgroups, networks, a kvm pod's
/// sockets). Idempotent; run by stage0 on exited pods. Also the kvm flavor's.
pub(crate) fn gc(args: &[String]) -> Result<(), Fail> {
    let uuid =
        args.iter().rfind(|a| !a.starts_with("--")).ok_or_else(|| Fail::Invalid("gc needs the pod UUID".into()))?;
    if uuid.contains('/') || uuid.contains("..") {
        return Err(Fail::Invalid(format!("bad pod UUID {uuid:?}")));
    }
    let layout = cgroup::detect()?;
    let dir = pod_dir()?;
    let (apps, net) = match crate::common::read_manifest(&dir) {
        Ok(m) => {
            let apps = m.apps.into_iter().map(|a| a.name).collect();
            match m.net {
                NetMode::Cni { plugin_dirs, .. } => (apps, Some(plugin_dirs)),
                _ => (apps, None),
            }
        }
        Err(_) => (vec![], None),
    };
    match crate::cleanup::collect(&dir, uuid, &apps, &layout, net.as_deref()).into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
