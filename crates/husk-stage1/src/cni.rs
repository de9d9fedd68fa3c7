//! CNI networking, as the CNI spec's runtime: stage1 execs the standard plugins (ptp,
//! host-local, portmap, bridge, …), so every existing CNI configuration works. The one exception
//! is the built-in networks' ptp with host-local, which stage1 does itself ([`crate::ptp`]),
//! with the same result and the same lease files.
//!
//! The pod's network namespace is pinned by a bind mount at `/run/husk/netns/<uuid>` (in the
//! host's mount namespace), so that teardown works even after the pod's processes were killed.
//! Each network is recorded in `<pod>/net/state.json` *before* its ADD runs: whatever a crash
//! interrupts, `gc` knows what to DEL.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use husk_types::abi::PodDir;
use husk_types::net::{NetState, PortMapping};
use husk_types::pod::{NetMode, PodManifest};
use nix::sched::CloneFlags;

use crate::common::{write_json, Context, Fail, Step};
use crate::ipam::Leases;
use crate::masq::Masquerade;
use crate::ptp::{Ptp, Rtnl};

pub use husk_types::abi::NETNS_DIR;

pub fn netns_path(uuid: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(uuid)
}

fn state_path(pod_dir: &Path) -> PathBuf {
    PodDir::new(pod_dir).net_state()
}

pub fn read_state(pod_dir: &Path) -> Vec<NetState> {
    std::fs::read(state_path(pod_dir)).ok().and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default()
}

/// Creates the pod's network namespace with loopback up, pinned at [`netns_path`]. Runs in the
/// host's mount namespace; the caller stays in the host's network namespace.
pub fn create_netns(uuid: &str) -> Result<PathBuf, Fail> {
    let pin = netns_path(uuid);
    std::fs::create_dir_all(NETNS_DIR).ctx(Step::Network, || format!("cannot create {NETNS_DIR}"))?;
    std::fs::File::create(&pin).ctx(Step::Network, || format!("cannot create {}", pin.display()))?;
    let host = std::fs::File::open("/proc/self/ns/net")
        .ctx(Step::Network, || "cannot open the host's network namespace".into())?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
        .ctx(Step::Network, || "cannot create the pod's network namespace".into())?;
    let r = (|| {
        husk_sys::proc::loopback_up().ctx(Step::Network, || "cannot bring up loopback".into())?;
        nix::mount::mount::<str, Path, str, str>(
            Some("/proc/self/ns/net"),
            &pin,
            None,
            nix::mount::MsFlags::MS_BIND,
            None,
        )
        .ctx(Step::Network, || format!("cannot pin the network namespace at {}", pin.display()))
    })();
    nix::sched::setns(&host, CloneFlags::CLONE_NEWNET)
        .ctx(Step::Network, || "cannot return to the host's network namespace".into())?;
    r.map(|_| pin)
}

/// A CNI pod's network namespace, pinned, and its networks set up in it (`None` and nothing for
/// a pod without CNI networks). Shared by the `ns` and `kvm` supervisors.
pub fn create_and_setup(pod_dir: &Path, m: &PodManifest) -> Result<(Option<PathBuf>, Vec<NetState>), Fail> {
    match &m.net {
        NetMode::Cni { .. } => {
            let ns = create_netns(&m.uuid)?;
            let states = setup(pod_dir, m, &ns)?;
            Ok((Some(ns), states))
        }
        _ => Ok((None, vec![])),
    }
}

