//! The second planner: an OCI bundle's `config.json` (runtime-spec 1.0 to 1.2) into the same
//! kinds of plan the pod planner makes ([`crate::plan::Step`] for the mount view, a
//! [`crate::seccomp::Filter`], capability sets), plus what only a container has (namespaces to
//! join by path, id maps, sysctls, rlimits). Pure: the host facts come in as [`Facts`]. A field
//! it cannot honour is an error naming the field, never ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sched::CloneFlags;
use oci_spec::runtime::{
    LinuxDeviceType, LinuxNamespaceType, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, Mount, PosixRlimitType, Process, Spec,
};

use crate::plan::{flags as f, rel_in_root, Step, Target, DEV_NODES};
use crate::seccomp::{Action, CmpOp, Cond, Filter, Rule};

/// A config.json field that cannot be honoured, or is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct SpecError {
    /// The field, as a JSON path (`linux.seccomp.listenerPath`).
    pub field: String,
    pub why: String,
}

fn err(field: impl Into<String>, why: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), why: why.into() }
}

/// What the planner needs to know about the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The bundle directory (relative `root.path` and mount sources are under it).
    pub bundle: PathBuf,
    /// For each bind source (absolute): whether it is a directory; a missing one is absent.
    pub sources: BTreeMap<PathBuf, bool>,
    /// The container's cgroup in each hierarchy, as `/sys/fs/cgroup` names them (`memory`,
    /// `cpu,cpuacct`, `unified`), with their host directories; `cgroup_v2_only`: the host has
    /// only the unified hierarchy.
    pub cgroups: Vec<(String, PathBuf)>,
    pub cgroup_v2_only: bool,
    /// `mounts[i].uidMappings` and `gidMappings` (runtime-spec 1.2; oci-spec's `Mount` does not
    /// model them, so the runtime reads them from the JSON), as id map texts, by mount index.
    pub mount_idmaps: BTreeMap<usize, (String, String)>,
    /// Namespace paths of `linux.namespaces` that are the runtime's own (the host's): a
    /// container joining those has none of its own of that kind.
    pub host_namespaces: BTreeSet<PathBuf>,
    /// The host has AppArmor / SELinux enabled.
    pub apparmor: bool,
    pub selinux: bool,
}

/// The five capability sets, by `caps` name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: BTreeSet<String>,
    pub effective: BTreeSet<String>,
    pub permitted: BTreeSet<String>,
    pub inheritable: BTreeSet<String>,
    pub ambient: BTreeSet<String>,
}

/// How a container's (or an exec's) process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapSets,
    /// (resource, soft, hard)
    pub rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub terminal: bool,
    /// (rows, columns)
    pub console_size: Option<(u16, u16)>,
    /// What was asked for and is not done, for the runtime to log (runc and crun accept these
    /// silently).
    pub warnings: Vec<String>,
}

/// A seccomp filter and how to install it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeccompPlan {
    pub filter: Filter,
    /// `SECCOMP_FILTER_FLAG_*` bits.
    pub flags: u32,
}

/// An idmapped mount, prepared before the container's init exists (as the host's root, where
/// the source is): a clone of `source` whose ids appear through a user namespace with these
/// maps; the init attaches it (`Step::IdmappedBind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdmapMount {
    pub source: PathBuf,
    pub recursive: bool,
    pub uid_map: String,
    pub gid_map: String,
}

/// Everything `create` does, in the order it does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPlan {
    pub rootfs: PathBuf,
    /// Namespaces to join, user first, each with its `CLONE_NEW*` flag.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// Namespaces to create (flags for `clone`).
    pub create: CloneFlags,
    /// `/proc/PID/uid_map` and `gid_map` contents for a new user namespace.
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    /// Propagation of the host's `/` in the container's mount namespace (`MS_REC | MS_SLAVE`
    /// unless `rootfsPropagation` says otherwise) and, for `shared`, of the root itself.
    pub root_propagation: u64,
    pub rootfs_shared: bool,
    /// The mount view before the console: config mounts, devices, /dev symlinks.
    pub mounts: Vec<Step>,
    /// The idmapped trees `mounts` attach, by index.
    pub idmapped: Vec<IdmapMount>,
    /// After the console: masked and read-only paths, a read-only root.
    pub finish: Vec<Step>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// (`/proc/sys` relative path, value)
    pub sysctl: Vec<(String, String)>,
    pub personality: Option<u64>,
    /// (clock: `monotonic` or `boottime`, seconds, nanoseconds)
    pub time_offsets: Vec<(String, i64, u32)>,
    pub process: ProcessPlan,
    pub seccomp: Option<SeccompPlan>,
}

