//! Pod cgroups on cgroup v1 (one hierarchy per controller) and v2 (the unified hierarchy).
//!
//! Layout, relative to each hierarchy root: `husk/<uuid>` for the pod and `husk/<uuid>/<app>` for
//! each app (processes only in leaves, as v2 requires). The pod init stays in its invoker's
//! cgroup, like podman's conmon: it is husk's code, not the user's, and each cgroup v1 migration
//! costs about 0.4 ms per hierarchy on the start path. A host with a hybrid layout (v1 controllers plus a v2 tree at
//! /sys/fs/cgroup/unified) is treated as v1: the unified tree there carries no controllers husk
//! uses.

use std::path::{Path, PathBuf};

use husk_types::security::Resources;

use crate::common::{Context, Fail, Step};

/// The CFS period used for `--cpu` quotas.
pub const CPU_PERIOD_US: u64 = 100_000;

fn oom_count(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
}

/// v1 controllers husk puts pods under (when mounted): the ones its limits use, and `devices`
/// for the device allowlist. `cpuacct` is usually co-mounted with `cpu`; when it is not, it is
/// left out (one migration less per app).
pub const V1_CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "devices"];

/// Devices an app may use (type, major, minor, access): the pseudo devices of its /dev.
pub const DEVICE_ALLOWLIST: &[&str] = &[
    "c 1:3 rwm",   // null
    "c 1:5 rwm",   // zero
    "c 1:7 rwm",   // full
    "c 1:8 rwm",   // random
    "c 1:9 rwm",   // urandom
    "c 5:0 rwm",   // tty
    "c 5:1 rwm",   // console
    "c 5:2 rwm",   // ptmx
    "c 136:* rwm", // pts
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Hierarchy mount points, one per controller in use.
    V1(Vec<PathBuf>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

/// Reads the layout from a mountinfo text (pure, tested against fixtures): the v1 hierarchies
/// of the controllers pods use, else the unified hierarchy. The mountinfo parsing is the OCI
/// runtime's ([`crate::oci::cgroups::Cgroups::from_mountinfo`]).
pub fn layout_from_mountinfo(mountinfo: &str) -> Option<Layout> {
    let cg = crate::oci::cgroups::Cgroups::from_mountinfo(mountinfo, |_| String::new());
    let v1: Vec<PathBuf> = cg
        .hierarchies
        .iter()
        .filter(|h| !h.v2 && h.controllers.iter().any(|c| V1_CONTROLLERS.contains(&c.as_str())))
        .map(|h| h.mount.clone())
        .collect();
    if !v1.is_empty() {
        return Some(Layout::V1(v1));
    }
    cg.hierarchies.iter().find(|h| h.v2).map(|h| Layout::V2(h.mount.clone()))
}

pub fn detect() -> Result<Layout, Fail> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx(Step::Cgroup, || "cannot read /proc/self/mountinfo".into())?;
    layout_from_mountinfo(&mi).ok_or_else(|| {
        Fail::Invalid("no cgroup hierarchy is mounted (looked for cgroup v1 controllers and cgroup2)".into())
    })
}

impl Layout {
    pub fn roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V1(v) => v.clone(),
            Layout::V2(p) => vec![p.clone()],
        }
    }

    /// Paths of one cgroup (relative path `rel`) in every hierarchy.
    pub fn paths(&self, rel: &str) -> Vec<PathBuf> {
        self.roots().into_iter().map(|r| r.join(rel)).collect()
    }

    /// Creates the pod's cgroups: the pod and one per app.
    pub fn create_pod(&self, uuid: &str, apps: &[String]) -> Result<(), Fail> {
        let base = husk_types::abi::pod_cgroup(uuid);
        if let Layout::V2(root) = self {
            // Controllers must be enabled on every ancestor for children to get them.
            enable_v2_controllers(root)?;
            std::fs::create_dir_all(root.join("husk"))
                .ctx(Step::Cgroup, || format!("cannot create cgroup {}", root.join("husk").display()))?;
            enable_v2_controllers(&root.join("husk"))?;
            std::fs::create_dir_all(root.join(&base))
                .ctx(Step::Cgroup, || format!("cannot create cgroup {}", root.join(&base).display()))?;
            enable_v2_controllers(&root.join(&base))?;
        }
        // The pod's cgroup, then each app's, in every hierarchy: one mkdir each (`husk/` is
        // made by the first pod on a host).
        let mkdir = |p: &Path| {
            match std::fs::create_dir(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                r => r,
            }
            .ctx(Step::Cgroup, || format!("cannot create cgroup {}", p.display()))
        };
        for pod in self.paths(&base) {
            mkdir(&pod)?;
            for leaf in apps {
                mkdir(&pod.join(leaf))?;
            }
        }
        Ok(())
    }

    /// The v1 hierarchy holding `controller`, if any.
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        match self {
            Layout::V1(roots) => roots
                .iter()
                .find(|r| r.file_name().is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == controller)))
                .cloned(),
            Layout::V2(_) => None,
        }
    }

    /// The files to write to enforce an app's limits, relative to the hierarchy roots: a pure
    /// plan, so that both cgroup versions are tested anywhere.
    pub fn limit_plan(&self, uuid: &str, app: &str, r: &Resources) -> Vec<(PathBuf, String)> {
        let mut plan = Vec::new();
        let rel = husk_types::abi::app_cgroup(uuid, app);
        match self {
            Layout::V2(root) => {
                let d = root.join(&rel);
                if let Some(m) = r.memory {
                    plan.push((d.join("memory.max"), m.to_string()));
                    plan.push((d.join("memory.swap.max"), "0".into()));
                }
                if let Some(c) = r.cpu_millis {
                    plan.push((d.join("cpu.max"), format!("{} {CPU_PERIOD_US}", c * CPU_PERIOD_US / 1000)));
                }
                if let Some(sh) = r.cpu_shares {
                    // The kernel's own conversion from v1 shares to v2 weight.
                    let w = 1 + (sh.clamp(2, 262_144) - 2) * 9999 / 262_142;
                    plan.push((d.join("cpu.weight"), w.to_string()));
                }
                if let Some(p) = r.pids_limit {
                    plan.push((d.join("pids.max"), p.to_string()));
                }
            }
            Layout::V1(_) => {
                let at = |c: &str, f: &str| self.v1_dir(c).map(|h| h.join(&rel).join(f));
                if let (Some(m), Some(p)) = (r.memory, at("memory", "memory.limit_in_bytes")) {
                    plan.push((p, m.to_string()));
                }
                if let Some(c) = r.cpu_millis {
                    if let (Some(per), Some(q)) = (at("cpu", "cpu.cfs_period_us"), at("cpu", "cpu.cfs_quota_us")) {
                        plan.push((per, CPU_PERIOD_US.to_string()));
                        plan.push((q, (c * CPU_PERIOD_US / 1000).to_string()));
                    }
                }
                if let (Some(sh), Some(p)) = (r.cpu_shares, at("cpu", "cpu.shares")) {
                    plan.push((p, sh.to_string()));
                }
                if let (Some(n), Some(p)) = (r.pids_limit, at("pids", "pids.max")) {
                    plan.push((p, n.to_string()));
                }
                if let Some(d) = self.v1_dir("devices") {
                    let dir = d.join(&rel);
                    plan.push((dir.join("devices.deny"), "a".into()));
                    for dev in DEVICE_ALLOWLIST {
                        plan.push((dir.join("devices.allow"), dev.to_string()));
                    }
                }
            }
        }
        plan
    }

    /// Applies an app's limits; a limit the kernel refuses is an error naming it.
    pub fn apply_limits(&self, uuid: &str, app: &str, r: &Resources) -> Result<(), Fail> {
        let missing = |what: &str| {
            Fail::Invalid(format!(
                "app {app}: {what} is requested but its cgroup controller is not available on this host"
            ))
        };
        if let Layout::V1(_) = self {
            if r.memory.is_some() && self.v1_dir("memory").is_none() {
                return Err(missing("--memory"));
            }
            if r.pids_limit.is_some() && self.v1_dir("pids").is_none() {
                return Err(missing("--pids-limit"));
            }
            if (r.cpu_millis.is_some() || r.cpu_shares.is_some()) && self.v1_dir("cpu").is_none() {
                return Err(missing("--cpu"));
            }
        }
        // A file the plan writes several times in a row (devices.allow, a rule a write) is opened
        // once: each open walks the cgroup tree, whose lock every pod's mkdir and rmdir take.
        let mut open: Option<(PathBuf, std::fs::File)> = None;
        for (file, value) in self.limit_plan(uuid, app, r) {
            let cannot = || format!("app {app}: cannot write {value:?} to {}", file.display());
            let f = match open.take() {
                Some((p, f)) if p == file => f,
                // As `std::fs::write` opens: a fake cgroupfs in the tests is a plain directory.
                _ => std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&file)
                    .ctx(Step::Cgroup, cannot)?,
            };
            use std::io::Write as _;
            (&f).write_all(value.as_bytes()).ctx(Step::Cgroup, cannot)?;
            open = Some((file, f));
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process of the app's cgroup.
    pub fn oom_killed(&self, uuid: &str, app: &str) -> bool {
        let (file, key) = match self {
            Layout::V2(root) => (root.join(husk_types::abi::app_cgroup(uuid, app)).join("memory.events"), "oom_kill"),
            Layout::V1(_) => match self.v1_dir("memory") {
                Some(d) => (d.join(husk_types::abi::app_cgroup(uuid, app)).join("memory.oom_control"), "oom_kill"),
                None => return false,
            },
        };
        oom_count(&std::fs::read_to_string(file).unwrap_or_default(), key) > 0
    }

    /// For a pod in its own user namespace: lets the pod's root (host uid `owner`) move its own
    /// processes into its app cgroups. v2 also checks the common ancestor of source and
    /// destination, so there the pod init is placed in the pod's `init` leaf first.
    pub fn delegate(&self, uuid: &str, apps: &[String], owner: u32) -> Result<Vec<PathBuf>, Fail> {
        let mut files = Vec::new();
        for root in self.roots() {
            let pod = root.join("husk").join(uuid);
            if let Layout::V2(_) = self {
                std::fs::create_dir_all(pod.join("init"))
                    .ctx(Step::Cgroup, || format!("cannot create {}", pod.join("init").display()))?;
                files.push(pod.join("cgroup.procs"));
            }
            for a in apps {
                files.push(pod.join(a).join("cgroup.procs"));
                if let Layout::V1(_) = self {
                    files.push(pod.join(a).join("tasks"));
                }
            }
        }
        for f in &files {
            std::os::unix::fs::chown(f, Some(owner), Some(owner))
                .ctx(Step::Cgroup, || format!("cannot delegate {}", f.display()))?;
        }
        Ok(files)
    }
    pub fn join(&self, uuid: &str, leaf: &str, pid: i32) -> Result<(), Fail> {
        for p in self.paths(&husk_types::abi::app_cgroup(uuid, leaf)) {
            let procs = p.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .ctx(Step::Cgroup, || format!("cannot join cgroup {}", p.display()))?;
        }
        Ok(())
    }

    /// Removes the pod's cgroups, killing whatever is left in them. Idempotent.
    ///
    /// `apps` names the app cgroups the pod is known to have: an exited pod's are empty, and
    /// removing them by name, then the pod's, is all it takes. Listing a cgroup directory (its
    /// dozens of control files) to find them cost a third of this removal. Anything else (a
    /// cgroup an app made, processes left, names not known) falls back to walking the tree.
    pub fn remove_pod(&self, uuid: &str, apps: &[String]) -> Result<(), Fail> {
        let mut last_err = None;
        for root in self.roots() {
            let pod = root.join("husk").join(uuid);
            if !apps.is_empty() {
                for app in apps {
                    let _ = std::fs::remove_dir(pod.join(app));
                }
                match std::fs::remove_dir(&pod) {
                    Ok(()) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(_) => {}
                }
            }
            if !pod.exists() {
                continue;
            }
            for attempt in 0..50 {
                match remove_tree(&pod) {
                    Ok(()) => break,
                    Err(e) if attempt < 49 => {
                        kill_all(&pod);
                        let _ = e;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        last_err = Some(Fail::step(Step::Cgroup, format!("cannot remove cgroup {}", pod.display()), e))
                    }
                }
            }
        }
        last_err.map_or(Ok(()), Err)
    }
}

