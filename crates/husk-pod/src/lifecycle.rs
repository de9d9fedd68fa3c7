//! The pod lifecycle as a library: a validated [`PodRequest`] from any front end (the CLI's
//! flags, later an OCI bundle or a CRI request), then [`prepare`], [`start`] (foreground:
//! stage0 becomes stage1 by `exec`; detached: a new session whose readiness is awaited),
//! [`stop`] and [`stage1_gc`]. The front end fetches the images and prints; this module never
//! prints.

use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_image::{ImageRecord, Store};
use husk_sys::LockKind;
use husk_types::abi::{self, PodDir};
use husk_types::msg::{self, Message};
use husk_types::pod::{
    App, Dns, ExitPolicy, Flavor, Hosts, IpcMode, LogLimits, NetMode, Notify, PodManifest, Stdio, StopRequest, Systemd,
    Volume, VolumeKind, ABI_VERSION,
};

use crate::error::PodError;
use crate::prepare::{build_app, default_app_name, AppSpec};
use crate::state::{LockedPod, Phase, PhaseDir, Pods};

/// Everything a pod is made of, as a front end asks for it.
#[derive(Debug, Clone)]
pub struct PodRequest {
    pub apps: Vec<AppSpec>,
    pub volumes: Vec<Volume>,
    /// Default `husk-<uuid>`.
    pub hostname: Option<String>,
    /// Resolved networks (see [`crate::network::resolve`]), ports included.
    pub net: NetMode,
    pub dns: Dns,
    pub hosts: Hosts,
    pub ipc: IpcMode,
    pub flavor: Flavor,
    pub private_users: bool,
    pub stdio: Stdio,
    /// TERM for an app with a terminal (the invoker's; default `xterm`, as podman sets it)
    /// unless its image or flags set one.
    pub term: Option<String>,
    pub log_limits: LogLimits,
    pub exit_policy: ExitPolicy,
    /// Run by stage1 when the pod has exited (see [`PodManifest::exit_command`]); `{uuid}` in
    /// an argument becomes the pod's UUID.
    pub exit_command: Vec<husk_types::ByteStr>,
    /// Readiness, socket activation, stop timeout and output for a systemd unit.
    pub systemd: husk_types::pod::Systemd,
    /// The virtual machine of a `kvm` pod: Some exactly when `flavor` is kvm.
    pub vm: Option<husk_types::pod::VmSettings>,
}

fn invalid(why: impl Into<String>) -> PodError {
    PodError::Request(why.into())
}

/// What the kvm flavor does not do (yet), refused before anything exists, and its settings.
fn check_kvm(r: &PodRequest) -> Result<(), PodError> {
    if (r.flavor == Flavor::Kvm) != r.vm.is_some() {
        return Err(invalid("a kvm pod needs its virtual machine's settings, and only a kvm pod has them"));
    }
    if r.flavor != Flavor::Kvm {
        return Ok(());
    }
    let refuse = |what: &str, why: &str| Err(invalid(format!("the kvm stage1 does not support {what}: {why}")));
    if r.private_users {
        return refuse("--private-users", "the pod's root is root of its own kernel; leave the flag out");
    }
    if matches!(r.net, NetMode::Host) {
        return refuse("--net=host", "the guest has its own kernel and network stack; use --net=none or a network");
    }
    if r.systemd.notify != Notify::Auto || r.systemd.socket_app.is_some() || r.systemd.log_prefix {
        return refuse("--sd-notify, --socket-activated or --log-prefix", "use the ns stage1 for a systemd unit");
    }
    if let Some(vm) = &r.vm {
        if vm.cpus == 0 || vm.memory_mib < 64 {
            return Err(invalid(format!(
                "a kvm pod needs at least 1 CPU and 64 MiB (asked: {} CPUs, {} MiB)",
                vm.cpus, vm.memory_mib
            )));
        }
    }
    Ok(())
}

