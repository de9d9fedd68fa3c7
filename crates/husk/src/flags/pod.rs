//! The flags of the pod commands (run, prepare, run-prepared, status, logs, enter, stop, rm, gc),
//! each defined once with its help text, parsed into validated types; parse tests below.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use husk_types::pod::{Flavor, IpcMode, MountPoint, Volume, VolumeKind};
use husk_types::ByteStr;

use super::{parse_duration, Format, PullPolicyArg};
use crate::exit::Failure;

// Flags of one app. (A plain comment: with deferred subcommands, an `Args` struct's doc
// comment would replace the `about` of every command that flattens it.)
#[derive(Debug, Args, Clone, Default)]
pub struct AppArgs {
    /// App name (default: from the image name).
    #[arg(long)]
    pub name: Option<String>,
    /// Command to run instead of the image's entrypoint.
    #[arg(long)]
    pub exec: Option<String>,
    /// User: name from the image's /etc/passwd or numeric uid, optionally USER:GROUP.
    #[arg(long)]
    pub user: Option<String>,
    /// Group: name from the image's /etc/group or numeric gid.
    #[arg(long)]
    pub group: Option<String>,
    /// Additional group IDs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub supplementary_gids: Vec<u32>,
    /// Working directory (absolute).
    #[arg(long)]
    pub working_dir: Option<String>,
    /// Environment variable K=V (highest precedence). The value may be any bytes.
    #[arg(short = 'e', long)]
    pub environment: Vec<OsString>,
    /// Environment variable K=V (above --set-env-file, below --environment).
    #[arg(long)]
    pub set_env: Vec<OsString>,
    /// File of K=V lines (above the image's environment).
    #[arg(long)]
    pub set_env_file: Vec<PathBuf>,
    /// Mount a pod volume: volume=NAME,target=PATH[,readOnly=true].
    #[arg(long, value_parser = parse_mount)]
    pub mount: Vec<MountPoint>,
    /// Make the app's root filesystem read-only.
    #[arg(long)]
    pub readonly_rootfs: bool,
    /// Keep only these capabilities (comma-separated, e.g. CAP_NET_BIND_SERVICE,CHOWN).
    #[arg(long, value_delimiter = ',')]
    pub caps_retain: Vec<String>,
    /// Remove these capabilities from the default set.
    #[arg(long, value_delimiter = ',')]
    pub caps_remove: Vec<String>,
    /// Seccomp: mode=retain|remove[,errno=NAME],SYSCALL|@GROUP,… (groups: @clock @keyring
    /// @module @mount @reboot @swap @raw-io @debug @obsolete @privileged @default).
    #[arg(long)]
    pub seccomp: Option<String>,
    /// Memory limit (e.g. 256M, 1G).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit: millicores (500m) or CPUs (1.5).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Relative CPU weight (cgroup v1 shares, 2 to 262144; default 1024).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=262144))]
    pub cpu_shares: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub pids_limit: Option<u64>,
    /// The OOM killer's preference for this app (-1000 to 1000; lowering needs CAP_SYS_RESOURCE).
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExitPolicyArg {
    Failure,
    All,
    Any,
}

impl From<ExitPolicyArg> for husk_types::pod::ExitPolicy {
    fn from(p: ExitPolicyArg) -> Self {
        match p {
            ExitPolicyArg::Failure => husk_types::pod::ExitPolicy::Failure,
            ExitPolicyArg::All => husk_types::pod::ExitPolicy::All,
            ExitPolicyArg::Any => husk_types::pod::ExitPolicy::Any,
        }
    }
}

/// `IMAGE [app flags] [-- ARGS]` after a `---` separator.
#[derive(Debug, Parser)]
#[command(name = "app", no_binary_name = true)]
pub struct AppSegment {
    pub image: String,
    #[command(flatten)]
    pub app: AppArgs,
    #[arg(last = true)]
    pub args: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The first app's image.
    pub image: String,
    #[command(flatten)]
    pub app: AppArgs,
    /// Arguments for the first app (after --), passed unchanged (any bytes).
    #[arg(last = true)]
    pub args: Vec<OsString>,
    /// A pod volume: NAME,kind=host,source=PATH[,readOnly=true] or NAME,kind=empty (apps mount
    /// it with --mount); or, as docker and podman write it, /HOST:/TARGET[:ro], a host directory
    /// or file mounted at TARGET in every app. (`-v` is --verbose in husk.)
    #[arg(long, value_parser = parse_volume)]
    pub volume: Vec<VolumeArg>,
    /// Hostname, an RFC 1123 host name (default husk-<uuid>).
    #[arg(long, value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// Write the pod's UUID to this file.
    #[arg(long)]
    pub uuid_file_save: Option<PathBuf>,
    /// Keep stdin open for the (single) app: without -t the app shares the invoker's terminal
    /// or pipes; with -t (`-it`) the keys typed reach its terminal.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the (single) app a terminal of its own (a pty of the pod's devpts, with TERM set),
    /// relayed to the invoker's; with --detach, attach to it later with `husk attach`.
    #[arg(short, long)]
    pub tty: bool,
    /// Start the pod in the background, print its UUID and return; output goes to `husk logs`.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the pod when it exits (its exit status still reaches `run`; a detached pod is
    /// removed when it ends).
    #[arg(long)]
    pub rm: bool,
    /// When the pod ends: failure (when every app has exited, or at the first failure, which
    /// stops the others), all (when every app has exited), any (when one exits: the others are
    /// stopped and the pod's status is that app's).
    #[arg(long, value_enum, default_value = "failure")]
    pub exit_policy: ExitPolicyArg,
    /// With --detach: the most each app's log file may hold before it is rotated (e.g. 10M).
    #[arg(long, default_value = "50M", value_parser = parse_log_size)]
    pub log_max_size: u64,
    /// With --detach: how many log files (the current one and rotated ones) each app keeps.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub log_max_files: u32,
    /// Networks: default (routed, masqueraded), default-restricted (host only), none (loopback
    /// only), host, or CNI networks from the config dir's net.d: NAME[:IP=ADDR;K=V][,NAME…].
    /// Default: default (host for --stage1=fly).
    #[arg(long, value_parser = parse_net)]
    pub net: Option<husk_types::net::NetRequest>,
    /// Forward a host port to the pod: [HOSTIP:]HOSTPORT:PODPORT[/tcp|udp].
    #[arg(short = 'p', long, value_parser = parse_port)]
    pub port: Vec<husk_types::net::PortMapping>,
    /// DNS server IP, or `host` (the host's resolv.conf) or `none` (the image's).
    #[arg(long)]
    pub dns: Vec<String>,
    /// DNS search domain.
    #[arg(long)]
    pub dns_search: Vec<String>,
    /// resolv.conf option.
    #[arg(long)]
    pub dns_opt: Vec<String>,
    /// resolv.conf domain.
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// Extra /etc/hosts entry IP=NAME, or `host` to use the host's /etc/hosts.
    #[arg(long)]
    pub hosts_entry: Vec<String>,
    /// IPC namespace: private or parent (the host's).
    #[arg(long, default_value = "private", value_parser = parse_ipc)]
    pub ipc: IpcMode,
    /// Run the pod in its own user namespace, with its own range of 65536 host uids and gids:
    /// root in the pod is an unprivileged user on the host.
    #[arg(long)]
    pub private_users: bool,
    /// Isolation flavor: ns (namespaces), fly (chroot, host namespaces, one app) or kvm (a
    /// virtual machine of its own).
    #[arg(long, default_value = "ns", value_parser = parse_flavor)]
    pub stage1: Flavor,
    /// When to contact the registry for the images.
    #[arg(long, value_enum, default_value = "new")]
    pub pull_policy: PullPolicyArg,
    /// No progress display while fetching.
    #[arg(short, long)]
    pub quiet: bool,
    /// Readiness for systemd ($NOTIFY_SOCKET): pod (READY=1 once every app started), app:NAME
    /// (the app gets a socket of its own and its messages are passed on), ignore. Default: pod
    /// when $NOTIFY_SOCKET is set.
    #[arg(long, value_parser = parse_sd_notify)]
    pub sd_notify: Option<husk_types::pod::Notify>,
    /// The app that gets the socket-activated fds ($LISTEN_FDS) as fds 3…; default: the pod's
    /// only app.
    #[arg(long, value_name = "APP")]
    pub socket_activated: Option<String>,
    /// Time between SIGTERM and SIGKILL when the pod is stopped by a SIGTERM (a unit's stop),
    /// or by an app's end under --exit-policy.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// Start each line of the apps' output with [APP] (a foreground pod without a terminal).
    #[arg(long)]
    pub log_prefix: bool,
}

fn parse_sd_notify(s: &str) -> Result<husk_types::pod::Notify, String> {
    use husk_types::pod::Notify;
    match s {
        "pod" => Ok(Notify::Pod),
        "ignore" => Ok(Notify::Ignore),
        _ => match s.strip_prefix("app:") {
            Some(name) if !name.is_empty() => Ok(Notify::App(name.to_string())),
            _ => Err(format!("{s:?}: use pod, app:NAME or ignore")),
        },
    }
}

#[derive(Debug, Args)]
pub struct PodRef {
    /// Pod UUID or a unique prefix.
    #[arg(required_unless_present = "uuid_file")]
    pub uuid: Option<String>,
    /// Read the UUID from this file.
    #[arg(long)]
    pub uuid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunPreparedArgs {
    #[command(flatten)]
    pub pod: PodRef,
    /// Start it in the background.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open for the app (see `run --interactive`).
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the app a terminal of its own (see `run --tty`).
    #[arg(short, long)]
    pub tty: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pod: PodRef,
    /// Wait until the pod exits (optionally at most this long, e.g. --wait=30s).
    #[arg(long, num_args = 0..=1, default_missing_value = "forever")]
    pub wait: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub pod: PodRef,
    /// Only this app's log.
    #[arg(long)]
    pub app: Option<String>,
    /// Keep printing new output until the pod exits.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct EnterArgs {
    #[command(flatten)]
    pub pod: PodRef,
    /// The app to enter (required when the pod has several).
    #[arg(long)]
    pub app: Option<String>,
    /// Give the command a terminal of the app's devpts, relayed to ours (default: when stdin
    /// and stdout are both terminals; --tty=false turns it off).
    #[arg(short, long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tty: Option<bool>,
    /// Command (default /bin/sh), passed unchanged (any bytes); `--` before it is optional (it
    /// is needed when the command's first word starts with '-').
    #[arg(trailing_var_arg = true)]
    pub cmd: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub pod: PodRef,
    /// The keys that detach, leaving the pod running: comma-separated, each ctrl-<letter> or one
    /// character, as podman writes them; empty: never detach.
    #[arg(long, default_value = "ctrl-p,ctrl-q", value_parser = parse_detach_keys)]
    pub detach_keys: husk_types::attach::DetachKeys,
    /// Only show the output; what is typed is not sent.
    #[arg(long)]
    pub no_stdin: bool,
}

fn parse_detach_keys(s: &str) -> Result<husk_types::attach::DetachKeys, String> {
    husk_types::attach::DetachKeys::parse(s)
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Pod UUIDs or unique prefixes.
    #[arg(required_unless_present = "uuid_file")]
    pub uuids: Vec<String>,
    /// Also the pod whose UUID this file holds.
    #[arg(long)]
    pub uuid_file: Option<PathBuf>,
    /// Kill the apps at once (SIGKILL; each is recorded as killed, status 137); also ends a pod
    /// stuck while it starts.
    #[arg(long)]
    pub force: bool,
    /// Time between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Pod UUIDs or unique prefixes.
    #[arg(required_unless_present = "uuid_file")]
    pub uuids: Vec<String>,
    /// Also the pod whose UUID this file holds.
    #[arg(long)]
    pub uuid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// How long exited pods are kept before removal.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// How long prepared pods are kept.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub expire_prepared: Duration,
}

/// `KEY=VALUE` of `--environment`/`--set-env`: the key is a non-empty UTF-8 name without '=',
/// the value any bytes (it reaches the app unchanged).
pub fn parse_kv(flag: &str, s: &OsStr) -> Result<(String, ByteStr), Failure> {
    use std::os::unix::ffi::OsStrExt;
    let b = s.as_bytes();
    let shown = s.to_string_lossy();
    let eq = b.iter().position(|c| *c == b'=');
    let key = eq.and_then(|i| std::str::from_utf8(&b[..i]).ok()).filter(|k| !k.is_empty());
    match (eq, key) {
        (Some(i), Some(k)) => Ok((k.to_string(), ByteStr(b[i + 1..].to_vec()))),
        (Some(_), None) if b[0] != b'=' => {
            Err(Failure::usage(format!("{flag} {shown:?}: the variable name must be UTF-8 text")))
        }
        _ => Err(Failure::usage(format!("{flag}: expected KEY=VALUE, got {shown:?}"))),
    }
}

fn parse_net(s: &str) -> Result<husk_types::net::NetRequest, String> {
    husk_types::net::parse_net(s).map_err(|e| e.to_string())
}

fn parse_port(s: &str) -> Result<husk_types::net::PortMapping, String> {
    husk_types::net::parse_port(s).map_err(|e| e.to_string())
}

fn parse_log_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 64K, 10M, 1G)"))?;
    let mult: u64 = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size (examples: 64K, 10M, 1G)")),
    };
    match n.checked_mul(mult) {
        Some(v) if v >= 4096 => Ok(v),
        _ => Err(format!("{s:?}: a log file holds at least 4K and at most 16E")),
    }
}