/// Joins every network of the pod, in order. On failure, what was set up is torn down again.
pub fn setup(pod_dir: &Path, m: &PodManifest, netns: &Path) -> Result<Vec<NetState>, Fail> {
    let NetMode::Cni { networks, ports, plugin_dirs } = &m.net else { return Ok(vec![]) };
    std::fs::create_dir_all(PodDir::new(pod_dir).net_dir())
        .ctx(Step::Network, || "cannot create the pod's net directory".into())?;
    // Port mappings go to the first network whose plugins accept them.
    let ports_net = networks.iter().position(|n| accepts_ports(&n.config));
    if !ports.is_empty() && ports_net.is_none() {
        return Err(Fail::Invalid("--port needs a network with the portmap plugin (like default)".into()));
    }
    let mut states: Vec<NetState> = Vec::new();
    for (i, n) in networks.iter().enumerate() {
        let native = match Ptp::of(&n.name, &n.config) {
            Ok(p) => p,
            Err(e) => {
                teardown(pod_dir, &m.uuid, plugin_dirs);
                return Err(e);
            }
        };
        states.push(NetState {
            name: n.name.clone(),
            ifname: n.ifname.clone(),
            config: n.config.clone(),
            args: n.args.clone(),
            result: None,
            guarded: None,
        });
        write_json(&state_path(pod_dir), &states)?;
        if let Err(e) = Masquerade::of(&n.name, &n.config).and_then(|mq| mq.map_or(Ok(()), |mq| mq.join(&m.uuid))) {
            teardown(pod_dir, &m.uuid, plugin_dirs);
            return Err(e);
        }
        let ports = if Some(i) == ports_net { ports.as_slice() } else { &[] };
        match run_chain("ADD", &m.uuid, netns, states.last().unwrap(), ports, plugin_dirs) {
            Ok(result) => {
                let s = states.last_mut().unwrap();
                s.result = Some(result);
                // A native ptp pod's host interface is its own: only portmap (for --port) turns
                // route_localnet on there, so without it, and with the setting off for it (the
                // host's `all`, and its own, inherited from `default`), it needs no guard.
                let host_ifs = s.host_interfaces();
                let guarded = if native.is_some() && ports.is_empty() && !host_ifs.iter().any(|i| routes_localnet(i)) {
                    vec![]
                } else {
                    host_ifs
                };
                s.guarded = Some(guarded.clone());
                write_json(&state_path(pod_dir), &states)?;
                for ifname in guarded {
                    if let Err(e) = loopback_guard("-I", &m.uuid, &ifname) {
                        teardown(pod_dir, &m.uuid, plugin_dirs);
                        return Err(e);
                    }
                }
            }
            Err(e) => {
                teardown(pod_dir, &m.uuid, plugin_dirs);
                return Err(e);
            }
        }
    }
    Ok(states)
}

/// Leaves every recorded network (in reverse), unpins the namespace and forgets the state.
/// Idempotent; errors are reported but do not stop the rest of the cleanup.
pub fn teardown(pod_dir: &Path, uuid: &str, plugin_dirs: &[PathBuf]) -> Vec<Fail> {
    let mut errors = Vec::new();
    let states = read_state(pod_dir);
    let pin = netns_path(uuid);
    let netns = if pin.exists() { pin.clone() } else { PathBuf::new() };
    let ports = ports_of(pod_dir);
    let ports_net = states.iter().position(|s| accepts_ports(&s.config));
    for (i, s) in states.iter().enumerate().rev() {
        let ports = if Some(i) == ports_net { ports.as_slice() } else { &[] };
        if let Err(e) = run_chain("DEL", uuid, &netns, s, ports, plugin_dirs) {
            errors.push(e);
        }
        // After DEL: the guard goes last, once nothing of the pod can send on the interface.
        // Exactly one rule was inserted per interface; one that is already gone (a teardown
        // that ran before) is no error.
        for ifname in s.guarded_interfaces() {
            if let Err(e) = loopback_guard("-D", uuid, &ifname) {
                if !e.chain().contains("does a matching rule exist") && !e.chain().contains("Bad rule") {
                    errors.push(e);
                }
            }
        }
        // The pod no longer uses the network's shared masquerade (gc removes the rules once no
        // pod does). A malformed key was refused at setup: nothing to leave then.
        if let Some(mq) = Masquerade::of(&s.name, &s.config).ok().flatten() {
            if let Err(e) = mq.leave(uuid) {
                errors.push(e);
            }
        }
    }
    if pin.exists() {
        let _ = nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_file(&pin) {
            errors.push(Fail::step(Step::Network, format!("cannot remove {}", pin.display()), e));
        }
    }
    if errors.is_empty() {
        // Nothing left to undo; keep the record (addresses the pod had) for list and status.
        let _ = std::fs::rename(state_path(pod_dir), PodDir::new(pod_dir).net_released());
    }
    errors
}

/// The shared masquerades of the networks the pod joined (recorded, or released already).
pub fn masquerades_of(pod_dir: &Path) -> Vec<Masquerade> {
    let d = PodDir::new(pod_dir);
    let states: Vec<NetState> = [d.net_state(), d.net_released()]
        .iter()
        .find_map(|p| std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok()))
        .unwrap_or_default();
    states.iter().filter_map(|s| Masquerade::of(&s.name, &s.config).ok().flatten()).collect()
}

/// Whether packets arriving on the host interface `ifname` may be routed to 127.0.0.0/8: its
/// `route_localnet`, or the host's `all` (either turns it on). Unreadable counts as on.
fn routes_localnet(ifname: &str) -> bool {
    ["all", ifname].iter().any(|conf| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet"))
            .map(|v| v.trim() != "0")
            .unwrap_or(true)
    })
}

