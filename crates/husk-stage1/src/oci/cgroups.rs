//! A container's cgroup, as an OCI runtime keeps it: `cgroupsPath` in every hierarchy the host
//! mounts (all v1 hierarchies, and the unified one, on a hybrid host), `linux.resources`
//! written into the controllers' files. [`resource_writes`] is the pure planner (tested for v1,
//! v2 and hybrid layouts); the rest executes.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use super::plan::SpecError;

fn err(field: impl Into<String>, why: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), why: why.into() }
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its directory name under /sys/fs/cgroup (`memory`, `cpu,cpuacct`, `systemd`, `unified`).
    pub name: String,
    pub mount: PathBuf,
    /// The controllers it carries (v1: from the mount options; v2: `cgroup.controllers`).
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The host's hierarchies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    pub hierarchies: Vec<Hierarchy>,
}

/// One file to write, for the field it enforces. `optional`: a missing file (a kernel built
/// without swap accounting) is a warning, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: PathBuf,
    pub value: String,
    pub field: &'static str,
    pub optional: bool,
}

const V1_CONTROLLERS: &[&str] = &[
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

impl Cgroups {
    /// Reads the hierarchies from a mountinfo text; `v2_controllers` gives a v2 mount's
    /// `cgroup.controllers` (pure, for tests).
    pub fn from_mountinfo(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Cgroups {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let fields: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if fields.len() < 5 || post.len() < 3 {
                continue;
            }
            let mount = PathBuf::from(fields[4]);
            if hierarchies.iter().any(|h| h.mount == mount) {
                continue;
            }
            let name = mount.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match post[0] {
                "cgroup2" => {
                    let controllers = v2_controllers(&mount).split_whitespace().map(str::to_string).collect();
                    hierarchies.push(Hierarchy { name, mount, controllers, v2: true });
                }
                "cgroup" => {
                    let controllers: Vec<String> = post[2]
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    if !controllers.is_empty() {
                        hierarchies.push(Hierarchy { name, mount, controllers, v2: false });
                    }
                }
                _ => {}
            }
        }
        Cgroups { hierarchies }
    }

    pub fn detect() -> io::Result<Cgroups> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
        let cg =
            Cgroups::from_mountinfo(&mi, |m| std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default());
        if cg.hierarchies.is_empty() {
            return Err(io::Error::other("no cgroup hierarchy is mounted (looked for cgroup v1 and cgroup2)"));
        }
        Ok(cg)
    }

    pub fn v2_only(&self) -> bool {
        self.hierarchies.iter().all(|h| h.v2)
    }

    /// The container's directory in each hierarchy.
    pub fn dirs(&self, path: &str) -> Vec<PathBuf> {
        self.hierarchies.iter().map(|h| h.mount.join(path)).collect()
    }

    /// (name, directory) of the container's cgroup in each hierarchy, for its /sys/fs/cgroup.
    pub fn named_dirs(&self, path: &str) -> Vec<(String, PathBuf)> {
        self.hierarchies.iter().map(|h| (h.name.clone(), h.mount.join(path))).collect()
    }

    /// The hierarchy that carries `controller` (a v1 one first).
    fn with(&self, controller: &str) -> Option<&Hierarchy> {
        let has = |h: &&Hierarchy| h.controllers.iter().any(|c| c == controller);
        self.hierarchies.iter().filter(|h| !h.v2).find(has).or_else(|| self.hierarchies.iter().find(has))
    }

    /// The directory of the container's cgroup where `controller` is, and whether that is v2.
    pub fn controller_dir(&self, controller: &str, path: &str) -> Option<(PathBuf, bool)> {
        self.with(controller).map(|h| (h.mount.join(path), h.v2))
    }

    /// The file listing the container's processes: the pids, memory or unified hierarchy.
    pub fn procs_file(&self, path: &str) -> PathBuf {
        let h = self
            .with("pids")
            .or_else(|| self.with("memory"))
            .or_else(|| self.hierarchies.iter().find(|h| h.v2))
            .unwrap_or(&self.hierarchies[0]);
        h.mount.join(path).join("cgroup.procs")
    }
}

