//! The host side of a kvm pod: prepares what the guest shares (app roots, volumes, /etc files)
//! in the supervisor's own mount namespace, starts the vsock and virtio-fs daemons and qemu as
//! its bound children, relays the guest's messages and the apps' output, passes signals on, and
//! ends with the VM.

use std::io::BufReader;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as PStdio};
use std::time::{Duration, Instant};

use husk_types::abi::{self, PodDir};
use husk_types::msg::{self, Message};
use husk_types::pod::{
    exit, AppStatus, NetMode, Outcome, PodManifest, Stage1State, Stdio, VmSettings, VolumeKind, ABI_VERSION,
};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use super::plan::{self, Engine, Paths, CONTROL_PORT, STDERR_PORT, STDIN_PORT, STDOUT_PORT, TTY_PORT};
use crate::cgroup::{self, Layout};
use crate::cleanup::Cleanup;
use crate::cni;
use crate::common::{debug_enabled, pod_dir, read_manifest, write_json, write_status, Context, Fail, Step};
use crate::rootfs;

/// How long the guest may take to boot and connect (TCG boots a kernel in about 4 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the daemons may take to create their sockets.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
/// The cgroup (under the pod's) of qemu and the daemons.
pub(crate) const VM_CGROUP: &str = "vm";
/// `si_code` of a signal sent by kill(2) (SI_USER), as opposed to the kernel's alarm.
const SI_USER: i32 = 0;

/// `run [--debug] UUID`, in the pod dir, with the pod lock on fd `HUSK_LOCK_FD`.
pub fn run(args: &[String]) -> Result<i32, Fail> {
    let dir = pod_dir()?;
    let m = read_manifest(&dir)?;
    if args.last().map(String::as_str) != Some(m.uuid.as_str()) {
        return Err(Fail::Invalid(format!("the last argument must be the pod UUID {}", m.uuid)));
    }
    let vm =
        m.vm.clone()
            .ok_or_else(|| Fail::Invalid(format!("pod {} has no virtual machine settings: not a kvm pod", m.uuid)))?;
    let (lock, mut ready) = crate::common::take_run_fds(&dir)?;
    let result = supervise(&dir, &m, &vm, debug_enabled(args), &mut ready);
    if let Err(e) = &result {
        if let Some(r) = ready.as_mut() {
            let _ = msg::send(r, &Message::Failed { reason: e.chain() });
        }
    }
    drop(lock);
    result.map(|(code, cleanup, host_mnt)| {
        cleanup.spawn(&host_mnt);
        crate::common::run_exit_command(&m);
        code
    })
}

/// The running machine: qemu and its daemons, bound to the supervisor.
struct Machine {
    qemu: Child,
    daemons: Vec<Child>,
}