fn parse_hostname(s: &str) -> Result<String, String> {
    husk_types::pod::validate_hostname(s).map(|_| s.to_string())
}

fn parse_ipc(s: &str) -> Result<IpcMode, String> {
    match s {
        "private" | "auto" => Ok(IpcMode::Private),
        "parent" => Ok(IpcMode::Parent),
        other => Err(format!("unknown ipc mode {other:?} (private or parent)")),
    }
}

fn parse_flavor(s: &str) -> Result<Flavor, String> {
    match s {
        "ns" => Ok(Flavor::Ns),
        "fly" => Ok(Flavor::Fly),
        "kvm" => Ok(Flavor::Kvm),
        other => Err(format!("unknown stage1 flavor {other:?} (ns, fly or kvm)")),
    }
}

fn kv_list(s: &str) -> Vec<(&str, &str)> {
    s.split(',').filter_map(|p| p.split_once('=')).collect()
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("readOnly must be true or false, not {v:?}")),
    }
}

/// A `--volume`: a pod volume for `--mount`, or docker's `/host:/target[:ro|rw]` shorthand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeArg {
    Pod(Volume),
    Bind { source: PathBuf, target: PathBuf, read_only: bool },
}

fn parse_volume(s: &str) -> Result<VolumeArg, String> {
    if s.starts_with('/') {
        let mut parts = s.split(':');
        let (source, target, opt) = (parts.next().unwrap_or(""), parts.next(), parts.next());
        let target = target
            .filter(|t| t.starts_with('/'))
            .ok_or_else(|| format!("volume {s:?}: expected /HOST:/TARGET[:ro] (or NAME,kind=host,source=PATH)"))?;
        if parts.next().is_some() {
            return Err(format!("volume {s:?}: expected /HOST:/TARGET[:ro]"));
        }
        let read_only = match opt {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(o) => return Err(format!("volume {s:?}: option {o:?} is not ro or rw")),
        };
        let target = PathBuf::from(target);
        if target.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(format!("volume {s:?}: the target must not contain '..'"));
        }
        return Ok(VolumeArg::Bind { source: PathBuf::from(source), target, read_only });
    }
    parse_named_volume(s).map(VolumeArg::Pod)
}