/// A terminal or the invoker's input goes to one app; a pty needs the app's own devpts.
fn check_stdio(stdio: Stdio, apps: usize, flavor: &Flavor) -> Result<(), PodError> {
    if stdio.needs_single_app() && apps != 1 {
        let what = if stdio.has_terminal() { "a pod with a terminal" } else { "an interactive pod" };
        return Err(invalid(format!("{what} has exactly one app; this one has {apps}")));
    }
    if stdio.has_terminal() && *flavor == Flavor::Fly {
        return Err(invalid(
            "the fly stage1 has no devpts of its own to give the app a terminal; use -i without -t (the app shares yours)",
        ));
    }
    Ok(())
}

/// What the systemd settings need, checked before anything exists (app names are checked once
/// the apps are named, in [`prepare`]).
fn check_systemd(sd: &Systemd, stdio: Stdio, apps: usize, flavor: &Flavor) -> Result<(), PodError> {
    let asked = sd.notify != Notify::Auto || sd.socket_app.is_some() || sd.log_prefix;
    if *flavor == Flavor::Fly && asked {
        return Err(invalid(
            "--sd-notify, --socket-activated and --log-prefix need the ns stage1 (fly execs the app in its place)",
        ));
    }
    if sd.log_prefix && stdio != Stdio::Inherit {
        return Err(invalid(
            "--log-prefix applies to a foreground pod's output without a terminal (a detached pod's output is \
             in `husk logs`, per app)",
        ));
    }
    if sd.socket_app.is_none() && apps > 1 && listen_fds_for_us().is_some() {
        return Err(invalid(format!(
            "husk was started with socket-activated fds ($LISTEN_FDS) and the pod has {apps} apps: name the app \
             that gets them with --socket-activated=APP"
        )));
    }
    Ok(())
}

/// `$LISTEN_FDS` when `$LISTEN_PID` is this process; stage1, which this process becomes by
/// exec, keeps the pid.
pub fn listen_fds_for_us() -> Option<u32> {
    let var = |k: &str| std::env::var(k).ok();
    husk_types::pod::listen_fds(var("LISTEN_PID").as_deref(), var("LISTEN_FDS").as_deref(), std::process::id())
}

/// Names in the systemd settings must be apps of the pod.
fn check_systemd_names(sd: &Systemd, apps: &[&str]) -> Result<(), PodError> {
    let known = |n: &str| apps.contains(&n);
    let names = || apps.join(", ");
    if let Notify::App(n) = &sd.notify {
        if !known(n) {
            return Err(invalid(format!("--sd-notify=app:{n}: the pod has no app {n:?} (its apps: {})", names())));
        }
    }
    if let Some(n) = &sd.socket_app {
        if !known(n) {
            return Err(invalid(format!("--socket-activated={n}: the pod has no app {n:?} (its apps: {})", names())));
        }
    }
    Ok(())
}

/// Gives an app with a terminal its TERM, unless its image or flags set one (lowest precedence).
fn add_term(app: &mut App, term: Option<&str>) {
    if !app.env.iter().any(|(k, _)| k == "TERM") {
        app.env.insert(0, ("TERM".into(), term.unwrap_or("xterm").into()));
    }
}