impl Machine {
    fn kill(&mut self) {
        for c in std::iter::once(&mut self.qemu).chain(self.daemons.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn supervise(
    dir: &Path,
    m: &PodManifest,
    vm: &VmSettings,
    debug: bool,
    ready: &mut Option<std::fs::File>,
) -> Result<(i32, Cleanup, std::fs::File), Fail> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let engine = engine(vm, &cpuinfo)?;
    let layout = cgroup::detect()?;
    layout.create_pod(&m.uuid, &[VM_CGROUP.to_string()])?;
    let host_mnt =
        std::fs::File::open("/proc/self/ns/mnt").ctx(Step::Pod, || "cannot open the host's mount namespace".into())?;
    let sigs = crate::ns::signals();
    sigs.thread_block().ctx(Step::Pod, || "cannot block signals".into())?;
    // A terminal's relay thread takes window-size changes through its own signalfd: blocked
    // here, the signal waits for it instead of being ignored.
    let mut winch = nix::sys::signal::SigSet::empty();
    winch.add(Signal::SIGWINCH);
    winch.thread_block().ctx(Step::Pod, || "cannot block signals".into())?;
    let net_dirs = match &m.net {
        NetMode::Cni { plugin_dirs, .. } => Some(plugin_dirs.as_slice()),
        _ => None,
    };
    let started = start(dir, m, vm, engine, &cpuinfo, &layout, debug);
    let (mut machine, listeners, console) = match started {
        Ok(x) => x,
        Err(e) => {
            Cleanup::prepare(dir, m, &layout, net_dirs).run_here(&host_mnt);
            return Err(e);
        }
    };
    let outcome = run_machine(dir, m, &mut machine, &listeners, &console, ready, &sigs);
    machine.kill();
    let cleanup = Cleanup::prepare(dir, m, &layout, net_dirs);
    let code = match outcome {
        Ok(code) => code,
        Err(e) => {
            cleanup.run_here(&host_mnt);
            return Err(e);
        }
    };
    Ok((code, cleanup, host_mnt))
}

/// The engine, with the probe's notice when falling back to TCG.
fn engine(vm: &VmSettings, cpuinfo: &str) -> Result<Engine, Fail> {
    let modules: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    let probe = plan::probe_kvm(Path::new("/dev/kvm").exists(), cpuinfo, &modules);
    let (engine, notice) = plan::choose_engine(vm.accel, &probe).map_err(Fail::Invalid)?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    Ok(engine)
}

/// The listening sockets for the guest's connections: control, the apps' stdout/stderr, the
/// invoker's input (`-i`), the app's terminal (`-t`).
struct Listeners {
    control: UnixListener,
    output: Option<(UnixListener, UnixListener)>,
    input: Option<UnixListener>,
    terminal: Option<UnixListener>,
}

type Started = (Machine, Listeners, PathBuf);

fn start(
    dir: &Path,
    m: &PodManifest,
    vm: &VmSettings,
    engine: Engine,
    cpuinfo: &str,
    layout: &Layout,
    debug: bool,
) -> Result<Started, Fail> {
    let run = super::run_dir(&m.uuid);
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run).ctx(Step::Pod, || format!("cannot create {}", run.display()))?;
    let kvm_dir = dir.join("kvm");
    std::fs::create_dir_all(&kvm_dir).ctx(Step::Pod, || format!("cannot create {}", kvm_dir.display()))?;
    let console = kvm_dir.join("console.log");
    let exe = std::fs::read_link("/proc/self/exe").ctx(Step::Pod, || "cannot find the stage1 executable".into())?;
    let initramfs = super::initramfs::ensure(&exe, &vm.assets.join("modules"), Path::new(super::KVM_RUN))?;
    let paths = Paths::of(&vm.assets, initramfs, run, console.clone(), |p| p.exists());
    for (what, p) in [
        ("qemu", &paths.qemu),
        ("the guest kernel", &paths.kernel),
        ("virtiofsd", &paths.virtiofsd),
        ("vhost-device-vsock", &paths.vsock),
    ] {
        if !p.exists() {
            return Err(Fail::Invalid(format!(
                "{what} is not at {}: run scripts/setup-kvm.sh (or set [stage1.kvm] dir in husk.toml)",
                p.display()
            )));
        }
    }

    // The networks, in the host's mount namespace (the netns pin lives there): CNI as for ns,
    // then a tap joined to each interface the plugins made.
    let (netns, states) = cni::create_and_setup(dir, m)?;
    let taps = match &netns {
        Some(ns) => {
            let nics = super::net::guest_nics(&states).map_err(Fail::Invalid)?;
            let data = serde_json::to_vec(&nics).expect("NICs serialize");
            let f = super::net::nics_file(dir);
            husk_sys::atomic_write_volatile(&f, &data, 0o644)
                .ctx(Step::Network, || format!("cannot write {}", f.display()))?;
            super::net::attach_taps(ns, &nics)?
        }
        None => vec![],
    };

    // What the guest sees: the pod dir with the app roots mounted, in our own mount namespace.
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .ctx(Step::Pod, || "cannot create the supervisor's mount namespace".into())?;
    rootfs::make_root_slave()?;
    rootfs::mount_roots(dir, m, None)?;
    share_volumes(dir, m)?;
    rootfs::write_etc(dir, m, cni::dns_from(&states))?;

    let listen = |port: u32| {
        let p = paths.vsock_listener(port);
        UnixListener::bind(&p).ctx(Step::Pod, || format!("cannot listen on {}", p.display()))
    };
    let listeners = Listeners {
        control: listen(CONTROL_PORT)?,
        output: match m.stdio {
            Stdio::Inherit | Stdio::Interactive => Some((listen(STDOUT_PORT)?, listen(STDERR_PORT)?)),
            _ => None,
        },
        input: (m.stdio == Stdio::Interactive).then(|| listen(STDIN_PORT)).transpose()?,
        terminal: m.stdio.has_terminal().then(|| listen(TTY_PORT)).transpose()?,
    };
    let log = |name: &str| -> Result<std::fs::File, Fail> {
        let p = dir.join("kvm").join(name);
        std::fs::File::create(&p).ctx(Step::Pod, || format!("cannot create {}", p.display()))
    };
    let mut daemons = Vec::new();
    let spawned = (|| -> Result<Child, Fail> {
        // The vsock daemon has no sandbox of its own: `confine` gives it one (confine.rs).
        let mut confined = vec![
            "confine".to_string(),
            format!("--uuid={}", m.uuid),
            format!("--dir={}", paths.run.display()),
            "--".to_string(),
            paths.vsock.display().to_string(),
        ];
        confined.extend(plan::vsock_args(&paths));
        daemons.push(spawn(&exe, &confined, log("vsock.log")?)?);
        daemons.push(spawn(&paths.virtiofsd, &plan::virtiofsd_args(&paths, dir), log("virtiofsd.log")?)?);
        for (sock, what) in [(paths.vhost_socket(), "vhost-device-vsock"), (paths.fs_socket(), "virtiofsd")] {
            wait_for(&sock, what, &mut daemons, dir)?;
        }
        let cmdline = plan::kernel_cmdline(m, dir, engine, plan::tsc_khz(cpuinfo), debug);
        let args = plan::qemu_args(vm, engine, &paths, &cmdline, &taps);
        // With networks, qemu opens its taps in the pod's network namespace.
        let qemu = match &netns {
            None => spawn(&paths.qemu, &args, log("qemu.log")?)?,
            Some(ns) => {
                let mut a = vec![format!("--net={}", ns.display()), paths.qemu.display().to_string()];
                a.extend(args);
                spawn(Path::new("nsenter"), &a, log("qemu.log")?)?
            }
        };
        Ok(qemu)
    })();
    let qemu = match spawned {
        Ok(q) => q,
        Err(e) => {
            for mut d in daemons {
                let _ = d.kill();
                let _ = d.wait();
            }
            return Err(e);
        }
    };
    let machine = Machine { qemu, daemons };
    for c in std::iter::once(&machine.qemu).chain(machine.daemons.iter()) {
        layout.join(&m.uuid, VM_CGROUP, c.id() as i32)?;
    }
    Ok((machine, listeners, console))
}

/// Binds each host volume at `<pod>/kvm/volumes/<name>` (read-only ones read-only), where the
/// guest init finds it through the shared pod dir.
fn share_volumes(dir: &Path, m: &PodManifest) -> Result<(), Fail> {
    use nix::mount::{mount, MsFlags};
    for v in &m.volumes {
        let VolumeKind::Host { source, read_only } = &v.kind else { continue };
        let target = super::guest::volume_dir(dir, &v.name);
        if source.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::create_dir_all(target.parent().unwrap_or(dir)).and_then(|_| std::fs::write(&target, b""))
        }
        .ctx(Step::Mount, || format!("cannot create {}", target.display()))?;
        mount::<Path, Path, str, str>(Some(source), &target, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)
            .ctx(Step::Mount, || format!("volume {}: cannot bind {}", v.name, source.display()))?;
        if *read_only {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount::<str, Path, str, str>(None, &target, None, flags, None)
                .ctx(Step::Mount, || format!("volume {}: cannot make it read-only", v.name))?;
        }
    }
    Ok(())
}

