//! `run`, `prepare`, `run-prepared`: flags to a pod request, images fetched, then the library.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use husk_pod::lifecycle::{self, AppImage, PodRequest};
use husk_pod::prepare::{parse_env_file, AppSpec};
use husk_pod::state::{LockedPod, PhaseDir};
use husk_types::pod::{Dns, Flavor, Hosts, MountPoint, PodManifest, Stdio, Volume, VolumeKind};
use husk_types::ByteStr;

use crate::exit::Failure;
use crate::flags::pod::*;
use crate::Ctx;

/// An app's security settings from its flags and the pod's `--insecure-options`.
fn security_from(ctx: &Ctx, a: &AppArgs) -> Result<husk_types::pod::AppSecurity, Failure> {
    use crate::flags::Insecure;
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

/// `--dns IP|host|none` (repeatable; `host` and `none` stand alone), `--dns-search`,
/// `--dns-opt`, `--dns-domain`.
fn dns_from(a: &RunArgs) -> Result<Dns, Failure> {
    let mut servers = Vec::new();
    let mut mode = None;
    for d in &a.dns {
        match d.as_str() {
            "host" => mode = Some(Dns::Host),
            "none" => mode = Some(Dns::Image),
            ip if ip.parse::<std::net::IpAddr>().is_ok() => servers.push(ip.to_string()),
            other => return Err(Failure::usage(format!("--dns {other:?} is not an IP address, host or none"))),
        }
    }
    let extras = !a.dns_search.is_empty() || !a.dns_opt.is_empty() || a.dns_domain.is_some();
    match mode {
        Some(_) if a.dns.len() > 1 => {
            Err(Failure::usage("--dns host and --dns none stand alone: give one of them, or name servers"))
        }
        Some(_) if extras => Err(Failure::usage(
            "--dns-search, --dns-opt and --dns-domain apply to a resolv.conf husk writes, not with --dns host or none",
        )),
        Some(m) => Ok(m),
        None => Ok(Dns::Written {
            servers,
            search: a.dns_search.clone(),
            options: a.dns_opt.clone(),
            domain: a.dns_domain.clone(),
        }),
    }
}

/// `--hosts-entry IP=NAME|host` (repeatable; `host` stands alone).
fn hosts_from(a: &RunArgs) -> Result<Hosts, Failure> {
    let mut entries = Vec::new();
    for h in &a.hosts_entry {
        if h == "host" {
            if a.hosts_entry.len() > 1 {
                return Err(Failure::usage("--hosts-entry host uses the host's file and stands alone"));
            }
            return Ok(Hosts::Host);
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
    Ok(Hosts::Written { entries })
}

/// How `-d`, `-i` and `-t` wire the app: as podman does, except that a detached pod's input
/// only comes through `husk attach`, which needs the terminal (`-dit` and `-dt` are the same).
fn stdio_of(detach: bool, interactive: bool, tty: bool) -> Result<Stdio, Failure> {
    Ok(match (detach, interactive, tty) {
        (true, _, true) => Stdio::AttachableTerminal,
        (true, true, false) => {
            return Err(Failure::usage(
                "--interactive with --detach needs --tty: a detached pod's input comes through `husk attach`",
            ))
        }
        (true, false, false) => Stdio::Log,
        (false, input, true) => Stdio::Terminal { input },
        (false, true, false) => Stdio::Interactive,
        (false, false, false) => Stdio::Inherit,
    })
}

/// The invoker's TERM, for an app given a terminal.
fn invoker_term() -> Option<String> {
    std::env::var("TERM").ok().filter(|t| !t.is_empty())
}

/// The pod request the flags of `run`/`prepare` describe.
fn request_from(ctx: &Ctx, a: &RunArgs, more: &[AppSegment]) -> Result<PodRequest, Failure> {
    let mut apps = vec![spec_from(ctx, &a.image, &a.app, &a.args)?];
    for seg in more {
        apps.push(spec_from(ctx, &seg.image, &seg.app, &seg.args)?);
    }
    // The library checks these too; here the message can name the flag.
    // Named volumes as given; each docker-style /host:/target becomes a host volume mounted in
    // every app.
    let mut volumes = Vec::new();
    let mut binds = Vec::new();
    for (i, v) in a.volume.iter().enumerate() {
        match v {
            VolumeArg::Pod(v) => volumes.push(v.clone()),
            VolumeArg::Bind { source, target, read_only } => {
                let name = format!("bind.{i}");
                volumes.push(Volume {
                    name: name.clone(),
                    kind: VolumeKind::Host { source: source.clone(), read_only: *read_only },
                });
                binds.push(MountPoint { volume: name, target: target.clone(), read_only: *read_only });
            }
        }
    }
    for app in &mut apps {
        app.mounts.extend(binds.iter().cloned());
    }
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|w| w.name == v.name) {
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
    let stdio = stdio_of(a.detach, a.interactive, a.tty)?;
    if stdio.needs_single_app() && apps.len() != 1 {
        return Err(Failure::usage("--interactive and --tty need a pod with exactly one app"));
    }
    let plugin_dirs = ctx
        .config
        .paths
        .cni_plugin_dirs
        .clone()
        .unwrap_or_else(|| husk_pod::network::DEFAULT_PLUGIN_DIRS.iter().map(PathBuf::from).collect());
    let net = husk_pod::network::resolve(&net_req, &ctx.config_dir.join("net.d"), plugin_dirs, &a.port)?;
    let hosts = hosts_from(a)?;
    let vm = match a.stage1 {
        Flavor::Kvm => Some(vm_settings(ctx, &apps)?),
        _ => None,
    };
    Ok(PodRequest {
        apps,
        volumes,
        hostname: a.hostname.clone(),
        net,
        dns: dns_from(a)?,
        hosts,
        ipc: a.ipc.clone(),
        flavor: a.stage1.clone(),
        private_users: a.private_users,
        stdio,
        term: invoker_term(),
        log_limits: husk_types::pod::LogLimits { max_size: a.log_max_size, max_files: a.log_max_files },
        exit_policy: a.exit_policy.into(),
        exit_command: if a.rm { rm_command(ctx)? } else { vec![] },
        systemd: husk_types::pod::Systemd {
            notify: a.sd_notify.clone().unwrap_or_default(),
            socket_app: a.socket_activated.clone(),
            stop_timeout_ms: Some(a.stop_timeout.as_millis().min(u64::MAX as u128) as u64),
            log_prefix: a.log_prefix,
        },
        vm,
    })
}

/// A kvm pod's virtual machine, from `[stage1.kvm]` and the apps' limits.
fn vm_settings(ctx: &Ctx, apps: &[AppSpec]) -> Result<husk_types::pod::VmSettings, Failure> {
    let kvm = &ctx.config.stage1.kvm;
    let size = |v: &Option<String>, default: u64, key: &str| -> Result<u64, Failure> {
        match v {
            None => Ok(default),
            Some(s) => husk_types::security::parse_size(s)
                .map_err(|e| Failure::usage(format!("husk.toml [stage1.kvm] {key}: {e}"))),
        }
    };
    let memory = size(&kvm.memory, 512 << 20, "memory")?;
    let overhead = size(&kvm.overhead, 128 << 20, "overhead")?;
    let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let resources: Vec<&husk_types::security::Resources> = apps.iter().map(|a| &a.resources).collect();
    let (memory_mib, cpus) = husk_types::pod::vm_size(&resources, memory, overhead, kvm.cpus.unwrap_or(1), host_cpus);
    let assets = std::env::var_os("HUSK_KVM_DIR")
        .map(PathBuf::from)
        .or_else(|| kvm.dir.clone())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/husk/kvm"));
    if !assets.is_dir() {
        return Err(Failure::usage(format!(
            "--stage1=kvm: the kvm assets directory {} does not exist",
            assets.display()
        ))
        .hint("run scripts/setup-kvm.sh, or set [stage1.kvm] dir in husk.toml (or $HUSK_KVM_DIR)"));
    }
    Ok(husk_types::pod::VmSettings { assets, accel: kvm.accel.unwrap_or_default(), memory_mib, cpus })
}

/// `husk --dir D --config-dir C rm {uuid}`: what `--rm` asks stage1 to run when the pod exits.
fn rm_command(ctx: &Ctx) -> Result<Vec<ByteStr>, Failure> {
    let me = std::env::current_exe().context("cannot find the husk executable for --rm")?;
    Ok(vec![
        ByteStr::from(me.as_os_str()),
        "--dir".into(),
        ByteStr::from(ctx.dir.as_os_str()),
        "--config-dir".into(),
        ByteStr::from(ctx.config_dir.as_os_str()),
        "rm".into(),
        "{uuid}".into(),
    ])
}

/// `run` and `prepare`: flags to a request, the images fetched, then the library.
pub fn cmd_run(ctx: &Ctx, a: &RunArgs, more: &[AppSegment], prepare_only: bool) -> Result<i32, Failure> {
    if prepare_only && a.rm {
        return Err(Failure::usage("--rm applies to run: a prepared pod is removed with `husk rm`"));
    }
    let req = request_from(ctx, a, more)?;
    let pods = ctx.pods()?;
    // Everything the flags alone decide is checked before anything is fetched or created.
    req.validate(&pods)?;
    let store = ctx.store()?;
    let quiet = a.quiet;
    let mut images = Vec::new();
    let policy: husk_image::PullPolicy = a.pull_policy.into();
    // Whether this run fetched anything: from a registry (this process may then hold its
    // credentials, which an exec wipes from memory) or from an archive.
    let mut fetched = matches!(policy, husk_image::PullPolicy::Update);
    for s in &req.apps {
        let f = crate::cmd::fetch::fetch_one(ctx, &store, &s.image, policy, quiet, None)?;
        fetched |= !f.cached;
        crate::cmd::fetch::admit(ctx, &store, &f)?;
        husk_image::prepare_for_run(&store, &f.name, &f.record)?;
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
    start(ctx, pod, &m, a.detach, fetched)
}

/// Hands a locked pod in `run/` to its stage1: by exec (the invoker stays the parent and gets
/// the pod's exit status), by running the built-in `ns` stage1 in this process (the same, one
/// program start fewer; not when this run `fetched` an image, since a registry's credentials
/// may be left in memory, which an exec wipes), or, detached, as a new session whose readiness
/// we wait for.
fn start(ctx: &Ctx, pod: LockedPod, m: &PodManifest, detach: bool, fetched: bool) -> Result<i32, Failure> {
    let stage1 = lifecycle::Stage1 { path: ctx.stage1_path(&m.flavor)?, debug: ctx.verbose > 0 };
    if !detach {
        let builtin = !fetched && ctx.is_builtin_stage1(&m.flavor, &stage1.path);
        let pod = if builtin { hand_over(pod, m, stage1.debug) } else { pod };
        return Err(lifecycle::exec(pod, m, &stage1).into());
    }
    lifecycle::start_detached(pod, m, &stage1)?;
    println!("{}", m.uuid);
    Ok(0)
}

/// Runs the built-in `ns` stage1 in this process, as the exec'd `husk-stage1-ns` would (same
/// code, same state: one thread, the pod lock the only fd of ours, the pod dir the working
/// directory): a foreground pod's start then pays for one program start, not two, and its
/// manifest is not read back. Returns only when this process cannot hand over as an exec would
/// (a thread or an fd of ours still open), giving the pod back: the caller then execs the stage1.
fn hand_over(pod: LockedPod, m: &PodManifest, debug: bool) -> LockedPod {
    if let Err(e) = husk_sys::proc::may_hand_over(pod.lock.raw_fd()) {
        tracing::debug!("exec'ing stage1 instead of running it in this process: {e}");
        return pod;
    }
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let LockedPod { dir, lock, .. } = pod;
    std::process::exit(husk_stage1::ns::run_handed_over(&dir, m, lock, debug));
}

pub fn cmd_run_prepared(ctx: &Ctx, a: &RunPreparedArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    let stdio = stdio_of(a.detach, a.interactive, a.tty)?;
    let (pod, m) = lifecycle::take_prepared(&pods, &uuid, stdio, invoker_term().as_deref())?;
    start(ctx, pod, &m, a.detach, false)
}