impl PodRequest {
    /// Checks what the request alone decides, before any image is fetched or pod created.
    pub fn validate(&self, pods: &Pods) -> Result<(), PodError> {
        if self.apps.is_empty() {
            return Err(invalid("a pod needs at least one app"));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            if self.volumes[..i].iter().any(|w| w.name == v.name) {
                return Err(invalid(format!("volume {:?} is given twice; give each volume a name of its own", v.name)));
            }
            if let VolumeKind::Host { source, .. } = &v.kind {
                if !source.exists() {
                    return Err(invalid(format!("volume {}: source {} does not exist", v.name, source.display())));
                }
            }
        }
        if self.private_users && self.flavor == Flavor::Fly {
            return Err(invalid("private users need the ns stage1: fly shares the host's namespaces"));
        }
        if self.flavor == Flavor::Fly && self.net.private() {
            return Err(invalid("the fly stage1 shares the host's network"));
        }
        if self.flavor == Flavor::Fly && self.apps.len() != 1 {
            return Err(invalid("the fly stage1 runs exactly one app"));
        }
        check_kvm(self)?;
        check_stdio(self.stdio, self.apps.len(), &self.flavor)?;
        check_systemd(&self.systemd, self.stdio, self.apps.len(), &self.flavor)?;
        if let Some(h) = &self.hostname {
            husk_types::pod::validate_hostname(h).map_err(invalid)?;
        }
        if let Hosts::Written { entries } = &self.hosts {
            for (ip, name) in entries {
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| invalid(format!("hosts entry {ip:?} is not an IP address")))?;
                husk_types::pod::validate_host_name(name, 253).map_err(invalid)?;
            }
        }
        if let NetMode::Cni { ports, .. } = &self.net {
            crate::network::check_ports_distinct(ports)?;
        }
        if self.private_users {
            if let Some(dir) = first_unsearchable(pods.root()) {
                return Err(PodError::PrivateUsersCannotReach { dir });
            }
        }
        Ok(())
    }
}

/// The first directory from `/` down to `path` that others may not search (no `o+x`). With
/// private users the pod's root is an unprivileged host uid, which must reach its pod dir
/// through every one of them (a `mktemp -d` or a 0700 home is such a directory).
pub fn first_unsearchable(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = PathBuf::new();
    for c in path.components() {
        cur.push(c);
        match std::fs::metadata(&cur) {
            Ok(m) if m.is_dir() && m.permissions().mode() & 0o001 == 0 => return Some(cur),
            _ => {}
        }
    }
    None
}

/// An image fetched for one app: the name it was asked by and its record.
#[derive(Debug, Clone)]
pub struct AppImage {
    pub name: String,
    pub record: ImageRecord,
}

/// Creates the pod: its directory (locked), its id range, its apps' directories and its
/// manifest. On failure nothing is left behind. The pod is in `prepare/`; move it on with
/// [`Pods::transition`] to `prepared/` or start it with [`start`].
pub fn prepare(
    pods: &Pods,
    store: &Store,
    req: &PodRequest,
    images: &[AppImage],
) -> Result<(LockedPod, PodManifest), PodError> {
    if images.len() != req.apps.len() {
        return Err(invalid(format!("{} apps but {} images", req.apps.len(), images.len())));
    }
    // Hold the store shared so that `image rm`/`gc` cannot remove a layer before the pod
    // manifest that uses it is written.
    let _shared = store.lock_store(LockKind::Shared)?;
    for img in images {
        store.check_layers(&img.name, &img.record)?;
    }
    let base_layer = husk_image::base::ensure(store)?;
    let pod = pods.create()?;
    match assemble(pods, store, req, images, base_layer, &pod) {
        Ok(m) => Ok((pod, m)),
        Err(e) => {
            // Nothing the user stored lives in a half-prepared pod: remove it now.
            let _ = pods.remove_locked(pod, &|_| Ok(()));
            Err(e)
        }
    }
}