fn spawn(program: &Path, args: &[String], log: std::fs::File) -> Result<Child, Fail> {
    let err = log.try_clone().ctx(Step::Process, || "cannot duplicate a log file".into())?;
    husk_sys::proc::spawn_bound(
        Command::new(program)
            .args(args)
            // Nothing of the invoker's environment (a test's LD_LIBRARY_PATH, …) reaches them.
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(PStdio::null())
            .stdout(PStdio::from(log))
            .stderr(PStdio::from(err)),
    )
    .ctx(Step::Process, || format!("cannot start {}", program.display()))
}

/// Waits until a daemon created its socket; its log says why when it did not.
fn wait_for(sock: &Path, what: &str, daemons: &mut [Child], dir: &Path) -> Result<(), Fail> {
    let deadline = Instant::now() + DAEMON_TIMEOUT;
    while !sock.exists() {
        if daemons.iter_mut().any(|d| !matches!(d.try_wait(), Ok(None))) || Instant::now() > deadline {
            let log = tail(&dir.join("kvm").join(if what == "virtiofsd" { "virtiofsd.log" } else { "vsock.log" }));
            return Err(Fail::Invalid(format!("{what} did not start: {log}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// The last lines of a log, for an error message.
fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let t = lines[lines.len().saturating_sub(8)..].join("\n  ");
    if t.is_empty() {
        format!("(nothing in {})", p.display())
    } else {
        format!("{}:\n  {t}", p.display())
    }
}

/// From boot to power-off: the guest's reports, ready, signals passed on; the pod's status.
fn run_machine(
    dir: &Path,
    m: &PodManifest,
    machine: &mut Machine,
    listeners: &Listeners,
    console: &Path,
    ready: &mut Option<std::fs::File>,
    sigs: &nix::sys::signal::SigSet,
) -> Result<i32, Fail> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let sigfd = SignalFd::with_flags(sigs, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .ctx(Step::Pod, || "cannot create a signalfd".into())?;
    let boot_failed =
        |why: &str| Fail::Invalid(format!("the kvm pod's guest {why}; its console says {}", tail(console)));
    // The guest connects once it has booted: wait for that, for qemu's end, or a signal.
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let control = loop {
        let mut fds =
            [PollFd::new(listeners.control.as_fd(), PollFlags::POLLIN), PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(100u16));
        if fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
            let (s, _) =
                listeners.control.accept().ctx(Step::Pod, || "cannot accept the guest's control channel".into())?;
            break s;
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            if matches!(Signal::try_from(info.ssi_signo as i32), Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGALRM))
            {
                return Err(Fail::Invalid("the pod was stopped while its guest was booting".into()));
            }
        }
        if let Ok(Some(st)) = machine.qemu.try_wait() {
            let why = format!("ended before it connected (qemu: {st}; {})", tail(&dir.join("kvm/qemu.log")));
            return Err(boot_failed(&why));
        }
        if Instant::now() > deadline {
            return Err(boot_failed(&format!("did not connect within {} s", BOOT_TIMEOUT.as_secs())));
        }
    };
    // The apps' output: copied to ours by a thread each, until the guest's side closes.
    let mut relays = match &listeners.output {
        Some((out, err)) => vec![relay(out, std::io::stdout())?, relay(err, std::io::stderr())?],
        None => vec![],
    };
    if let Some(l) = &listeners.terminal {
        relays.push(terminal(l, dir, m)?);
    }
    if let Some(l) = &listeners.input {
        // Not joined: it may wait on our input for ever; it ends with the process.
        drop(input(l)?);
    }
    let mut control_w = control.try_clone().ctx(Step::Pod, || "cannot duplicate the control channel".into())?;
    let mut reports = BufReader::new(control.try_clone().ctx(Step::Pod, || "dup".into())?);
    let mut start_error = None;
    // The apps' pids in the guest: `husk enter` names the app's by it.
    let mut app_pids = std::collections::BTreeMap::new();
    loop {
        match msg::expect(&mut reports, &["app-started", "ready", "failed"]) {
            Ok(Message::AppStarted { app, pid }) => {
                if m.apps.iter().any(|a| a.name == app) && pid > 0 {
                    app_pids.insert(app, pid);
                }
            }
            Ok(Message::Ready) => break,
            Ok(Message::Failed { reason }) => {
                start_error = Some(reason);
                break;
            }
            Ok(_) => unreachable!("expect() returns only the named messages"),
            Err(e) => {
                start_error = Some(format!("guest init: {e}; its console says {}", tail(console)));
                break;
            }
        }
    }
    let state = Stage1State {
        abi_version: ABI_VERSION,
        supervisor_pid: std::process::id() as i32,
        init_pid: machine.qemu.id() as i32,
        started: chrono::Utc::now(),
        cgroup: Some(abi::pod_cgroup(&m.uuid)),
        app_pids,
    };
    write_json(&PodDir::new(dir).stage1_state(), &state)?;
    if let Some(r) = ready.as_mut() {
        let _ = match &start_error {
            None => msg::send(r, &Message::Ready),
            Some(e) => msg::send(r, &Message::Failed { reason: e.clone() }),
        };
    }
    *ready = None;

    // Running: pass signals on; the guest reports the pod's status, then powers off.
    let mut code = None;
    let mut stopping = false;
    let mut forced = false;
    let mut control_open = true;
    loop {
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if control_open {
            fds.push(PollFd::new(reports.get_ref().as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Fail::step(Step::Pod, "poll failed", e)),
        }
        let control_ready = fds.get(1).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
        drop(fds);
        if control_ready {
            match msg::recv(&mut reports) {
                Ok(Some(Message::PodExited { code: c })) => code = Some(c),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => control_open = false,
            }
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
            match sig {
                Signal::SIGCHLD => {}
                // `husk stop --force` (kill(2)): the VM is killed. The stop deadline (the
                // kernel's alarm): the guest init kills the apps and records their statuses.
                Signal::SIGALRM if info.ssi_code == SI_USER => {
                    forced = true;
                    let _ = machine.qemu.kill();
                }
                other => {
                    let _ = msg::send(&mut control_w, &Message::Signal { signal: other as i32 });
                    if matches!(other, Signal::SIGTERM | Signal::SIGINT) && !stopping {
                        stopping = true;
                        let t = crate::ns::stop_timeout(dir, m);
                        nix::unistd::alarm::set(t.as_secs_f64().ceil().clamp(1.0, u32::MAX as f64) as u32);
                    }
                }
            }
        }
        if let Ok(Some(_)) = machine.qemu.try_wait() {
            break;
        }
    }
    // qemu has ended: the daemons go, which closes the output streams the relays copy.
    machine.kill();
    for (listener, handle) in relays {
        // A stream the guest never connected: connecting ourselves ends the accept.
        if let Ok(addr) = listener.local_addr() {
            if let Some(p) = addr.as_pathname() {
                drop(std::os::unix::net::UnixStream::connect(p));
            }
        }
        let _ = handle.join();
    }
    // Apps the VM ended with it (--force, a guest crash): killed.
    for app in &m.apps {
        if !PodDir::new(dir).app_status(&app.name).exists() {
            let st = AppStatus {
                outcome: Outcome::Killed(libc::SIGKILL),
                oom_killed: false,
                started: None,
                finished: chrono::Utc::now(),
            };
            let _ = write_status(dir, &app.name, &st);
        }
    }
    Ok(match (code, forced) {
        (Some(c), _) => c,
        (None, true) => 128 + libc::SIGKILL,
        (None, false) => {
            eprintln!("husk stage1: the kvm pod's guest ended without reporting; its console says {}", tail(console));
            exit::STAGE1_FAILED
        }
    })
}

/// A thread that accepts the guest's terminal stream on `listener` and relays it: to our
/// terminal in the foreground (raw, with our input, for `-it`), to the log and `husk attach`
/// when detached.
fn terminal(
    listener: &UnixListener,
    dir: &Path,
    m: &PodManifest,
) -> Result<(UnixListener, std::thread::JoinHandle<()>), Fail> {
    let l = listener.try_clone().ctx(Step::Pod, || "cannot duplicate a listener".into())?;
    let mine = listener.try_clone().ctx(Step::Pod, || "cannot duplicate a listener".into())?;
    let (dir, m) = (dir.to_path_buf(), m.clone());
    let handle = std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else { return };
        let mut guest = super::stream::Guest::new(s);
        let r = match m.stdio {
            Stdio::Terminal { input } => {
                let (rows, cols) = super::enter::invoker_size().unwrap_or(super::stream::DEFAULT_SIZE);
                husk_sys::tty::Far::resize(&mut guest, rows, cols)
                    .and_then(|_| husk_sys::tty::relay(&mut guest, input, &mut None))
                    .map(drop)
                    .ctx(Step::Process, || "relaying the app's terminal".into())
            }
            _ => {
                let (rows, cols) = super::stream::DEFAULT_SIZE;
                husk_sys::tty::Far::resize(&mut guest, rows, cols)
                    .ctx(Step::Process, || "the app's terminal".into())
                    .and_then(|_| crate::console::Served::open(&dir, &m, Box::new(guest)))
                    .and_then(|s| s.serve())
            }
        };
        if let Err(e) = r {
            eprintln!("husk stage1 (terminal): {}", e.chain());
        }
    });
    Ok((mine, handle))
}

/// A thread that accepts the guest's input stream on `listener` and copies our stdin to it;
/// at its end the stream is closed (the guest's app reads the end).
fn input(listener: &UnixListener) -> Result<std::thread::JoinHandle<()>, Fail> {
    let l = listener.try_clone().ctx(Step::Pod, || "cannot duplicate a listener".into())?;
    Ok(std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut s);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }))
}

/// A thread that accepts the guest's stream on `listener` and copies it to `out`.
fn relay(
    listener: &UnixListener,
    out: impl std::io::Write + Send + 'static,
) -> Result<(UnixListener, std::thread::JoinHandle<()>), Fail> {
    let l = listener.try_clone().ctx(Step::Pod, || "cannot duplicate a listener".into())?;
    let mine = listener.try_clone().ctx(Step::Pod, || "cannot duplicate a listener".into())?;
    let handle = std::thread::spawn(move || {
        let mut out = out;
        if let Ok((mut s, _)) = l.accept() {
            let _ = std::io::copy(&mut s, &mut out);
            let _ = out.flush();
        }
    });
    Ok((mine, handle))
}
