//! The built-in networks' ptp, done by husk itself.
//!
//! `default` and `default-restricted` are the CNI ptp plugin with host-local IPAM. Run as
//! plugins, they are two Go programs per pod (ptp execs host-local), about 8 ms of every
//! networked pod's start here, and two more at its end. Their conflists carry [`NATIVE_KEY`], and
//! stage1 then does what those two plugins would do, with a few netlink requests and
//! host-local's own lease files ([`crate::ipam`]), returning the result ptp would have returned,
//! so the rest (portmap for `--port`, `list`, `status`, the kvm flavor's NIC) cannot tell. A
//! user's file of the same name has no such key and runs the plugins, as every other network.
//!
//! What a pod gets, as from ptp (addresses for a lease of 172.16.28.5 on `default`):
//!
//! ```text
//! pod:  eth0 172.16.28.5/24 (no prefix route)     host: hsk<12 hex of the pod's uuid> 172.16.28.1/32
//!       172.16.28.1 dev eth0 scope link src 172.16.28.5     172.16.28.5 dev hsk… scope host
//!       172.16.28.0/24 via 172.16.28.1 src 172.16.28.5
//!       default via 172.16.28.1                         (the network's routes)
//! ```
//!
//! The host side's name is derived from the pod's uuid rather than random (ptp's `veth…`), so
//! what belongs to which pod can be told from `ip link`. Nothing is left behind when the pod
//! goes: deleting the pod's end deletes the pair, with its addresses and routes.
//!
//! Planned as a list of [`Op`]s (pure, tested exhaustively below), applied by a short executor
//! over netlink ([`Rtnl`]) that a recording fake stands in for in the tests.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::CloneFlags;

use crate::common::{Context, Fail, Step};
use crate::ipam::{Leases, Subnet};

/// The conflist's top-level key that has stage1 run its first plugin (ptp with host-local)
/// natively. Only the built-in networks set it.
pub const NATIVE_KEY: &str = "x-husk-native";

/// What a native ptp network is made of, read from its conflist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ptp {
    pub subnet: Subnet,
    /// The routes the pod gets through its gateway: destination, prefix, gateway (default: the
    /// subnet's).
    pub routes: Vec<(Ipv4Addr, u8, Option<Ipv4Addr>)>,
    pub mtu: u32,
}

impl Ptp {
    /// The native form of a network, when its conflist asks for it. A conflist that asks for it
    /// but is not ptp with host-local in the shape husk builds is an error naming the network,
    /// never a half-understood network.
    pub fn of(network: &str, conflist: &serde_json::Value) -> Result<Option<Ptp>, Fail> {
        let bad = |why: &str| Fail::Invalid(format!("network {network:?}: {NATIVE_KEY}: {why}"));
        match conflist.get(NATIVE_KEY) {
            None => return Ok(None),
            Some(v) if v == "ptp" => {}
            Some(v) => return Err(bad(&format!("{v} is not \"ptp\", the one plugin husk does itself"))),
        }
        let p = &conflist["plugins"][0];
        if p["type"] != "ptp" || p["ipam"]["type"] != "host-local" || p["ipMasq"] == true {
            return Err(bad("the first plugin must be ptp without ipMasq, with host-local IPAM"));
        }
        // Only what husk does: host-local's other settings (ranges, dataDir, resolvConf, …)
        // would be silently ignored, so a network that has them runs the plugins instead.
        let ipam_keys = p["ipam"].as_object().into_iter().flat_map(|o| o.keys());
        if let Some(k) = ipam_keys.into_iter().find(|k| !["type", "subnet", "routes"].contains(&k.as_str())) {
            return Err(bad(&format!(
                "host-local's {k:?} is not supported natively; remove {NATIVE_KEY} to run the plugins"
            )));
        }
        let subnet = p["ipam"]["subnet"]
            .as_str()
            .and_then(Subnet::parse)
            .ok_or_else(|| bad("ipam.subnet must be an IPv4 subnet like 172.16.28.0/24"))?;
        let mut routes = Vec::new();
        for r in p["ipam"]["routes"].as_array().into_iter().flatten() {
            let dst = r["dst"].as_str().and_then(|d| {
                let (ip, len) = d.split_once('/')?;
                Some((ip.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok().filter(|l| *l <= 32)?))
            });
            let gw = match r.get("gw") {
                None => None,
                Some(g) => {
                    Some(g.as_str().and_then(|g| g.parse().ok()).ok_or_else(|| bad("a route's gw is no address"))?)
                }
            };
            let (ip, len) = dst.ok_or_else(|| bad("a route's dst must be an IPv4 subnet"))?;
            routes.push((ip, len, gw));
        }
        let mtu = match p.get("mtu") {
            None => 1500,
            Some(m) => {
                m.as_u64().filter(|m| (576..=65535).contains(m)).ok_or_else(|| bad("mtu must be 576 to 65535"))? as u32
            }
        };
        Ok(Some(Ptp { subnet, routes, mtu }))
    }
}