fn assemble(
    pods: &Pods,
    store: &Store,
    req: &PodRequest,
    images: &[AppImage],
    base_layer: Option<PathBuf>,
    pod: &LockedPod,
) -> Result<PodManifest, PodError> {
    // Both held until the manifest naming the ports and the range is written, at the end of this
    // function: two pods created at once never get the same ones.
    let _ports = match &req.net {
        NetMode::Cni { ports, .. } if !ports.is_empty() => {
            let l = crate::network::ports_lock(pods)?;
            crate::network::check_ports(pods, ports, &pod.uuid)?;
            Some(l)
        }
        _ => None,
    };
    let ids = if req.private_users { Some(crate::idrange::allocate(pods, &pod.uuid)?) } else { None };
    let mut apps: Vec<App> = Vec::new();
    for (s, img) in req.apps.iter().zip(images) {
        let base = s.name.clone().unwrap_or_else(|| default_app_name(&img.name));
        if !husk_types::pod::valid_name(&base) {
            return Err(invalid(format!("app name {base:?} must be lower-case letters, digits, '-', '_' or '.'")));
        }
        let mut name = base.clone();
        let mut n = 2;
        while apps.iter().any(|x| x.name == name) {
            if s.name.is_some() {
                return Err(invalid(format!("two apps are named {base:?}")));
            }
            name = format!("{base}-{n}");
            n += 1;
        }
        let mut app = build_app(store, &img.name, &img.record, s, name, ids.as_ref().map(|i| i.range))?;
        // Beneath the image: the mount targets it may lack (husk_image::base).
        if let Some(b) = &base_layer {
            app.layers.insert(0, b.clone());
        }
        if req.stdio.has_terminal() {
            add_term(&mut app, req.term.as_deref());
        }
        for mp in &app.mounts {
            if !req.volumes.iter().any(|v| v.name == mp.volume) {
                return Err(invalid(format!(
                    "app {}: a mount names volume {:?}, which the pod does not define",
                    app.name, mp.volume
                )));
            }
        }
        apps.push(app);
    }
    let m = PodManifest {
        abi_version: ABI_VERSION,
        uuid: pod.uuid.clone(),
        created: chrono::Utc::now(),
        flavor: req.flavor.clone(),
        hostname: req.hostname.clone().unwrap_or_else(|| format!("husk-{}", pod.uuid)),
        net: req.net.clone(),
        ipc: req.ipc.clone(),
        dns: req.dns.clone(),
        hosts: req.hosts.clone(),
        volumes: req.volumes.clone(),
        apps,
        stdio: req.stdio,
        private_users: ids.as_ref().map(|i| i.range),
        annotations: Default::default(),
        log_limits: req.log_limits,
        exit_policy: req.exit_policy,
        exit_command: req
            .exit_command
            .iter()
            .map(|a| husk_types::ByteStr(a.to_string_lossy().replace("{uuid}", &pod.uuid).into_bytes()))
            .collect(),
        systemd: req.systemd.clone(),
        vm: req.vm.clone(),
    };
    check_systemd_names(&m.systemd, &m.apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>())?;
    write_pod_dirs(&pod.dir, &m)?;
    Ok(m)
}

fn write_pod_dirs(dir: &Path, m: &PodManifest) -> Result<(), PodError> {
    let pd = PodDir::new(dir);
    // Each directory made once, parents first (create_dir_all would first try each path whole,
    // and fail, in a pod dir that is new).
    let mkdir = |p: PathBuf| match std::fs::create_dir(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(PodError::io(&p, "create", e)),
        _ => Ok(()),
    };
    mkdir(pd.apps_dir())?;
    for app in &m.apps {
        for p in [pd.app_dir(&app.name), pd.app_upper(&app.name), pd.app_work(&app.name), pd.app_rootfs(&app.name)] {
            mkdir(p)?;
        }
    }
    for v in &m.volumes {
        if v.kind == VolumeKind::Empty {
            let p = pd.volume(&v.name);
            std::fs::create_dir_all(&p).map_err(|e| PodError::io(&p, "create", e))?;
        }
    }
    // Where stage1 writes the pod's hostname, hosts and resolv.conf when it starts the pod (their
    // contents are the host's then); made here, a prepared pod's run has one directory less to
    // make.
    let etc = pd.etc_dir();
    std::fs::create_dir(&etc).map_err(|e| PodError::io(&etc, "create", e))?;
    // Made durable by the transition to `prepared` when the pod is only prepared.
    write_manifest(dir, m, false)
}

