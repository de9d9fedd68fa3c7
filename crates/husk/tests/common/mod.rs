//! Shared helpers for integration tests: they drive the real `husk` binary as root against the
//! images `scripts/test.sh` builds offline and the registry it starts on loopback. Missing
//! prerequisites fail the test (never skip) with a message saying how to provide them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn registry() -> String {
    std::env::var("HUSK_TEST_REGISTRY")
        .expect("HUSK_TEST_REGISTRY is not set: run the tests with scripts/test.sh (it starts the loopback registry)")
}

pub fn images_dir() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("HUSK_TEST_IMAGES")
            .expect("HUSK_TEST_IMAGES is not set: run the tests with scripts/test.sh (it builds the test images)"),
    );
    assert!(p.join("busybox/index.json").is_file(), "{} has no test images: run scripts/test.sh", p.display());
    p
}

pub fn image(name: &str) -> String {
    format!("{}/husk/{name}:latest", registry())
}

pub fn require_root() {
    assert!(nix_is_root(), "these tests need root (CI runs them as root)");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(1) == Some("0"))
        .unwrap_or(false)
}

/// One data dir and config dir per test.
pub struct Env {
    pub tmp: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        require_root();
        let tmp = tempfile::Builder::new()
            .prefix("husk-test-")
            .tempdir_in(std::env::var("HUSK_TEST_TMP").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap();
        std::fs::create_dir_all(tmp.path().join("etc")).unwrap();
        std::fs::write(
            tmp.path().join("etc/husk.toml"),
            format!("[registries.\"{}\"]\ninsecure = [\"http\"]\n", registry()),
        )
        .unwrap();
        Env { tmp }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// The husk under test: $HUSK_TEST_BIN (scripts/test.sh: the static husk that is shipped),
    /// else this workspace's test build.
    pub fn bin() -> PathBuf {
        std::env::var_os("HUSK_TEST_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_husk")))
    }

    pub fn cmd_with(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.arg("--dir").arg(self.dir()).arg("--config-dir").arg(self.tmp.path().join("etc"));
        c.env_remove("HUSK_DIR").env("HUSK_LOG", "warn");
        c
    }

    pub fn cmd(&self) -> Command {
        self.cmd_with(&Self::bin())
    }

    pub fn husk(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.husk(args);
        assert!(
            o.status.success(),
            "husk {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs, asserts the exit code, returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let o = self.husk(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(code),
            "husk {args:?}: expected exit {code}\nstdout: {}\nstderr: {err}",
            String::from_utf8_lossy(&o.stdout)
        );
        err
    }

    /// `husk run -q -d ARGS…`: starts a detached pod, returns its UUID.
    pub fn detached(&self, args: &[&str]) -> String {
        let mut a = vec!["run", "-q", "-d"];
        a.extend_from_slice(args);
        self.ok(&a).trim().to_string()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

/// A test that fails midway must not leak running pods (their network state and cgroups would
/// outlive the temporary data dir): stop and collect whatever is left.
impl Drop for Env {
    fn drop(&mut self) {
        let Ok(out) = self.cmd().args(["list", "--format", "json"]).output() else { return };
        let pods: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let uuids: Vec<String> = pods
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["uuid"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        for u in &uuids {
            let _ = self.cmd().args(["stop", "--timeout", "2s", u]).output();
        }
        let _ = self.cmd().args(["gc", "--grace-period=0s", "--expire-prepared=0s"]).output();
    }
}

/// Lines of /proc/self/mountinfo mentioning `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&p))
        .map(String::from)
        .collect()
}

/// cgroup directories of a pod in any hierarchy.
pub fn pod_cgroups(uuid: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let p = e.path().join("husk").join(uuid);
        if p.exists() {
            out.push(p);
        }
    }
    let p = PathBuf::from("/sys/fs/cgroup/husk").join(uuid);
    if p.exists() {
        out.push(p);
    }
    out
}

/// Host state a pod must not leave behind: links, nat/filter rules that name a pod, IPAM
/// leases, pinned namespaces. portmap's shared top-level chains (CNI-HOSTPORT-*) are created
/// once per host and, as with every CNI runtime, stay.
pub fn host_net_state(_env: &Env) -> std::collections::BTreeSet<String> {
    let mut s = std::collections::BTreeSet::new();
    let links = std::process::Command::new("ip").args(["-o", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        s.insert(format!("link {}", l.split(':').nth(1).unwrap_or("").trim().split('@').next().unwrap_or("")));
    }
    for table in ["nat", "filter", "raw"] {
        let rules = std::process::Command::new("iptables-save").args(["-t", table]).output().unwrap();
        for r in String::from_utf8_lossy(&rules.stdout).lines() {
            if r.contains("CNI") && !r.contains("CNI-HOSTPORT-")
                || r.contains("172.16.28.")
                || r.contains("172.17.4.")
                || r.contains("husk ")
            {
                s.insert(format!("rule {r}"));
            }
        }
    }
    for net in ["default", "default-restricted"] {
        if let Ok(rd) = std::fs::read_dir(std::path::Path::new("/var/lib/cni/networks").join(net)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.parse::<std::net::IpAddr>().is_ok() {
                    s.insert(format!("lease {net} {n}"));
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/run/husk/netns") {
        for e in rd.flatten() {
            s.insert(format!("netns {}", e.file_name().to_string_lossy()));
        }
    }
    for m in std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains("/run/husk/netns"))
    {
        s.insert(format!("mount {m}"));
    }
    s
}

/// The network namespaces (their inode numbers) pinned as spares in /run/husk/spare-netns.
pub fn spare_netns() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mounts = mounts_under(Path::new("/run/husk/spare-netns/"));
    mounts
        .iter()
        .filter(|l| l.contains(" - nsfs "))
        .filter_map(|l| l.split(' ').nth(4))
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.ino()))
        .collect()
}

/// The inode number of a namespace file (`/proc/PID/ns/net`, a pin), as `readlink` shows it:
/// `net:[N]`.
pub fn ns_id(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).ino()
}