fn enable_v2_controllers(dir: &Path) -> Result<(), Fail> {
    let avail = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = ["memory", "pids", "cpu", "io"]
        .iter()
        .filter(|c| avail.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    // Best effort: a controller may be busy in a threaded subtree; limits then fail later with
    // a precise message.
    let _ = std::fs::write(dir.join("cgroup.subtree_control"), want.join(" "));
    Ok(())
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    std::fs::remove_dir(dir)
}

fn kill_all(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_all(&e.path());
            }
        }
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_layout_uses_v1_controllers() {
        let l = layout_from_mountinfo(HYBRID).unwrap();
        assert_eq!(
            l,
            Layout::V1(vec!["/sys/fs/cgroup/cpu".into(), "/sys/fs/cgroup/memory".into(), "/sys/fs/cgroup/pids".into()])
        );
        assert!(layout_from_mountinfo("32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n")
            .is_some());
    }

    #[test]
    fn unified_layout() {
        let mi = "25 21 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(layout_from_mountinfo(mi).unwrap(), Layout::V2("/sys/fs/cgroup".into()));
        assert!(layout_from_mountinfo("").is_none());
    }

    #[test]
    fn v2_pod_tree_in_a_fake_cgroupfs() {
        let d = tempfile_dir();
        std::fs::write(d.join("cgroup.controllers"), "cpu io memory pids hugetlb").unwrap();
        let l = Layout::V2(d.clone());
        l.create_pod("u1", &["web".into()]).unwrap();
        assert!(d.join("husk/u1/web").is_dir());
        assert_eq!(std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(), "+memory +pids +cpu +io");
        // A real cgroupfs has no regular files to remove; the fake one does, so only check
        // that the call reports the failure instead of pretending.
        assert!(l.remove_pod("u1", &["web".into()]).is_err() || !d.join("husk/u1").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn v1_pod_trees_in_fake_hierarchies() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_path_buf();
        let roots = vec![d.join("memory"), d.join("cpu,cpuacct")];
        for r in &roots {
            std::fs::create_dir(r).unwrap();
        }
        let l = Layout::V1(roots.clone());
        // The first pod on the host makes husk/ too; the next finds it.
        l.create_pod("u1", &["web".into(), "db".into()]).unwrap();
        l.create_pod("u2", &["web".into()]).unwrap();
        for r in &roots {
            for leaf in ["husk/u1/web", "husk/u1/db", "husk/u2/web"] {
                assert!(r.join(leaf).is_dir(), "{}", r.join(leaf).display());
            }
        }
        // A hierarchy that is not there is an error naming the cgroup, not a panic.
        std::fs::write(d.join("file"), "").unwrap();
        let e = Layout::V1(vec![d.join("file")]).create_pod("u3", &["web".into()]).unwrap_err();
        assert!(e.chain().contains("cannot create cgroup"), "{}", e.chain());
    }

    fn res() -> Resources {
        Resources {
            memory: Some(64 << 20),
            cpu_millis: Some(500),
            cpu_shares: Some(512),
            pids_limit: Some(32),
            oom_score_adj: None,
        }
    }

    #[test]
    fn v1_limits_plan() {
        let l =
            Layout::V1(vec!["/cg/cpu,cpuacct".into(), "/cg/memory".into(), "/cg/pids".into(), "/cg/devices".into()]);
        let plan = l.limit_plan("u", "web", &res());
        let get = |f: &str| {
            plan.iter()
                .filter(|(p, _)| p.ends_with(f))
                .map(|(p, v)| (p.display().to_string(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("memory.limit_in_bytes"),
            vec![("/cg/memory/husk/u/web/memory.limit_in_bytes".into(), "67108864".into())]
        );
        assert_eq!(get("cpu.cfs_quota_us")[0].1, "50000");
        assert_eq!(get("cpu.shares")[0].1, "512");
        assert_eq!(get("pids.max")[0], ("/cg/pids/husk/u/web/pids.max".into(), "32".into()));
        assert_eq!(get("devices.deny")[0].1, "a");
        assert!(get("devices.allow").iter().any(|(_, v)| v == "c 1:3 rwm"));
    }

    #[test]
    fn v2_limits_in_a_fake_cgroupfs() {
        let d = tempfile_dir().join("v2");
        std::fs::create_dir_all(d.join("husk/u/web")).unwrap();
        let l = Layout::V2(d.clone());
        l.apply_limits("u", "web", &res()).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.join("husk/u/web").join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "20");
        assert_eq!(read("pids.max"), "32");
        std::fs::write(d.join("husk/u/web/memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(l.oom_killed("u", "web"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn v1_oom_control_is_read() {
        assert_eq!(oom_count("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", "oom_kill"), 2);
        assert_eq!(oom_count("oom_kill_disable 0\n", "oom_kill"), 0);
    }

    #[test]
    fn an_exited_pods_cgroups_go_by_name_and_anything_else_by_walking_the_tree() {
        let d = tempfile_dir().join("remove");
        let roots = [d.join("memory"), d.join("pids")];
        for r in &roots {
            for app in ["web", "db"] {
                std::fs::create_dir_all(r.join("husk/u1").join(app)).unwrap();
            }
        }
        // A cgroup the pod's names do not say (an app made its own): found by the walk.
        std::fs::create_dir_all(roots[1].join("husk/u1/db/own")).unwrap();
        let l = Layout::V1(roots.to_vec());
        l.remove_pod("u1", &["web".into(), "db".into()]).unwrap();
        assert!(roots.iter().all(|r| !r.join("husk/u1").exists()));
        // Idempotent, and without names (a pod whose manifest is gone) the walk does it all.
        l.remove_pod("u1", &["web".into()]).unwrap();
        std::fs::create_dir_all(roots[0].join("husk/u2/x")).unwrap();
        l.remove_pod("u2", &[]).unwrap();
        assert!(!roots[0].join("husk/u2").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let p = std::env::temp_dir().join(format!("husk-cg-test-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