/// The host side's name: `hsk` and the first 12 hex digits of the pod's uuid (15 characters,
/// the most an interface name has).
pub fn host_ifname(uuid: &str) -> String {
    let hex: String = uuid.chars().filter(char::is_ascii_hexdigit).take(12).collect();
    format!("hsk{hex}")
}

/// Which network namespace an operation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Pod,
}

/// One step of setting up a pod's ptp link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// IPv4 forwarding on (ptp does this for every pod; it stays on).
    Forwarding,
    /// A veth pair: `host` in the host's namespace, `pod` in the pod's.
    Veth {
        host: String,
        pod: String,
        mtu: u32,
    },
    Up(Side, String),
    /// An address; `prefix_route: false` keeps the kernel from adding the subnet's route.
    Address {
        side: Side,
        ifname: String,
        addr: Ipv4Addr,
        prefix: u8,
        prefix_route: bool,
    },
    Route {
        side: Side,
        ifname: String,
        dst: Ipv4Addr,
        prefix: u8,
        via: Option<Ipv4Addr>,
        src: Option<Ipv4Addr>,
        scope: Scope,
    },
}

/// The step, as an error names it: "cannot add the route … on eth0 in the pod".
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = |side: &Side| if *side == Side::Pod { "in the pod" } else { "on the host" };
        match self {
            Op::Forwarding => write!(f, "turn IPv4 forwarding on (net.ipv4.ip_forward)"),
            Op::Veth { host, pod, .. } => write!(f, "create the veth pair {host} (host) and {pod} (pod)"),
            Op::Up(side, ifname) => write!(f, "bring {ifname} up {}", ns(side)),
            Op::Address { side, ifname, addr, prefix, .. } => {
                write!(f, "add the address {addr}/{prefix} to {ifname} {}", ns(side))
            }
            Op::Route { side, ifname, dst, prefix, via, .. } => {
                write!(f, "add the route {dst}/{prefix}")?;
                if let Some(gw) = via {
                    write!(f, " via {gw}")?;
                }
                write!(f, " on {ifname} {}", ns(side))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Universe,
    Link,
    Host,
}

/// The steps that give the pod `addr` on `ptp`, in order: the link, the pod's end (up before
/// its routes, whose gateway needs the link route first), then the host's end.
pub fn plan(ptp: &Ptp, addr: Ipv4Addr, host: &str, pod: &str) -> Vec<Op> {
    let gw = ptp.subnet.gateway();
    let route = |side, ifname: &str, dst, prefix, via, src, scope| Op::Route {
        side,
        ifname: ifname.to_string(),
        dst,
        prefix,
        via,
        src,
        scope,
    };
    let mut ops = vec![
        Op::Forwarding,
        Op::Veth { host: host.into(), pod: pod.into(), mtu: ptp.mtu },
        Op::Up(Side::Pod, pod.into()),
        Op::Address { side: Side::Pod, ifname: pod.into(), addr, prefix: ptp.subnet.prefix, prefix_route: false },
        route(Side::Pod, pod, gw, 32, None, Some(addr), Scope::Link),
        route(Side::Pod, pod, ptp.subnet.network, ptp.subnet.prefix, Some(gw), Some(addr), Scope::Universe),
    ];
    for (dst, prefix, via) in &ptp.routes {
        ops.push(route(Side::Pod, pod, *dst, *prefix, Some(via.unwrap_or(gw)), None, Scope::Universe));
    }
    ops.extend([
        Op::Up(Side::Host, host.into()),
        Op::Address { side: Side::Host, ifname: host.into(), addr: gw, prefix: 32, prefix_route: true },
        route(Side::Host, host, addr, 32, None, None, Scope::Host),
    ]);
    ops
}

/// The CNI result ptp would have printed for the same set-up.
pub fn result(ptp: &Ptp, addr: Ipv4Addr, host: (&str, &str), pod: (&str, &str), netns: &Path) -> serde_json::Value {
    let routes: Vec<serde_json::Value> = ptp
        .routes
        .iter()
        .map(|(dst, prefix, via)| {
            let mut r = serde_json::json!({"dst": format!("{dst}/{prefix}")});
            if let Some(gw) = via {
                r["gw"] = gw.to_string().into();
            }
            r
        })
        .collect();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": host.0, "mac": host.1},
            {"name": pod.0, "mac": pod.1, "sandbox": netns.display().to_string()},
        ],
        "ips": [{"address": format!("{addr}/{}", ptp.subnet.prefix), "gateway": ptp.subnet.gateway().to_string(), "interface": 1}],
        "routes": routes,
        "dns": {},
    })
}

