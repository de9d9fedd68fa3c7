//! A kvm pod's networks: CNI runs in the pod's network namespace exactly as for `ns`; then each
//! interface the plugins put there is joined to a tap device in the same namespace by two tc
//! redirects (as Kata does), so that any plugin works unchanged, and the tap is qemu's NIC for
//! the guest, with the interface's MAC. The guest init gives its NIC the CNI result's name,
//! IPv4 and IPv6 addresses and routes (from `<pod>/kvm/net.json`, shared with the pod dir).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;

use husk_types::net::NetState;
use serde::{Deserialize, Serialize};

use crate::common::{Context, Fail, Step};
use crate::kvm::plan::TapNic;

/// One guest NIC, as the guest init configures it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNic {
    /// The interface's name in the pod (`eth0`…), which the guest's NIC is renamed to.
    pub name: String,
    pub mac: String,
    /// IPv4 and IPv6 addresses with their prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// (destination, prefix, gateway) routes through this NIC, destination and gateway of one
    /// family.
    pub routes: Vec<(IpAddr, u8, IpAddr)>,
}

fn cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = s.split_once('/')?;
    let a: IpAddr = a.parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let p: u8 = p.parse().ok().filter(|p| *p <= max)?;
    Some((a, p))
}

/// Whether the subnet `net` holds `ip` (never across families).
fn contains(net: (IpAddr, u8), ip: IpAddr) -> bool {
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(net.1)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(net.1)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// The unspecified address of `a`'s family (an on-link route's gateway).
fn unspecified(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// The guest's NICs from the CNI results: every interface in the sandbox, its IPv4 and IPv6
/// addresses, and each route on the NIC whose subnet holds the route's gateway (else the
/// network's first NIC). A route without a gateway takes the gateway the result gives an
/// address of its family; one with none, or with a gateway of the other family, is left out.
pub fn guest_nics(states: &[NetState]) -> Result<Vec<GuestNic>, String> {
    let mut out = Vec::new();
    for s in states {
        let Some(r) = &s.result else { continue };
        let ifaces = r["interfaces"].as_array().cloned().unwrap_or_default();
        let first = out.len();
        let mut index_map = Vec::new();
        for (i, ifc) in ifaces.iter().enumerate() {
            if ifc["sandbox"].as_str().is_none_or(str::is_empty) {
                continue;
            }
            let name = ifc["name"].as_str().unwrap_or(&s.ifname).to_string();
            let mac = ifc["mac"]
                .as_str()
                .ok_or_else(|| format!("network {}: the CNI result gives interface {name} no MAC address", s.name))?
                .to_ascii_lowercase();
            index_map.push((i, out.len()));
            out.push(GuestNic { name, mac, addresses: vec![], routes: vec![] });
        }
        if out.len() == first {
            return Err(format!("network {}: the CNI result puts no interface in the pod", s.name));
        }
        for ip in r["ips"].as_array().cloned().unwrap_or_default() {
            let Some(addr) = ip["address"].as_str().and_then(cidr) else { continue };
            let nic = ip["interface"]
                .as_u64()
                .and_then(|i| index_map.iter().find(|(k, _)| *k as u64 == i).map(|(_, n)| *n))
                .unwrap_or(first);
            out[nic].addresses.push(addr);
        }
        for rt in r["routes"].as_array().cloned().unwrap_or_default() {
            let Some(dst) = rt["dst"].as_str().and_then(cidr) else { continue };
            let same_family = |g: &IpAddr| g.is_ipv4() == dst.0.is_ipv4();
            let gw: Option<IpAddr> = rt["gw"].as_str().and_then(|g| g.parse().ok());
            let gw = gw.or_else(|| {
                r["ips"].as_array()?.iter().find_map(|ip| ip["gateway"].as_str()?.parse().ok().filter(same_family))
            });
            let Some(gw) = gw.filter(same_family) else { continue };
            let nic = (first..out.len()).find(|n| out[*n].addresses.iter().any(|a| contains(*a, gw))).unwrap_or(first);
            out[nic].routes.push((dst.0, dst.1, gw));
        }
    }
    Ok(out)
}

/// The tap of the n-th NIC.
pub fn tap_name(n: usize) -> String {
    format!("husktap{n}")
}

/// The commands that join each NIC's interface in the pod's namespace to its tap: create the
/// tap, bring it up, and redirect every frame each way with tc (mirred).
pub fn tap_commands(nics: &[GuestNic]) -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    for (n, nic) in nics.iter().enumerate() {
        let tap = tap_name(n);
        cmds.push(s(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]));
        cmds.push(s(&["ip", "link", "set", &tap, "mtu", "1500", "up"]));
        for (from, to) in [(nic.name.as_str(), tap.as_str()), (tap.as_str(), nic.name.as_str())] {
            cmds.push(s(&["tc", "qdisc", "add", "dev", from, "ingress"]));
            cmds.push(s(&[
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0",
                "0", "action", "mirred", "egress", "redirect", "dev", to,
            ]));
        }
    }
    cmds
}