/// The newest runtime-spec version accepted, and the oldest.
pub const OCI_VERSION_MAX: &str = "1.2.0";
pub const OCI_VERSION_MIN: &str = "1.0.0";

/// `ociVersion` must be 1.0.0 to 1.2.x (pre-releases of those accepted, as runc does).
pub fn check_version(v: &str) -> Result<(), SpecError> {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<Option<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [Some(1), Some(minor), Some(_)] if *minor <= 2 => Ok(()),
        _ => Err(err("ociVersion", format!("{v:?} is not supported (husk-oci takes {OCI_VERSION_MIN} to 1.2.x)"))),
    }
}

/// Plans a container from its config.
pub fn plan(spec: &Spec, facts: &Facts) -> Result<ContainerPlan, SpecError> {
    check_version(spec.version())?;
    let root = spec.root().as_ref().ok_or_else(|| err("root", "is required"))?;
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { facts.bundle.join(root.path()) };
    let process = spec.process().as_ref().ok_or_else(|| err("process", "is required for a container"))?;
    let linux = spec.linux().clone().unwrap_or_default();
    refuse_unsupported(spec, facts)?;

    // Namespaces.
    let mut create = CloneFlags::empty();
    let mut join = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, ns) in linux.namespaces().clone().unwrap_or_default().iter().enumerate() {
        let flag = ns_flag(ns.typ());
        if !seen.insert(flag.bits()) {
            return Err(err(format!("linux.namespaces[{i}]"), format!("{} is listed twice", ns.typ())));
        }
        match ns.path() {
            Some(p) if !p.is_absolute() => {
                return Err(err(format!("linux.namespaces[{i}].path"), format!("{} must be absolute", p.display())))
            }
            Some(p) => join.push((flag, p.clone())),
            None => create |= flag,
        }
    }
    // The user namespace is joined first: the others are then owned by it.
    join.sort_by_key(|(flag, _)| *flag != CloneFlags::CLONE_NEWUSER);
    let has = |flag: CloneFlags| seen.contains(&flag.bits());
    let new_user = create.contains(CloneFlags::CLONE_NEWUSER);
    let in_userns = has(CloneFlags::CLONE_NEWUSER);
    let (uid_map, gid_map) = if new_user {
        let u = id_map("linux.uidMappings", linux.uid_mappings())?;
        let g = id_map("linux.gidMappings", linux.gid_mappings())?;
        (Some(u), Some(g))
    } else {
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
            || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        {
            return Err(err("linux.uidMappings", "id mappings need a new user namespace in linux.namespaces"));
        }
        (None, None)
    };
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty()) && !has(CloneFlags::CLONE_NEWUTS) {
        return Err(err("hostname", "setting a hostname needs a UTS namespace in linux.namespaces"));
    }
    if !has(CloneFlags::CLONE_NEWNS) {
        return Err(err(
            "linux.namespaces",
            "a mount namespace is required (husk-oci never changes the host's mounts)",
        ));
    }

    let (root_propagation, rootfs_shared) = match linux.rootfs_propagation().as_deref() {
        None | Some("") | Some("slave") | Some("rslave") => (libc::MS_REC | libc::MS_SLAVE, false),
        Some("private") | Some("rprivate") => (libc::MS_REC | libc::MS_PRIVATE, false),
        Some("shared") | Some("rshared") => (libc::MS_REC | libc::MS_SLAVE, true),
        Some("unbindable") | Some("runbindable") => (libc::MS_REC | libc::MS_UNBINDABLE, false),
        Some(o) => return Err(err("linux.rootfsPropagation", format!("unknown mode {o:?}"))),
    };

    // Mounts, in the listed order.
    let mut mounts = Vec::new();
    let mut dev_is_bind = false;
    let sysfs_fallback = in_userns && !create.contains(CloneFlags::CLONE_NEWNET);
    let mut idmapped = Vec::new();
    let container_maps = uid_map.as_deref().zip(gid_map.as_deref());
    for (i, m) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("mounts[{i}]");
        let dest = rel_in_root(m.destination()).map_err(|e| err(format!("{field}.destination"), e.to_string()))?;
        let ctx = MountCtx { index: i, facts, sysfs_fallback, container_maps };
        let steps = mount_steps(&field, m, &dest, &ctx, &mut idmapped)?;
        if dest == "dev" && steps.iter().any(|s| matches!(s, Step::BindFlags { .. })) {
            dev_is_bind = true;
        }
        mounts.extend(steps);
    }
    // The default devices and /dev's symlinks (unless the caller bound a /dev of its own).
    if !dev_is_bind {
        for (name, major, minor) in DEV_NODES {
            mounts.push(device_step(&format!("/dev/{name}"), false, *major, *minor, 0o666, 0, 0, in_userns));
        }
        for (name, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            mounts.push(Step::DefaultSymlink { path: format!("dev/{name}"), to: to.to_string() });
        }
    }
    for (i, d) in linux.devices().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = d.path();
        if !path.starts_with("/dev/") {
            return Err(err(format!("{field}.path"), format!("{} is not under /dev", path.display())));
        }
        let block = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => false,
            LinuxDeviceType::B => true,
            t => return Err(err(format!("{field}.type"), format!("{t:?} devices cannot be created"))),
        };
        let (major, minor) = (dev_number(&field, "major", d.major())?, dev_number(&field, "minor", d.minor())?);
        let mode = d.file_mode().unwrap_or(0o666);
        let rel = rel_in_root(path).map_err(|e| err(format!("{field}.path"), e.to_string()))?;
        mounts.push(device_step(
            &format!("/{rel}"),
            block,
            major,
            minor,
            mode,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
            in_userns,
        ));
    }

    // The working directory exists (runc creates it), before the root may become read-only.
    let cwd = rel_in_root(process.cwd()).map_err(|e| err("process.cwd", e.to_string()))?;
    if !cwd.is_empty() {
        mounts.push(Step::Mkdir { path: cwd });
    }
    let mut finish = Vec::new();
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let rel = rel_in_root(Path::new(&p)).map_err(|e| err("linux.maskedPaths", e.to_string()))?;
        finish.push(Step::Mask { path: rel });
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let rel = rel_in_root(Path::new(&p)).map_err(|e| err("linux.readonlyPaths", e.to_string()))?;
        finish.push(Step::ReadOnly { path: rel });
    }
    if root.readonly().unwrap_or(false) {
        finish.push(Step::ReadOnlyRoot);
    }

    // The namespaces the container has of its own: created, or joined and not the host's.
    let mut own = create;
    for (flag, path) in &join {
        if !facts.host_namespaces.contains(path) {
            own |= *flag;
        }
    }
    let mut sysctl = Vec::new();
    for (k, v) in linux.sysctl().clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>() {
        sysctl.push((sysctl_path(&k, &own)?, v));
    }

    let personality = match linux.personality() {
        None => None,
        Some(p) => {
            use oci_spec::runtime::LinuxPersonalityDomain as D;
            if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
                return Err(err("linux.personality.flags", "no personality flags are supported"));
            }
            Some(match p.domain() {
                D::PerLinux => 0,
                D::PerLinux32 => 0x0008,
            })
        }
    };

    let mut time_offsets = Vec::new();
    for (clock, off) in linux.time_offsets().clone().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>() {
        if clock != "monotonic" && clock != "boottime" {
            return Err(err(format!("linux.timeOffsets.{clock}"), "only monotonic and boottime have offsets"));
        }
        if !create.contains(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)) {
            return Err(err("linux.timeOffsets", "offsets need a new time namespace in linux.namespaces"));
        }
        time_offsets.push((clock, off.secs().unwrap_or(0), off.nanosecs().unwrap_or(0)));
    }

    let seccomp = match linux.seccomp() {
        Some(s) => seccomp_plan(s)?,
        None => None,
    };

    Ok(ContainerPlan {
        rootfs,
        join,
        create,
        uid_map,
        gid_map,
        root_propagation,
        rootfs_shared,
        mounts,
        idmapped,
        finish,
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
        sysctl,
        personality,
        time_offsets,
        process: process_plan(process, "process", facts)?,
        seccomp,
    })
}