/// `linux.cgroupsPath` as a path relative to each hierarchy's root. Empty: `husk-oci/ID`.
/// With `--systemd-cgroup`, `slice:prefix:name` becomes systemd's layout
/// (`a.slice/a-b.slice/prefix-name.scope`).
pub fn cgroup_path(configured: Option<&Path>, id: &str, systemd: bool) -> Result<String, SpecError> {
    let field = "linux.cgroupsPath";
    let raw = configured.map(|p| p.display().to_string()).unwrap_or_default();
    if systemd {
        let parts: Vec<&str> = raw.split(':').collect();
        let [slice, prefix, name] = parts.as_slice() else {
            return Err(err(field, format!("{raw:?} is not slice:prefix:name, which --systemd-cgroup takes")));
        };
        let slice = if slice.is_empty() { "system.slice" } else { slice };
        let Some(stem) = slice.strip_suffix(".slice") else {
            return Err(err(field, format!("{slice:?} is not a systemd slice (NAME.slice)")));
        };
        let mut path = String::new();
        let mut acc = String::new();
        for part in stem.split('-') {
            if part.is_empty() {
                return Err(err(field, format!("{slice:?} is not a valid slice name")));
            }
            acc = if acc.is_empty() { part.to_string() } else { format!("{acc}-{part}") };
            path.push_str(&format!("{acc}.slice/"));
        }
        let unit = if name.ends_with(".slice") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        return check_rel(field, &format!("{path}{unit}"));
    }
    if raw.is_empty() {
        return Ok(format!("husk-oci/{id}"));
    }
    if raw.contains(':') && !raw.starts_with('/') {
        return Err(err(
            field,
            format!("{raw:?} looks like a systemd path (slice:prefix:name); pass --systemd-cgroup"),
        ));
    }
    check_rel(field, raw.trim_start_matches('/'))
}

fn check_rel(field: &str, p: &str) -> Result<String, SpecError> {
    if p.is_empty() || p.split('/').any(|c| c == ".." || c == ".") {
        return Err(err(field, format!("{p:?} must name a cgroup below the root without . or ..")));
    }
    Ok(p.trim_end_matches('/').to_string())
}

/// v1 shares (2..262144) as v2 weight (1..10000), the conversion runc and crun use.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// v1 blkio weight (10..1000) as v2 io weight (1..10000).
fn blkio_to_io_weight(w: u16) -> u64 {
    1 + (u64::from(w.clamp(10, 1000)) - 10) * 9999 / 990
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

fn v1_limit(v: i64) -> String {
    if v < 0 {
        "-1".into()
    } else {
        v.to_string()
    }
}

/// The device rules of `linux.resources.devices` as v1 `devices.allow`/`devices.deny` lines,
/// then the default devices every container gets and the nodes `linux.devices` creates (as
/// runc allows them: a node the config asks for is usable).
pub fn device_rules(rules: &[LinuxDeviceCgroup], nodes: &[LinuxDevice]) -> Result<Vec<(bool, String)>, SpecError> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let t = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => 'a',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::P => {
                return Err(err(format!("linux.resources.devices[{i}].type"), "FIFOs have no device cgroup rules"))
            }
        };
        let num = |v: Option<i64>| v.filter(|v| *v >= 0).map(|v| v.to_string()).unwrap_or_else(|| "*".into());
        let access = r.access().clone().unwrap_or_else(|| "rwm".into());
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(err(format!("linux.resources.devices[{i}].access"), format!("{access:?} is not of r, w, m")));
        }
        out.push((r.allow(), format!("{t} {}:{} {access}", num(r.major()), num(r.minor()))));
    }
    out.extend(crate::cgroup::DEVICE_ALLOWLIST.iter().map(|l| (true, l.to_string())));
    for d in nodes {
        let t = match d.typ() {
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            _ => continue,
        };
        out.push((true, format!("{t} {}:{} rwm", d.major(), d.minor())));
    }
    Ok(out)
}

