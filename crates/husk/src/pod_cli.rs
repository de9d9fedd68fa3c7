//! Pod commands: run, prepare, run-prepared, list, status, cat-manifest, logs, enter, stop, rm, gc.

use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser};
use husk_pod::lifecycle::{self, AppImage, PodRequest};
use husk_pod::prepare::{parse_env_file, AppSpec};
use husk_pod::state::{LockedPod, PhaseDir};
use husk_pod::{Phase, PodError, PodInfo, Pods};
use husk_types::abi::PodDir;
use husk_types::pod::{Dns, Flavor, IpcMode, MountPoint, PodManifest, Stdio, Volume, VolumeKind};
use husk_types::ByteStr;

use crate::cli::{parse_duration, Format, PullPolicyArg};
use crate::exit::{self, Failure};
use crate::output::{human_time, Table};
use crate::Ctx;

/// Flags of one app.
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
    #[arg(long)]
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
    /// A pod volume: NAME,kind=host,source=PATH[,readOnly=true] or NAME,kind=empty.
    #[arg(long, value_parser = parse_volume)]
    pub volume: Vec<Volume>,
    /// Hostname, an RFC 1123 host name (default husk-<uuid>).
    #[arg(long, value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// Write the pod's UUID to this file.
    #[arg(long)]
    pub uuid_file_save: Option<PathBuf>,
    /// Give the (single) app the terminal.
    #[arg(long)]
    pub interactive: bool,
    /// Start the pod in the background, print its UUID and return; output goes to `husk logs`.
    #[arg(short, long)]
    pub detach: bool,
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
    #[arg(long, value_parser = parse_port)]
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
    /// Isolation flavor: ns (namespaces) or fly (chroot, host namespaces, one app).
    #[arg(long, default_value = "ns", value_parser = parse_flavor)]
    pub stage1: Flavor,
    /// When to contact the registry for the images.
    #[arg(long, value_enum, default_value = "new")]
    pub pull_policy: PullPolicyArg,
    /// No progress display while fetching.
    #[arg(short, long)]
    pub quiet: bool,
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
    /// Give the app the terminal.
    #[arg(long)]
    pub interactive: bool,
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
    /// Command (default /bin/sh), passed unchanged (any bytes).
    #[arg(last = true)]
    pub cmd: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Pod UUIDs or unique prefixes.
    #[arg(required_unless_present = "uuid_file")]
    pub uuids: Vec<String>,
    #[arg(long)]
    pub uuid_file: Option<PathBuf>,
    /// SIGKILL at once.
    #[arg(long)]
    pub force: bool,
    /// Time between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required_unless_present = "uuid_file")]
    pub uuids: Vec<String>,
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
fn parse_kv(flag: &str, s: &OsStr) -> Result<(String, ByteStr), Failure> {
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
        other => Err(format!("unknown stage1 flavor {other:?} (ns or fly)")),
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

fn parse_volume(s: &str) -> Result<Volume, String> {
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

impl PodRef {
    pub fn resolve(&self, pods: &Pods) -> Result<String, Failure> {
        Ok(pods.resolve(&uuid_arg(self.uuid.as_deref(), self.uuid_file.as_deref())?)?)
    }
}

fn uuid_arg(uuid: Option<&str>, file: Option<&Path>) -> Result<String, Failure> {
    match (uuid, file) {
        (Some(u), None) => Ok(u.to_string()),
        (None, Some(f)) => Ok(std::fs::read_to_string(f)
            .with_context(|| format!("cannot read UUID file {}", f.display()))?
            .trim()
            .to_string()),
        (Some(_), Some(_)) => Err(Failure::usage("give a UUID or --uuid-file, not both")),
        (None, None) => Err(Failure::usage("give a pod UUID (or --uuid-file)")),
    }
}

/// An app's security settings from its flags and the pod's `--insecure-options`.
fn security_from(ctx: &Ctx, a: &AppArgs) -> Result<husk_types::pod::AppSecurity, Failure> {
    use crate::cli::Insecure;
    use husk_types::security::{capability_set, default_policy, parse_seccomp};
    let all_run = ctx.insecure(Insecure::AllRun);
    let caps_off = all_run || ctx.insecure(Insecure::Capabilities);
    let seccomp_off = all_run || ctx.insecure(Insecure::Seccomp);
    let paths_off = all_run || ctx.insecure(Insecure::Paths);
    let capabilities = capability_set(&a.caps_retain, &a.caps_remove, caps_off).map_err(Failure::usage)?;
    let seccomp = match (&a.seccomp, seccomp_off) {
        (Some(_), true) => return Err(Failure::usage("--seccomp and --insecure-options=seccomp exclude each other")),
        (Some(spec), false) => Some(parse_seccomp(spec).map_err(Failure::usage)?),
        (None, true) => None,
        (None, false) => Some(default_policy()),
    };
    Ok(husk_types::pod::AppSecurity { capabilities, seccomp, masked_paths: !paths_off })
}

fn resources_from(a: &AppArgs) -> Result<husk_types::security::Resources, Failure> {
    use husk_types::security::{parse_cpu, parse_size};
    Ok(husk_types::security::Resources {
        memory: a.memory.as_deref().map(parse_size).transpose().map_err(Failure::usage)?,
        cpu_millis: a.cpu.as_deref().map(parse_cpu).transpose().map_err(Failure::usage)?,
        cpu_shares: a.cpu_shares,
        pids_limit: a.pids_limit,
        oom_score_adj: a.oom_score_adj,
    })
}

fn spec_from(ctx: &Ctx, image: &str, a: &AppArgs, args: &[OsString]) -> Result<AppSpec, Failure> {
    let mut env_files = Vec::new();
    for f in &a.set_env_file {
        env_files.extend(parse_env_file(f).map_err(|e| Failure::usage(format!("--set-env-file: {e}")))?);
    }
    Ok(AppSpec {
        image: image.to_string(),
        name: a.name.clone(),
        exec: a.exec.clone(),
        args: args.iter().map(|a| ByteStr::from(a.as_os_str())).collect(),
        user: a.user.clone(),
        group: a.group.clone(),
        supplementary_gids: a.supplementary_gids.clone(),
        working_dir: a.working_dir.clone(),
        env_files,
        set_env: a.set_env.iter().map(|kv| parse_kv("--set-env", kv)).collect::<Result<_, _>>()?,
        environment: a.environment.iter().map(|kv| parse_kv("--environment", kv)).collect::<Result<_, _>>()?,
        mounts: a.mount.clone(),
        readonly_rootfs: a.readonly_rootfs,
        security: security_from(ctx, a)?,
        resources: resources_from(a)?,
    })
}

/// `--dns IP|host|none` (repeatable), `--dns-search`, `--dns-opt`, `--dns-domain`.
fn dns_from(a: &RunArgs) -> Result<Dns, Failure> {
    let mut dns = Dns {
        search: a.dns_search.clone(),
        options: a.dns_opt.clone(),
        domain: a.dns_domain.clone(),
        ..Default::default()
    };
    for d in &a.dns {
        match d.as_str() {
            "host" => dns.host = true,
            "none" => dns.none = true,
            ip if ip.parse::<std::net::IpAddr>().is_ok() => dns.servers.push(ip.to_string()),
            other => return Err(Failure::usage(format!("--dns {other:?} is not an IP address, host or none"))),
        }
    }
    Ok(dns)
}

/// `--hosts-entry IP=NAME|host` (repeatable): the entries, and whether to use the host's file.
fn hosts_from(a: &RunArgs) -> Result<(Vec<(String, String)>, bool), Failure> {
    let mut entries = Vec::new();
    let mut from_host = false;
    for h in &a.hosts_entry {
        if h == "host" {
            from_host = true;
            continue;
        }
        let (ip, name) = h
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--hosts-entry {h:?}: expected IP=NAME or host")))?;
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| Failure::usage(format!("--hosts-entry {h:?}: {ip:?} is not an IP address")))?;
        husk_types::pod::validate_host_name(name, 253)
            .map_err(|e| Failure::usage(format!("--hosts-entry {h:?}: {e}")))?;
        entries.push((ip.to_string(), name.to_string()));
    }
    Ok((entries, from_host))
}

fn stdio_of(detach: bool, interactive: bool) -> Stdio {
    if detach {
        Stdio::Log
    } else if interactive {
        Stdio::Interactive
    } else {
        Stdio::Inherit
    }
}

/// The pod request the flags of `run`/`prepare` describe.
fn request_from(ctx: &Ctx, a: &RunArgs, more: &[AppSegment]) -> Result<PodRequest, Failure> {
    let mut apps = vec![spec_from(ctx, &a.image, &a.app, &a.args)?];
    for seg in more {
        apps.push(spec_from(ctx, &seg.image, &seg.app, &seg.args)?);
    }
    // The library checks these too; here the message can name the flag.
    for (i, v) in a.volume.iter().enumerate() {
        if a.volume[..i].iter().any(|w| w.name == v.name) {
            return Err(Failure::usage(format!(
                "--volume {:?} is given twice; give each volume a name of its own",
                v.name
            )));
        }
    }
    if a.private_users && a.stage1 == Flavor::Fly {
        return Err(Failure::usage("--private-users needs the ns stage1: fly shares the host's namespaces"));
    }
    use husk_types::net::NetRequest;
    let net_req = match (&a.net, &a.stage1) {
        (Some(NetRequest::Host) | None, Flavor::Fly) => NetRequest::Host,
        (Some(_), Flavor::Fly) => {
            return Err(Failure::usage("--stage1=fly shares the host's network: use --net=host or leave --net out"))
        }
        (Some(r), _) => r.clone(),
        (None, _) => NetRequest::Named(vec![("default".into(), vec![])]),
    };
    if a.stage1 == Flavor::Fly && apps.len() != 1 {
        return Err(Failure::usage("--stage1=fly runs exactly one app"));
    }
    if a.interactive && apps.len() != 1 {
        return Err(Failure::usage("--interactive needs a pod with exactly one app"));
    }
    if a.interactive && a.detach {
        return Err(Failure::usage("--interactive and --detach exclude each other"));
    }
    let plugin_dirs = ctx
        .config
        .paths
        .cni_plugin_dirs
        .clone()
        .unwrap_or_else(|| husk_pod::network::DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect());
    let net = husk_pod::network::resolve(&net_req, &ctx.config_dir.join("net.d"), plugin_dirs, &a.port)?;
    let (hosts_entries, hosts_from_host) = hosts_from(a)?;
    Ok(PodRequest {
        apps,
        volumes: a.volume.clone(),
        hostname: a.hostname.clone(),
        net,
        dns: dns_from(a)?,
        hosts_entries,
        hosts_from_host,
        ipc: a.ipc.clone(),
        flavor: a.stage1.clone(),
        private_users: a.private_users,
        stdio: stdio_of(a.detach, a.interactive),
        log_limits: husk_types::pod::LogLimits { max_size: a.log_max_size, max_files: a.log_max_files },
    })
}

/// `run` and `prepare`: flags to a request, the images fetched, then the library.
pub fn cmd_run(ctx: &Ctx, a: &RunArgs, more: &[AppSegment], prepare_only: bool) -> Result<i32, Failure> {
    let req = request_from(ctx, a, more)?;
    let pods = ctx.pods()?;
    // Everything the flags alone decide is checked before anything is fetched or created.
    req.validate(&pods)?;
    let store = ctx.store()?;
    let quiet = a.quiet || !std::io::stderr().is_terminal();
    let mut images = Vec::new();
    for s in &req.apps {
        let f = crate::image_cmds::fetch_one(ctx, &store, &s.image, a.pull_policy.into(), quiet, None)?;
        images.push(AppImage { name: f.name, record: f.record });
    }
    let (mut pod, m) = lifecycle::prepare(&pods, &store, &req, &images)?;
    if let Some(p) = &a.uuid_file_save {
        husk_sys::atomic_write(p, format!("{}\n", m.uuid).as_bytes(), 0o644)
            .with_context(|| format!("cannot write UUID file {}", p.display()))?;
    }
    if prepare_only {
        pods.transition(&mut pod, PhaseDir::Prepared)?;
        println!("{}", m.uuid);
        return Ok(0);
    }
    pods.transition(&mut pod, PhaseDir::Run)?;
    start(ctx, pod, &m, a.detach)
}

/// Hands a locked pod in `run/` to its stage1: by exec (the invoker stays the parent and gets
/// the pod's exit status) or, detached, as a new session whose readiness we wait for.
fn start(ctx: &Ctx, pod: LockedPod, m: &PodManifest, detach: bool) -> Result<i32, Failure> {
    let stage1 = lifecycle::Stage1 { path: ctx.stage1_path(&m.flavor)?, debug: ctx.verbose > 0 };
    if !detach {
        return Err(lifecycle::exec(pod, m, &stage1).into());
    }
    lifecycle::start_detached(pod, m, &stage1)?;
    println!("{}", m.uuid);
    Ok(0)
}

pub fn cmd_run_prepared(ctx: &Ctx, a: &RunPreparedArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    let (pod, m) = lifecycle::take_prepared(&pods, &uuid, stdio_of(a.detach, a.interactive))?;
    start(ctx, pod, &m, a.detach)
}

fn app_status_text(s: &Option<husk_types::pod::AppStatus>) -> String {
    match s {
        None => "-".into(),
        Some(s) => match (&s.error, s.exit_code, s.signal) {
            (Some(e), _, _) => format!("failed to start ({e})"),
            (None, _, Some(9)) if s.oom_killed => "killed by the OOM killer (memory limit)".into(),
            (None, Some(c), _) if s.oom_killed => format!("exited {c} (the OOM killer ended a process of the app)"),
            (None, Some(c), _) => format!("exited {c}"),
            (None, None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "unknown".into(),
        },
    }
}

/// Each network with its interface and addresses (from stage1's record of the CNI results).
fn networks_json(i: &PodInfo) -> serde_json::Value {
    // state.json while networks are set up; released.json once they were torn down.
    let pd = PodDir::new(&i.dir);
    let states: Vec<husk_types::net::NetState> = [pd.net_state(), pd.net_released()]
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .and_then(|d| serde_json::from_slice(&d).ok())
        .unwrap_or_default();
    let names = i.manifest.as_ref().map(|m| m.net.names()).unwrap_or_default();
    serde_json::Value::Array(
        names
            .iter()
            .map(|n| {
                let st = states.iter().find(|s| &s.name == n);
                serde_json::json!({"name": n, "interface": st.map(|s| s.ifname.clone()), "addresses": st.map(|s| s.addresses()).unwrap_or_default()})
            })
            .collect(),
    )
}

/// `default:eth0=172.16.28.3/24,lan:eth1=…` for tables.
fn networks_text(i: &PodInfo) -> String {
    let v = networks_json(i);
    let parts: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let addrs: Vec<&str> =
                n["addresses"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect()).unwrap_or_default();
            let name = n["name"].as_str().unwrap_or("");
            match (n["interface"].as_str(), addrs.is_empty()) {
                (Some(ifn), false) => format!("{name}:{ifn}={}", addrs.join("+")),
                _ => name.to_string(),
            }
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn pod_json(i: &PodInfo) -> serde_json::Value {
    serde_json::json!({
        "uuid": i.uuid,
        "state": i.phase.as_str(),
        "apps": i.apps.iter().map(|(n, s)| {
            let app = i.manifest.as_ref().and_then(|m| m.apps.iter().find(|a| &a.name == n));
            serde_json::json!({
                "name": n, "image": app.map(|a| &a.image.name), "image_id": app.map(|a| a.image.id.to_string()),
                "status": s, "pid": i.stage1.as_ref().and_then(|st| st.app_pids.get(n)),
                "security": app.map(|a| serde_json::json!({
                    "capabilities": a.security.capabilities,
                    "seccomp": a.security.seccomp.as_ref().map(|p| p.summary.clone()).unwrap_or_else(|| "disabled".into()),
                    "masked_paths": a.security.masked_paths,
                    "no_new_privs": true,
                    "user": a.user,
                })),
                "resources": app.map(|a| &a.resources),
            })
        }).collect::<Vec<_>>(),
        "networks": networks_json(i),
        "flavor": i.manifest.as_ref().map(|m| m.flavor.as_str()),
        "private_users": i.manifest.as_ref().and_then(|m| m.private_users),
        "created": i.created, "started": i.started, "exited": i.exited,
        "exit_status": i.exit_status(),
        "pid": i.stage1.as_ref().filter(|_| i.phase == Phase::Running).map(|s| s.init_pid),
        "supervisor_pid": i.stage1.as_ref().filter(|_| i.phase == Phase::Running).map(|s| s.supervisor_pid),
    })
}

pub fn cmd_list(ctx: &Ctx, format: Format, full: bool, no_legend: bool) -> Result<i32, Failure> {
    let pods = ctx.pods()?.list()?;
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&pods.iter().map(pod_json).collect::<Vec<_>>()).unwrap())
        }
        Format::Table if no_legend => {
            for p in &pods {
                println!("{}", p.uuid);
            }
        }
        Format::Table => {
            let mut t = Table::new(&["UUID", "APPS", "IMAGES", "STATE", "NETWORKS", "CREATED", "STARTED", "EXITED"]);
            for p in &pods {
                let m = p.manifest.as_ref();
                let uuid = if full { p.uuid.clone() } else { p.uuid[..8].to_string() };
                let apps = m
                    .map(|m| m.apps.iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(","))
                    .unwrap_or_else(|| "-".into());
                let images = m
                    .map(|m| m.apps.iter().map(|a| a.image.name.clone()).collect::<Vec<_>>().join(","))
                    .unwrap_or_else(|| "-".into());
                let nets = networks_text(p);
                let state = match p.exit_status() {
                    Some(c) => format!("{} ({c})", p.phase.as_str()),
                    None => p.phase.as_str().to_string(),
                };
                let t_or = |x: Option<chrono::DateTime<chrono::Utc>>| x.map(human_time).unwrap_or_else(|| "-".into());
                t.row(vec![uuid, apps, images, state, nets, t_or(p.created), t_or(p.started), t_or(p.exited)]);
            }
            t.print();
        }
    }
    Ok(0)
}