/// What applies the plan: netlink in the two namespaces, or a recording fake.
pub trait Netlink {
    fn apply(&mut self, op: &Op) -> std::io::Result<()>;
    /// The link's MAC address.
    fn mac(&mut self, side: Side, ifname: &str) -> std::io::Result<String>;
    /// Deletes a link (and a veth's peer with it); a missing link is no error.
    fn delete(&mut self, side: Side, ifname: &str) -> std::io::Result<()>;
}

/// Which pod interface, on which network.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    pub network: &'a str,
    pub uuid: &'a str,
    pub ifname: &'a str,
    /// The pod's pinned network namespace.
    pub netns: &'a Path,
}

/// Sets up the pod's interface on the network: a lease (`requested`, or the next free one),
/// then the plan. On failure what was done is undone (the link deleted, the lease released)
/// and the error names the network.
pub fn add(
    net: &mut dyn Netlink,
    leases: &Leases,
    ptp: &Ptp,
    at: Attachment,
    requested: Option<Ipv4Addr>,
) -> Result<serde_json::Value, Fail> {
    let Attachment { network, uuid, ifname, netns } = at;
    let addr = leases
        .reserve(uuid, ifname, ptp.subnet, requested)
        .map_err(|e| Fail::Invalid(format!("network {network}: {}", e.chain())))?;
    let host = host_ifname(uuid);
    let done = (|| {
        for op in plan(ptp, addr, &host, ifname) {
            net.apply(&op).map_err(|e| {
                let what = match &op {
                    Op::Veth { .. } if e.raw_os_error() == Some(libc::EEXIST) => format!(
                        "the link {host} (or {ifname} in the pod) exists already; is another pod's uuid \
                         starting with the same 12 digits? `ip link del {host}` removes it"
                    ),
                    _ => format!("cannot {op}"),
                };
                (what, e)
            })?;
        }
        let macs = (net.mac(Side::Host, &host), net.mac(Side::Pod, ifname));
        match macs {
            (Ok(h), Ok(p)) => Ok(result(ptp, addr, (&host, &h), (ifname, &p), netns)),
            (Err(e), _) | (_, Err(e)) => Err((format!("cannot read the addresses of {host} and {ifname}"), e)),
        }
    })();
    done.map_err(|(what, e)| {
        let _ = net.delete(Side::Host, &host);
        let _ = leases.release(uuid, ifname);
        Fail::step(Step::Network, format!("network {network}: {what}"), e)
    })
}

/// Undoes [`add`]: the lease released, the pod's link deleted (when its namespace is still
/// pinned; a gone namespace took the pair with it). Both are done even if one fails.
pub fn del(
    net: Option<&mut dyn Netlink>,
    leases: &Leases,
    network: &str,
    uuid: &str,
    ifname: &str,
) -> Result<(), Fail> {
    let released = leases.release(uuid, ifname);
    let deleted = match net {
        Some(n) => n
            .delete(Side::Pod, ifname)
            .ctx(Step::Network, || format!("network {network}: cannot delete the pod's {ifname}")),
        None => Ok(()),
    };
    released.and(deleted)
}

