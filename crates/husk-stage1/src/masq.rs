//! One masquerade per network, not per pod.
//!
//! ptp's `ipMasq` makes every pod create, and at its end delete, its own nat chain: nine
//! `iptables` runs, about 45 ms of a pod's start here. A network that names its subnet with the
//! top-level key [`MASQUERADE_KEY`] (the built-in `default` does; its ptp has `ipMasq` off)
//! gets one chain, installed when its first pod joins and removed when its last pod leaves:
//!
//! ```text
//! -A POSTROUTING -s SUBNET -m comment --comment "husk network NAME: masquerade" -j HUSK-MASQ-NAME
//! -A HUSK-MASQ-NAME -d SUBNET -j RETURN          (pod to pod stays unchanged, as with ptp)
//! -A HUSK-MASQ-NAME -d 224.0.0.0/4 -j RETURN     (multicast, as with ptp)
//! -A HUSK-MASQ-NAME -j MASQUERADE
//! ```
//!
//! Who uses the network is recorded under `/run/husk/networks/NAME/` (`users/<uuid>`, and
//! `masquerade` once the rules are in), under that directory's `lock`. /run is a tmpfs, as are
//! iptables' rules: both are gone after a reboot. A pod's start pays one lock and one file when
//! the rules are in already. A pod's teardown only forgets it; the rules stay until `husk gc`
//! collects the network's last pod (removing them at each pod's end would make every pod of a
//! sequence install them again). An entry whose pod's network namespace pin is gone (a pod
//! that vanished without its teardown) does not count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use husk_sys::{Lock, LockKind};

use crate::common::{Context, Fail, Step};

/// The conflist's top-level key: the subnet to masquerade (a CIDR).
pub const MASQUERADE_KEY: &str = "x-husk-masquerade";

/// Per-network state, host-wide.
pub const NETWORKS_DIR: &str = "/run/husk/networks";

/// What a network's masquerade is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub network: String,
    pub subnet: String,
}

impl Masquerade {
    /// The masquerade a conflist asks for, if any. A malformed one is an error naming the
    /// network, not a silently unmasqueraded pod.
    pub fn of(network: &str, conflist: &serde_json::Value) -> Result<Option<Masquerade>, Fail> {
        let Some(v) = conflist.get(MASQUERADE_KEY) else { return Ok(None) };
        let subnet = v.as_str().filter(|s| is_cidr(s)).ok_or_else(|| {
            Fail::Invalid(format!(
                "network {network:?}: {MASQUERADE_KEY} must be a subnet like \"10.88.0.0/16\", not {v}"
            ))
        })?;
        if network.is_empty()
            || !network.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || chain(network).len() > 28
        {
            return Err(Fail::Invalid(format!(
                "network {network:?}: a masqueraded network's name must be at most 18 letters, digits, - or _ \
                 (it names an iptables chain)"
            )));
        }
        Ok(Some(Masquerade { network: network.to_string(), subnet: subnet.to_string() }))
    }

    fn chain(&self) -> String {
        chain(&self.network)
    }