fn parse_named_volume(s: &str) -> Result<Volume, String> {
    let (name, rest) = s
        .split_once(',')
        .ok_or_else(|| format!("volume {s:?}: expected NAME,kind=host,source=PATH or NAME,kind=empty"))?;
    if !husk_types::pod::valid_name(name) {
        return Err(format!("volume name {name:?} must be lower-case letters, digits, '-', '_' or '.'"));
    }
    let kv = kv_list(rest);
    let get = |k: &str| kv.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
    let read_only = get("readOnly").map(parse_bool).transpose()?.unwrap_or(false);
    let kind = match get("kind") {
        Some("host") => {
            let src = get("source").ok_or_else(|| format!("volume {name}: kind=host needs source=PATH"))?;
            let p = PathBuf::from(src);
            if !p.is_absolute() {
                return Err(format!("volume {name}: source {src:?} must be an absolute path"));
            }
            VolumeKind::Host { source: p, read_only }
        }
        Some("empty") => VolumeKind::Empty,
        other => return Err(format!("volume {name}: kind must be host or empty, not {other:?}")),
    };
    Ok(Volume { name: name.to_string(), kind })
}

fn parse_mount(s: &str) -> Result<MountPoint, String> {
    let kv = kv_list(s);
    let get = |k: &str| kv.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
    let volume = get("volume").ok_or_else(|| format!("mount {s:?}: expected volume=NAME,target=PATH"))?;
    let target = PathBuf::from(get("target").ok_or_else(|| format!("mount {s:?}: expected target=PATH"))?);
    if !target.is_absolute() {
        return Err(format!("mount target {} must be absolute", target.display()));
    }
    if target.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("mount target {} must not contain '..'", target.display()));
    }
    Ok(MountPoint {
        volume: volume.to_string(),
        target,
        read_only: get("readOnly").map(parse_bool).transpose()?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn volumes_parse() {
        let v = parse_named_volume("data,kind=host,source=/srv,readOnly=true").unwrap();
        assert_eq!(v.kind, VolumeKind::Host { source: "/srv".into(), read_only: true });
        assert_eq!(parse_named_volume("scratch,kind=empty").unwrap().kind, VolumeKind::Empty);
        assert_eq!(
            parse_volume("/srv/data:/data:ro").unwrap(),
            VolumeArg::Bind { source: "/srv/data".into(), target: "/data".into(), read_only: true }
        );
        assert!(matches!(parse_volume("/srv:/d").unwrap(), VolumeArg::Bind { read_only: false, .. }));
        assert!(parse_volume("/srv:rel").is_err());
        assert!(parse_volume("/srv").is_err());
        assert!(parse_volume("/srv:/d:rx").is_err());
        assert!(parse_volume("/srv:/a/../../etc").is_err());
        assert!(parse_volume("x,kind=host").unwrap_err().contains("source"));
        assert!(parse_volume("x,kind=host,source=rel").unwrap_err().contains("absolute"));
        assert!(parse_volume("../x,kind=empty").is_err());
        assert!(parse_volume("x,kind=weird").is_err());
    }

    #[test]
    fn mounts_parse() {
        let m = parse_mount("volume=data,target=/data,readOnly=true").unwrap();
        assert_eq!((m.volume.as_str(), m.target.as_path(), m.read_only), ("data", Path::new("/data"), true));
        assert!(parse_mount("volume=data").is_err());
        assert!(parse_mount("volume=d,target=rel").is_err());
        assert!(parse_mount("volume=d,target=/a/../../etc").unwrap_err().contains("'..'"));
    }

    #[test]
    fn enter_takes_the_command_with_or_without_double_dash() {
        #[derive(Debug, Parser)]
        struct T {
            #[command(flatten)]
            e: EnterArgs,
        }
        let t = T::try_parse_from(["enter", "abc", "sh", "-c", "id"]).unwrap();
        assert_eq!((t.e.pod.uuid.as_deref(), t.e.cmd.len()), (Some("abc"), 3));
        let t = T::try_parse_from(["enter", "abc", "--", "ls", "-l"]).unwrap();
        assert_eq!(t.e.cmd, vec![OsString::from("ls"), OsString::from("-l")]);
        let t = T::try_parse_from(["enter", "--app", "web", "abc"]).unwrap();
        assert!(t.e.cmd.is_empty());
    }

    #[test]
    fn podman_short_forms() {
        let s = AppSegment::try_parse_from(["img", "-e", "A=1"]).unwrap();
        assert_eq!(s.app.environment, vec![OsString::from("A=1")]);
        #[derive(Debug, Parser)]
        struct T {
            #[command(flatten)]
            r: RunArgs,
        }
        let t = T::try_parse_from(["run", "-p", "8080:80", "img"]).unwrap();
        assert_eq!(t.r.port[0].host_port, 8080);
    }

    #[test]
    fn hostnames_parse() {
        assert_eq!(parse_hostname("web-1").unwrap(), "web-1");
        assert!(parse_hostname("web\n127.0.0.1 bank.example").is_err());
    }

    #[test]
    fn app_segments_parse() {
        let s = AppSegment::try_parse_from(["img", "--name", "b", "--user", "app", "--", "x", "--y"]).unwrap();
        assert_eq!(s.image, "img");
        assert_eq!(s.app.name.as_deref(), Some("b"));
        assert_eq!(s.args, vec!["x", "--y"]);
    }

    #[test]
    fn environment_values_are_bytes_and_names_are_text() {
        use std::os::unix::ffi::OsStrExt;
        let Ok((k, v)) = parse_kv("--environment", OsStr::from_bytes(b"K=a\xffb=c")) else { panic!("K=… parses") };
        assert_eq!((k.as_str(), v.as_bytes()), ("K", &b"a\xffb=c"[..]));
        assert!(parse_kv("--environment", OsStr::new("novalue")).is_err());
        assert!(parse_kv("--environment", OsStr::new("=v")).is_err());
        let e = parse_kv("--set-env", OsStr::from_bytes(b"\xff=v")).err().unwrap();
        assert!(e.error.to_string().contains("UTF-8"), "{}", e.error);
    }

    #[test]
    fn nets() {
        assert!(parse_net("default,host").unwrap_err().contains("cannot be combined"));
        assert_eq!(parse_net("host").unwrap(), husk_types::net::NetRequest::Host);
        assert!(parse_port("80").is_err());
    }
}