/// Fields husk-oci does not implement: refused by name.
fn refuse_unsupported(spec: &Spec, facts: &Facts) -> Result<(), SpecError> {
    let Some(linux) = spec.linux() else { return Ok(()) };
    if linux.intel_rdt().is_some() {
        return Err(err("linux.intelRdt", "Intel RDT is not supported"));
    }
    if linux.memory_policy().is_some() {
        return Err(err("linux.memoryPolicy", "NUMA memory policies are not supported"));
    }
    if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(err("linux.netDevices", "moving network devices is not supported"));
    }
    if linux.mount_label().as_ref().is_some_and(|l| !l.is_empty()) && !facts.selinux {
        return Err(err("linux.mountLabel", "SELinux is not enabled on this host"));
    }
    if let Some(p) = spec.process() {
        if p.io_priority().is_some() {
            return Err(err("process.ioPriority", "I/O priorities are not supported"));
        }
        if p.scheduler().is_some() {
            return Err(err("process.scheduler", "scheduler policies are not supported"));
        }
        if p.exec_cpu_affinity().is_some() {
            return Err(err("process.execCPUAffinity", "exec CPU affinity is not supported"));
        }
    }
    Ok(())
}

pub fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME is not in nix's CloneFlags for clone(2) (it only works with unshare
        // and clone3); its bit is passed through.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The name of a namespace in `/proc/PID/ns/`, by flag.