pub fn cmd_status(ctx: &Ctx, a: &StatusArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    if let Some(w) = &a.wait {
        let timeout = if w == "forever" { None } else { Some(parse_duration(w).map_err(Failure::usage)?) };
        let (phase, dir) = pods.observe(&uuid)?;
        if matches!(phase, Phase::Running | Phase::Preparing | Phase::Embryo | Phase::Prepared) {
            // Block on the pod lock: it is released the moment the supervisor exits.
            let _l = husk_sys::Lock::lock_dir_timeout(&dir, husk_sys::LockKind::Shared, timeout, || {})
                .map_err(PodError::from)?;
            if phase == Phase::Prepared {
                return Err(Failure::new(
                    exit::POD,
                    anyhow::anyhow!("pod {uuid} is prepared, not running; start it with run-prepared"),
                ));
            }
        }
    }
    let i = pods.info(&uuid)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&pod_json(&i)).unwrap()),
        Format::Table => {
            println!("state={}", i.phase.as_str());
            if let Some(m) = &i.manifest {
                println!("flavor={}", m.flavor.as_str());
                println!("networks={}", networks_text(&i));
            }
            if let (Some(s), Phase::Running) = (&i.stage1, i.phase) {
                println!("pid={}", s.init_pid);
                println!("supervisor-pid={}", s.supervisor_pid);
            }
            for (k, v) in [("created", i.created), ("started", i.started), ("exited", i.exited)] {
                if let Some(t) = v {
                    println!("{k}={}", t.to_rfc3339());
                }
            }
            if let Some(r) = i.manifest.as_ref().and_then(|m| m.private_users) {
                println!("private-users={}:{}", r.host_base, r.count);
            }
            for (name, s) in &i.apps {
                println!("app-{name}={}", app_status_text(s));
                if let Some(a) = i.manifest.as_ref().and_then(|m| m.apps.iter().find(|a| &a.name == name)) {
                    let caps = if a.security.capabilities.len() == husk_types::security::ALL_CAPS.len() {
                        "all (insecure)".to_string()
                    } else {
                        a.security
                            .capabilities
                            .iter()
                            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let seccomp = a
                        .security
                        .seccomp
                        .as_ref()
                        .map(|p| p.summary.clone())
                        .unwrap_or_else(|| "disabled (insecure)".into());
                    let paths = if a.security.masked_paths { "masked" } else { "unmasked (insecure)" };
                    println!(
                        "app-{name}-security=uid:{} gid:{} caps:{caps} seccomp:{seccomp} paths:{paths} no-new-privs:on",
                        a.user.uid, a.user.gid
                    );
                }
            }
            if let Some(c) = i.exit_status() {
                println!("exit-status={c}");
            }
        }
    }
    Ok(0)
}