/// Runs [`tap_commands`] in the pod's network namespace; returns qemu's NICs.
pub fn attach_taps(netns: &Path, nics: &[GuestNic]) -> Result<Vec<TapNic>, Fail> {
    for c in tap_commands(nics) {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(&c)
            .output()
            .ctx(Step::Network, || format!("cannot run {} (iproute2 and util-linux are needed)", c[0]))?;
        if !out.status.success() {
            return Err(Fail::Invalid(format!(
                "`{}` in the pod's network namespace failed: {}",
                c.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(nics.iter().enumerate().map(|(n, nic)| TapNic { tap: tap_name(n), mac: nic.mac.clone() }).collect())
}

/// Where the guest init finds its NICs.
pub fn nics_file(pod_dir: &Path) -> std::path::PathBuf {
    pod_dir.join("kvm/net.json")
}

/// In the guest: names, addresses and routes of the NICs, as the CNI plugins set them up in the
/// pod's namespace on the host.
pub fn configure_guest(pod_dir: &Path) -> Result<(), Fail> {
    let p = nics_file(pod_dir);
    let data = std::fs::read(&p).ctx(Step::Network, || format!("cannot read {}", p.display()))?;
    let nics: Vec<GuestNic> = serde_json::from_slice(&data).ctx(Step::Network, || format!("bad {}", p.display()))?;
    use husk_sys::netconf;
    for nic in &nics {
        let found = netconf::interface_with_mac(&nic.mac).ctx(Step::Network, || format!("NIC {}", nic.name))?;
        netconf::rename(&found, &nic.name).ctx(Step::Network, || format!("cannot rename {found} to {}", nic.name))?;
        if nic.addresses.iter().any(|(a, _)| a.is_ipv6()) {
            // The address is the CNI plugin's, unique by its IPAM: usable at once, as in the
            // pod's namespace on the host (the plugins turn duplicate detection off there too).
            let dad = format!("/proc/sys/net/ipv6/conf/{}/accept_dad", nic.name);
            std::fs::write(&dad, "0").ctx(Step::Network, || format!("cannot write {dad}"))?;
        }
        for (a, prefix) in &nic.addresses {
            netconf::set_address(&nic.name, *a, *prefix)
                .ctx(Step::Network, || format!("cannot give {} the address {a}/{prefix}", nic.name))?;
        }
        netconf::up(&nic.name).ctx(Step::Network, || format!("cannot bring {} up", nic.name))?;
    }
    for nic in &nics {
        for (dst, prefix, gw) in &nic.routes {
            // The gateway of a /32 or /128 address (ptp) is not on any subnet: reach it on-link
            // first.
            if !nic.addresses.iter().any(|a| contains(*a, *gw)) {
                let host = if gw.is_ipv4() { 32 } else { 128 };
                netconf::add_route(*gw, host, unspecified(*gw), &nic.name)
                    .ctx(Step::Network, || format!("cannot add a route to {gw} on {}", nic.name))?;
            }
            match netconf::add_route(*dst, *prefix, *gw, &nic.name) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(Fail::step(Step::Network, format!("cannot add the route {dst}/{prefix} via {gw}"), e))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(result: serde_json::Value) -> NetState {
        NetState {
            name: "default".into(),
            ifname: "eth0".into(),
            config: serde_json::json!({}),
            args: vec![],
            result: Some(result),
            guarded: None,
        }
    }

    #[test]
    fn a_ptp_result_gives_one_nic_with_its_address_and_default_route() {
        let r = serde_json::json!({
            "interfaces": [
                {"name": "veth1234", "mac": "AA:BB:CC:00:00:01"},
                {"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/run/husk/netns/u"}
            ],
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 1},
                    {"address": "fd00::5/64", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}]
        });
        let nics = guest_nics(&[state(r)]).unwrap();
        assert_eq!(
            nics,
            vec![GuestNic {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:05".into(),
                addresses: vec![("10.88.0.5".parse().unwrap(), 16), ("fd00::5".parse().unwrap(), 64)],
                routes: vec![("0.0.0.0".parse().unwrap(), 0, "10.88.0.1".parse().unwrap())],
            }]
        );
    }

    #[test]
    fn a_dual_stack_result_gives_routes_of_each_family_through_their_own_gateway() {
        let r = serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/ns"}],
            "ips": [{"address": "10.88.0.5/24", "gateway": "10.88.0.1", "interface": 0},
                    {"address": "fd00:88::5/64", "gateway": "fd00:88::1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "fd00:99::/48", "gw": "fd00:88::fe"},
                       {"dst": "::/0", "gw": "10.88.0.1"}]
        });
        let nics = guest_nics(&[state(r)]).unwrap();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert_eq!(nics[0].addresses, vec![(ip("10.88.0.5"), 24), (ip("fd00:88::5"), 64)]);
        assert_eq!(
            nics[0].routes,
            vec![
                (ip("0.0.0.0"), 0, ip("10.88.0.1")),
                (ip("::"), 0, ip("fd00:88::1")),
                (ip("fd00:99::"), 48, ip("fd00:88::fe"))
            ],
            "a route whose gateway is of the other family is left out"
        );
    }

    #[test]
    fn subnets_hold_addresses_of_their_own_family_only() {
        let net = |s: &str| cidr(s).unwrap();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        assert!(contains(net("10.0.0.0/8"), ip("10.1.2.3")));
        assert!(!contains(net("10.0.0.0/8"), ip("11.0.0.1")));
        assert!(contains(net("0.0.0.0/0"), ip("1.2.3.4")));
        assert!(contains(net("fd00::/64"), ip("fd00::1")));
        assert!(!contains(net("fd00::/64"), ip("fd00:0:0:1::1")));
        assert!(contains(net("::/0"), ip("2001:db8::1")));
        assert!(contains(net("fd00::5/128"), ip("fd00::5")));
        assert!(!contains(net("::/0"), ip("10.0.0.1")), "never across families");
        assert!(!contains(net("0.0.0.0/0"), ip("::1")));
        assert_eq!(cidr("fd00::1/129"), None);
        assert_eq!(cidr("10.0.0.1/33"), None);
    }

    #[test]
    fn two_networks_give_two_nics_and_routes_follow_their_gateway() {
        let a = serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/ns"}],
            "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
        });
        let b = serde_json::json!({
            "interfaces": [{"name": "eth1", "mac": "02:00:00:00:00:02", "sandbox": "/ns"}],
            "ips": [{"address": "10.2.0.2/24", "interface": 0}],
            "routes": [{"dst": "192.168.0.0/16", "gw": "10.2.0.1"}]
        });
        let mut sb = state(b);
        sb.name = "other".into();
        let nics = guest_nics(&[state(a), sb]).unwrap();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[1].name, "eth1");
        assert_eq!(nics[1].routes, vec![("192.168.0.0".parse().unwrap(), 16, "10.2.0.1".parse().unwrap())]);
        assert_eq!(nics[0].routes.len(), 1);
    }

    #[test]
    fn a_result_without_a_pod_interface_or_mac_is_refused() {
        let none = serde_json::json!({"interfaces": [{"name": "veth0", "mac": "02:00:00:00:00:01"}], "ips": []});
        assert!(guest_nics(&[state(none)]).unwrap_err().contains("no interface in the pod"));
        let nomac = serde_json::json!({"interfaces": [{"name": "eth0", "sandbox": "/ns"}]});
        assert!(guest_nics(&[state(nomac)]).unwrap_err().contains("no MAC"));
        // Garbage addresses are skipped, not trusted.
        let bad = serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/ns"}],
            "ips": [{"address": "10.0.0.300/24"}, {"address": "10.0.0.3/40"}, {"address": 7}],
            "routes": [{"dst": "nope"}]
        });
        let n = guest_nics(&[state(bad)]).unwrap();
        assert!(n[0].addresses.is_empty() && n[0].routes.is_empty());
    }

    #[test]
    fn each_nic_gets_a_tap_redirected_both_ways() {
        let nic = GuestNic { name: "eth0".into(), mac: "m".into(), addresses: vec![], routes: vec![] };
        let c = tap_commands(&[nic]);
        let joined: Vec<String> = c.iter().map(|v| v.join(" ")).collect();
        assert_eq!(joined[0], "ip tuntap add dev husktap0 mode tap");
        assert!(joined
            .iter()
            .any(|l| l.starts_with("tc filter add dev eth0 ") && l.ends_with("redirect dev husktap0")));
        assert!(joined
            .iter()
            .any(|l| l.starts_with("tc filter add dev husktap0 ") && l.ends_with("redirect dev eth0")));
    }
}
