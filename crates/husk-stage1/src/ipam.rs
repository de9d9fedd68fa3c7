//! Address leases of the built-in networks, kept by husk itself in host-local's format.
//!
//! The CNI host-local plugin keeps one file per leased address under
//! `/var/lib/cni/networks/<network>/` (its name the address, its content
//! `<container id>\r\n<ifname>`), remembers the last address it gave in `last_reserved_ip.0`,
//! and serialises its runs with `flock` on the directory's `lock` file. husk's native ptp
//! ([`crate::ptp`]) reads and writes exactly that, under that lock, so a pod set up by the
//! host-local plugin (a husk from before, or a user network sharing the directory) and one set
//! up natively never get the same address, and each releases the other's leases correctly.
//! Written by hand: there is no crate for host-local's store, and it is a directory of small
//! files. A lease file appears whole (`O_TMPFILE`, then `linkat`), so no crash leaves one
//! without its owner.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use husk_sys::{Lock, LockKind};

use crate::common::{Context, Fail, Step};

/// host-local's default data directory.
pub const LEASES_DIR: &str = "/var/lib/cni/networks";

/// An IPv4 subnet whose first address is its gateway and whose other hosts are leased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// `a.b.c.d/n` with no host bits set and room for a gateway and at least one pod.
    pub fn parse(s: &str) -> Option<Subnet> {
        let (ip, prefix) = s.split_once('/')?;
        let network: Ipv4Addr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (1..=30).contains(p))?;
        let subnet = Subnet { network, prefix };
        (u32::from(network) & subnet.mask() == u32::from(network)).then_some(subnet)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The subnet's first address, as host-local's default.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The last address before the broadcast address.
    fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.network) | !self.mask()) - 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Whether `ip` may be leased: in the subnet, neither its network, gateway nor broadcast address.
    pub fn leasable(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && ip > self.gateway() && ip <= self.last()
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The order host-local tries addresses in: from the one after the last leased, round the
/// subnet once, the gateway skipped.
pub fn candidates(subnet: Subnet, last: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
    let (first, end) = (u32::from(subnet.gateway()) + 1, u32::from(subnet.last()));
    let start = match last {
        Some(l) if subnet.leasable(l) && u32::from(l) < end => u32::from(l) + 1,
        _ => first,
    };
    (start..=end).chain(first..start).map(Ipv4Addr::from)
}

/// The lease file's content for a pod's interface.
fn key(id: &str, ifname: &str) -> String {
    format!("{}\r\n{ifname}", id.trim())
}

/// Whether a lease file's content is this pod's interface (or, as host-local also accepts, a
/// lease written before host-local recorded interfaces: the id alone).
fn is_lease_of(content: &str, id: &str, ifname: &str) -> bool {
    let c = content.trim();
    c == key(id, ifname) || c == id.trim()
}

/// One network's leases.
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    pub fn of_network(network: &str) -> Leases {
        Leases::at(Path::new(LEASES_DIR).join(network))
    }

    pub fn at(dir: PathBuf) -> Leases {
        Leases { dir }
    }

    fn lock(&self) -> Result<Lock, Fail> {
        std::fs::create_dir_all(&self.dir)
            .ctx(Step::Network, || format!("cannot create the lease directory {}", self.dir.display()))?;
        Lock::acquire(&self.dir.join("lock"), LockKind::Exclusive, || {})
            .ctx(Step::Network, || format!("cannot lock the leases in {}", self.dir.display()))
    }

    /// The leases in the directory: address and content.
    fn held(&self) -> Result<Vec<(Ipv4Addr, String)>, Fail> {
        let rd = std::fs::read_dir(&self.dir).ctx(Step::Network, || format!("cannot list {}", self.dir.display()))?;
        Ok(rd
            .flatten()
            .filter_map(|e| {
                let ip = e.file_name().to_str()?.parse::<Ipv4Addr>().ok()?;
                Some((ip, std::fs::read_to_string(e.path()).unwrap_or_default()))
            })
            .collect())
    }

    /// Leases an address of `subnet` to the pod's interface: `requested`, or the next free one
    /// after the last leased. The lease file is created exclusively, so nothing else that keeps
    /// host-local's leases can take the same address.
    pub fn reserve(
        &self,
        id: &str,
        ifname: &str,
        subnet: Subnet,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, Fail> {
        let _lock = self.lock()?;
        let held = self.held()?;
        if let Some((ip, _)) = held.iter().find(|(_, c)| c.trim() == key(id, ifname)) {
            return Err(Fail::Invalid(format!("pod {id} has address {ip} on {ifname} already")));
        }
        let owner = |ip: Ipv4Addr| {
            held.iter().find(|(h, _)| *h == ip).map(|(_, c)| c.trim().lines().next().unwrap_or("").to_string())
        };
        let chosen = match requested {
            Some(ip) if !subnet.leasable(ip) => {
                return Err(Fail::Invalid(format!(
                    "the requested address {ip} is not one a pod can have in {subnet} (its gateway is {})",
                    subnet.gateway()
                )))
            }
            Some(ip) => {
                if let Some(o) = owner(ip) {
                    return Err(Fail::Invalid(format!(
                        "the requested address {ip} is in use by {o}; request another or leave IP= out"
                    )));
                }
                self.create(ip, id, ifname)?.then_some(ip).ok_or_else(|| {
                    Fail::Invalid(format!("the requested address {ip} was taken meanwhile; request another"))
                })?
            }
            None => {
                let last = std::fs::read_to_string(self.dir.join("last_reserved_ip.0"))
                    .ok()
                    .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
                let mut chosen = None;
                for ip in candidates(subnet, last).filter(|ip| owner(*ip).is_none()) {
                    if self.create(ip, id, ifname)? {
                        chosen = Some(ip);
                        break;
                    }
                }
                chosen.ok_or_else(|| {
                    Fail::Invalid(format!(
                        "every address of {subnet} is leased (see {}); remove pods with `husk gc`",
                        self.dir.display()
                    ))
                })?
            }
        };
        husk_sys::fsutil::atomic_write_volatile(
            &self.dir.join("last_reserved_ip.0"),
            chosen.to_string().as_bytes(),
            0o644,
        )
        .ctx(Step::Network, || format!("cannot record the last lease in {}", self.dir.display()))?;
        Ok(chosen)
    }

    /// Creates the lease file; `false` when the address is leased already. The file appears
    /// with its content or not at all (written unnamed with `O_TMPFILE`, then linked at its
    /// name, which fails if the name is taken), so a crash never leaves a lease no pod can be
    /// told to own and release. Where the file system has no `O_TMPFILE`, it is created and
    /// written, as host-local does.
    fn create(&self, ip: Ipv4Addr, id: &str, ifname: &str) -> Result<bool, Fail> {
        use rustix::fs::{AtFlags, Mode, OFlags, CWD};
        let path = self.dir.join(ip.to_string());
        let failed = |e: std::io::Error| Fail::step(Step::Network, format!("cannot create {}", path.display()), e);
        let content = key(id, ifname);
        let unnamed = rustix::fs::openat(
            CWD,
            &self.dir,
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        );
        match unnamed {
            Ok(fd) => {
                let mut f = std::fs::File::from(fd);
                std::io::Write::write_all(&mut f, content.as_bytes()).map_err(failed)?;
                match rustix::fs::linkat(&f, "", CWD, &path, AtFlags::EMPTY_PATH) {
                    Ok(()) => Ok(true),
                    Err(rustix::io::Errno::EXIST) => Ok(false),
                    Err(e) => Err(failed(e.into())),
                }
            }
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::ISDIR) => self.create_plain(&path, &content),
            Err(e) => Err(failed(e.into())),
        }
    }

    fn create_plain(&self, path: &Path, content: &str) -> Result<bool, Fail> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(Fail::step(Step::Network, format!("cannot create {}", path.display()), e)),
        };
        if let Err(e) = f.write_all(content.as_bytes()) {
            let _ = std::fs::remove_file(path);
            return Err(Fail::step(Step::Network, format!("cannot write {}", path.display()), e));
        }
        Ok(true)
    }

    /// Releases every address the pod's interface holds. Nothing held is no error.
    pub fn release(&self, id: &str, ifname: &str) -> Result<(), Fail> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _lock = self.lock()?;
        for (ip, content) in self.held()? {
            if is_lease_of(&content, id, ifname) {
                let path = self.dir.join(ip.to_string());
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(Fail::step(Step::Network, format!("cannot release {}", path.display()), e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        Subnet::parse(s).unwrap()
    }

    #[test]
    fn subnets_parse_strictly() {
        assert_eq!(net("172.16.28.0/24"), Subnet { network: Ipv4Addr::new(172, 16, 28, 0), prefix: 24 });
        for bad in ["172.16.28.1/24", "172.16.28.0", "172.16.28.0/31", "172.16.28.0/0", "x/24", "172.16.28.0/33", ""] {
            assert_eq!(Subnet::parse(bad), None, "{bad}");
        }
        let s = net("172.16.28.0/24");
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 16, 28, 1));
        assert!(s.leasable(Ipv4Addr::new(172, 16, 28, 2)) && s.leasable(Ipv4Addr::new(172, 16, 28, 254)));
        for not in [[172, 16, 28, 0], [172, 16, 28, 1], [172, 16, 28, 255], [172, 16, 29, 5]] {
            assert!(!s.leasable(Ipv4Addr::from(not)), "{not:?}");
        }
    }

    #[test]
    fn without_o_tmpfile_a_lease_is_created_and_written_in_place() {
        let d = tempfile::tempdir().unwrap();
        let l = Leases::at(d.path().to_path_buf());
        let p = d.path().join("10.0.0.9");
        assert!(l.create_plain(&p, "pod-a\r\neth0").unwrap());
        assert!(!l.create_plain(&p, "pod-b\r\neth0").unwrap(), "taken");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "pod-a\r\neth0");
    }

    #[test]
    fn candidates_go_round_from_after_the_last_lease_and_skip_the_gateway() {
        let s = net("10.0.0.0/29"); // .1 gateway, .2 to .6 leasable, .7 broadcast
        let all = |last| candidates(s, last).map(|ip: Ipv4Addr| ip.octets()[3]).collect::<Vec<_>>();
        assert_eq!(all(None), [2, 3, 4, 5, 6]);
        assert_eq!(all(Some(Ipv4Addr::new(10, 0, 0, 3))), [4, 5, 6, 2, 3]);
        assert_eq!(all(Some(Ipv4Addr::new(10, 0, 0, 6))), [2, 3, 4, 5, 6], "wraps after the last host");
        assert_eq!(all(Some(Ipv4Addr::new(192, 168, 0, 3))), [2, 3, 4, 5, 6], "a last lease elsewhere is ignored");
        assert_eq!(all(Some(Ipv4Addr::new(10, 0, 0, 1))), [2, 3, 4, 5, 6]);
    }

    #[test]
    fn leases_are_host_locals_files_and_are_released_by_pod_and_interface() {
        let d = tempfile::tempdir().unwrap();
        let l = Leases::at(d.path().join("default"));
        let s = net("10.0.0.0/29");
        let a = l.reserve("pod-a", "eth0", s, None).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(std::fs::read_to_string(d.path().join("default/10.0.0.2")).unwrap(), "pod-a\r\neth0");
        assert_eq!(std::fs::read_to_string(d.path().join("default/last_reserved_ip.0")).unwrap(), "10.0.0.2");
        // A lease host-local wrote (another runtime, or husk before) is respected.
        std::fs::write(d.path().join("default/10.0.0.3"), "other\r\neth0").unwrap();
        assert_eq!(l.reserve("pod-b", "eth0", s, None).unwrap(), Ipv4Addr::new(10, 0, 0, 4));
        // The same interface twice is refused; another interface of the same pod is not.
        let e = l.reserve("pod-b", "eth0", s, None).unwrap_err().to_string();
        assert!(e.contains("pod-b") && e.contains("10.0.0.4"), "{e}");
        assert_eq!(l.reserve("pod-b", "eth1", s, None).unwrap(), Ipv4Addr::new(10, 0, 0, 5));
        // A requested address: taken names its holder; outside the subnet or the gateway is refused.
        let e = l.reserve("pod-c", "eth0", s, Some(Ipv4Addr::new(10, 0, 0, 3))).unwrap_err().to_string();
        assert!(e.contains("10.0.0.3") && e.contains("other"), "{e}");
        for bad in [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 1, 2)] {
            let e = l.reserve("pod-c", "eth0", s, Some(bad)).unwrap_err().to_string();
            assert!(e.contains(&bad.to_string()) && e.contains("10.0.0.0/29"), "{e}");
        }
        let e = l.reserve("pod-c", "eth0", s, Some(Ipv4Addr::new(10, 0, 0, 2))).unwrap_err().to_string();
        assert!(e.contains("in use by pod-a"), "{e}");
        assert_eq!(l.reserve("pod-c", "eth0", s, None).unwrap(), Ipv4Addr::new(10, 0, 0, 6));
        let e = l.reserve("pod-d", "eth0", s, None).unwrap_err().to_string();
        assert!(e.contains("every address of 10.0.0.0/29"), "{e}");
        // Release frees exactly the pod's interface; old id-only leases count as the pod's.
        l.release("pod-b", "eth0").unwrap();
        assert!(!d.path().join("default/10.0.0.4").exists() && d.path().join("default/10.0.0.5").exists());
        std::fs::write(d.path().join("default/10.0.0.3"), "pod-old").unwrap();
        l.release("pod-old", "eth0").unwrap();
        assert!(!d.path().join("default/10.0.0.3").exists());
        l.release("pod-b", "eth0").unwrap();
        Leases::at(d.path().join("never-used")).release("x", "eth0").unwrap();
        assert!(!d.path().join("never-used").exists(), "releasing creates nothing");
        // Nothing but leases, the last one and the lock is ever left in the directory.
        let mut names: Vec<String> = std::fs::read_dir(d.path().join("default"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["10.0.0.2", "10.0.0.5", "10.0.0.6", "last_reserved_ip.0", "lock"]);
        // After the last lease (.6), the search goes round to the first free address.
        assert_eq!(l.reserve("pod-d", "eth0", s, None).unwrap(), Ipv4Addr::new(10, 0, 0, 3));
    }
}