fn write_manifest(dir: &Path, m: &PodManifest, durable: bool) -> Result<(), PodError> {
    let p = PodDir::new(dir).manifest();
    // Compact: half the bytes of the indented form (the seccomp rules, masked paths and
    // capabilities are most of it) to write here and for stage1 to read at every start.
    let data = serde_json::to_vec(m).expect("manifests serialize");
    let r = if durable {
        husk_sys::atomic_write(&p, &data, 0o644)
    } else {
        husk_sys::atomic_write_volatile(&p, &data, 0o644)
    };
    r.map_err(|e| PodError::io(&p, "write", e))
}

/// Takes a prepared pod for running: locks it, checks it is in `prepared/`, sets how its apps'
/// standard streams are wired (and, for a terminal, TERM as [`PodRequest::term`]), and moves
/// it to `run/`.
pub fn take_prepared(
    pods: &Pods,
    uuid: &str,
    stdio: Stdio,
    term: Option<&str>,
) -> Result<(LockedPod, PodManifest), PodError> {
    let mut pod = pods.lock_pod(uuid)?;
    if pod.at != PhaseDir::Prepared {
        let phase = pods.observe(uuid).map(|(p, _)| p).unwrap_or(Phase::Garbage);
        return Err(PodError::WrongPhase {
            uuid: uuid.to_string(),
            phase: phase.as_str().into(),
            why: "only prepared pods can be run with run-prepared".into(),
        });
    }
    let path = PodDir::new(&pod.dir).manifest();
    let data = std::fs::read(&path).map_err(|e| PodError::io(&path, "read", e))?;
    let mut m: PodManifest =
        serde_json::from_slice(&data).map_err(|e| PodError::Corrupt { path: path.clone(), why: e.to_string() })?;
    check_stdio(stdio, m.apps.len(), &m.flavor)?;
    m.stdio = stdio;
    if stdio.has_terminal() {
        m.apps.iter_mut().for_each(|a| add_term(a, term));
    }
    // A new manifest (other stdio than prepared) is written beside the prepared one and takes
    // its place only once the pod is in `run/`: a prepared pod's manifest, durable since
    // `prepare`, never changes (a crash or a failure leaves it prepared as it was), and a
    // running pod's needs no fsync (two fsyncs were most of this function's time). The same
    // manifest is not rewritten at all: replacing a file by a rename makes ext4 write the new
    // one's blocks out at once (its `auto_da_alloc`), and free the old one's.
    let new = serde_json::to_vec(&m).expect("manifests serialize");
    let staged = if new != data {
        Some(
            husk_sys::fsutil::stage_volatile(&pod.dir, abi::MANIFEST, &new, 0o644)
                .map_err(|e| PodError::io(&PodDir::new(&pod.dir).manifest(), "write", e))?,
        )
    } else {
        None
    };
    if let Err(e) = pods.transition(&mut pod, PhaseDir::Run) {
        if let Some(s) = staged {
            s.discard(&pod.dir);
        }
        return Err(e);
    }
    if let Some(s) = staged {
        s.commit(&pod.dir).map_err(|e| PodError::io(&PodDir::new(&pod.dir).manifest(), "write", e))?;
    }
    Ok((pod, m))
}

/// How stage1 is started.
#[derive(Debug, Clone)]
pub struct Stage1 {
    /// The flavor's executable.
    pub path: PathBuf,
    pub debug: bool,
}

impl Stage1 {
    fn command(&self, pod: &LockedPod, m: &PodManifest) -> Result<std::process::Command, PodError> {
        let fd = pod.lock.inherit_across_exec().map_err(|e| PodError::io(&pod.dir, "pass the lock of", e))?;
        let mut cmd = std::process::Command::new(&self.path);
        cmd.arg("run");
        if self.debug {
            cmd.arg("--debug");
        }
        cmd.arg(&m.uuid).current_dir(&pod.dir).env(abi::env::LOCK_FD, fd.to_string());
        Ok(cmd)
    }
}

