//! IPv4 and IPv6 configuration of a network interface with the classic ioctls (SIOCSIFADDR and
//! friends, SIOCADDRT): what the kvm guest init needs to give its NIC the CNI result's addresses
//! and routes. Hand-written because the guest has no `ip` binary and a few addresses and routes
//! do not justify a netlink stack; the ioctls are stable kernel ABI.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?)
}

/// IPv6 addresses and routes are set through an AF_INET6 socket.
fn socket6() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(rustix::net::AddressFamily::INET6, rustix::net::SocketType::DGRAM, None)?)
}

fn bad_prefix(prefix: u8) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("bad prefix length /{prefix}"))
}

fn in6(a: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: a.octets() }
}

fn index_of(name: &str) -> io::Result<libc::c_int> {
    Ok(nix::net::if_::if_nametoindex(name).map_err(io::Error::from)? as libc::c_int)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is a plain C struct/union of integers and byte arrays; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    for (i, b) in name.bytes().enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(a).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux, and sockaddr is
    // the generic form the ioctls take; every bit pattern is a valid sockaddr.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(sock: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // SAFETY: every caller passes a pointer to a live, initialised ifreq, rtentry, in6_ifreq or
    // in6_rtmsg, the structure the request code expects for its socket's family; the kernel
    // reads and writes only within it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The name of the interface whose hardware address is `mac` (`aa:bb:…`, as sysfs writes it).
pub fn interface_with_mac(mac: &str) -> io::Result<String> {
    for e in std::fs::read_dir("/sys/class/net")?.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(mac) {
            return Ok(e.file_name().to_string_lossy().into_owned());
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface has the address {mac}")))
}

/// Renames a (down) interface.
pub fn rename(old: &str, new: &str) -> io::Result<()> {
    if old == new {
        return Ok(());
    }
    let sock = socket()?;
    let mut req = ifreq(old)?;
    let n = ifreq(new)?;
    req.ifr_ifru.ifru_newname = n.ifr_name;
    ioctl(&sock, libc::SIOCSIFNAME, (&mut req as *mut libc::ifreq).cast())
}

/// Gives `name` the address `addr/prefix` (IPv6 addresses are added to the ones the interface
/// has; IPv4's replaces its primary one).
pub fn set_address(name: &str, addr: IpAddr, prefix: u8) -> io::Result<()> {
    match addr {
        IpAddr::V4(a) => set_address4(name, a, prefix),
        IpAddr::V6(a) => set_address6(name, a, prefix),
    }
}

fn set_address4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    if prefix > 32 {
        return Err(bad_prefix(prefix));
    }
    let sock = socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR, (&mut req as *mut libc::ifreq).cast())?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(&sock, libc::SIOCSIFNETMASK, (&mut req as *mut libc::ifreq).cast())
}

fn set_address6(name: &str, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    if prefix > 128 {
        return Err(bad_prefix(prefix));
    }
    let sock = socket6()?;
    let mut req =
        libc::in6_ifreq { ifr6_addr: in6(addr), ifr6_prefixlen: u32::from(prefix), ifr6_ifindex: index_of(name)? };
    ioctl(&sock, libc::SIOCSIFADDR, (&mut req as *mut libc::in6_ifreq).cast())
}

/// Brings `name` up.
pub fn up(name: &str) -> io::Result<()> {
    let sock = socket()?;
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, (&mut req as *mut libc::ifreq).cast())?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member just above.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(&sock, libc::SIOCSIFFLAGS, (&mut req as *mut libc::ifreq).cast())
}

/// Adds a route to `dst/prefix` through `gateway` (the unspecified address: on-link) on `dev`;
/// the destination and the gateway are of one family.
pub fn add_route(dst: IpAddr, prefix: u8, gateway: IpAddr, dev: &str) -> io::Result<()> {
    match (dst, gateway) {
        (IpAddr::V4(d), IpAddr::V4(g)) => add_route4(d, prefix, g, dev),
        (IpAddr::V6(d), IpAddr::V6(g)) => add_route6(d, prefix, g, dev),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("route to {dst} via {gateway}: mixed families"))),
    }
}

/// The kernel's `struct in6_rtmsg` (linux/ipv6_route.h), which SIOCADDRT takes on an AF_INET6
/// socket. Declared here because libc's has private fields.
#[repr(C)]
struct In6Rtmsg {
    dst: libc::in6_addr,
    src: libc::in6_addr,
    gateway: libc::in6_addr,
    kind: u32,
    dst_len: u16,
    src_len: u16,
    metric: u32,
    info: libc::c_ulong,
    flags: u32,
    ifindex: libc::c_int,
}

fn add_route6(dst: Ipv6Addr, prefix: u8, gateway: Ipv6Addr, dev: &str) -> io::Result<()> {
    if prefix > 128 {
        return Err(bad_prefix(prefix));
    }
    let sock = socket6()?;
    let mut flags = libc::RTF_UP as u32;
    if !gateway.is_unspecified() {
        flags |= libc::RTF_GATEWAY as u32;
    }
    if prefix == 128 {
        flags |= libc::RTF_HOST as u32;
    }
    let mut rt = In6Rtmsg {
        dst: in6(dst),
        src: in6(Ipv6Addr::UNSPECIFIED),
        gateway: in6(gateway),
        kind: 0,
        dst_len: u16::from(prefix),
        src_len: 0,
        // The metric `ip -6 route add` gives by default.
        metric: 1024,
        info: 0,
        flags,
        ifindex: index_of(dev)?,
    };
    ioctl(&sock, libc::SIOCADDRT, (&mut rt as *mut In6Rtmsg).cast())
}

fn add_route4(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr, dev: &str) -> io::Result<()> {
    if prefix > 32 {
        return Err(bad_prefix(prefix));
    }
    let sock = socket()?;
    let mut name: Vec<u8> = dev.bytes().collect();
    name.push(0);
    // SAFETY: rtentry is a plain C struct of integers and pointers; all-zero (null pointers) is
    // valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    rt.rt_dst = sockaddr_in(dst);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::from(mask));
    rt.rt_gateway = sockaddr_in(gateway);
    rt.rt_flags = libc::RTF_UP;
    if !gateway.is_unspecified() {
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    if prefix == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    // The kernel copies the device name from this pointer during the call; `name` outlives it.
    rt.rt_dev = name.as_mut_ptr().cast();
    ioctl(&sock, libc::SIOCADDRT, (&mut rt as *mut libc::rtentry).cast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in6_rtmsg_has_the_kernels_layout() {
        // linux/ipv6_route.h on x86_64: three in6_addr, then u32, u16, u16, u32, (pad), unsigned
        // long, u32, int.
        assert_eq!(std::mem::size_of::<In6Rtmsg>(), 80);
        assert_eq!(std::mem::offset_of!(In6Rtmsg, kind), 48);
        assert_eq!(std::mem::offset_of!(In6Rtmsg, metric), 56);
        assert_eq!(std::mem::offset_of!(In6Rtmsg, info), 64);
        assert_eq!(std::mem::offset_of!(In6Rtmsg, ifindex), 76);
    }

    #[test]
    fn prefixes_longer_than_the_family_allows_are_refused_before_any_call() {
        let e = set_address("lo", "127.0.0.9".parse().unwrap(), 33).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = set_address("lo", "fd00::9".parse().unwrap(), 129).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = add_route("::".parse().unwrap(), 0, "10.0.0.1".parse().unwrap(), "lo").unwrap_err();
        assert!(e.to_string().contains("mixed families"), "{e}");
    }
}