pub fn cmd_cat_manifest(ctx: &Ctx, r: &PodRef) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = r.resolve(&pods)?;
    let i = pods.info(&uuid)?;
    let m = i.manifest.ok_or_else(|| {
        Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no manifest yet ({})", i.phase.as_str()))
    })?;
    println!("{}", serde_json::to_string_pretty(&m).unwrap());
    Ok(0)
}

pub fn cmd_logs(ctx: &Ctx, a: &LogsArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    let i = pods.info(&uuid)?;
    let m = i
        .manifest
        .as_ref()
        .ok_or_else(|| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no manifest yet")))?;
    if m.stdio != Stdio::Log {
        return Err(Failure::new(
            exit::POD,
            anyhow::anyhow!("pod {uuid} ran in the foreground: its apps wrote to the terminal that started it"),
        )
        .hint("start pods with --detach to keep their output in `husk logs`"));
    }
    let apps: Vec<&str> = match &a.app {
        Some(n) if m.apps.iter().any(|x| &x.name == n) => vec![n.as_str()],
        Some(n) => {
            return Err(Failure::new(
                exit::POD,
                anyhow::anyhow!(
                    "pod {uuid} has no app {n:?} (apps: {})",
                    m.apps.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
        None => m.apps.iter().map(|x| x.name.as_str()).collect(),
    };
    let pd = PodDir::new(&i.dir);
    let max_files = m.log_limits.max_files.max(1);
    let prefix = apps.len() > 1;
    let print = |app: &str, buf: &[u8]| {
        let mut out = std::io::stdout().lock();
        if prefix {
            for line in buf.split_inclusive(|b| *b == b'\n') {
                let _ = write!(out, "{app}: ");
                let _ = out.write_all(line);
            }
        } else {
            let _ = out.write_all(buf);
        }
        let _ = out.flush();
    };
    // What rotation kept, oldest first; then the current file, followed while the pod runs.
    let mut current: Vec<Option<std::fs::File>> = Vec::new();
    for app in &apps {
        for g in (1..max_files).rev() {
            if let Ok(data) = std::fs::read(pd.app_log(app, g)) {
                print(app, &data);
            }
        }
        current.push(std::fs::File::open(pd.app_log(app, 0)).ok());
    }
    loop {
        let running = a.follow && pods.observe(&uuid).map(|(p, _)| p == Phase::Running).unwrap_or(false);
        for (k, app) in apps.iter().enumerate() {
            let path = pd.app_log(app, 0);
            if let Some(f) = current[k].as_mut() {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).ok();
                print(app, &buf);
            }
            // Rotated meanwhile: what we hold is now .log.1 and is read to its end; go on with
            // the new file.
            use std::os::unix::fs::MetadataExt;
            let held = current[k].as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino());
            let now = std::fs::metadata(&path).ok().map(|m| m.ino());
            if now.is_some() && held != now {
                current[k] = std::fs::File::open(&path).ok();
                if let Some(f) = current[k].as_mut() {
                    let mut buf = Vec::new();
                    f.read_to_end(&mut buf).ok();
                    print(app, &buf);
                }
            }
        }
        if !running {
            // One last read after the pod exited has been done above.
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn cmd_enter(ctx: &Ctx, a: &EnterArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    let i = pods.info(&uuid)?;
    if i.phase != Phase::Running {
        return Err(PodError::WrongPhase {
            uuid,
            phase: i.phase.as_str().into(),
            why: "only running pods can be entered".into(),
        }
        .into());
    }
    let m = i.manifest.as_ref().expect("running pods have a manifest");
    let app = match (&a.app, m.apps.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, [one]) => one.name.clone(),
        (None, many) => {
            return Err(Failure::usage(format!(
                "pod {uuid} has several apps; choose one with --app ({})",
                many.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let st =
        i.stage1.as_ref().ok_or_else(|| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} is still starting")))?;
    let pid = st
        .app_pids
        .get(&app)
        .ok_or_else(|| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no running app {app:?}")))?;
    let stage1 = ctx.stage1_path(&m.flavor)?;
    let mut cmd = std::process::Command::new(&stage1);
    cmd.arg("enter").arg(format!("--pid={pid}")).arg(format!("--app={app}")).arg("--").args(&a.cmd).current_dir(&i.dir);
    Err(PodError::Stage1 { path: stage1, source: cmd.exec() }.into())
}

fn uuids_of(pods: &Pods, uuids: &[String], file: Option<&Path>) -> Result<Vec<String>, Failure> {
    let mut v = Vec::new();
    if let Some(f) = file {
        v.push(pods.resolve(&uuid_arg(None, Some(f))?)?);
    }
    for u in uuids {
        v.push(pods.resolve(u)?);
    }
    Ok(v)
}

pub fn cmd_stop(ctx: &Ctx, a: &StopArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let mut code = 0;
    for uuid in uuids_of(&pods, &a.uuids, a.uuid_file.as_deref())? {
        match lifecycle::stop(&pods, &uuid, a.force, a.timeout) {
            Ok(()) => println!("{uuid}"),
            Err(e) => {
                let f: Failure = e.into();
                exit::report(&f);
                code = f.code;
            }
        }
    }
    Ok(code)
}

/// stage1's `gc` entrypoint for one pod dir.
pub fn stage1_gc(ctx: &Ctx, dir: &Path) -> Result<(), PodError> {
    lifecycle::stage1_gc(&|f| ctx.stage1_path(f).ok(), dir)
}

pub fn cmd_rm(ctx: &Ctx, a: &RmArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let mut code = 0;
    for uuid in uuids_of(&pods, &a.uuids, a.uuid_file.as_deref())? {
        let r = pods.lock_pod(&uuid).and_then(|pod| pods.remove_locked(pod, &|d| stage1_gc(ctx, d)));
        match r {
            Ok(()) => println!("{uuid}"),
            Err(e) => {
                let f: Failure = e.into();
                exit::report(&f);
                code = f.code;
            }
        }
    }
    Ok(code)
}

pub fn cmd_gc(ctx: &Ctx, a: &GcArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let r = pods.gc(a.grace_period, a.expire_prepared, &|d| stage1_gc(ctx, d))?;
    for u in &r.marked {
        eprintln!("moved pod {u} to exited-garbage");
    }
    for u in &r.removed {
        eprintln!("removed pod {u}");
    }
    for (u, e) in &r.failed {
        eprintln!("husk: could not collect pod {u}: {e}");
    }
    if let Ok(store) = ctx.store() {
        let _ = store.clean_tmp();
    }
    Ok(if r.failed.is_empty() { 0 } else { exit::POD })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse() {
        let v = parse_volume("data,kind=host,source=/srv,readOnly=true").unwrap();
        assert_eq!(v.kind, VolumeKind::Host { source: "/srv".into(), read_only: true });
        assert_eq!(parse_volume("scratch,kind=empty").unwrap().kind, VolumeKind::Empty);
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