pub fn ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        CloneFlags::CLONE_NEWNS => "mnt",
        CloneFlags::CLONE_NEWCGROUP => "cgroup",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWPID => "pid",
        CloneFlags::CLONE_NEWNET => "net",
        _ => "time",
    }
}

fn id_map(field: &str, m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>) -> Result<String, SpecError> {
    let m = m.as_ref().filter(|m| !m.is_empty()).ok_or_else(|| err(field, "a new user namespace needs mappings"))?;
    if m.len() > 340 {
        return Err(err(field, "the kernel takes at most 340 ranges"));
    }
    let mut out = String::new();
    for (i, r) in m.iter().enumerate() {
        if r.size() == 0 {
            return Err(err(format!("{field}[{i}].size"), "must not be 0"));
        }
        out.push_str(&format!("{} {} {}\n", r.container_id(), r.host_id(), r.size()));
    }
    Ok(out)
}

fn dev_number(field: &str, which: &str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v).map_err(|_| err(format!("{field}.{which}"), format!("{v} is not a device number")))
}

#[allow(clippy::too_many_arguments)]
fn device_step(path: &str, block: bool, major: u32, minor: u32, mode: u32, uid: u32, gid: u32, userns: bool) -> Step {
    Step::Device {
        path: path.trim_start_matches('/').to_string(),
        block,
        major,
        minor,
        mode,
        uid,
        gid,
        bind_host: userns.then(|| PathBuf::from(path)),
    }
}

/// Mount options: flags set, flags a bind's remount sets, propagation, filesystem data, and the
/// extensions runc and crun know.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    flags: u64,
    bind: bool,
    recursive: bool,
    propagation: Vec<u64>,
    data: Vec<String>,
    copy_up: bool,
    /// `idmap` (false) or `ridmap` (true: the mounts below too).
    idmap: Option<bool>,
}

/// The flag options as mount(8) names them: (set it, clear it, the flag).
const FLAG_OPTIONS: &[(&str, &str, u64)] = &[
    ("ro", "rw", f::RDONLY),
    ("nosuid", "suid", f::NOSUID),
    ("nodev", "dev", f::NODEV),
    ("noexec", "exec", f::NOEXEC),
    ("sync", "async", libc::MS_SYNCHRONOUS),
    ("dirsync", "", libc::MS_DIRSYNC),
    ("mand", "nomand", libc::MS_MANDLOCK),
    ("noatime", "atime", libc::MS_NOATIME),
    ("nodiratime", "diratime", libc::MS_NODIRATIME),
    ("relatime", "norelatime", libc::MS_RELATIME),
    ("strictatime", "nostrictatime", f::STRICTATIME),
    ("silent", "loud", libc::MS_SILENT),
    ("iversion", "noiversion", libc::MS_I_VERSION),
    ("lazytime", "nolazytime", libc::MS_LAZYTIME),
];

