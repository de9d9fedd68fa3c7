//! The pod manifest: what stage0 hands to a stage1 flavor (file `pod.json` in the pod dir), and
//! the files a stage1 writes back. This is the versioned stage1 ABI of `docs/stage1-abi.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bytes::ByteStr;
use crate::digest::Digest;
use crate::security::{Resources, SeccompPolicy};

/// Version of the stage1 ABI (pod manifest schema, arguments, files). A stage1 refuses a manifest
/// of a newer version than it knows.
pub const ABI_VERSION: u32 = 2;

/// Exit codes of the stage1 `run` entrypoint that are not an app's status. They are chosen above
/// 128+64 so that they cannot be read as an app's exit code in the common range; an app's own
/// status is passed through unchanged.
pub mod exit {
    /// stage1 failed before any app started (bad manifest, mount or namespace failure).
    pub const STAGE1_FAILED: i32 = 125;
    /// The app's command could not be executed (permission, bad format).
    pub const CANNOT_EXEC: i32 = 126;
    /// The app's command was not found in its root filesystem.
    pub const NOT_FOUND: i32 = 127;
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// Linux namespaces (default).
    Ns,
    /// chroot only, host namespaces, one app.
    Fly,
    /// The pod in a lightweight virtual machine of its own (qemu microvm), with husk's pod init
    /// as the guest's PID 1 (docs/kvm.md).
    Kvm,
}