/// Inserts (`-I`) or deletes (`-D`) the rule of
/// [`husk_types::net::loopback_guard_rule`] in the host's raw table.
fn loopback_guard(action: &str, uuid: &str, ifname: &str) -> Result<(), Fail> {
    let bin =
        ["/usr/sbin/iptables", "/sbin/iptables"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("iptables");
    let out = Command::new(bin)
        .args(["-w", "-t", "raw", action])
        .args(husk_types::net::loopback_guard_rule(uuid, ifname))
        .stdin(Stdio::null())
        .output()
        .ctx(Step::Network, || format!("cannot run {bin} (needed to keep pods off the host's loopback)"))?;
    if !out.status.success() {
        return Err(Fail::Invalid(format!(
            "iptables {action} of the loopback guard on {ifname} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn ports_of(pod_dir: &Path) -> Vec<PortMapping> {
    crate::common::read_manifest(pod_dir)
        .ok()
        .and_then(|m| match m.net {
            NetMode::Cni { ports, .. } => Some(ports),
            _ => None,
        })
        .unwrap_or_default()
}

fn accepts_ports(conflist: &serde_json::Value) -> bool {
    conflist["plugins"].as_array().is_some_and(|ps| ps.iter().any(|p| p["capabilities"]["portMappings"] == true))
}

/// Runs a network's plugin chain for `command` (ADD in order, passing each result on as
/// prevResult; DEL in reverse with the cached result), returning the final result.
fn run_chain(
    command: &str,
    uuid: &str,
    netns: &Path,
    s: &NetState,
    ports: &[PortMapping],
    dirs: &[PathBuf],
) -> Result<serde_json::Value, Fail> {
    let plugins = s.config["plugins"].as_array().cloned().unwrap_or_default();
    let version = s.config["cniVersion"].as_str().unwrap_or("0.4.0").to_string();
    let mut prev = if command == "DEL" { s.result.clone() } else { None };
    let order: Vec<&serde_json::Value> =
        if command == "DEL" { plugins.iter().rev().collect() } else { plugins.iter().collect() };
    let mut first_err = None;
    let native = Ptp::of(&s.name, &s.config)?;
    for p in order {
        // The built-in networks' ptp (with its host-local) is done natively.
        if let (Some(ptp), true) = (&native, std::ptr::eq(p, &plugins[0])) {
            let r = native_step(command, ptp, uuid, netns, s);
            match r {
                Ok(Some(out)) => prev = Some(out),
                Ok(None) => {}
                Err(e) if command == "DEL" => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        // A port-mapping plugin has nothing to do for a pod that maps no ports (on ADD or DEL,
        // as a pod's ports never change); skipping it saves two plugin runs per pod.
        if p["capabilities"]["portMappings"] == true && ports.is_empty() {
            continue;
        }
        let kind = p["type"].as_str().unwrap_or("").to_string();
        let mut conf = p.clone();
        conf["name"] = s.name.clone().into();
        conf["cniVersion"] = version.clone().into();
        if let Some(r) = &prev {
            conf["prevResult"] = r.clone();
        }
        if p["capabilities"]["portMappings"] == true {
            let pm: Vec<serde_json::Value> = ports
                .iter()
                .map(|m| {
                    let mut v = serde_json::json!({"hostPort": m.host_port, "containerPort": m.pod_port, "protocol": m.protocol.as_str()});
                    if let Some(ip) = &m.host_ip {
                        v["hostIP"] = ip.clone().into();
                    }
                    v
                })
                .collect();
            conf["runtimeConfig"] = serde_json::json!({"portMappings": pm});
        }
        match exec_plugin(command, &kind, uuid, netns, &s.ifname, &s.args, dirs, &conf) {
            Ok(out) if command == "ADD" => prev = Some(out),
            Ok(_) => {}
            // DEL goes on through the chain: each plugin releases what it holds.
            Err(e) if command == "DEL" => {
                first_err.get_or_insert(Fail::Step {
                    step: Step::Network,
                    what: format!("network {}", s.name),
                    source: Box::new(e),
                });
            }
            Err(e) => {
                return Err(Fail::Step {
                    step: Step::Network,
                    what: format!("network {}", s.name),
                    source: Box::new(e),
                })
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(prev.unwrap_or(serde_json::Value::Null)),
    }
}

/// ADD or DEL of a native ptp network: its result on ADD.
fn native_step(
    command: &str,
    ptp: &Ptp,
    uuid: &str,
    netns: &Path,
    s: &NetState,
) -> Result<Option<serde_json::Value>, Fail> {
    let leases = Leases::of_network(&s.name);
    if command == "DEL" {
        // No pinned namespace: the pod's end went with it, and took the host's end along. The
        // lease is released even when the namespace cannot be entered.
        let mut rtnl = if netns.as_os_str().is_empty() { Ok(None) } else { Rtnl::open(netns).map(Some) };
        let net = rtnl.as_mut().ok().and_then(|r| r.as_mut()).map(|r| r as &mut dyn crate::ptp::Netlink);
        let deleted = crate::ptp::del(net, &leases, &s.name, uuid, &s.ifname);
        return rtnl.and(deleted).map(|_| None);
    }
    let requested = match s.args.iter().find(|(k, _)| k == "IP") {
        None => None,
        Some((_, v)) => Some(v.parse().map_err(|_| {
            Fail::Invalid(format!("network {}: IP={v} is not an IPv4 address (the network is {})", s.name, ptp.subnet))
        })?),
    };
    let mut rtnl = Rtnl::open(netns)?;
    let at = crate::ptp::Attachment { network: &s.name, uuid, ifname: &s.ifname, netns };
    crate::ptp::add(&mut rtnl, &leases, ptp, at, requested).map(Some)
}

#[allow(clippy::too_many_arguments)]
fn exec_plugin(
    command: &str,
    kind: &str,
    uuid: &str,
    netns: &Path,
    ifname: &str,
    args: &[(String, String)],
    dirs: &[PathBuf],
    conf: &serde_json::Value,
) -> Result<serde_json::Value, Fail> {
    if kind.is_empty() || kind.contains('/') {
        return Err(Fail::Invalid(format!("invalid plugin type {kind:?}")));
    }
    let bin = dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file()).ok_or_else(|| {
        Fail::Invalid(format!(
            "CNI plugin {kind:?} not found in {} (install containernetworking-plugins or set paths.cni_plugin_dirs)",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
        ))
    })?;
    let cni_args = std::iter::once("IgnoreUnknown=1".to_string())
        .chain(args.iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(";");
    let mut child = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", uuid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(Step::Network, || format!("cannot run CNI plugin {}", bin.display()))?;
    // A plugin may exit without reading its configuration (a DEL with nothing to do): a broken
    // pipe here is no failure; its exit status decides.
    match child.stdin.take().expect("piped").write_all(conf.to_string().as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Fail::step(Step::Network, format!("cannot write to CNI plugin {kind}"), e));
        }
        _ => {}
    }
    let out = child.wait_with_output().ctx(Step::Network, || format!("CNI plugin {kind} failed"))?;
    let stdout: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    if !out.status.success() {
        let msg = stdout["msg"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        let details =
            stdout["details"].as_str().filter(|d| !d.is_empty()).map(|d| format!(" ({d})")).unwrap_or_default();
        return Err(Fail::Invalid(format!("plugin {kind} {command} failed: {msg}{details}")));
    }
    Ok(stdout)
}

/// DNS settings a network's result offered, for resolv.conf when the user gave none.
pub fn dns_from(states: &[NetState]) -> Option<husk_types::etc::NetDns> {
    for s in states {
        let d = s.result.as_ref().map(|r| &r["dns"])?;
        let list = |k: &str| {
            d[k].as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let servers = list("nameservers");
        if !servers.is_empty() {
            return Some(husk_types::etc::NetDns {
                servers,
                search: list("search"),
                options: list("options"),
                domain: d["domain"].as_str().map(String::from),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_go_to_networks_with_the_capability() {
        assert!(accepts_ports(&husk_types::net::builtin_network("default").unwrap()));
        assert!(!accepts_ports(&serde_json::json!({"plugins": [{"type": "bridge"}]})));
    }

    #[test]
    fn dns_comes_from_the_first_result_that_has_it() {
        let s = |dns: serde_json::Value| NetState {
            name: "n".into(),
            ifname: "eth0".into(),
            config: serde_json::json!({}),
            args: vec![],
            result: Some(serde_json::json!({"dns": dns})),
            guarded: None,
        };
        assert!(dns_from(&[s(serde_json::json!({}))]).is_none());
        let d = dns_from(&[s(serde_json::json!({"nameservers": ["10.0.0.53"], "search": ["corp"]}))]).unwrap();
        assert_eq!((d.servers, d.search), (vec!["10.0.0.53".to_string()], vec!["corp".to_string()]));
    }
}