/// Starts a pod in `run/` in the foreground: this process becomes its stage1 (`exec`), so the
/// invoker stays the parent and receives the pod's exit status. Returns only on failure.
pub fn exec(pod: LockedPod, m: &PodManifest, stage1: &Stage1) -> PodError {
    let mut cmd = match stage1.command(&pod, m) {
        Ok(c) => c,
        Err(e) => return e,
    };
    PodError::Stage1 { path: stage1.path.clone(), source: cmd.exec() }
}

/// Starts a pod in `run/` detached (stage1 in a new session, its stderr in `stage1.log`) and
/// waits until every app has started or the pod failed to.
pub fn start_detached(pod: LockedPod, m: &PodManifest, stage1: &Stage1) -> Result<(), PodError> {
    let mut cmd = stage1.command(&pod, m)?;
    let (ready_r, ready_w) =
        husk_sys::proc::ready_pipe().map_err(|e| PodError::io(&pod.dir, "create the readiness pipe of", e))?;
    let log_path = PodDir::new(&pod.dir).stage1_log();
    let log = std::fs::File::create(&log_path).map_err(|e| PodError::io(&log_path, "create", e))?;
    let log2 = log.try_clone().map_err(|e| PodError::io(&log_path, "open", e))?;
    cmd.env(abi::env::READY_FD, ready_w.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log2)
        .stderr(log);
    husk_sys::proc::spawn_detached(&mut cmd).map_err(|e| PodError::Stage1 { path: stage1.path.clone(), source: e })?;
    drop(ready_w);
    drop(pod);
    match msg::expect(&mut BufReader::new(std::fs::File::from(ready_r)), &["ready", "failed"]) {
        Ok(Message::Ready) => Ok(()),
        other => {
            let reason = match other {
                Ok(Message::Failed { reason }) => reason,
                Err(msg::MsgError::Closed { .. }) => "stage1 exited before the pod started".to_string(),
                Err(e) => format!("stage1: {e}"),
                Ok(m) => format!("stage1 sent {}", m.name()),
            };
            Err(PodError::StartFailed { uuid: m.uuid.clone(), reason })
        }
    }
}

fn kill_pid(pid: i32, sig: i32) {
    // A pid of 0 or 1 would be a corrupt state file; never signal those.
    if pid > 1 {
        let _ = husk_sys::proc::kill(pid, sig);
    }
}