/// The files to write to enforce `r` on the container's cgroup `path`, in order.
pub fn resource_writes(
    cg: &Cgroups,
    path: &str,
    r: &LinuxResources,
    nodes: &[LinuxDevice],
) -> Result<Vec<Write>, SpecError> {
    let mut w = Vec::new();
    let need = |controller: &str, field: &'static str| -> Result<(PathBuf, bool), SpecError> {
        cg.controller_dir(controller, path)
            .ok_or_else(|| err(field, format!("this host has no {controller} cgroup controller mounted")))
    };
    let mut push = |dir: &Path, file: &str, value: String, field: &'static str, optional: bool| {
        w.push(Write { file: dir.join(file), value, field, optional })
    };
    if let Some(m) = r.memory() {
        const F: &str = "linux.resources.memory";
        if m.kernel().is_some() {
            return Err(err("linux.resources.memory.kernel", "kernel memory limits no longer exist in Linux"));
        }
        if m.kernel_tcp().is_some() {
            return Err(err("linux.resources.memory.kernelTCP", "TCP buffer limits are not supported"));
        }
        let (dir, v2) = need("memory", F)?;
        if v2 {
            if let Some(l) = m.limit() {
                push(&dir, "memory.max", limit(l), "linux.resources.memory.limit", false);
            }
            if let Some(s) = m.reservation() {
                push(&dir, "memory.low", limit(s), "linux.resources.memory.reservation", false);
            }
            if let Some(s) = m.swap() {
                // v1's swap is memory plus swap; v2's swap.max is swap alone.
                let v = match (s, m.limit()) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                    _ => {
                        return Err(err(
                            "linux.resources.memory.swap",
                            "on cgroup v2 a swap limit needs a memory limit",
                        ))
                    }
                };
                push(&dir, "memory.swap.max", v, "linux.resources.memory.swap", true);
            }
            if m.swappiness().is_some() {
                return Err(err("linux.resources.memory.swappiness", "cgroup v2 has no per-cgroup swappiness"));
            }
            if m.disable_oom_killer() == Some(true) {
                return Err(err("linux.resources.memory.disableOOMKiller", "cgroup v2 cannot disable the OOM killer"));
            }
        } else {
            if let Some(l) = m.limit() {
                push(&dir, "memory.limit_in_bytes", v1_limit(l), "linux.resources.memory.limit", false);
            }
            if let Some(s) = m.swap() {
                push(&dir, "memory.memsw.limit_in_bytes", v1_limit(s), "linux.resources.memory.swap", true);
            }
            if let Some(s) = m.reservation() {
                push(&dir, "memory.soft_limit_in_bytes", v1_limit(s), "linux.resources.memory.reservation", false);
            }
            if let Some(s) = m.swappiness() {
                if s > 100 {
                    return Err(err("linux.resources.memory.swappiness", format!("{s} is above 100")));
                }
                push(&dir, "memory.swappiness", s.to_string(), "linux.resources.memory.swappiness", false);
            }
            if m.disable_oom_killer() == Some(true) {
                push(&dir, "memory.oom_control", "1".into(), "linux.resources.memory.disableOOMKiller", false);
            }
        }
    }
    if let Some(c) = r.cpu() {
        const F: &str = "linux.resources.cpu";
        if c.shares().is_some()
            || c.quota().is_some()
            || c.period().is_some()
            || c.burst().is_some()
            || c.idle().is_some()
        {
            let (dir, v2) = need("cpu", F)?;
            if v2 {
                if let Some(s) = c.shares().filter(|s| *s > 0) {
                    push(&dir, "cpu.weight", shares_to_weight(s).to_string(), "linux.resources.cpu.shares", false);
                }
                if c.quota().is_some() || c.period().is_some() {
                    let q = c.quota().filter(|q| *q > 0).map(|q| q.to_string()).unwrap_or_else(|| "max".into());
                    let p = c.period().unwrap_or(100_000);
                    push(&dir, "cpu.max", format!("{q} {p}"), "linux.resources.cpu.quota", false);
                }
                if let Some(b) = c.burst() {
                    push(&dir, "cpu.max.burst", b.to_string(), "linux.resources.cpu.burst", false);
                }
            } else {
                if let Some(s) = c.shares().filter(|s| *s > 0) {
                    push(&dir, "cpu.shares", s.to_string(), "linux.resources.cpu.shares", false);
                }
                if let Some(p) = c.period() {
                    push(&dir, "cpu.cfs_period_us", p.to_string(), "linux.resources.cpu.period", false);
                }
                if let Some(q) = c.quota() {
                    push(&dir, "cpu.cfs_quota_us", v1_limit(q), "linux.resources.cpu.quota", false);
                }
                if let Some(b) = c.burst() {
                    push(&dir, "cpu.cfs_burst_us", b.to_string(), "linux.resources.cpu.burst", false);
                }
            }
            if let Some(i) = c.idle() {
                push(&dir, "cpu.idle", i.to_string(), "linux.resources.cpu.idle", false);
            }
        }
        if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
            let (dir, v2) = need("cpu", F)?;
            if v2 {
                return Err(err("linux.resources.cpu.realtimeRuntime", "cgroup v2 has no real-time CPU budget"));
            }
            if let Some(p) = c.realtime_period() {
                push(&dir, "cpu.rt_period_us", p.to_string(), "linux.resources.cpu.realtimePeriod", false);
            }
            if let Some(rt) = c.realtime_runtime() {
                push(&dir, "cpu.rt_runtime_us", rt.to_string(), "linux.resources.cpu.realtimeRuntime", false);
            }
        }
        for (value, file, field) in [
            (c.cpus(), "cpuset.cpus", "linux.resources.cpu.cpus"),
            (c.mems(), "cpuset.mems", "linux.resources.cpu.mems"),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
                let (dir, _) = need("cpuset", field)?;
                push(&dir, file, v.clone(), field, false);
            }
        }
    }
    if let Some(p) = r.pids() {
        let (dir, _) = need("pids", "linux.resources.pids")?;
        let v = if p.limit() > 0 { p.limit().to_string() } else { "max".into() };
        push(&dir, "pids.max", v, "linux.resources.pids.limit", false);
    }
    if let Some(b) = r.block_io() {
        let any = b.weight().is_some()
            || b.leaf_weight().is_some()
            || b.weight_device().as_ref().is_some_and(|d| !d.is_empty())
            || [
                b.throttle_read_bps_device(),
                b.throttle_write_bps_device(),
                b.throttle_read_iops_device(),
                b.throttle_write_iops_device(),
            ]
            .iter()
            .any(|d| d.as_ref().is_some_and(|d| !d.is_empty()));
        if any {
            let v2_dir = cg.controller_dir("io", path).filter(|(_, v2)| *v2);
            let (dir, v2) = match v2_dir {
                Some(d) => d,
                None => need("blkio", "linux.resources.blockIO")?,
            };
            if b.leaf_weight().is_some() {
                return Err(err("linux.resources.blockIO.leafWeight", "leaf weights no longer exist in Linux"));
            }
            if let Some(wt) = b.weight() {
                if v2 {
                    push(
                        &dir,
                        "io.weight",
                        format!("default {}", blkio_to_io_weight(wt)),
                        "linux.resources.blockIO.weight",
                        false,
                    );
                } else {
                    push(&dir, "blkio.weight", wt.to_string(), "linux.resources.blockIO.weight", true);
                }
            }
            for d in b.weight_device().clone().unwrap_or_default() {
                if let Some(wt) = d.weight() {
                    let (file, v) = if v2 {
                        ("io.weight", blkio_to_io_weight(wt).to_string())
                    } else {
                        ("blkio.weight_device", wt.to_string())
                    };
                    push(
                        &dir,
                        file,
                        format!("{}:{} {v}", d.major(), d.minor()),
                        "linux.resources.blockIO.weightDevice",
                        false,
                    );
                }
            }
            for (list, v1file, key, field) in [
                (
                    b.throttle_read_bps_device(),
                    "blkio.throttle.read_bps_device",
                    "rbps",
                    "linux.resources.blockIO.throttleReadBpsDevice",
                ),
                (
                    b.throttle_write_bps_device(),
                    "blkio.throttle.write_bps_device",
                    "wbps",
                    "linux.resources.blockIO.throttleWriteBpsDevice",
                ),
                (
                    b.throttle_read_iops_device(),
                    "blkio.throttle.read_iops_device",
                    "riops",
                    "linux.resources.blockIO.throttleReadIOPSDevice",
                ),
                (
                    b.throttle_write_iops_device(),
                    "blkio.throttle.write_iops_device",
                    "wiops",
                    "linux.resources.blockIO.throttleWriteIOPSDevice",
                ),
            ] {
                for d in list.clone().unwrap_or_default() {
                    let (file, v) = if v2 {
                        ("io.max", format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()))
                    } else {
                        (v1file, format!("{}:{} {}", d.major(), d.minor(), d.rate()))
                    };
                    push(&dir, file, v, field, false);
                }
            }
        }
    }
    for h in r.hugepage_limits().clone().unwrap_or_default() {
        const F: &str = "linux.resources.hugepageLimits";
        let size = h.page_size();
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(err(F, format!("{size:?} is not a page size (2MB, 1GB)")));
        }
        let (dir, v2) = need("hugetlb", F)?;
        let (file, v) = if v2 {
            (format!("hugetlb.{size}.max"), limit(h.limit()))
        } else {
            (format!("hugetlb.{size}.limit_in_bytes"), v1_limit(h.limit()))
        };
        push(&dir, &file, v, F, false);
    }
    if let Some(n) = r.network() {
        if let Some(id) = n.class_id() {
            let (dir, _) = need("net_cls", "linux.resources.network.classID")?;
            push(&dir, "net_cls.classid", id.to_string(), "linux.resources.network.classID", false);
        }
        for p in n.priorities().clone().unwrap_or_default() {
            let (dir, _) = need("net_prio", "linux.resources.network.priorities")?;
            push(
                &dir,
                "net_prio.ifpriomap",
                format!("{} {}", p.name(), p.priority()),
                "linux.resources.network.priorities",
                false,
            );
        }
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(err("linux.resources.rdma", "RDMA limits are not supported"));
    }
    if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        let Some(h) = cg.hierarchies.iter().find(|h| h.v2) else {
            return Err(err("linux.resources.unified", "this host has no cgroup v2 hierarchy"));
        };
        let keys: BTreeSet<&String> = u.keys().collect();
        for k in keys {
            if k.contains('/') || k.starts_with('.') || !k.contains('.') {
                return Err(err(format!("linux.resources.unified.{k}"), "is not a cgroup file name"));
            }
            let controller = k.split('.').next().unwrap_or("");
            if controller != "cgroup" && !h.controllers.iter().any(|c| c == controller) {
                return Err(err(
                    format!("linux.resources.unified.{k}"),
                    format!("the {controller} controller is not in this host's cgroup v2 hierarchy"),
                ));
            }
            push(&h.mount.join(path), k, u[k].clone(), "linux.resources.unified", false);
        }
    }
    if let Some(rules) = r.devices().as_ref().filter(|d| !d.is_empty()) {
        match cg.controller_dir("devices", path) {
            Some((dir, false)) => {
                for (allow, line) in device_rules(rules, nodes)? {
                    push(
                        &dir,
                        if allow { "devices.allow" } else { "devices.deny" },
                        line,
                        "linux.resources.devices",
                        false,
                    );
                }
            }
            // cgroup v2: an eBPF program, see [`device_program`].
            _ if cg.hierarchies.iter().any(|h| h.v2) => {}
            _ => {
                return Err(err(
                    "linux.resources.devices",
                    "this host has no devices cgroup controller and no cgroup v2",
                ))
            }
        }
    }
    Ok(w)
}