    fn jump(&self) -> Vec<String> {
        let comment = format!("husk network {}: masquerade", self.network);
        ["-s", &self.subnet, "-m", "comment", "--comment", &comment, "-j", &self.chain()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The chain with its rules, for `iptables-restore --noflush` (declaring the chain
    /// empties it first, so this is idempotent).
    pub fn chain_restore(&self) -> String {
        let c = self.chain();
        format!(
            "*nat\n:{c} - [0:0]\n-A {c} -d {s} -j RETURN\n-A {c} -d 224.0.0.0/4 -j RETURN\n-A {c} -j MASQUERADE\nCOMMIT\n",
            s = self.subnet
        )
    }

    /// The `iptables` calls that install the rules: the chain, then the jump unless it is there.
    pub fn install_calls(&self, jump_present: bool) -> Vec<Vec<String>> {
        let mut calls = vec![vec!["iptables-restore".to_string(), "-w".into(), "--noflush".into()]];
        if !jump_present {
            calls.push(
                ["iptables", "-w", "-t", "nat", "-A", "POSTROUTING"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(self.jump())
                    .collect(),
            );
        }
        calls
    }

    /// The `iptables` calls that remove them (each may find its rule gone already).
    pub fn remove_calls(&self) -> Vec<Vec<String>> {
        let c = self.chain();
        let ipt = |rest: &[&str]| {
            ["iptables", "-w", "-t", "nat"].iter().chain(rest).map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let mut del = ipt(&["-D", "POSTROUTING"]);
        del.extend(self.jump());
        vec![del, ipt(&["-F", &c]), ipt(&["-X", &c])]
    }

    fn dir(&self) -> PathBuf {
        Path::new(NETWORKS_DIR).join(&self.network)
    }

    /// Records `uuid` as a user of the network and installs the rules if they are not in.
    pub fn join(&self, uuid: &str) -> Result<(), Fail> {
        let dir = self.dir();
        std::fs::create_dir_all(dir.join("users")).ctx(Step::Network, || format!("cannot create {}", dir.display()))?;
        let _lock = Lock::acquire(&dir.join("lock"), LockKind::Exclusive, || {})
            .ctx(Step::Network, || format!("cannot lock {}", dir.display()))?;
        std::fs::write(dir.join("users").join(uuid), b"")
            .ctx(Step::Network, || format!("cannot record pod {uuid} in {}", dir.display()))?;
        let marker = dir.join("masquerade");
        if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == self.subnet) {
            return Ok(());
        }
        let present = iptables(&self.check_call()).is_ok();
        for call in self.install_calls(present) {
            let input = (call[0] == "iptables-restore").then(|| self.chain_restore());
            iptables_with(&call, input.as_deref()).map_err(|e| {
                Fail::Invalid(format!("cannot install the masquerade of network {}: {e}", self.network))
            })?;
        }
        husk_sys::atomic_write(&marker, format!("{}\n", self.subnet).as_bytes(), 0o644)
            .ctx(Step::Network, || format!("cannot write {}", marker.display()))
    }

    /// Forgets `uuid` as a user. Idempotent. The rules stay (a pod started right after would
    /// otherwise install them again): [`Masquerade::remove_if_unused`] removes them.
    pub fn leave(&self, uuid: &str) -> Result<(), Fail> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Ok(());
        }
        let _lock = Lock::acquire(&dir.join("lock"), LockKind::Exclusive, || {})
            .ctx(Step::Network, || format!("cannot lock {}", dir.display()))?;
        match std::fs::remove_file(dir.join("users").join(uuid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Fail::step(Step::Network, format!("cannot forget pod {uuid} in {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Removes the rules when no pod uses the network (`husk gc`). Idempotent.
    pub fn remove_if_unused(&self) -> Result<(), Fail> {
        let dir = self.dir();
        let marker = dir.join("masquerade");
        if !marker.exists() {
            return Ok(());
        }
        let _lock = Lock::acquire(&dir.join("lock"), LockKind::Exclusive, || {})
            .ctx(Step::Network, || format!("cannot lock {}", dir.display()))?;
        if live_users(&dir.join("users")) > 0 || !marker.exists() {
            return Ok(());
        }
        let mut errors = Vec::new();
        for call in self.remove_calls() {
            if let Err(e) = iptables(&call) {
                if !is_gone(&e) {
                    errors.push(e);
                }
            }
        }
        if !errors.is_empty() {
            return Err(Fail::Invalid(format!(
                "cannot remove the masquerade of network {}: {}",
                self.network,
                errors.join("; ")
            )));
        }
        std::fs::remove_file(&marker).ctx(Step::Network, || format!("cannot remove {}", marker.display()))
    }

    fn check_call(&self) -> Vec<String> {
        ["iptables", "-w", "-t", "nat", "-C", "POSTROUTING"].iter().map(|s| s.to_string()).chain(self.jump()).collect()
    }
}

/// The recorded users that still exist. A pod joins only once its network namespace is pinned
/// and leaves before it is unpinned, so an entry without a pin is a pod that vanished without
/// its teardown (its data dir deleted, say): forgotten here, so that it cannot keep the rules
/// forever.
fn live_users(users: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(users) else { return 0 };
    let mut live = 0;
    for e in entries.flatten() {
        if Path::new(husk_types::abi::NETNS_DIR).join(e.file_name()).exists() {
            live += 1;
        } else {
            let _ = std::fs::remove_file(e.path());
        }
    }
    live
}

fn chain(network: &str) -> String {
    format!("HUSK-MASQ-{network}")
}

/// `a.b.c.d/n` or an IPv6 address with a prefix length in range.
fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else { return false };
    let Ok(len) = len.parse::<u8>() else { return false };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

/// What iptables says of a rule or chain that is not there.
fn is_gone(msg: &str) -> bool {
    ["does a matching rule exist", "Bad rule", "No chain/target/match by that name", "does not exist"]
        .iter()
        .any(|m| msg.contains(m))
}

fn iptables(call: &[String]) -> Result<(), String> {
    iptables_with(call, None)
}

/// Runs `call` (iptables or iptables-restore, found in the usual sbin dirs) with `input` on
/// its stdin; the error is its stderr.
fn iptables_with(call: &[String], input: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let bin = ["/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(&call[0]))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(&call[0]));
    let mut child = Command::new(&bin)
        .args(&call[1..])
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| format!("cannot write to {}: {e}", bin.display()))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Masquerade {
        Masquerade { network: "default".into(), subnet: "172.16.28.0/24".into() }
    }

    #[test]
    fn a_conflist_without_the_key_has_no_masquerade() {
        assert_eq!(Masquerade::of("x", &serde_json::json!({"plugins": []})).unwrap(), None);
    }

    #[test]
    fn the_key_names_the_subnet() {
        let c = serde_json::json!({MASQUERADE_KEY: "172.16.28.0/24"});
        assert_eq!(Masquerade::of("default", &c).unwrap(), Some(m()));
        let c6 = serde_json::json!({MASQUERADE_KEY: "fd00:1::/64"});
        assert!(Masquerade::of("v6", &c6).unwrap().is_some());
    }

    #[test]
    fn malformed_subnets_and_names_are_refused_by_name() {
        for bad in [
            serde_json::json!("172.16.28.0"),
            serde_json::json!("x/24"),
            serde_json::json!("10.0.0.0/33"),
            serde_json::json!(24),
        ] {
            let e = Masquerade::of("n", &serde_json::json!({MASQUERADE_KEY: bad})).unwrap_err().chain();
            assert!(e.contains("network \"n\"") && e.contains(MASQUERADE_KEY), "{e}");
        }
        let ok = serde_json::json!({MASQUERADE_KEY: "10.0.0.0/8"});
        for name in ["", "a b", "x;y", "a-name-that-is-far-too-long"] {
            assert!(Masquerade::of(name, &ok).is_err(), "{name:?}");
        }
        assert!(Masquerade::of("eighteen-chars-xyz", &ok).is_ok());
    }

    #[test]
    fn the_chain_returns_for_the_subnet_and_multicast_then_masquerades() {
        assert_eq!(
            m().chain_restore(),
            "*nat\n:HUSK-MASQ-default - [0:0]\n-A HUSK-MASQ-default -d 172.16.28.0/24 -j RETURN\n\
             -A HUSK-MASQ-default -d 224.0.0.0/4 -j RETURN\n-A HUSK-MASQ-default -j MASQUERADE\nCOMMIT\n"
        );
    }

    #[test]
    fn install_adds_the_jump_only_when_missing() {
        let with = m().install_calls(false);
        assert_eq!(with.len(), 2);
        assert_eq!(with[0], ["iptables-restore", "-w", "--noflush"]);
        assert_eq!(
            with[1].join(" "),
            "iptables -w -t nat -A POSTROUTING -s 172.16.28.0/24 -m comment --comment husk network default: masquerade -j HUSK-MASQ-default"
        );
        assert_eq!(m().install_calls(true).len(), 1);
    }

    #[test]
    fn removal_deletes_the_jump_then_the_chain() {
        let calls: Vec<String> = m().remove_calls().iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            calls,
            [
                "iptables -w -t nat -D POSTROUTING -s 172.16.28.0/24 -m comment --comment husk network default: masquerade -j HUSK-MASQ-default",
                "iptables -w -t nat -F HUSK-MASQ-default",
                "iptables -w -t nat -X HUSK-MASQ-default",
            ]
        );
    }

    #[test]
    fn iptables_messages_for_missing_rules_count_as_gone() {
        assert!(is_gone("iptables: Bad rule (does a matching rule exist in that chain?)."));
        assert!(is_gone("iptables: No chain/target/match by that name."));
        assert!(!is_gone("iptables: Permission denied"));
    }
}
