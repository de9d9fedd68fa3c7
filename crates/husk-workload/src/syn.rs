//! `syn DST PORT [MS]`: sends one hand-made TCP SYN for DST:PORT out of the pod's eth0, to the
//! default gateway's MAC address, and reports whether a SYN-ACK came back. This is what an app
//! with CAP_NET_RAW can do to reach the host's 127.0.0.0/8 when the host side of its veth has
//! `route_localnet=1` (CVE-2020-8558): the kernel would never route such a packet itself.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType};

/// The next hop out of the pod: the default route's gateway, or (host-only networks have no
/// default route) the peer of a host route on eth0.
fn gateway() -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let rows: Vec<Vec<String>> =
        routes.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect();
    let ip = |hex: &str| u32::from_str_radix(hex, 16).ok().map(|g| Ipv4Addr::from(g.swap_bytes()));
    rows.iter()
        .find(|f| f.len() > 7 && f[1] == "00000000")
        .and_then(|f| ip(&f[2]))
        .or_else(|| rows.iter().find(|f| f.len() > 7 && f[0] == "eth0" && f[7] == "FFFFFFFF").and_then(|f| ip(&f[1])))
}

fn neighbour_mac(ip: Ipv4Addr) -> Option<[u8; 6]> {
    let arp = std::fs::read_to_string("/proc/net/arp").ok()?;
    let line = arp.lines().skip(1).find(|l| l.split_whitespace().next() == Some(&ip.to_string()))?;
    let mac = line.split_whitespace().nth(3)?;
    let b: Vec<u8> = mac.split(':').filter_map(|x| u8::from_str_radix(x, 16).ok()).collect();
    (b.len() == 6 && b.iter().any(|x| *x != 0)).then(|| [b[0], b[1], b[2], b[3], b[4], b[5]])
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        for c in p.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo = [&src.octets()[..], &dst.octets()[..], &[0, 6], &20u16.to_be_bytes()].concat();
    let c = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    [&dst_mac[..], &src_mac[..], &[0x08, 0x00], &ip, &tcp].concat()
}

/// Returns the JSON report.
pub fn run(dst: &str, port: &str, ms: Option<&str>) -> Result<String, String> {
    let dport: u16 = port.parse().map_err(|_| format!("bad port {port}"))?;
    let wait = Duration::from_millis(ms.and_then(|m| m.parse().ok()).unwrap_or(1500));
    let gw = gateway().ok_or("no route out of the pod")?;
    // `gateway`: the host side itself (a positive control: its own address answers).
    let dst: Ipv4Addr = if dst == "gateway" { gw } else { dst.parse().map_err(|_| format!("bad address {dst}"))? };
    // Our address on the way out, and an ARP entry for the gateway.
    let udp = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    udp.connect((gw, 9)).map_err(|e| e.to_string())?;
    let src = match udp.local_addr().map_err(|e| e.to_string())?.ip() {
        std::net::IpAddr::V4(a) => a,
        other => return Err(format!("unexpected source address {other}")),
    };
    let _ = udp.send(b"arp");
    let mut gw_mac = None;
    for _ in 0..50 {
        gw_mac = neighbour_mac(gw);
        if gw_mac.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gw_mac = gw_mac.ok_or_else(|| format!("no ARP entry for the gateway {gw}"))?;
    let link: LinkAddr = nix::ifaddrs::getifaddrs()
        .map_err(|e| e.to_string())?
        .filter(|i| i.interface_name == "eth0")
        .find_map(|i| i.address.and_then(|a| a.as_link_addr().copied()))
        .ok_or("no link address for eth0")?;
    let my_mac = link.addr().ok_or("eth0 has no MAC address")?;
    let sock = socket::socket(AddressFamily::Packet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::EthAll)
        .map_err(|e| format!("cannot open a packet socket: {e}"))?;
    socket::setsockopt(&sock, socket::sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(0, 100_000))
        .map_err(|e| e.to_string())?;
    let sport = 40000 + (std::process::id() % 20000) as u16;
    let f = frame(gw_mac, my_mac, src, dst, sport, dport);
    use std::os::fd::AsRawFd;
    socket::sendto(sock.as_raw_fd(), &f, &link, MsgFlags::empty()).map_err(|e| format!("cannot send: {e}"))?;
    let (mut synack, mut rst) = (false, false);
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && !synack && !rst {
        let Ok(n) = socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) else { continue };
        let p = &buf[..n];
        if n < 54 || p[12..14] != [0x08, 0x00] || p[23] != 6 {
            continue;
        }
        let ihl = usize::from(p[14] & 0x0f) * 4;
        let t = 14 + ihl;
        if n < t + 14 || p[26..30] != dst.octets() {
            continue;
        }
        let (sp, dp) = (u16::from_be_bytes([p[t], p[t + 1]]), u16::from_be_bytes([p[t + 2], p[t + 3]]));
        if sp != dport || dp != sport {
            continue;
        }
        let flags = p[t + 13];
        synack = flags & 0x12 == 0x12;
        rst = flags & 0x04 != 0;
    }
    Ok(format!(r#"{{"sent":true,"src":"{src}","gateway":"{gw}","synack":{synack},"rst":{rst}}}"#))
}