/// The two rtnetlink sockets: one in the host's network namespace, one in the pod's.
pub struct Rtnl {
    host: Socket,
    pod: Socket,
    pod_ns: std::fs::File,
    seq: u32,
}

impl Rtnl {
    /// Opens the sockets; the pod's is opened in its namespace (entered and left again by this
    /// thread; stage1 is single-threaded here).
    pub fn open(netns: &Path) -> Result<Rtnl, Fail> {
        let what = || "cannot open a netlink socket".to_string();
        let pod_ns = std::fs::File::open(netns).ctx(Step::Network, || format!("cannot open {}", netns.display()))?;
        let host_ns = std::fs::File::open("/proc/self/ns/net")
            .ctx(Step::Network, || "cannot open the host's network namespace".into())?;
        let host = connect().ctx(Step::Network, what)?;
        nix::sched::setns(&pod_ns, CloneFlags::CLONE_NEWNET)
            .ctx(Step::Network, || format!("cannot enter the pod's network namespace {}", netns.display()))?;
        let pod = connect();
        nix::sched::setns(&host_ns, CloneFlags::CLONE_NEWNET)
            .ctx(Step::Network, || "cannot return to the host's network namespace".into())?;
        Ok(Rtnl { host, pod: pod.ctx(Step::Network, what)?, pod_ns, seq: 0 })
    }

    fn socket(&self, side: Side) -> &Socket {
        match side {
            Side::Host => &self.host,
            Side::Pod => &self.pod,
        }
    }

