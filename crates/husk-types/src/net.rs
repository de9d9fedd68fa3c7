//! Pod networking with CNI: what the user asked for (`--net`, `--port`), and what stage1 hands
//! the plugins and records. Parsers are pure and tested here.

use serde::{Deserialize, Serialize};

/// One network the pod joins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetAttachment {
    /// Network name (the CNI config's `name`).
    pub name: String,
    /// Interface inside the pod (eth0, eth1, …).
    pub ifname: String,
    /// The network configuration list, as found (or built in), with `name` and `cniVersion` set.
    pub config: serde_json::Value,
    /// `CNI_ARGS` pairs (`--net=NAME:IP=172.16.28.50`).
    #[serde(default)]
    pub args: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `--port=[HOSTIP:]HOSTPORT:PODPORT[/tcp|udp]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub pod_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetSpecError {
    #[error("--net {0:?}: {1}")]
    Net(String, String),
    #[error("--port {0:?}: {1}")]
    Port(String, String),
}

/// A parsed `--net` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetRequest {
    None,
    Host,
    /// Named networks in order, each with its CNI args.
    Named(Vec<(String, Vec<(String, String)>)>),
}

/// Parses `none`, `host`, or `NAME[:K=V;K=V][,NAME…]`.
pub fn parse_net(s: &str) -> Result<NetRequest, NetSpecError> {
    let err = |why: &str| NetSpecError::Net(s.to_string(), why.to_string());
    match s {
        "none" => return Ok(NetRequest::None),
        "host" => return Ok(NetRequest::Host),
        "" => return Err(err("empty")),
        _ => {}
    }
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for part in s.split(',') {
        let (name, args) = match part.split_once(':') {
            Some((n, a)) => (n, a),
            None => (part, ""),
        };
        if name == "none" || name == "host" {
            return Err(err("none and host cannot be combined with other networks"));
        }
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(err(&format!("network name {name:?} must be letters, digits, '-', '_' or '.'")));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(err(&format!("network {name} is named twice")));
        }
        let mut kv = Vec::new();
        for a in args.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = a.split_once('=').ok_or_else(|| err(&format!("CNI argument {a:?} is not KEY=VALUE")))?;
            if k == "IP" && v.parse::<std::net::IpAddr>().is_err() {
                return Err(err(&format!("IP={v} is not an IP address")));
            }
            kv.push((k.to_string(), v.to_string()));
        }
        out.push((name.to_string(), kv));
    }
    Ok(NetRequest::Named(out))
}

/// Parses `[HOSTIP:]HOSTPORT:PODPORT[/tcp|udp]`.
pub fn parse_port(s: &str) -> Result<PortMapping, NetSpecError> {
    let err = |why: &str| NetSpecError::Port(s.to_string(), why.to_string());
    let (body, protocol) = match s.rsplit_once('/') {
        Some((b, "tcp")) => (b, Protocol::Tcp),
        Some((b, "udp")) => (b, Protocol::Udp),
        Some((_, p)) => return Err(err(&format!("protocol {p:?} must be tcp or udp"))),
        None => (s, Protocol::Tcp),
    };
    let parts: Vec<&str> = body.rsplitn(3, ':').collect();
    let (host_ip, host, pod) = match parts.as_slice() {
        [pod, host] => (None, *host, *pod),
        [pod, host, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>().map_err(|_| err(&format!("{ip:?} is not an IP address")))?;
            (Some(ip.to_string()), *host, *pod)
        }
        _ => return Err(err("expected [HOSTIP:]HOSTPORT:PODPORT[/tcp|udp]")),
    };
    let port = |p: &str| {
        p.parse::<u16>().ok().filter(|v| *v > 0).ok_or_else(|| err(&format!("{p:?} is not a port from 1 to 65535")))
    };
    Ok(PortMapping { host_ip, host_port: port(host)?, pod_port: port(pod)?, protocol })
}

/// A Linux interface name as it may appear on an iptables command line: 1 to 15 characters, no
/// '/', whitespace, ':' or '!' (nothing that iptables could read as another argument).
pub fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        && !n.starts_with('-')
}

/// The iptables arguments (after `-I` or `-D`) of the rule that keeps a pod off the host's
/// loopback-only services (the CVE-2020-8558 class): the portmap plugin sets `route_localnet=1` on
/// the pod's host-side interface so that `--port` works from the host's 127.0.0.1, and that same
/// setting would let a pod with CAP_NET_RAW send packets to 127.0.0.0/8 and reach services bound
/// there. The raw table's PREROUTING runs before routing and conntrack, so a packet arriving from
/// the pod for 127.0.0.0/8 is dropped before anything could accept it; answers to port-forwarded
/// connections are addressed to the host side's own address (portmap's SNAT), never to 127/8.
pub fn loopback_guard_rule(uuid: &str, ifname: &str) -> Vec<String> {
    [
        "PREROUTING",
        "-i",
        ifname,
        "-d",
        "127.0.0.0/8",
        "-m",
        "comment",
        "--comment",
        &format!("husk {uuid}: pods never reach the host's loopback"),
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The built-in networks: `default` (routed, masqueraded: pods reach what the host reaches) and
/// `default-restricted` (host-only: no route out, no masquerading). Both are the standard ptp,
/// host-local and portmap plugins, the first two done natively by stage1; a user file of the
/// same name replaces them (and runs every plugin). Leases live in
/// host-local's host-wide directory (/var/lib/cni/networks): the subnet and the host routes are
/// the host's, shared by every data dir and runtime on it.
pub fn builtin_network(name: &str) -> Option<serde_json::Value> {
    let (subnet, masq, routes) = match name {
        "default" => ("172.16.28.0/24", true, serde_json::json!([{"dst": "0.0.0.0/0"}])),
        "default-restricted" => ("172.17.4.0/24", false, serde_json::json!([])),
        _ => return None,
    };
    // The masquerade is the network's, set up once for all its pods by stage1 (husk_stage1::masq),
    // rather than ptp's `ipMasq`, which costs every pod nine iptables runs.
    let mut net = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {"type": "ptp", "ipMasq": false, "mtu": 1500,
             "ipam": {"type": "host-local", "subnet": subnet, "routes": routes}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    if masq {
        net["x-husk-masquerade"] = subnet.into();
    }
    // Its ptp and host-local are done by stage1 itself (husk_stage1::ptp): the same set-up and
    // the same lease files, without two plugin programs per pod.
    net["x-husk-native"] = "ptp".into();
    Some(net)
}

/// Turns a single-plugin `.conf` into a `.conflist`-shaped value; a conflist is returned as is.
pub fn as_conflist(mut v: serde_json::Value) -> Result<serde_json::Value, String> {
    if v.get("plugins").is_some() {
        if !v["plugins"].is_array() || v["plugins"].as_array().unwrap().is_empty() {
            return Err("\"plugins\" must be a non-empty list".into());
        }
        return Ok(v);
    }
    if v.get("type").and_then(|t| t.as_str()).is_none() {
        return Err("neither \"plugins\" nor \"type\" is set".into());
    }
    let name = v.get("name").cloned().unwrap_or(serde_json::Value::Null);
    let version = v.get("cniVersion").cloned().unwrap_or_else(|| "0.4.0".into());
    if let Some(o) = v.as_object_mut() {
        o.remove("name");
        o.remove("cniVersion");
    }
    Ok(serde_json::json!({"cniVersion": version, "name": name, "plugins": [v]}))
}

/// What stage1 records for each network, before ADD (so that a crash halfway is undone) and
/// after (with the plugins' result).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NetState {
    pub name: String,
    pub ifname: String,
    pub config: serde_json::Value,
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// The CNI result of the last plugin, once ADD succeeded.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// The host interfaces that got the loopback guard ([`loopback_guard_rule`]), recorded
    /// before it is inserted. Absent in a pod from before husk recorded it: then every host
    /// interface of the result has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guarded: Option<Vec<String>>,
}

impl NetState {
    /// The host-side interfaces of this network (those of the CNI result without a `sandbox`):
    /// the veth peer for ptp, the bridge and the veth peer for bridge.
    pub fn host_interfaces(&self) -> Vec<String> {
        let Some(ifs) = self.result.as_ref().and_then(|r| r.get("interfaces")).and_then(|i| i.as_array()) else {
            return vec![];
        };
        ifs.iter()
            .filter(|i| i.get("sandbox").and_then(|s| s.as_str()).is_none_or(str::is_empty))
            .filter_map(|i| i.get("name").and_then(|n| n.as_str()))
            .filter(|n| valid_ifname(n))
            .map(String::from)
            .collect()
    }

    /// The host interfaces whose loopback guard the teardown removes.
    pub fn guarded_interfaces(&self) -> Vec<String> {
        match &self.guarded {
            Some(g) => g.iter().filter(|n| valid_ifname(n)).cloned().collect(),
            None => self.host_interfaces(),
        }
    }

    /// The pod's addresses on this network (from the CNI result).
    pub fn addresses(&self) -> Vec<String> {
        self.result
            .as_ref()
            .and_then(|r| r.get("ips"))
            .and_then(|i| i.as_array())
            .map(|ips| {
                ips.iter().filter_map(|ip| ip.get("address").and_then(|a| a.as_str()).map(String::from)).collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_values() {
        assert_eq!(parse_net("none").unwrap(), NetRequest::None);
        assert_eq!(parse_net("host").unwrap(), NetRequest::Host);
        assert_eq!(
            parse_net("default,lan:IP=172.16.30.5;FOO=bar").unwrap(),
            NetRequest::Named(vec![
                ("default".into(), vec![]),
                ("lan".into(), vec![("IP".into(), "172.16.30.5".into()), ("FOO".into(), "bar".into())])
            ])
        );
        assert!(parse_net("default,host").is_err());
        assert!(parse_net("lan:IP=nope").is_err());
        assert!(parse_net("a,a").is_err());
        assert!(parse_net("bad/name").is_err());
    }

    #[test]
    fn port_values() {
        assert_eq!(
            parse_port("8080:80").unwrap(),
            PortMapping { host_ip: None, host_port: 8080, pod_port: 80, protocol: Protocol::Tcp }
        );
        let p = parse_port("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(
            (p.host_ip.as_deref(), p.host_port, p.pod_port, p.protocol),
            (Some("127.0.0.1"), 5353, 53, Protocol::Udp)
        );
        for bad in ["80", "0:80", "x:80", "1.2.3:80:80", "80:80/sctp", "70000:80"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builtins_and_conf_files() {
        let d = builtin_network("default").unwrap();
        assert_eq!(d["plugins"][0]["ipam"]["subnet"], "172.16.28.0/24");
        assert_eq!(d["plugins"][0]["ipMasq"], false);
        assert_eq!(d["x-husk-masquerade"], "172.16.28.0/24");
        let r = builtin_network("default-restricted").unwrap();
        assert_eq!((r["plugins"][0]["ipMasq"].as_bool(), r.get("x-husk-masquerade")), (Some(false), None));
        assert!(builtin_network("other").is_none());
    }

    #[test]
    fn pods_never_reach_the_host_loopback_rule() {
        let r = loopback_guard_rule("u1", "veth1234");
        assert_eq!(r[..5], ["PREROUTING", "-i", "veth1234", "-d", "127.0.0.0/8"]);
        assert_eq!(r.last().unwrap(), "DROP");
        let st = NetState {
            name: "default".into(),
            ifname: "eth0".into(),
            config: serde_json::json!({}),
            args: vec![],
            result: Some(serde_json::json!({"interfaces": [
                {"name": "veth1a2b", "mac": "x"},
                {"name": "eth0", "mac": "y", "sandbox": "/run/husk/netns/u1"},
                {"name": "cni0", "sandbox": ""},
                {"name": "-j ACCEPT"},
                {"name": "waytoolonginterfacename"}
            ]})),
            guarded: None,
        };
        assert_eq!(st.host_interfaces(), vec!["veth1a2b", "cni0"]);
        // A pod from before the record: every host interface was guarded. Since: what is recorded.
        assert_eq!(st.guarded_interfaces(), vec!["veth1a2b", "cni0"]);
        let recorded = NetState { guarded: Some(vec!["hskabc".into(), "-j ACCEPT".into()]), ..st.clone() };
        assert_eq!(recorded.guarded_interfaces(), vec!["hskabc"]);
        assert!(NetState { guarded: Some(vec![]), ..st }.guarded_interfaces().is_empty());
        let c = as_conflist(serde_json::json!({"cniVersion": "0.4.0", "name": "n", "type": "bridge"})).unwrap();
        assert_eq!(c["plugins"][0]["type"], "bridge");
        assert_eq!(c["name"], "n");
        assert!(as_conflist(serde_json::json!({"name": "n"})).is_err());
    }

    #[test]
    fn addresses_from_results() {
        let s = NetState {
            name: "d".into(),
            ifname: "eth0".into(),
            config: serde_json::json!({}),
            args: vec![],
            result: Some(serde_json::json!({"ips": [{"address": "172.16.28.5/24"}]})),
            guarded: None,
        };
        assert_eq!(s.addresses(), vec!["172.16.28.5/24"]);
    }
}