fn parse_options(field: &str, opts: &[String]) -> Result<Options, SpecError> {
    let mut o = Options::default();
    for opt in opts {
        if let Some((set, _, flag)) = FLAG_OPTIONS.iter().find(|(s, c, _)| s == opt || c == opt) {
            o.flags = if set == opt { o.flags | flag } else { o.flags & !flag };
            continue;
        }
        let (set, clear): (u64, u64) = match opt.as_str() {
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            "remount" => (libc::MS_REMOUNT, 0),
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" | "unbindable" | "runbindable" => {
                let rec = if opt.starts_with('r') { libc::MS_REC } else { 0 };
                let base = match opt.trim_start_matches('r') {
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    "private" => libc::MS_PRIVATE,
                    _ => libc::MS_UNBINDABLE,
                };
                o.propagation.push(base | rec);
                (0, 0)
            }
            // SELinux relabelling requests podman passes through when SELinux is off: nothing to do.
            "z" | "Z" => (0, 0),
            "idmap" | "ridmap" => {
                o.idmap = Some(opt == "ridmap");
                (0, 0)
            }
            "tmpcopyup" => {
                o.copy_up = true;
                (0, 0)
            }
            "notmpcopyup" => {
                o.copy_up = false;
                (0, 0)
            }
            "copy-symlink" | "nosymfollow" | "symfollow" | "recursive" => {
                return Err(err(field, format!("the {opt} mount option is not supported")));
            }
            o2 if o2.starts_with("r") && ["rro", "rrw", "rnosuid", "rnodev", "rnoexec"].contains(&o2) => {
                return Err(err(field, format!("the recursive mount attribute {o2} is not supported")));
            }
            other => {
                o.data.push(other.to_string());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    Ok(o)
}

/// What planning one mount needs besides the mount.
struct MountCtx<'a> {
    index: usize,
    facts: &'a Facts,
    sysfs_fallback: bool,
    /// The container's own id maps (uid, gid), when it has a new user namespace.
    container_maps: Option<(&'a str, &'a str)>,
}

fn mount_steps(
    field: &str,
    m: &Mount,
    dest: &str,
    ctx: &MountCtx,
    idmapped: &mut Vec<IdmapMount>,
) -> Result<Vec<Step>, SpecError> {
    let facts = ctx.facts;
    let sysfs_fallback = ctx.sysfs_fallback;
    let o = parse_options(&format!("{field}.options"), &m.options().clone().unwrap_or_default())?;
    let typ = m.typ().clone().unwrap_or_default();
    let mut steps = Vec::new();
    let own_maps = facts.mount_idmaps.get(&ctx.index);
    if o.idmap.is_some() || own_maps.is_some() {
        // runtime-spec 1.2: mappings on a mount make it idmapped; `idmap` without mappings of
        // its own takes the container's user namespace's, as crun does.
        if !(o.bind || typ == "bind") {
            return Err(err(format!("{field}.options"), "only a bind mount can be idmapped here"));
        }
        let (uid_map, gid_map) =
            match (own_maps, ctx.container_maps) {
                (Some((u, g)), _) => (u.clone(), g.clone()),
                (None, Some((u, g))) => (u.to_string(), g.to_string()),
                (None, None) => return Err(err(
                    format!("{field}.uidMappings"),
                    "an idmapped mount needs uidMappings and gidMappings, or a user namespace whose mappings it takes",
                )),
            };
        let (src, target) = bind_source_and_target(field, m, dest, facts)?;
        idmapped.push(IdmapMount { source: src, recursive: o.recursive || o.idmap == Some(true), uid_map, gid_map });
        steps.push(Step::IdmappedBind {
            tree: idmapped.len() - 1,
            target: target.clone(),
            remount: o.flags & !libc::MS_REMOUNT,
        });
        steps.extend(o.propagation.iter().map(|p| Step::Propagation { target: target.clone(), flags: *p }));
        return Ok(steps);
    }
    if o.bind || typ == "bind" {
        let (src, target) = bind_source_and_target(field, m, dest, facts)?;
        if !o.data.is_empty() {
            return Err(err(
                format!("{field}.options"),
                format!("a bind takes no data options ({})", o.data.join(",")),
            ));
        }
        steps.push(Step::BindFlags {
            source: src,
            target: target.clone(),
            recursive: o.recursive,
            remount: o.flags & !libc::MS_REMOUNT,
        });
        steps.extend(o.propagation.iter().map(|p| Step::Propagation { target: target.clone(), flags: *p }));
        return Ok(steps);
    }
    let target = Target::Dir(dest.to_string());
    match typ.as_str() {
        "" | "none" => return Err(err(format!("{field}.type"), "is required for a mount that is not a bind")),
        "cgroup" | "cgroup2" => {
            steps.extend(cgroup_steps(dest, o.flags, facts));
        }
        _ => {
            let source = m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_else(|| typ.clone());
            steps.push(Step::Fs {
                fstype: typ.clone(),
                source,
                target: target.clone(),
                flags: o.flags,
                data: (!o.data.is_empty()).then(|| o.data.join(",")),
                sysfs_fallback: typ == "sysfs" && sysfs_fallback,
                copy_up: o.copy_up && typ == "tmpfs",
            });
        }
    }
    steps.extend(o.propagation.iter().map(|p| Step::Propagation { target: target.clone(), flags: *p }));
    Ok(steps)
}

/// A bind's source on the host (relative ones are in the bundle) and its target: a file or a
/// directory, as the source is.
fn bind_source_and_target(field: &str, m: &Mount, dest: &str, facts: &Facts) -> Result<(PathBuf, Target), SpecError> {
    let src = m.source().as_ref().ok_or_else(|| err(format!("{field}.source"), "a bind needs a source"))?;
    let src = if src.is_absolute() { src.clone() } else { facts.bundle.join(src) };
    let is_dir = *facts.sources.get(&src).ok_or_else(|| {
        err(format!("{field}.source"), format!("{} does not exist; create it or drop the mount", src.display()))
    })?;
    let target = if is_dir { Target::Dir(dest.to_string()) } else { Target::File(dest.to_string()) };
    Ok((src, target))
}

/// A `cgroup` mount: cgroup2 on a v2-only host; otherwise a tmpfs with the container's own
/// cgroup of each hierarchy bound in (what runc does without a cgroup namespace), read-only
/// when asked.
fn cgroup_steps(dest: &str, flags: u64, facts: &Facts) -> Vec<Step> {
    let ro = flags & f::RDONLY;
    let base = flags & (f::NOSUID | f::NODEV | f::NOEXEC);
    if facts.cgroup_v2_only {
        return vec![Step::Fs {
            fstype: "cgroup2".into(),
            source: "cgroup".into(),
            target: Target::Dir(dest.to_string()),
            flags: base | ro,
            data: None,
            sysfs_fallback: false,
            copy_up: false,
        }];
    }
    let mut steps = vec![Step::Fs {
        fstype: "tmpfs".into(),
        source: "cgroup".into(),
        target: Target::Dir(dest.to_string()),
        flags: base,
        data: Some("mode=755".into()),
        sysfs_fallback: false,
        copy_up: false,
    }];
    for (name, host) in &facts.cgroups {
        steps.push(Step::BindFlags {
            source: host.clone(),
            target: Target::Dir(format!("{dest}/{name}")),
            recursive: false,
            remount: base | ro,
        });
        // Co-mounted controllers are reachable by each name (`cpu` -> `cpu,cpuacct`).
        if name.contains(',') {
            for part in name.split(',') {
                steps.push(Step::DefaultSymlink { path: format!("{dest}/{part}"), to: name.clone() });
            }
        }
    }
    if ro != 0 {
        steps.push(Step::Remount { target: Target::Dir(dest.to_string()), flags: libc::MS_BIND | base | ro });
    }
    steps
}

/// A sysctl key as its `/proc/sys` path, refusing the ones that are not namespaced by a
/// namespace the container has of its own (runc's rule).
fn sysctl_path(key: &str, create: &CloneFlags) -> Result<String, SpecError> {
    let field = format!("linux.sysctl.{key}");
    if key.is_empty() || key.contains("..") || key.contains('/') && key.contains('.') || key.starts_with(['.', '/']) {
        return Err(err(field, "is not a sysctl name"));
    }
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let ok = if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        create.contains(CloneFlags::CLONE_NEWIPC)
    } else if key.starts_with("net.") {
        create.contains(CloneFlags::CLONE_NEWNET)
    } else if key == "kernel.hostname" || key == "kernel.domainname" {
        create.contains(CloneFlags::CLONE_NEWUTS)
    } else {
        false
    };
    if !ok {
        return Err(err(field, "is not namespaced by a namespace of the container's own; it would change the host"));
    }
    Ok(key.replace('.', "/"))
}