    /// Sends one request and returns the replies up to its acknowledgement (or its answer,
    /// for a request without `NLM_F_ACK`); an error reply becomes the errno it carries.
    fn request(
        &mut self,
        side: Side,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        let sock = self.socket(side);
        sock.send(&buf, 0)?;
        let mut answers = Vec::new();
        loop {
            let (data, _) = sock.recv_from_full()?;
            let mut at = 0;
            while at < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
                let len = (m.header.length as usize).max(16);
                at += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                            None => Ok(answers),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => {
                        answers.push(inner);
                        if flags & NLM_F_ACK == 0 {
                            return Ok(answers);
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }

    fn link(&mut self, side: Side, ifname: &str) -> std::io::Result<LinkMessage> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(ifname.to_string()));
        let answers = self.request(side, RouteNetlinkMessage::GetLink(m), 0)?;
        answers
            .into_iter()
            .find_map(|a| match a {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENODEV))
    }

    fn index(&mut self, side: Side, ifname: &str) -> std::io::Result<u32> {
        Ok(self.link(side, ifname)?.header.index)
    }
}

fn connect() -> std::io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

const CREATE: u16 = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;

impl Netlink for Rtnl {
    fn apply(&mut self, op: &Op) -> std::io::Result<()> {
        match op {
            Op::Forwarding => {
                let path = "/proc/sys/net/ipv4/ip_forward";
                if std::fs::read_to_string(path)?.trim() != "1" {
                    std::fs::write(path, "1")?;
                }
            }
            Op::Veth { host, pod, mtu } => {
                let mut peer = LinkMessage::default();
                peer.attributes.push(LinkAttribute::IfName(pod.clone()));
                peer.attributes.push(LinkAttribute::Mtu(*mtu));
                peer.attributes.push(LinkAttribute::NetNsFd(self.pod_ns.as_raw_fd()));
                let mut m = LinkMessage::default();
                m.attributes.push(LinkAttribute::IfName(host.clone()));
                m.attributes.push(LinkAttribute::Mtu(*mtu));
                m.attributes.push(LinkAttribute::LinkInfo(vec![
                    LinkInfo::Kind(InfoKind::Veth),
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
                ]));
                self.request(Side::Host, RouteNetlinkMessage::NewLink(m), CREATE)?;
            }
            Op::Up(side, ifname) => {
                let mut m = LinkMessage::default();
                m.header.index = self.index(*side, ifname)?;
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
                self.request(*side, RouteNetlinkMessage::SetLink(m), NLM_F_ACK)?;
            }
            Op::Address { side, ifname, addr, prefix, prefix_route } => {
                let mut m = AddressMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.prefix_len = *prefix;
                m.header.index = self.index(*side, ifname)?;
                m.attributes.push(AddressAttribute::Local((*addr).into()));
                m.attributes.push(AddressAttribute::Address((*addr).into()));
                if *prefix < 31 {
                    let brd = u32::from(*addr) | (u32::MAX >> prefix);
                    m.attributes.push(AddressAttribute::Broadcast(Ipv4Addr::from(brd)));
                }
                if !prefix_route {
                    m.attributes.push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
                }
                self.request(*side, RouteNetlinkMessage::NewAddress(m), CREATE)?;
            }
            Op::Route { side, ifname, dst, prefix, via, src, scope } => {
                let mut m = RouteMessage::default();
                m.header.address_family = AddressFamily::Inet;
                m.header.destination_prefix_length = *prefix;
                m.header.table = RouteHeader::RT_TABLE_MAIN;
                m.header.protocol = RouteProtocol::Boot;
                m.header.kind = RouteType::Unicast;
                m.header.scope = match scope {
                    Scope::Universe => RouteScope::Universe,
                    Scope::Link => RouteScope::Link,
                    Scope::Host => RouteScope::Host,
                };
                if *prefix > 0 {
                    m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(*dst)));
                }
                if let Some(gw) = via {
                    m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(*gw)));
                }
                if let Some(s) = src {
                    m.attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(*s)));
                }
                m.attributes.push(RouteAttribute::Oif(self.index(*side, ifname)?));
                self.request(*side, RouteNetlinkMessage::NewRoute(m), CREATE)?;
            }
        }
        Ok(())
    }

    fn mac(&mut self, side: Side, ifname: &str) -> std::io::Result<String> {
        let link = self.link(side, ifname)?;
        let bytes = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(b) => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"))
    }

    fn delete(&mut self, side: Side, ifname: &str) -> std::io::Result<()> {
        let index = match self.index(side, ifname) {
            Ok(i) => i,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(side, RouteNetlinkMessage::DelLink(m), NLM_F_ACK) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_ptp() -> Ptp {
        Ptp::of("default", &husk_types::net::builtin_network("default").unwrap()).unwrap().unwrap()
    }

    #[test]
    fn only_networks_that_ask_run_natively_and_their_shape_is_checked() {
        let p = default_ptp();
        assert_eq!(p.subnet.to_string(), "172.16.28.0/24");
        assert_eq!(p.routes, vec![(Ipv4Addr::UNSPECIFIED, 0, None)]);
        assert_eq!(p.mtu, 1500);
        let r = Ptp::of("default-restricted", &husk_types::net::builtin_network("default-restricted").unwrap());
        assert_eq!(r.unwrap().unwrap().routes, vec![]);
        // A user's ptp network (no key) runs the plugins.
        let user =
            serde_json::json!({"plugins": [{"type": "ptp", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}]});
        assert_eq!(Ptp::of("lab", &user).unwrap(), None);
        let base = husk_types::net::builtin_network("default").unwrap();
        let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut c = base.clone();
            edit(&mut c);
            Ptp::of("default", &c).unwrap_err().to_string()
        };
        for e in [
            bad(&|c| c["plugins"][0]["type"] = "bridge".into()),
            bad(&|c| c["plugins"][0]["ipMasq"] = true.into()),
            bad(&|c| c["plugins"][0]["ipam"]["type"] = "dhcp".into()),
            bad(&|c| c["plugins"][0]["ipam"]["subnet"] = "172.16.28.1/24".into()),
            bad(&|c| c["plugins"][0]["ipam"]["subnet"] = "fd00::/64".into()),
            bad(&|c| c["plugins"][0]["ipam"]["routes"] = serde_json::json!([{"dst": "0.0.0.0"}])),
            bad(&|c| c["plugins"][0]["ipam"]["routes"] = serde_json::json!([{"dst": "10.0.0.0/8", "gw": "x"}])),
            bad(&|c| c["plugins"][0]["mtu"] = 70000.into()),
            bad(&|c| c["plugins"][0]["ipam"]["dataDir"] = "/elsewhere".into()),
            bad(&|c| c[NATIVE_KEY] = "bridge".into()),
        ] {
            assert!(e.contains("network \"default\"") && e.contains(NATIVE_KEY), "{e}");
        }
    }

    #[test]
    fn host_names_are_the_uuids_first_hex_digits() {
        assert_eq!(host_ifname("3f2a9c1e-77b0-4d2e-9a51-0c6f1b2e3d4f"), "hsk3f2a9c1e77b0");
        assert_eq!(host_ifname("3f2a9c1e-77b0-4d2e-9a51-0c6f1b2e3d4f").len(), 15);
        assert!(husk_types::net::valid_ifname(&host_ifname("3f2a9c1e-77b0-4d2e-9a51-0c6f1b2e3d4f")));
    }

    #[test]
    fn the_plan_is_ptps_set_up() {
        let a = Ipv4Addr::new(172, 16, 28, 5);
        let gw = Some(Ipv4Addr::new(172, 16, 28, 1));
        let mut p = default_ptp();
        p.routes.push((Ipv4Addr::new(10, 9, 0, 0), 16, Some(Ipv4Addr::new(172, 16, 28, 9))));
        let ops = plan(&p, a, "hskX", "eth0");
        let r = |side, ifname: &str, dst: [u8; 4], prefix, via, src, scope| Op::Route {
            side,
            ifname: ifname.into(),
            dst: Ipv4Addr::from(dst),
            prefix,
            via,
            src,
            scope,
        };
        assert_eq!(
            ops,
            vec![
                Op::Forwarding,
                Op::Veth { host: "hskX".into(), pod: "eth0".into(), mtu: 1500 },
                Op::Up(Side::Pod, "eth0".into()),
                Op::Address { side: Side::Pod, ifname: "eth0".into(), addr: a, prefix: 24, prefix_route: false },
                r(Side::Pod, "eth0", [172, 16, 28, 1], 32, None, Some(a), Scope::Link),
                r(Side::Pod, "eth0", [172, 16, 28, 0], 24, gw, Some(a), Scope::Universe),
                r(Side::Pod, "eth0", [0, 0, 0, 0], 0, gw, None, Scope::Universe),
                r(Side::Pod, "eth0", [10, 9, 0, 0], 16, Some(Ipv4Addr::new(172, 16, 28, 9)), None, Scope::Universe),
                Op::Up(Side::Host, "hskX".into()),
                Op::Address {
                    side: Side::Host,
                    ifname: "hskX".into(),
                    addr: Ipv4Addr::new(172, 16, 28, 1),
                    prefix: 32,
                    prefix_route: true
                },
                r(Side::Host, "hskX", [172, 16, 28, 5], 32, None, None, Scope::Host),
            ]
        );
    }

    #[test]
    fn the_result_is_ptps() {
        let p = default_ptp();
        let r = result(
            &p,
            Ipv4Addr::new(172, 16, 28, 5),
            ("hskX", "aa:01"),
            ("eth0", "bb:02"),
            Path::new("/run/husk/netns/u"),
        );
        let s = husk_types::net::NetState {
            name: "default".into(),
            ifname: "eth0".into(),
            config: serde_json::json!({}),
            args: vec![],
            result: Some(r.clone()),
            guarded: None,
        };
        assert_eq!(s.host_interfaces(), vec!["hskX".to_string()]);
        assert_eq!(s.addresses(), vec!["172.16.28.5/24".to_string()]);
        assert_eq!(r["ips"][0]["gateway"], "172.16.28.1");
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/husk/netns/u");
        assert_eq!(r["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}]));
    }

    /// Records what is applied; fails the operation at `fail_at` (its index), if any.
    #[derive(Default)]
    struct Fake {
        applied: Vec<Op>,
        deleted: Vec<(Side, String)>,
        fail_at: Option<usize>,
        fail_mac: bool,
    }

    impl Netlink for Fake {
        fn apply(&mut self, op: &Op) -> std::io::Result<()> {
            if self.fail_at == Some(self.applied.len()) {
                let errno = if matches!(op, Op::Veth { .. }) { libc::EEXIST } else { libc::ENETDOWN };
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            self.applied.push(op.clone());
            Ok(())
        }
        fn mac(&mut self, side: Side, _: &str) -> std::io::Result<String> {
            if self.fail_mac {
                return Err(std::io::Error::from_raw_os_error(libc::ENODEV));
            }
            Ok(if side == Side::Host { "02:00:00:00:00:01".into() } else { "02:00:00:00:00:02".into() })
        }
        fn delete(&mut self, side: Side, ifname: &str) -> std::io::Result<()> {
            self.deleted.push((side, ifname.into()));
            Ok(())
        }
    }

    const UUID: &str = "3f2a9c1e-77b0-4d2e-9a51-0c6f1b2e3d4f";

    fn pod() -> Attachment<'static> {
        Attachment { network: "default", uuid: UUID, ifname: "eth0", netns: Path::new("/ns") }
    }

    #[test]
    fn add_applies_the_plan_on_a_lease_and_del_undoes_it() {
        let d = tempfile::tempdir().unwrap();
        let leases = Leases::at(d.path().to_path_buf());
        let p = default_ptp();
        let mut fake = Fake::default();
        let r = add(&mut fake, &leases, &p, pod(), None).unwrap();
        assert_eq!(fake.applied, plan(&p, Ipv4Addr::new(172, 16, 28, 2), "hsk3f2a9c1e77b0", "eth0"));
        assert_eq!(r["interfaces"][0], serde_json::json!({"name": "hsk3f2a9c1e77b0", "mac": "02:00:00:00:00:01"}));
        assert_eq!(std::fs::read_to_string(d.path().join("172.16.28.2")).unwrap(), format!("{UUID}\r\neth0"));
        del(Some(&mut fake), &leases, "default", UUID, "eth0").unwrap();
        assert_eq!(fake.deleted, vec![(Side::Pod, "eth0".to_string())]);
        assert!(!d.path().join("172.16.28.2").exists());
        // Without the namespace (gone with the pod), only the lease is released.
        add(&mut Fake::default(), &leases, &p, pod(), None).unwrap();
        del(None, &leases, "default", UUID, "eth0").unwrap();
        assert!(!d.path().join("172.16.28.3").exists());
    }

    #[test]
    fn a_failed_step_undoes_the_link_and_the_lease_and_says_which() {
        let d = tempfile::tempdir().unwrap();
        let leases = Leases::at(d.path().to_path_buf());
        let p = default_ptp();
        for at in 0..plan(&p, Ipv4Addr::new(172, 16, 28, 2), "h", "eth0").len() {
            let mut fake = Fake { fail_at: Some(at), ..Fake::default() };
            let e = add(&mut fake, &leases, &p, pod(), None).unwrap_err().chain();
            assert!(e.starts_with("network default: "), "{e}");
            assert_eq!(fake.deleted, vec![(Side::Host, "hsk3f2a9c1e77b0".to_string())], "step {at}");
            let left: Vec<_> = std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("172."))
                .collect();
            assert!(left.is_empty(), "step {at}: the lease is released");
            if at == 1 {
                assert!(e.contains("exists already") && e.contains("ip link del hsk3f2a9c1e77b0"), "{e}");
            }
            if at == 5 {
                let want = "network default: cannot add the route 172.16.28.0/24 via 172.16.28.1 on eth0 in the pod";
                assert!(e.starts_with(want), "{e}");
            }
        }
        // The links' addresses cannot be read: undone likewise.
        let mut fake = Fake { fail_mac: true, ..Fake::default() };
        let e = add(&mut fake, &leases, &p, pod(), None).unwrap_err().chain();
        assert!(e.contains("cannot read the addresses of hsk3f2a9c1e77b0 and eth0"), "{e}");
        assert_eq!(fake.deleted, vec![(Side::Host, "hsk3f2a9c1e77b0".to_string())]);
        assert!(!std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("172.")));
        // A requested address that is taken fails before anything is set up, naming it.
        std::fs::write(d.path().join("172.16.28.50"), "other-pod\r\neth0").unwrap();
        let mut fake = Fake::default();
        let e = add(&mut fake, &leases, &p, pod(), Some(Ipv4Addr::new(172, 16, 28, 50))).unwrap_err().chain();
        assert!(e.contains("172.16.28.50") && e.contains("other-pod") && e.starts_with("network default: "), "{e}");
        assert!(fake.applied.is_empty() && fake.deleted.is_empty());
    }
}