/// The v2 controllers to enable down the container's path: on a v2-only host all of them (as
/// runc does: the container's own limits and what it nests may use any); on a hybrid host only
/// the ones `writes` use there (a v1-first host's unified tree is left as it is: enabling a
/// controller there keeps it from ever being mounted as v1, which crun needs).
pub fn v2_controllers_needed(cg: &Cgroups, writes: &[Write]) -> Option<BTreeSet<String>> {
    if cg.v2_only() {
        return None;
    }
    let v2: Vec<&Path> = cg.hierarchies.iter().filter(|h| h.v2).map(|h| h.mount.as_path()).collect();
    Some(
        writes
            .iter()
            .filter(|w| v2.iter().any(|m| w.file.starts_with(m)))
            .filter_map(|w| w.file.file_name()?.to_str()?.split('.').next().map(str::to_string))
            .filter(|c| c != "cgroup")
            .collect(),
    )
}

/// On a host without the v1 devices controller: the container's cgroup v2 directory and the
/// eBPF program that enforces `linux.resources.devices` there (attached by the runtime once the
/// cgroup exists). `None` when v1 enforces them or the config has no rules.
pub fn device_program(
    cg: &Cgroups,
    path: &str,
    r: &LinuxResources,
    nodes: &[LinuxDevice],
) -> Result<Option<(PathBuf, Vec<husk_sys::bpf::Insn>)>, SpecError> {
    let Some(rules) = r.devices().as_ref().filter(|d| !d.is_empty()) else { return Ok(None) };
    if matches!(cg.controller_dir("devices", path), Some((_, false))) {
        return Ok(None);
    }
    let Some(h) = cg.hierarchies.iter().find(|h| h.v2) else { return Ok(None) };
    let parsed = device_rules(rules, nodes)?
        .into_iter()
        .map(|(allow, line)| super::devices::parse(allow, &line))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((h.mount.join(path), super::devices::program(&parsed))))
}