/// The process of a container or of an exec (`field` is `process` or the `--process` file).
pub fn process_plan(p: &Process, field: &str, facts: &Facts) -> Result<ProcessPlan, SpecError> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(err(format!("{field}.args"), "must name a program"));
    }
    if p.command_line().is_some() {
        return Err(err(format!("{field}.commandLine"), "is for Windows"));
    }
    if !p.cwd().is_absolute() {
        return Err(err(format!("{field}.cwd"), format!("{} must be absolute", p.cwd().display())));
    }
    if let Some(a) = p.apparmor_profile().as_ref().filter(|a| !a.is_empty()) {
        if !facts.apparmor {
            return Err(err(
                format!("{field}.apparmorProfile"),
                format!("AppArmor is not enabled on this host, so profile {a:?} cannot be applied"),
            ));
        }
        return Err(err(format!("{field}.apparmorProfile"), "AppArmor profiles are not supported yet"));
    }
    if let Some(l) = p.selinux_label().as_ref().filter(|l| !l.is_empty()) {
        let why = if facts.selinux {
            "SELinux labels are not supported yet".to_string()
        } else {
            format!("SELinux is not enabled on this host, so label {l:?} cannot be applied")
        };
        return Err(err(format!("{field}.selinuxLabel"), why));
    }
    for (i, e) in p.env().clone().unwrap_or_default().iter().enumerate() {
        if !e.contains('=') || e.starts_with('=') {
            return Err(err(format!("{field}.env[{i}]"), format!("{e:?} is not KEY=VALUE")));
        }
    }
    let u = p.user();
    if u.username().as_ref().is_some_and(|n| !n.is_empty()) {
        return Err(err(format!("{field}.user.username"), "is for Windows; give uid and gid"));
    }
    let caps = match p.capabilities() {
        None => CapSets::default(),
        Some(c) => {
            let set =
                |name: &str, s: &Option<oci_spec::runtime::Capabilities>| -> Result<BTreeSet<String>, SpecError> {
                    s.iter()
                        .flatten()
                        .map(|c| {
                            let n = format!("CAP_{c}");
                            caps::Capability::from_str(&n).map(|_| n.clone()).map_err(|_| {
                                err(format!("{field}.capabilities.{name}"), format!("unknown capability {n}"))
                            })
                        })
                        .collect()
                };
            CapSets {
                bounding: set("bounding", c.bounding())?,
                effective: set("effective", c.effective())?,
                permitted: set("permitted", c.permitted())?,
                inheritable: set("inheritable", c.inheritable())?,
                ambient: set("ambient", c.ambient())?,
            }
        }
    };
    if let Some(c) = caps.effective.difference(&caps.permitted).next() {
        return Err(err(format!("{field}.capabilities.effective"), format!("{c} is not in the permitted set")));
    }
    let mut warnings = Vec::new();
    let mut caps = caps;
    let not_ambient: Vec<String> = caps
        .ambient
        .iter()
        .filter(|c| !caps.permitted.contains(*c) || !caps.inheritable.contains(*c))
        .cloned()
        .collect();
    for c in not_ambient {
        // The kernel refuses such an ambient capability; runc's and crun's own default specs
        // ask for some (with no inheritable set) and they drop them quietly.
        warnings.push(format!(
            "{field}.capabilities.ambient: {c} is not in both the permitted and inheritable sets, so it cannot be ambient"
        ));
        caps.ambient.remove(&c);
    }
    let mut rlimits = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in p.rlimits().clone().unwrap_or_default().iter().enumerate() {
        use nix::sys::resource::Resource as R;
        let res = match r.typ() {
            PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
            PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
            PosixRlimitType::RlimitData => R::RLIMIT_DATA,
            PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
            PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
            PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
            PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
            PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
            PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
            PosixRlimitType::RlimitAs => R::RLIMIT_AS,
            PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
            PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
            PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
            PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
            PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
            PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
        };
        if !seen.insert(res as i32) {
            return Err(err(format!("{field}.rlimits[{i}]"), format!("{:?} is set twice", r.typ())));
        }
        if r.soft() > r.hard() {
            return Err(err(format!("{field}.rlimits[{i}]"), "the soft limit is above the hard limit"));
        }
        rlimits.push((res, r.soft(), r.hard()));
    }
    let console_size = match (p.terminal().unwrap_or(false), p.console_size()) {
        (true, Some(b)) => Some((to_u16(b.height()), to_u16(b.width()))),
        _ => None,
    };
    Ok(ProcessPlan {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        uid: u.uid(),
        gid: u.gid(),
        groups: u.additional_gids().clone().unwrap_or_default(),
        umask: u.umask(),
        caps,
        rlimits,
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        oom_score_adj: p.oom_score_adj(),
        terminal: p.terminal().unwrap_or(false),
        console_size,
        warnings,
    })
}