/// Stops one pod, whatever phase it is stuck in while its lock is held:
/// - running (`stage1.json` written): ns pods get SIGTERM through their supervisor, which kills
///   the apps itself when `timeout` (from stop.json) passes, so every app gets a status (137 when
///   killed); `force` asks for that kill at once. Only if the pod does not end then is its
///   init killed outright.
/// - still being prepared or started (no `stage1.json` yet, e.g. stage1 blocked on an image's
///   file): the lock holder named in `lock-holder.pid` gets SIGTERM (`force`: SIGKILL), then
///   SIGKILL after the timeout; `gc` cleans up what it left.
pub fn stop(pods: &Pods, uuid: &str, force: bool, timeout: Duration) -> Result<(), PodError> {
    let i = pods.info(uuid)?;
    if !matches!(i.phase, Phase::Running | Phase::Preparing | Phase::Embryo) {
        return Err(PodError::WrongPhase {
            uuid: uuid.to_string(),
            phase: i.phase.as_str().into(),
            why: "only running (or starting) pods can be stopped".into(),
        });
    }
    let wait = |t| husk_sys::Lock::lock_dir_timeout(&i.dir, LockKind::Shared, Some(t), || {});
    let running = match (&i.stage1, i.phase) {
        (Some(st), Phase::Running) if husk_sys::proc::holds_dir_open(st.supervisor_pid, &i.dir) => Some(st),
        _ => None,
    };
    let Some(st) = running else {
        let Some(pid) = crate::state::lock_holder(&i.dir) else {
            // The holder ended meanwhile, or the lock is held by another husk command.
            return match wait(Duration::from_secs(2)) {
                Ok(_) => Ok(()),
                Err(_) => Err(PodError::Busy { uuid: uuid.to_string() }),
            };
        };
        kill_pid(pid, if force { libc::SIGKILL } else { libc::SIGTERM });
        if wait(if force { Duration::from_secs(10) } else { timeout }).is_err() {
            kill_pid(pid, libc::SIGKILL);
            wait(Duration::from_secs(10))?;
        }
        return Ok(());
    };
    // Pods of ABI 2 and later own their stop deadline (kvm: the supervisor passes it to the guest;
    // `force` kills the VM); older ones (started by an earlier husk) and fly pods get the signals
    // directly.
    let ns = i.manifest.as_ref().is_some_and(|m| matches!(m.flavor, Flavor::Ns | Flavor::Kvm) && m.abi_version >= 2);
    if !ns {
        // fly: the app is the init, in the host's namespaces.
        kill_pid(st.init_pid, if force { libc::SIGKILL } else { libc::SIGTERM });
        if wait(if force { Duration::from_secs(10) } else { timeout }).is_err() {
            kill_pid(st.init_pid, libc::SIGKILL);
            wait(Duration::from_secs(10))?;
        }
        return Ok(());
    }
    let grace = if force { Duration::ZERO } else { timeout };
    let req = serde_json::to_vec(&StopRequest { timeout_ms: grace.as_millis() as u64 }).expect("serializable");
    let stop = PodDir::new(&i.dir).stop_request();
    husk_sys::atomic_write_volatile(&stop, &req, 0o644).map_err(|e| PodError::io(&stop, "write", e))?;
    kill_pid(st.supervisor_pid, if force { libc::SIGALRM } else { libc::SIGTERM });
    // The pod ends by itself at the deadline; allow it a little beyond for the kill and reaping.
    if wait(grace + Duration::from_secs(5)).is_err() {
        kill_pid(st.init_pid, libc::SIGKILL);
        wait(Duration::from_secs(10))?;
    }
    Ok(())
}

