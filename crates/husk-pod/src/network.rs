//! From `--net` and `--port` to the pod manifest's network section: user networks from the
//! config dir's `net.d/`, the built-in `default` and `default-restricted`, port checks.

use std::path::{Path, PathBuf};

use husk_types::net::{as_conflist, builtin_network, NetAttachment, NetRequest, PortMapping, Protocol};
use husk_types::pod::NetMode;

use crate::error::PodError;
use crate::state::{Phase, Pods};

/// Where CNI plugins are looked for when husk.toml does not say.
pub const DEFAULT_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

fn net_err(why: String) -> PodError {
    PodError::Invalid { uuid: "-".into(), why }
}

/// Network configurations in `dir` (`*.conf`, `*.conflist`, `*.json`), by name.
pub fn user_networks(dir: &Path) -> Result<Vec<(String, serde_json::Value)>, PodError> {
    let mut out: Vec<(String, serde_json::Value)> = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(out) };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf" || x == "conflist" || x == "json"))
        .collect();
    files.sort();
    for f in files {
        let data = std::fs::read(&f).map_err(|e| PodError::io(&f, "read network configuration", e))?;
        let v: serde_json::Value = serde_json::from_slice(&data)
            .map_err(|e| net_err(format!("network configuration {} is not valid JSON: {e}", f.display())))?;
        let v = as_conflist(v).map_err(|why| net_err(format!("network configuration {}: {why}", f.display())))?;
        let name = v["name"]
            .as_str()
            .ok_or_else(|| net_err(format!("network configuration {} has no \"name\"", f.display())))?
            .to_string();
        if out.iter().any(|(n, _)| n == &name) {
            return Err(net_err(format!("network {name} is defined twice in {}", dir.display())));
        }
        out.push((name, v));
    }
    Ok(out)
}

/// Resolves a `--net` request. A user file named like a built-in network replaces it.
pub fn resolve(
    req: &NetRequest,
    net_d: &Path,
    plugin_dirs: Vec<PathBuf>,
    ports: &[PortMapping],
) -> Result<NetMode, PodError> {
    let named = match req {
        NetRequest::None | NetRequest::Host if !ports.is_empty() => {
            return Err(net_err("--port needs a CNI network (for example --net=default)".into()));
        }
        NetRequest::None => return Ok(NetMode::None),
        NetRequest::Host => return Ok(NetMode::Host),
        NetRequest::Named(n) => n,
    };
    let users = user_networks(net_d)?;
    let mut networks = Vec::new();
    for (i, (name, args)) in named.iter().enumerate() {
        let config = match users.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v.clone(),
            None => builtin_network(name).ok_or_else(|| {
                let mut known: Vec<String> = vec!["default".into(), "default-restricted".into()];
                for (n, _) in &users {
                    if !known.contains(n) {
                        known.push(n.clone());
                    }
                }
                net_err(format!(
                    "unknown network {name:?} (known: {}, none, host; add one as {}/{name}.conflist)",
                    known.join(", "),
                    net_d.display()
                ))
            })?,
        };
        networks.push(NetAttachment { name: name.clone(), ifname: format!("eth{i}"), config, args: args.clone() });
    }
    Ok(NetMode::Cni { networks, ports: ports.to_vec(), plugin_dirs })
}

/// Refuses a request that maps one host port twice (a usage error).
pub fn check_ports_distinct(ports: &[PortMapping]) -> Result<(), PodError> {
    for (i, p) in ports.iter().enumerate() {
        if ports[..i].iter().any(|q| q.host_port == p.host_port && q.protocol == p.protocol) {
            return Err(PodError::Request(format!(
                "host port {}/{} is mapped twice",
                p.host_port,
                p.protocol.as_str()
            )));
        }
    }
    Ok(())
}

/// Refuses host ports that another live pod maps already or that something on the host listens
/// on, for pod `uuid` being created. Call it holding [`ports_lock`] until the pod's manifest is
/// written, so that two pods created at once cannot both take a port.
pub fn check_ports(pods: &Pods, ports: &[PortMapping], uuid_new: &str) -> Result<(), PodError> {
    check_ports_distinct(ports)?;
    let taken = |why: String| PodError::PortTaken { uuid: uuid_new.to_string(), why };
    for uuid in pods.all_uuids().into_iter().filter(|u| u != uuid_new) {
        let Ok(info) = pods.info(&uuid) else { continue };
        if !matches!(info.phase, Phase::Running | Phase::Preparing | Phase::Prepared) {
            continue;
        }
        if let Some(NetMode::Cni { ports: theirs, .. }) = info.manifest.as_ref().map(|m| &m.net) {
            for p in ports {
                if theirs.iter().any(|q| q.host_port == p.host_port && q.protocol == p.protocol) {
                    return Err(taken(format!(
                        "host port {}/{} is already forwarded to pod {uuid}",
                        p.host_port,
                        p.protocol.as_str()
                    )));
                }
            }
        }
    }
    for p in ports {
        let ip = p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into());
        let addr = format!("{ip}:{}", p.host_port);
        let taken_by_host = match p.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(&addr).err(),
            Protocol::Udp => std::net::UdpSocket::bind(&addr).err(),
        };
        if let Some(e) = taken_by_host {
            return Err(taken(format!(
                "host port {}/{} is not available on {ip}: {e}",
                p.host_port,
                p.protocol.as_str()
            )));
        }
    }
    Ok(())
}

/// Serializes port checks with the pod creations they guard (per data dir).
pub fn ports_lock(pods: &Pods) -> Result<husk_sys::Lock, PodError> {
    Ok(husk_sys::Lock::acquire(&pods.root().join("ports.lock"), husk_sys::LockKind::Exclusive, || {})?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> NetRequest {
        husk_types::net::parse_net(s).unwrap()
    }

    #[test]
    fn user_files_replace_builtins_and_unknown_names_are_listed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10-lan.conflist"),
            r#"{"cniVersion":"1.0.0","name":"lan","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("20-default.conf"), r#"{"cniVersion":"0.4.0","name":"default","type":"ptp"}"#)
            .unwrap();
        let m = resolve(&req("default,lan:IP=10.9.0.5"), d.path(), vec![], &[]).unwrap();
        let NetMode::Cni { networks, .. } = m else { panic!() };
        assert_eq!(networks[0].config["plugins"][0]["type"], "ptp");
        assert_eq!((networks[1].ifname.as_str(), networks[1].args[0].1.as_str()), ("eth1", "10.9.0.5"));
        let err = resolve(&req("nope"), d.path(), vec![], &[]).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("lan"), "{err}");
        let port = husk_types::net::parse_port("8080:80").unwrap();
        assert!(resolve(&req("none"), d.path(), vec![], &[port]).is_err());
    }

    #[test]
    fn a_port_in_use_on_the_host_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let pods = Pods::open(d.path()).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = husk_types::net::parse_port(&format!("127.0.0.1:{port}:80")).unwrap();
        let err = check_ports(&pods, std::slice::from_ref(&p), "new-pod").unwrap_err();
        assert!(matches!(&err, PodError::PortTaken { uuid, .. } if uuid == "new-pod"), "{err}");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        let twice = check_ports_distinct(&[p.clone(), p]).unwrap_err();
        assert!(matches!(twice, PodError::Request(_)), "{twice}");
    }
}
