//! IPv4 configuration of a network interface with the classic ioctls (SIOCSIFADDR and friends,
//! SIOCADDRT): what the kvm guest init needs to give its NIC the CNI result's address and
//! routes. Hand-written because the guest has no `ip` binary and one address, one netmask and a
//! few routes do not justify a netlink stack; the ioctls are stable kernel ABI.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, None)?)
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
    // SAFETY: every caller passes a pointer to a live, initialised ifreq or rtentry, the
    // structure the request code expects; the kernel reads and writes only within it.
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

/// Gives `name` the address `addr/prefix` and brings it up.
pub fn set_address(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad prefix length /{prefix}")));
    }
    let sock = socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&sock, libc::SIOCSIFADDR, (&mut req as *mut libc::ifreq).cast())?;
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_in(Ipv4Addr::from(mask));
    ioctl(&sock, libc::SIOCSIFNETMASK, (&mut req as *mut libc::ifreq).cast())?;
    let mut req = ifreq(name)?;
    ioctl(&sock, libc::SIOCGIFFLAGS, (&mut req as *mut libc::ifreq).cast())?;
    // SAFETY: SIOCGIFFLAGS filled in the flags member just above.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    ioctl(&sock, libc::SIOCSIFFLAGS, (&mut req as *mut libc::ifreq).cast())
}

/// Adds a route to `dst/prefix` through `gateway` (0.0.0.0: on-link) on `dev`.
pub fn add_route(dst: Ipv4Addr, prefix: u8, gateway: Ipv4Addr, dev: &str) -> io::Result<()> {
    if prefix > 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad prefix length /{prefix}")));
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