fn to_u16(v: u64) -> u16 {
    v.min(u16::MAX as u64) as u16
}

/// `linux.seccomp` as a filter. A `defaultAction` of ALLOW with no rules is no filter.
pub fn seccomp_plan(s: &LinuxSeccomp) -> Result<Option<SeccompPlan>, SpecError> {
    use oci_spec::runtime::Arch;
    if s.listener_path().is_some() {
        return Err(err(
            "linux.seccomp.listenerPath",
            "seccomp user notification (SCMP_ACT_NOTIFY) is not supported; drop the listener",
        ));
    }
    if let Some(archs) = s.architectures() {
        if !archs.is_empty() && !archs.iter().any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative)) {
            return Err(err("linux.seccomp.architectures", "must include SCMP_ARCH_X86_64 on this host"));
        }
    }
    let mut flags = 0u32;
    for fl in s.flags().clone().unwrap_or_default() {
        flags |= match fl {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG as u32,
            // The container's init is single-threaded when it installs the filter.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32,
        };
    }
    let action = |field: &str, a: LinuxSeccompAction, errno: Option<u32>| -> Result<Action, SpecError> {
        Ok(match a {
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActErrno => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => Action::KillThread,
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActTrace => Action::Trace(errno.unwrap_or(libc::EPERM as u32)),
            LinuxSeccompAction::ScmpActNotify => {
                return Err(err(field, "SCMP_ACT_NOTIFY is not supported (no seccomp listener)"))
            }
        })
    };
    let default = action("linux.seccomp.defaultAction", s.default_action(), s.default_errno_ret())?;
    let mut rules = Vec::new();
    for (i, sc) in s.syscalls().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let act = action(&format!("{field}.action"), sc.action(), sc.errno_ret())?;
        let mut conds = Vec::new();
        for (j, a) in sc.args().clone().unwrap_or_default().iter().enumerate() {
            if a.index() > 5 {
                return Err(err(format!("{field}.args[{j}].index"), "syscalls have arguments 0 to 5"));
            }
            let op = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => CmpOp::Ne,
                LinuxSeccompOperator::ScmpCmpLt => CmpOp::Lt,
                LinuxSeccompOperator::ScmpCmpLe => CmpOp::Le,
                LinuxSeccompOperator::ScmpCmpEq => CmpOp::Eq,
                LinuxSeccompOperator::ScmpCmpGe => CmpOp::Ge,
                LinuxSeccompOperator::ScmpCmpGt => CmpOp::Gt,
                // libseccomp's SCMP_CMP_MASKED_EQ: (arg & value) == valueTwo.
                LinuxSeccompOperator::ScmpCmpMaskedEq => CmpOp::MaskedEq(a.value()),
            };
            let value = if matches!(op, CmpOp::MaskedEq(_)) { a.value_two().unwrap_or(0) } else { a.value() };
            conds.push(Cond { arg: a.index() as u8, op, value });
        }
        for name in sc.names() {
            // A name this kernel's table lacks is a syscall of another architecture or a newer
            // kernel: no process here can make it (libseccomp skips these the same way).
            let Some(nr) = husk_types::syscalls::number(name) else { continue };
            rules.push(Rule { nr, action: act, conds: conds.clone() });
        }
    }
    if default == Action::Allow && rules.iter().all(|r| r.action == Action::Allow) {
        return Ok(None);
    }
    Ok(Some(SeccompPlan { filter: Filter { default, rules }, flags }))
}

#[cfg(test)]
mod tests;