/// Creates the container's cgroup in every hierarchy: on v1 a new cpuset inherits its parent's
/// CPUs and memory nodes (a process cannot join an empty cpuset); on v2 the controllers are
/// enabled down the path (`enable`: which; `None`: every available one).
pub fn create(cg: &Cgroups, path: &str, enable: Option<&BTreeSet<String>>) -> io::Result<()> {
    for h in &cg.hierarchies {
        let mut dir = h.mount.clone();
        for comp in path.split('/') {
            let parent = dir.clone();
            dir.push(comp);
            if h.v2 {
                let avail = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                let enabled = std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
                let wanted = avail
                    .split_whitespace()
                    .filter(|c| enable.is_none_or(|e| e.contains(*c)))
                    .filter(|c| !enabled.split_whitespace().any(|e| e == *c));
                for c in wanted {
                    // An ancestor with processes of its own cannot enable controllers (v2's
                    // no-internal-processes rule); the limit writes then say which is missing.
                    let _ = std::fs::write(parent.join("cgroup.subtree_control"), format!("+{c}"));
                }
            }
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    if h.controllers.iter().any(|c| c == "cpuset") && !h.v2 {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            let mine = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                            if mine.trim().is_empty() {
                                let theirs = std::fs::read_to_string(parent.join(f))?;
                                std::fs::write(dir.join(f), theirs.trim())?;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create cgroup {}: {e}", dir.display()))),
            }
        }
    }
    Ok(())
}

/// Applies writes in order. A write the kernel refuses is retried once after the others (v1's
/// memory limit and memory+swap limit must move in whichever order keeps memsw >= memory).
/// Returns the warnings about optional files that do not exist.
pub fn apply(writes: &[Write]) -> Result<Vec<String>, SpecError> {
    let mut warnings = Vec::new();
    let mut retry = Vec::new();
    for w in writes {
        if w.optional && !w.file.exists() {
            warnings.push(format!("{}: {} does not exist on this host; not enforced", w.field, w.file.display()));
            continue;
        }
        if std::fs::write(&w.file, &w.value).is_err() {
            retry.push(w);
        }
    }
    for w in retry {
        std::fs::write(&w.file, &w.value)
            .map_err(|e| err(w.field, format!("cannot write {:?} to {}: {e}", w.value, w.file.display())))?;
    }
    Ok(warnings)
}

/// Moves `pid` into the container's cgroup in every hierarchy.
pub fn join(cg: &Cgroups, path: &str, pid: i32) -> io::Result<()> {
    for d in cg.dirs(path) {
        std::fs::write(d.join("cgroup.procs"), pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot join cgroup {}: {e}", d.display())))?;
    }
    Ok(())
}

/// The processes in the container's cgroup (host pids).
pub fn pids(cg: &Cgroups, path: &str) -> io::Result<Vec<i32>> {
    let text = std::fs::read_to_string(cg.procs_file(path))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Removes the container's cgroup (its leaf only: parents may be shared) from every
/// hierarchy, waiting briefly for exiting processes to leave it.
pub fn remove(cg: &Cgroups, path: &str) -> io::Result<()> {
    for d in cg.dirs(path) {
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("cannot remove cgroup {}: {e}", d.display()))),
            }
        }
    }
    Ok(())
}