impl Flavor {
    pub fn as_str(&self) -> &'static str {
        match self {
            Flavor::Ns => "ns",
            Flavor::Fly => "fly",
            Flavor::Kvm => "kvm",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum NetMode {
    /// A private network namespace with only loopback.
    None,
    /// The host's network namespace.
    Host,
    /// A private network namespace joined to CNI networks.
    Cni {
        networks: Vec<crate::net::NetAttachment>,
        #[serde(default)]
        ports: Vec<crate::net::PortMapping>,
        /// Directories searched for plugin executables (`CNI_PATH`).
        plugin_dirs: Vec<PathBuf>,
    },
}

impl NetMode {
    /// Whether the pod has its own network namespace.
    pub fn private(&self) -> bool {
        !matches!(self, NetMode::Host)
    }

    /// Names for tables: `none`, `host`, or the network names.
    pub fn names(&self) -> Vec<String> {
        match self {
            NetMode::None => vec!["none".into()],
            NetMode::Host => vec!["host".into()],
            NetMode::Cni { networks, .. } => networks.iter().map(|n| n.name.clone()).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IpcMode {
    Private,
    Parent,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum VolumeKind {
    /// A host directory or file bind-mounted into apps.
    Host { source: PathBuf, read_only: bool },
    /// A fresh empty directory in the pod dir, shared by the apps that mount it.
    Empty,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    #[serde(flatten)]
    pub kind: VolumeKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountPoint {
    pub volume: String,
    /// Absolute path inside the app's root; resolved by stage1 without leaving the root.
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The name the user gave (e.g. `127.0.0.1:5000/busybox:latest`).
    pub name: String,
    /// The image ID (config digest).
    pub id: Digest,
    pub manifest: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// The id the kernel reads as "no id": `setresuid(-1, …)` leaves the uid unchanged, `chown(…, -1)`
/// leaves the owner. An app asking for it would keep stage1's root.
pub const INVALID_ID: u32 = u32::MAX;

impl AppUser {
    /// Refuses ids that cannot be an app's: the kernel's "unchanged" id (-1), and with private
    /// users any id outside the pod's user namespace (it would not be mapped, so the kernel
    /// refuses it or, for some calls, reads it as the overflow id).
    pub fn validate(&self, range: Option<IdRange>) -> Result<(), String> {
        let ids =
            [("uid", self.uid), ("gid", self.gid)].into_iter().chain(self.additional_gids.iter().map(|g| ("gid", *g)));
        for (what, id) in ids {
            if id == INVALID_ID {
                return Err(format!(
                    "{what} {id} is the kernel's \"no id\" (-1), which would leave the app running as root; choose another {what}"
                ));
            }
            if let Some(r) = range {
                if id >= r.count {
                    return Err(format!(
                        "{what} {id} is outside the pod's private user range (0 to {}); choose a {what} below {}",
                        r.count - 1,
                        r.count
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How an app's standard streams are wired.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Stdio {
    /// Inherit the stage1 process's stdin/stdout/stderr (foreground `run`).
    Inherit,
    /// Like inherit, and the app owns the terminal (`--interactive`).
    Interactive,
    /// stdin is /dev/null, stdout and stderr go to `logs/<app>.log` in the pod dir.
    Log,
    /// A pty allocated in the app's own devpts is its stdin, stdout, stderr, controlling
    /// terminal and `/dev/console`; stage1 relays it to the invoker's terminal (foreground
    /// `run -t`), forwarding the invoker's input when `input` (`-it`).
    Terminal { input: bool },
    /// A pty as with [`Stdio::Terminal`], in a detached pod: stage1 writes its output to
    /// `logs/<app>.log` and serves `husk attach` on `attach.sock` in the pod dir.
    AttachableTerminal,
}

impl Stdio {
    /// Whether the app gets a pty.
    pub fn has_terminal(self) -> bool {
        matches!(self, Stdio::Terminal { .. } | Stdio::AttachableTerminal)
    }

    /// Whether the app owns something of the invoker's that only one app can have (its
    /// terminal, its input).
    pub fn needs_single_app(self) -> bool {
        self != Stdio::Inherit && self != Stdio::Log
    }

    /// Whether stage1 writes the apps' output to their log files.
    pub fn is_logged(self) -> bool {
        matches!(self, Stdio::Log | Stdio::AttachableTerminal)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub image: ImageInfo,
    /// Unpacked layer trees, lowest first: the overlay lower dirs.
    pub layers: Vec<PathBuf>,
    /// argv; argv[0] is looked up in the app's PATH when it has no '/'. Bytes: an argument
    /// reaches the app exactly as given, UTF-8 or not.
    pub exec: Vec<ByteStr>,
    /// Environment in order; later entries override earlier ones with the same key. Values are
    /// bytes, passed unchanged.
    pub env: Vec<(String, ByteStr)>,
    pub user: AppUser,
    pub working_dir: PathBuf,
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub security: AppSecurity,
    #[serde(default)]
    pub resources: Resources,
}

/// What an app runs with, beyond its user. `husk enter` applies exactly the same.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppSecurity {
    /// Capability names (CAP_*): the bounding set, and for a root app also the permitted and
    /// effective sets. Non-root apps get no effective capabilities.
    pub capabilities: Vec<String>,
    /// None: no filter (`--insecure-options=seccomp`).
    pub seccomp: Option<SeccompPolicy>,
    /// Masked and read-only kernel paths (off with `--insecure-options=paths`).
    pub masked_paths: bool,
}

impl Default for AppSecurity {
    fn default() -> Self {
        AppSecurity {
            capabilities: crate::security::DEFAULT_CAPS.iter().map(|s| s.to_string()).collect(),
            seccomp: Some(crate::security::default_policy()),
            masked_paths: true,
        }
    }
}

/// Paths of /proc and /sys hidden from apps (a file gets /dev/null, a directory an empty
/// read-only tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "proc/acpi",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "proc/interrupts",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Paths of /proc made read-only for apps.
pub const READONLY_PATHS: &[&str] =
    &["proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger", "proc/asound"];

/// A pod's own range of host uids and gids (`--private-users`): container id N is host id
/// `host_base + N`, for N below `count`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdRange {
    pub host_base: u32,
    pub count: u32,
}

impl App {
    /// The effective environment: last value of each key wins, order of first appearance kept.
    pub fn environment(&self) -> Vec<(String, ByteStr)> {
        let mut out: Vec<(String, ByteStr)> = Vec::new();
        for (k, v) in &self.env {
            match out.iter_mut().find(|(ok, _)| ok == k) {
                Some(slot) => slot.1 = v.clone(),
                None => out.push((k.clone(), v.clone())),
            }
        }
        out
    }
}

pub use crate::etc::{Dns, Hosts};

/// When a pod ends, given how its apps end (`--exit-policy`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ExitPolicy {
    /// When every app has exited; a failing app does not stop the others.
    All,
    /// When any app exits: the others are stopped; the pod's status is that app's.
    Any,
    /// When every app has exited, or at the first failure, which stops the others (rkt's way).
    #[default]
    Failure,
}

impl ExitPolicy {
    /// Whether an app ending with `status` stops the pod's other apps.
    pub fn stops_pod(self, status: i32) -> bool {
        match self {
            ExitPolicy::All => false,
            ExitPolicy::Any => true,
            ExitPolicy::Failure => status != 0,
        }
    }

    /// The pod's status, from its apps' statuses in the order they ended.
    pub fn pod_status(self, ended: &[i32]) -> i32 {
        match self {
            ExitPolicy::Any => ended.first().copied().unwrap_or(0),
            ExitPolicy::All | ExitPolicy::Failure => ended.iter().copied().find(|c| *c != 0).unwrap_or(0),
        }
    }
}

/// How much of a detached pod's output is kept, per app: `max_files` files of at most `max_size`
/// bytes (`logs/<app>.log`, then `.log.1`, … oldest last). The oldest output is dropped first.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits { max_size: 50 << 20, max_files: 2 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "PodManifestWire")]
pub struct PodManifest {
    pub abi_version: u32,
    pub uuid: String,
    pub created: chrono::DateTime<chrono::Utc>,
    pub flavor: Flavor,
    pub hostname: String,
    pub net: NetMode,
    pub ipc: IpcMode,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub hosts: Hosts,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    pub apps: Vec<App>,
    /// Stage1's stdio mode for all apps.
    pub stdio: Stdio,
    /// `--private-users`: the pod's user namespace maps container ids 0..count to this range.
    #[serde(default)]
    pub private_users: Option<IdRange>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Bounds of the apps' logs of a detached pod.
    #[serde(default)]
    pub log_limits: LogLimits,
    #[serde(default)]
    pub exit_policy: ExitPolicy,
    /// Run by stage1 once the pod has exited and its lock is released, and waited for (`run
    /// --rm`: stage0's own `rm` of the pod). Empty: nothing.
    #[serde(default)]
    pub exit_command: Vec<ByteStr>,
    /// How the pod fits a systemd unit: readiness, socket activation, stop timeout, output.
    #[serde(default)]
    pub systemd: Systemd,
    /// The virtual machine of a `kvm` pod (None for every other flavor).
    #[serde(default)]
    pub vm: Option<VmSettings>,
}

/// `[stage1.kvm] accel`: how the kvm flavor runs its guest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Accel {
    /// KVM when the host's /dev/kvm can run a stock guest kernel (probed), else TCG with a notice.
    #[default]
    Auto,
    /// KVM, or the pod fails.
    Kvm,
    /// qemu's software emulation (TCG), always.
    Tcg,
}

/// What stage0 decided about a `kvm` pod's virtual machine: where the guest's kernel, modules and
/// helpers are, how it is accelerated and how large it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmSettings {
    /// The kvm assets: `vmlinux` or `vmlinuz`, `modules/`, `qemu/`, `bin/` (docs/kvm.md).
    pub assets: std::path::PathBuf,
    pub accel: Accel,
    /// The guest's memory: the pod's memory limit plus the guest's own overhead.
    pub memory_mib: u64,
    pub cpus: u32,
}

/// The size of a kvm pod's guest: with a memory limit on every app, their sum plus the guest's
/// overhead (else `default_memory`); with a CPU limit on every app, their sum rounded up to whole
/// CPUs (else `default_cpus`), never more than `host_cpus`. Bytes in, MiB out.
pub fn vm_size(
    apps: &[&crate::security::Resources],
    default_memory: u64,
    overhead: u64,
    default_cpus: u32,
    host_cpus: u32,
) -> (u64, u32) {
    let mib = |b: u64| b.div_ceil(1 << 20);
    let memory = match apps.iter().map(|r| r.memory).collect::<Option<Vec<u64>>>() {
        Some(v) if !v.is_empty() => mib(v.iter().fold(0u64, |a, b| a.saturating_add(*b))).saturating_add(mib(overhead)),
        _ => mib(default_memory),
    };
    let cpus = match apps.iter().map(|r| r.cpu_millis).collect::<Option<Vec<u64>>>() {
        Some(v) if !v.is_empty() => v.iter().fold(0u64, |a, b| a.saturating_add(*b)).div_ceil(1000).max(1),
        _ => u64::from(default_cpus.max(1)),
    };
    (memory, cpus.min(u64::from(host_cpus.max(1))) as u32)
}

/// `--sd-notify`: who tells systemd (`$NOTIFY_SOCKET`) that the service is ready.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case", tag = "mode", content = "app")]
pub enum Notify {
    /// `pod` when `$NOTIFY_SOCKET` is set when the pod starts, else nothing.
    #[default]
    Auto,
    /// Stage1 sends `READY=1` (and `MAINPID`, the supervisor) once every app has started.
    Pod,
    /// The named app gets a socket of its own (`/run/notify/notify.sock`, `$NOTIFY_SOCKET`);
    /// what it sends is passed on, from the supervisor, with `MAINPID` the supervisor.
    App(String),
    /// Nothing is sent, and no app sees the variable.
    Ignore,
}

/// The systemd side of a pod (docs/systemd.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Systemd {
    #[serde(default)]
    pub notify: Notify,
    /// The app that gets the socket-activated fds (`$LISTEN_FDS`), when husk was started with
    /// some; None: the pod's only app.
    #[serde(default)]
    pub socket_app: Option<String>,
    /// Milliseconds between SIGTERM and SIGKILL when the pod stops on a SIGTERM (a unit's stop)
    /// or because an app ended it; None: 10 s. `husk stop --timeout` overrides it.
    #[serde(default)]
    pub stop_timeout_ms: Option<u64>,
    /// Each line of a foreground pod's output starts with `[APP] ` (for journald).
    #[serde(default)]
    pub log_prefix: bool,
}

/// How many socket-activated fds a process was given (sd_listen_fds(3)): `$LISTEN_FDS`, when
/// `$LISTEN_PID` is `my_pid`; None otherwise (the variables were meant for another process, or
/// are not numbers). stage0 checks it before the exec into stage1, which keeps the pid.
pub fn listen_fds(listen_pid: Option<&str>, listen_fds: Option<&str>, my_pid: u32) -> Option<u32> {
    let pid: u32 = listen_pid?.trim().parse().ok()?;
    let n: u32 = listen_fds?.trim().parse().ok()?;
    (pid == my_pid && n > 0).then_some(n)
}

/// Where `$NOTIFY_SOCKET` is inside the app that `Notify::App` names.
pub const APP_NOTIFY_SOCKET: &str = "/run/notify/notify.sock";

impl Systemd {
    /// The app that gets socket-activated fds in pod `m`.
    pub fn socket_app<'a>(&'a self, m: &'a PodManifest) -> Option<&'a str> {
        match &self.socket_app {
            Some(a) => Some(a),
            None if m.apps.len() == 1 => Some(&m.apps[0].name),
            None => None,
        }
    }
}

/// What `pod.json` may hold: this version's fields, and ABI 1's `hosts_entries` and
/// `hosts_from_host` (read into [`Hosts`]; `hosts_from_host` won).
#[derive(Deserialize)]
struct PodManifestWire {
    abi_version: u32,
    uuid: String,
    created: chrono::DateTime<chrono::Utc>,
    flavor: Flavor,
    hostname: String,
    net: NetMode,
    ipc: IpcMode,
    #[serde(default)]
    dns: Dns,
    #[serde(default)]
    hosts: Option<Hosts>,
    #[serde(default)]
    hosts_entries: Vec<(String, String)>,
    #[serde(default)]
    hosts_from_host: bool,
    #[serde(default)]
    volumes: Vec<Volume>,
    apps: Vec<App>,
    stdio: Stdio,
    #[serde(default)]
    private_users: Option<IdRange>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    log_limits: LogLimits,
    #[serde(default)]
    exit_policy: ExitPolicy,
    #[serde(default)]
    exit_command: Vec<ByteStr>,
    #[serde(default)]
    systemd: Systemd,
    #[serde(default)]
    vm: Option<VmSettings>,
}

impl From<PodManifestWire> for PodManifest {
    fn from(w: PodManifestWire) -> Self {
        let hosts = match (w.hosts, w.hosts_from_host) {
            (Some(h), _) => h,
            (None, true) => Hosts::Host,
            (None, false) => Hosts::Written { entries: w.hosts_entries },
        };
        PodManifest {
            abi_version: w.abi_version,
            uuid: w.uuid,
            created: w.created,
            flavor: w.flavor,
            hostname: w.hostname,
            net: w.net,
            ipc: w.ipc,
            dns: w.dns,
            hosts,
            volumes: w.volumes,
            apps: w.apps,
            stdio: w.stdio,
            private_users: w.private_users,
            annotations: w.annotations,
            log_limits: w.log_limits,
            exit_policy: w.exit_policy,
            exit_command: w.exit_command,
            systemd: w.systemd,
            vm: w.vm,
        }
    }
}

/// How an app ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Killed(i32),
    /// stage1 could not start it: the status to report (125, 126, 127) and why.
    NotStarted { code: i32, reason: String },
}

/// How an app ended, written by stage1 into `apps/<name>/status.json`. On disk (and in
/// `status --format json`) it is `{exit_code, signal, error, oom_killed, started, finished}`, as
/// since ABI 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(into = "AppStatusWire", from = "AppStatusWire")]
pub struct AppStatus {
    pub outcome: Outcome,
    /// The kernel's OOM killer ended a process of the app's cgroup (the app or a child).
    pub oom_killed: bool,
    pub started: Option<chrono::DateTime<chrono::Utc>>,
    pub finished: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, Deserialize)]
struct AppStatusWire {
    exit_code: Option<i32>,
    signal: Option<i32>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    oom_killed: bool,
    started: Option<chrono::DateTime<chrono::Utc>>,
    finished: chrono::DateTime<chrono::Utc>,
}

impl From<AppStatus> for AppStatusWire {
    fn from(s: AppStatus) -> Self {
        let (exit_code, signal, error) = match s.outcome {
            Outcome::Exited(c) => (Some(c), None, None),
            Outcome::Killed(sig) => (None, Some(sig), None),
            Outcome::NotStarted { code, reason } => (Some(code), None, Some(reason)),
        };
        AppStatusWire { exit_code, signal, error, oom_killed: s.oom_killed, started: s.started, finished: s.finished }
    }
}

impl From<AppStatusWire> for AppStatus {
    fn from(w: AppStatusWire) -> Self {
        let outcome = match (w.error, w.exit_code, w.signal) {
            (Some(reason), code, _) => Outcome::NotStarted { code: code.unwrap_or(exit::STAGE1_FAILED), reason },
            (None, Some(c), _) => Outcome::Exited(c),
            (None, None, Some(sig)) => Outcome::Killed(sig),
            (None, None, None) => {
                Outcome::NotStarted { code: exit::STAGE1_FAILED, reason: "no exit status was recorded".into() }
            }
        };
        AppStatus { outcome, oom_killed: w.oom_killed, started: w.started, finished: w.finished }
    }
}

impl AppStatus {
    /// The status a shell would report: the code, or 128+signal.
    pub fn shell_status(&self) -> i32 {
        match &self.outcome {
            Outcome::Exited(c) | Outcome::NotStarted { code: c, .. } => *c,
            Outcome::Killed(s) => 128 + s,
        }
    }
}

/// Written by stage1 into `stage1.json` once the pod runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stage1State {
    pub abi_version: u32,
    /// The supervisor: the process holding the pod lock, parent of the pod init.
    pub supervisor_pid: i32,
    /// The pod's init (PID 1 of the pod's PID namespace), as seen from the host; the process to
    /// enter. For `fly`, the app itself.
    pub init_pid: i32,
    pub started: chrono::DateTime<chrono::Utc>,
    /// Cgroup of the pod, relative to each hierarchy root (e.g. `husk/<uuid>`).
    pub cgroup: Option<String>,
    /// Host PIDs of the apps by name, for `enter`.
    #[serde(default)]
    pub app_pids: BTreeMap<String, i32>,
}

/// Checks a pod's hostname: an RFC 1123 host name (dot-separated labels of letters, digits and
/// inner hyphens, 1 to 63 characters each), at most 64 characters (the kernel's limit). It is
/// written into the pod's /etc/hosts and /etc/hostname, so nothing else may pass.
pub fn validate_hostname(h: &str) -> Result<(), String> {
    validate_host_name(h, 64)
}

/// An RFC 1123 name of at most `max` characters (64 for the pod's hostname, 253 for the names
/// of `--hosts-entry`).
pub fn validate_host_name(h: &str, max: usize) -> Result<(), String> {
    if h.is_empty() || h.len() > max {
        return Err(format!("hostname {h:?} must be 1 to {max} characters"));
    }
    for label in h.split('.') {
        let b = label.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if !ok {
            return Err(format!(
                "hostname {h:?} is not an RFC 1123 host name: labels of letters, digits and inner '-', separated by '.'"
            ));
        }
    }
    Ok(())
}

/// What `husk stop` writes to the pod dir's `stop.json` ([`crate::abi::PodDir::stop_request`])
/// before it sends SIGTERM to the supervisor: how long the apps get before they are killed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct StopRequest {
    /// Milliseconds between SIGTERM and SIGKILL.
    pub timeout_ms: u64,
}

/// Validates an app or volume name: what appears in paths of the pod dir.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
        && !name.contains("..")
}

#[cfg(test)]
mod vm_tests {
    use super::vm_size;
    use crate::security::Resources;

    const M: u64 = 1 << 20;

    #[test]
    fn the_guest_is_the_apps_limits_plus_its_overhead() {
        let a = Resources { memory: Some(256 * M), cpu_millis: Some(500), ..Default::default() };
        let b = Resources { memory: Some(100 * M + 1), cpu_millis: Some(1200), ..Default::default() };
        assert_eq!(vm_size(&[&a, &b], 512 * M, 128 * M, 1, 8), (256 + 101 + 128, 2));
    }

    #[test]
    fn an_app_without_a_limit_gives_the_defaults() {
        let a = Resources { memory: Some(256 * M), cpu_millis: Some(3000), ..Default::default() };
        let b = Resources::default();
        assert_eq!(vm_size(&[&a, &b], 512 * M, 128 * M, 1, 8), (512, 1));
        assert_eq!(vm_size(&[], 512 * M, 128 * M, 2, 8), (512, 2));
    }

    #[test]
    fn never_more_cpus_than_the_host_has_nor_fewer_than_one() {
        let a = Resources { cpu_millis: Some(16_000), ..Default::default() };
        assert_eq!(vm_size(&[&a], 512 * M, 0, 1, 2).1, 2);
        let b = Resources { cpu_millis: Some(10), ..Default::default() };
        assert_eq!(vm_size(&[&b], 512 * M, 0, 0, 2).1, 1);
        assert_eq!(vm_size(&[], 512 * M, 0, 0, 2).1, 1);
    }

    #[test]
    fn huge_limits_saturate_instead_of_overflowing() {
        let a = Resources { memory: Some(u64::MAX), ..Default::default() };
        let (m, _) = vm_size(&[&a, &a], 512 * M, 128 * M, 1, 2);
        assert!(m >= u64::MAX >> 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_last_value_wins_in_first_order() {
        let app = App {
            name: "a".into(),
            image: ImageInfo {
                name: "x".into(),
                id: Digest::from_sha256_bytes(&[1; 32]),
                manifest: Digest::from_sha256_bytes(&[2; 32]),
            },
            layers: vec![],
            exec: vec!["/bin/true".into()],
            env: vec![("A".into(), "1".into()), ("B".into(), "2".into()), ("A".into(), "3".into())],
            user: AppUser { uid: 0, gid: 0, additional_gids: vec![] },
            working_dir: "/".into(),
            mounts: vec![],
            readonly_rootfs: false,
            security: AppSecurity::default(),
            resources: Default::default(),
        };
        assert_eq!(
            app.environment(),
            vec![("A".to_string(), ByteStr::from("3")), ("B".to_string(), ByteStr::from("2"))]
        );
    }

    #[test]
    fn names_that_could_escape_the_pod_dir_are_invalid() {
        assert!(valid_name("web-1"));
        for bad in ["", "..", "a/b", "A", "-x", "a..b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_id_minus_one_means_root_and_is_refused() {
        let u = |uid, gid, extra: Vec<u32>| AppUser { uid, gid, additional_gids: extra };
        assert!(u(1000, 1000, vec![]).validate(None).is_ok());
        assert!(u(0, 0, vec![]).validate(None).is_ok());
        assert!(u(INVALID_ID, 0, vec![]).validate(None).unwrap_err().contains("uid 4294967295"));
        assert!(u(0, INVALID_ID, vec![]).validate(None).unwrap_err().contains("gid 4294967295"));
        assert!(u(0, 0, vec![5, INVALID_ID]).validate(None).is_err());
        assert!(u(INVALID_ID - 1, 0, vec![]).validate(None).is_ok());
    }

    #[test]
    fn ids_outside_the_private_user_range_are_refused() {
        let r = Some(IdRange { host_base: 1 << 20, count: 65536 });
        let u = |uid, gid| AppUser { uid, gid, additional_gids: vec![] };
        assert!(u(65535, 65535).validate(r).is_ok());
        assert!(u(65536, 0).validate(r).unwrap_err().contains("outside the pod's private user range"));
        assert!(u(0, 70000).validate(r).is_err());
        assert!(u(65536, 0).validate(None).is_ok());
    }

    #[test]
    fn a_hostname_with_a_newline_cannot_inject_hosts_lines() {
        for good in ["web", "husk-0a1b2c3d-0000-4000-8000-000000000000", "a.b-c.D9", &"x".repeat(63)] {
            assert!(validate_hostname(good).is_ok(), "{good}");
        }
        for bad in ["", "a\n10.0.0.1 evil", "a b", "-a", "a-", "a..b", ".a", "a.", "a_b", &"x".repeat(65), "a/b"] {
            assert!(validate_hostname(bad).is_err(), "{bad:?}");
        }
    }

    /// The pod.json of a pod prepared by the previous release (ABI 1, `testdata/pod-abi1.json`):
    /// a newer husk must list, run, stop and gc the pods an older one made.
    #[test]
    fn a_pod_json_of_abi_1_still_reads() {
        let m: PodManifest = serde_json::from_str(include_str!("../testdata/pod-abi1.json")).unwrap();
        assert_eq!(m.abi_version, 1);
        assert_eq!(m.dns, Dns::Host);
        assert_eq!(m.hosts, Hosts::Written { entries: vec![("192.0.2.7".into(), "db".into())] });
        assert_eq!(m.apps[0].exec, vec![ByteStr::from("echo"), ByteStr::from("hi")]);
        assert_eq!(m.log_limits, LogLimits::default());
        // Written back in this version's form, it reads the same.
        let again: PodManifest = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }

    #[test]
    fn exit_policies_decide_when_the_pod_ends_and_its_status() {
        use ExitPolicy::*;
        assert!(!All.stops_pod(1) && Any.stops_pod(0) && Failure.stops_pod(2) && !Failure.stops_pod(0));
        // Statuses in the order the apps ended: the others stopped with SIGTERM (143) after.
        assert_eq!(Failure.pod_status(&[0, 3, 143]), 3);
        assert_eq!(Any.pod_status(&[0, 143]), 0);
        assert_eq!(Any.pod_status(&[2, 143]), 2);
        assert_eq!(All.pod_status(&[0, 0, 4]), 4);
        assert_eq!(All.pod_status(&[]), 0);
        assert_eq!(serde_json::to_value(ExitPolicy::default()).unwrap(), "failure");
    }

    #[test]
    fn shell_status() {
        let now = chrono::Utc::now();
        let s = AppStatus { outcome: Outcome::Killed(9), oom_killed: false, started: None, finished: now };
        assert_eq!(s.shell_status(), 137);
        let wire = serde_json::to_value(&s).unwrap();
        assert_eq!((wire["signal"].as_i64(), wire["exit_code"].as_i64()), (Some(9), None));
        assert_eq!(serde_json::from_value::<AppStatus>(wire).unwrap(), s);
        let failed = AppStatus {
            outcome: Outcome::NotStarted { code: 127, reason: "x: not found".into() },
            oom_killed: false,
            started: None,
            finished: now,
        };
        let back: AppStatus = serde_json::from_value(serde_json::to_value(&failed).unwrap()).unwrap();
        assert_eq!((back.shell_status(), back), (127, failed));
    }

    #[test]
    fn listen_fds_are_ours_only_when_listen_pid_is() {
        assert_eq!(listen_fds(Some("42"), Some("2"), 42), Some(2));
        assert_eq!(listen_fds(Some("41"), Some("2"), 42), None, "meant for another process");
        assert_eq!(listen_fds(Some("42"), Some("0"), 42), None);
        assert_eq!(listen_fds(None, Some("2"), 42), None);
        assert_eq!(listen_fds(Some("42"), Some("two"), 42), None);
        assert_eq!(listen_fds(Some("x"), Some("1"), 42), None);
    }
}