/// stage1's `gc` entrypoint for one pod dir: releases what stage1 created outside it. `stage1`
/// finds a flavor's executable.
pub fn stage1_gc(stage1: &dyn Fn(&Flavor) -> Option<PathBuf>, dir: &Path) -> Result<(), PodError> {
    let Ok(data) = std::fs::read(PodDir::new(dir).manifest()) else { return Ok(()) };
    let Ok(m) = serde_json::from_slice::<PodManifest>(&data) else { return Ok(()) };
    let path = stage1(&m.flavor).ok_or_else(|| PodError::Stage1 {
        path: PathBuf::from(abi::stage1_executable(&m.flavor)),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let out = std::process::Command::new(&path)
        .arg("gc")
        .arg(&m.uuid)
        .current_dir(dir)
        .output()
        .map_err(|e| PodError::Stage1 { path: path.clone(), source: e })?;
    if !out.status.success() {
        return Err(PodError::Stage1Gc { uuid: m.uuid, why: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PodRequest {
        PodRequest {
            apps: vec![AppSpec { image: "x".into(), ..Default::default() }],
            volumes: vec![],
            hostname: None,
            net: NetMode::None,
            dns: Dns::default(),
            hosts: Hosts::default(),
            ipc: IpcMode::Private,
            flavor: Flavor::Ns,
            private_users: false,
            stdio: Stdio::Inherit,
            term: None,
            log_limits: LogLimits::default(),
            exit_policy: ExitPolicy::default(),
            exit_command: vec![],
            systemd: Systemd::default(),
            vm: None,
        }
    }

    #[test]
    fn systemd_names_must_be_apps() {
        let apps = ["web", "db"];
        let ok = Systemd { notify: Notify::App("db".into()), socket_app: Some("web".into()), ..Default::default() };
        assert!(check_systemd_names(&ok, &apps).is_ok());
        let bad = Systemd { notify: Notify::App("nope".into()), ..Default::default() };
        assert!(check_systemd_names(&bad, &apps).unwrap_err().to_string().contains("no app \"nope\""));
        let bad = Systemd { socket_app: Some("nope".into()), ..Default::default() };
        assert!(check_systemd_names(&bad, &apps).unwrap_err().to_string().contains("--socket-activated=nope"));
    }

    #[test]
    fn requests_are_validated_before_anything_exists() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        assert!(request().validate(&pods).is_ok());
        type Edit = Box<dyn Fn(&mut PodRequest)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|r| r.apps.clear()), "at least one app"),
            (
                Box::new(|r| {
                    let v = Volume { name: "v".into(), kind: VolumeKind::Empty };
                    r.volumes = vec![v.clone(), v];
                }),
                "given twice",
            ),
            (
                Box::new(|r| {
                    r.volumes = vec![Volume {
                        name: "v".into(),
                        kind: VolumeKind::Host { source: "/nonexistent/x".into(), read_only: false },
                    }]
                }),
                "does not exist",
            ),
            (
                Box::new(|r| {
                    r.flavor = Flavor::Fly;
                    r.net = NetMode::Host;
                    r.private_users = true;
                }),
                "private users",
            ),
            (Box::new(|r| r.flavor = Flavor::Fly), "host's network"),
            (
                Box::new(|r| {
                    r.flavor = Flavor::Fly;
                    r.net = NetMode::Host;
                    r.apps.push(r.apps[0].clone());
                }),
                "exactly one app",
            ),
            (
                Box::new(|r| {
                    r.stdio = Stdio::Interactive;
                    r.apps.push(r.apps[0].clone());
                }),
                "interactive",
            ),
            (
                Box::new(|r| {
                    r.stdio = Stdio::Terminal { input: true };
                    r.apps.push(r.apps[0].clone());
                }),
                "a pod with a terminal has exactly one app",
            ),
            (
                Box::new(|r| {
                    r.stdio = Stdio::AttachableTerminal;
                    r.flavor = Flavor::Fly;
                    r.net = NetMode::Host;
                }),
                "no devpts",
            ),
            (
                Box::new(|r| {
                    r.flavor = Flavor::Fly;
                    r.net = NetMode::Host;
                    r.systemd.notify = Notify::Pod;
                }),
                "need the ns stage1",
            ),
            (
                Box::new(|r| {
                    r.stdio = Stdio::Log;
                    r.systemd.log_prefix = true;
                }),
                "--log-prefix applies to a foreground pod",
            ),
            (Box::new(|r| r.hostname = Some("a\nb".into())), "RFC 1123"),
            (Box::new(|r| r.hosts = Hosts::Written { entries: vec![("1.2.3.4".into(), "a b".into())] }), "RFC 1123"),
            (Box::new(|r| r.hosts = Hosts::Written { entries: vec![("x".into(), "a".into())] }), "not an IP"),
        ];
        for (edit, want) in cases {
            let mut r = request();
            edit(&mut r);
            let e = r.validate(&pods).unwrap_err();
            assert!(matches!(e, PodError::Request(_)), "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        assert!(pods.all_uuids().is_empty());
    }

    #[test]
    fn a_terminal_brings_term_unless_the_app_has_one() {
        let m: PodManifest = serde_json::from_str(include_str!("../../husk-types/testdata/pod-abi1.json")).unwrap();
        let mut app = m.apps[0].clone();
        app.env = vec![("PATH".into(), "/bin".into())];
        add_term(&mut app, Some("screen-256color"));
        assert_eq!(app.environment()[0], ("TERM".into(), "screen-256color".into()));
        let mut set = app.clone();
        set.env = vec![("TERM".into(), "vt100".into())];
        add_term(&mut set, None);
        assert_eq!(set.environment(), vec![("TERM".into(), "vt100".into())]);
        app.env.clear();
        add_term(&mut app, None);
        assert_eq!(app.environment(), vec![("TERM".into(), "xterm".into())]);
    }
}