/// Freezes or thaws the container (v1 freezer, or v2 `cgroup.freeze`), waiting until it is.
pub fn freeze(cg: &Cgroups, path: &str, frozen: bool) -> io::Result<()> {
    let (file, want, state) = match cg.controller_dir("freezer", path) {
        Some((d, false)) => {
            (d.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" }, d.join("freezer.state"))
        }
        _ => {
            let h = cg.hierarchies.iter().find(|h| h.v2).ok_or_else(|| io::Error::other("no freezer cgroup"))?;
            let d = h.mount.join(path);
            (d.join("cgroup.freeze"), if frozen { "1" } else { "0" }, d.join("cgroup.events"))
        }
    };
    for _ in 0..1000 {
        std::fs::write(&file, want)?;
        if is_frozen_file(&state)? == frozen {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Err(io::Error::other(format!("the container did not become {want} in 1 s")))
}

fn is_frozen_file(state: &Path) -> io::Result<bool> {
    let text = std::fs::read_to_string(state)?;
    if state.ends_with("freezer.state") {
        return Ok(text.trim() == "FROZEN");
    }
    Ok(text.lines().any(|l| l.trim() == "frozen 1"))
}

/// Whether the container is frozen.
pub fn frozen(cg: &Cgroups, path: &str) -> bool {
    let state = match cg.controller_dir("freezer", path) {
        Some((d, false)) => d.join("freezer.state"),
        _ => match cg.hierarchies.iter().find(|h| h.v2) {
            Some(h) => h.mount.join(path).join("cgroup.events"),
            None => return false,
        },
    };
    is_frozen_file(&state).unwrap_or(false)
}

#[cfg(test)]
mod tests;
