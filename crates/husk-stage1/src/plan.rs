//! stage1 as plan, then apply. Pure functions turn a pod manifest, an app and the facts of the
//! host into an ordered plan — the namespaces of the pod init, and the steps of an app's mount
//! view inside its root — which [`crate::apply`] executes. The planners do no I/O: everything
//! they need to know about the host comes in as [`HostFacts`]. A second planner (an OCI
//! bundle's config.json) or another executor (a KVM guest's init) reuses the other half.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use husk_types::etc::Hosts;
use husk_types::pod::{App, IpcMode, NetMode, Notify, PodManifest, Stdio, VolumeKind, MASKED_PATHS, READONLY_PATHS};

/// Mount flags, as `mount(2)` takes them (`MS_*`).
pub mod flags {
    pub const RDONLY: u64 = libc::MS_RDONLY;
    pub const NOSUID: u64 = libc::MS_NOSUID;
    pub const NODEV: u64 = libc::MS_NODEV;
    pub const NOEXEC: u64 = libc::MS_NOEXEC;
    pub const STRICTATIME: u64 = libc::MS_STRICTATIME;
}

/// What a plan step mounts onto, relative to the app's root (no `..`, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A directory, created when missing; a symlink or non-directory there is refused.
    Dir(String),
    /// A file, created when missing; a symlink or special file there is refused.
    File(String),
}

/// One step of an app's mount view, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mount a filesystem.
    Mount {
        fstype: &'static str,
        source: &'static str,
        target: Target,
        flags: u64,
        data: Option<String>,
    },
    /// sysfs, or (in a user namespace without a network namespace of its own, where the kernel
    /// refuses sysfs) a read-only bind of the host's /sys.
    Sysfs {
        target: Target,
        bind_host_if_refused: bool,
    },
    /// Bind a host path; `read_only` remounts the bind read-only.
    Bind {
        source: PathBuf,
        target: Target,
        read_only: bool,
    },
    /// A character device node in /dev (`private_users`: an empty file and a bind of the host's
    /// node, since mknod is not allowed in a user namespace).
    DevNode {
        name: &'static str,
        major: u32,
        minor: u32,
        bind_host: bool,
    },
    Symlink {
        path: String,
        to: &'static str,
    },
    /// A symlink the image may lack: made only when nothing is at `path` (its directory is
    /// created when missing).
    DefaultSymlink {
        path: String,
        to: String,
    },
    Mkdir {
        path: String,
    },
    /// Remove what the image has at `path` if it is neither a regular file nor a directory, so
    /// that stage1's own file can be bound there.
    ReplaceSpecial {
        path: String,
    },
    /// If `path` exists: hide it (a file gets /dev/null, a directory an empty read-only tmpfs).
    Mask {
        path: String,
    },
    /// If `path` exists: make it read-only.
    ReadOnly {
        path: String,
    },
    /// Remount the whole root read-only (keeping nodev).
    ReadOnlyRoot,
    /// A mount from an OCI bundle's config.json: any filesystem, owned strings. `sysfs_fallback`:
    /// when the kernel refuses the mount (sysfs in a user namespace without its own network
    /// namespace), bind the host's /sys read-only instead, as runc does.
    Fs {
        fstype: String,
        source: String,
        target: Target,
        flags: u64,
        data: Option<String>,
        sysfs_fallback: bool,
        /// `tmpcopyup`: the directory's content before the mount is copied into the new
        /// (tmpfs) mount, so that a read-only root keeps its /run, /tmp contents writable.
        copy_up: bool,
    },
    /// A bind (recursive for `rbind`), then remounted with `remount` (`MS_RDONLY`, `MS_NOSUID`,
    /// ...) when that is not empty.
    BindFlags {
        source: PathBuf,
        target: Target,
        recursive: bool,
        remount: u64,
    },
    /// Mount propagation (`MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE`, `MS_UNBINDABLE`, maybe with
    /// `MS_REC`) of a mounted target.
    Propagation {
        target: Target,
        flags: u64,
    },
    /// A device node with its mode and owner, skipped when something is at `path` already;
    /// `bind_host` binds that host node instead (mknod is refused in a user namespace).
    Device {
        path: String,
        block: bool,
        major: u32,
        minor: u32,
        mode: u32,
        uid: u32,
        gid: u32,
        bind_host: Option<PathBuf>,
    },
    /// Remounts a mounted target with `flags` (a tmpfs made read-only once its content is in).
    Remount {
        target: Target,
        flags: u64,
    },
    /// Attaches the `tree`-th idmapped tree prepared before the mount namespace existed (an OCI
    /// mount with `idmap`), then remounts it with `remount` when that is not empty.
    IdmappedBind {
        tree: usize,
        target: Target,
        remount: u64,
    },
}

/// What the planners need to know about the host and the pod directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The pod's /etc files stage1 wrote, by name (`hostname`, `hosts`, `resolv.conf`), with
    /// their paths.
    pub etc_files: Vec<(&'static str, PathBuf)>,
    /// For each volume: where its content is on the host (an idmapped clone with private
    /// users), and whether it is a directory.
    pub volume_sources: BTreeMap<String, (PathBuf, bool)>,
    /// The invoker's terminal, for an interactive pod.
    pub tty: Option<PathBuf>,
    /// `--sd-notify=app:NAME`: the directory of that app's notify socket.
    pub notify_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("app {app}: a mount names volume {volume:?}, which the pod does not define")]
    UnknownVolume { app: String, volume: String },
    #[error("app {app}: volume {volume:?} has no source on the host")]
    NoSource { app: String, volume: String },
    #[error("path {0} must be absolute and must not contain '..'")]
    BadPath(String),
}

/// A path inside the app's root as relative components, refusing `..`.
pub fn rel_in_root(p: &Path) -> Result<String, PlanError> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err(PlanError::BadPath(p.display().to_string())),
        }
    }
    Ok(out.display().to_string())
}

/// The standard pseudo devices every app gets (what runc and crun create).
pub const DEV_NODES: &[(&str, u32, u32)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// The plan of an app's mount view: /proc, /sys, /dev, the pod's /etc files, volumes, masked
/// and read-only kernel paths, the working directory, a read-only root. Applied in the app's
/// own mount namespace, before `pivot_root`.
pub fn app_mounts(m: &PodManifest, app: &App, facts: &HostFacts) -> Result<Vec<Step>, PlanError> {
    use flags::*;
    let in_userns = m.private_users.is_some();
    let dir = |p: &str| Target::Dir(p.to_string());
    let mut plan = vec![
        Step::Mount { fstype: "proc", source: "proc", target: dir("proc"), flags: NOSUID | NODEV | NOEXEC, data: None },
        Step::Sysfs { target: dir("sys"), bind_host_if_refused: in_userns },
        Step::Mount {
            fstype: "tmpfs",
            source: "tmpfs",
            target: dir("dev"),
            flags: NOSUID | STRICTATIME,
            data: Some("mode=755,size=65536k".into()),
        },
    ];
    for (name, major, minor) in DEV_NODES {
        plan.push(Step::DevNode { name, major: *major, minor: *minor, bind_host: in_userns });
    }
    for (name, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        plan.push(Step::Symlink { path: format!("dev/{name}"), to });
    }
    plan.push(Step::Mount {
        fstype: "devpts",
        source: "devpts",
        target: dir("dev/pts"),
        flags: NOSUID | NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into()),
    });
    plan.push(Step::Mount {
        fstype: "tmpfs",
        source: "shm",
        target: dir("dev/shm"),
        flags: NOSUID | NODEV | NOEXEC,
        data: Some("mode=1777,size=65536k".into()),
    });
    plan.push(Step::Mount {
        fstype: "mqueue",
        source: "mqueue",
        target: dir("dev/mqueue"),
        flags: NOSUID | NODEV | NOEXEC,
        data: None,
    });
    if let (Stdio::Interactive, Some(tty)) = (m.stdio, &facts.tty) {
        plan.push(Step::Bind { source: tty.clone(), target: Target::File("dev/console".into()), read_only: false });
    }
    // The pod's /etc files: the image's own entry is replaced in the pod's upper dir when it is
    // a symlink (resolv.conf often is one) or a special file, never followed or opened.
    for (name, src) in &facts.etc_files {
        let path = format!("etc/{name}");
        plan.push(Step::ReplaceSpecial { path: path.clone() });
        let read_only = *name == "hostname" || *name == "hosts" && m.hosts == Hosts::Host;
        plan.push(Step::Bind { source: src.clone(), target: Target::File(path), read_only });
    }
    // The app that talks to systemd itself gets its socket at /run/notify.
    if let (Notify::App(name), Some(src)) = (&m.systemd.notify, &facts.notify_dir) {
        if *name == app.name {
            plan.push(Step::Bind { source: src.clone(), target: Target::Dir("run/notify".into()), read_only: false });
        }
    }
    // Tools read /etc/mtab (podman adds it too).
    plan.push(Step::DefaultSymlink { path: "etc/mtab".into(), to: "/proc/mounts".into() });
    for mp in &app.mounts {
        let vol = m
            .volumes
            .iter()
            .find(|v| v.name == mp.volume)
            .ok_or_else(|| PlanError::UnknownVolume { app: app.name.clone(), volume: mp.volume.clone() })?;
        let (source, is_dir) = facts
            .volume_sources
            .get(&vol.name)
            .cloned()
            .ok_or_else(|| PlanError::NoSource { app: app.name.clone(), volume: vol.name.clone() })?;
        let read_only = mp.read_only || matches!(vol.kind, VolumeKind::Host { read_only: true, .. });
        let rel = rel_in_root(&mp.target)?;
        let target = if is_dir { Target::Dir(rel) } else { Target::File(rel) };
        plan.push(Step::Bind { source, target, read_only });
    }
    if app.security.masked_paths {
        plan.extend(MASKED_PATHS.iter().map(|p| Step::Mask { path: p.to_string() }));
        plan.extend(READONLY_PATHS.iter().map(|p| Step::ReadOnly { path: p.to_string() }));
    }
    // The working directory exists before the root becomes read-only.
    let wd = rel_in_root(&app.working_dir)?;
    if !wd.is_empty() {
        plan.push(Step::Mkdir { path: wd });
    }
    if app.readonly_rootfs {
        plan.push(Step::ReadOnlyRoot);
    }
    Ok(plan)
}

/// Where the pod init's network namespace comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNet {
    /// The host's (`--net=host`).
    Host,
    /// A new one, created with the init, which brings its loopback up.
    New,
    /// One made before the init, which is born in it: the one a CNI pod's plugins configured,
    /// or a spare a `--net=none` pod took (loopback up already).
    Made,
}

/// Whether a pod's network namespace may be made ahead of its start, as a spare by an earlier
/// pod's cleanup (creating one is the costliest step of a pod's start here, about 0.45 ms): a
/// `--net=none` pod of the `ns` flavor without private users. With private users the pod's own
/// user namespace must own its network namespace (its root configures it), so that one is made
/// with the init; CNI pods make theirs at run, with their networks.
pub fn netns_ahead(m: &PodManifest) -> bool {
    m.net == NetMode::None && m.private_users.is_none() && m.flavor == husk_types::pod::Flavor::Ns
}

/// The pod's network namespace, given whether one was made for it (a CNI pod's always is, by
/// then).
pub fn pod_net(m: &PodManifest, made: bool) -> PodNet {
    match (&m.net, made) {
        (NetMode::Host, _) => PodNet::Host,
        (_, true) => PodNet::Made,
        (_, false) => PodNet::New,
    }
}

/// The namespaces the pod init is cloned into: always PID and UTS; IPC unless the pod shares
/// the host's; network only for a new one (pods with a pinned one are born in it, host pods in
/// the host's); user and mount with private users. Without private users the init stays in the
/// supervisor's private mount namespace: it mounts nothing, each app unshares its own from it,
/// and a copy of the host's mount table for the init alone (and its end, with an RCU grace
/// period) would be work for nothing. In its own user namespace it needs a mount namespace that
/// namespace owns.
pub fn init_namespaces(m: &PodManifest, net: PodNet) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags as F;
    let mut f = F::CLONE_NEWPID | F::CLONE_NEWUTS;
    if m.ipc == IpcMode::Private {
        f |= F::CLONE_NEWIPC;
    }
    if net == PodNet::New {
        f |= F::CLONE_NEWNET;
    }
    if m.private_users.is_some() {
        f |= F::CLONE_NEWUSER | F::CLONE_NEWNS;
    }
    f
}

/// A pod and app for tests of this crate.
#[cfg(test)]
pub fn tests_fixture() -> (PodManifest, App) {
    tests::fixture()
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_types::pod::{AppSecurity, AppUser, Flavor, IdRange, ImageInfo, LogLimits, MountPoint, Volume};
    use husk_types::Digest;
    use nix::sched::CloneFlags as F;

    #[test]
    fn only_the_app_named_by_sd_notify_gets_the_notify_socket() {
        let (mut m, app) = fixture();
        let facts = HostFacts { notify_dir: Some("/p/notify".into()), ..Default::default() };
        let bind =
            Step::Bind { source: "/p/notify".into(), target: Target::Dir("run/notify".into()), read_only: false };
        m.systemd.notify = husk_types::pod::Notify::App(app.name.clone());
        assert!(app_mounts(&m, &app, &facts).unwrap().contains(&bind));
        m.systemd.notify = husk_types::pod::Notify::App("other".into());
        assert!(!app_mounts(&m, &app, &facts).unwrap().contains(&bind));
        m.systemd.notify = husk_types::pod::Notify::Pod;
        assert!(!app_mounts(&m, &app, &facts).unwrap().iter().any(|s| matches!(s, Step::Bind { .. })));
    }

    pub fn fixture() -> (PodManifest, App) {
        let app = App {
            name: "web".into(),
            image: ImageInfo {
                name: "img".into(),
                id: Digest::from_sha256_bytes(&[1; 32]),
                manifest: Digest::from_sha256_bytes(&[2; 32]),
            },
            layers: vec!["/store/layers/a/rootfs".into()],
            exec: vec!["/bin/true".into()],
            env: vec![],
            user: AppUser { uid: 0, gid: 0, additional_gids: vec![] },
            working_dir: "/".into(),
            mounts: vec![],
            readonly_rootfs: false,
            security: AppSecurity::default(),
            resources: Default::default(),
        };
        let m = PodManifest {
            abi_version: 2,
            uuid: "u".into(),
            created: chrono::Utc::now(),
            flavor: Flavor::Ns,
            hostname: "pod".into(),
            net: NetMode::None,
            ipc: IpcMode::Private,
            dns: Default::default(),
            hosts: Default::default(),
            volumes: vec![],
            apps: vec![app.clone()],
            stdio: Stdio::Inherit,
            private_users: None,
            annotations: Default::default(),
            log_limits: LogLimits::default(),
            exit_policy: Default::default(),
            exit_command: vec![],
            systemd: Default::default(),
            vm: None,
        };
        (m, app)
    }

    fn kinds(plan: &[Step]) -> Vec<String> {
        plan.iter()
            .map(|s| match s {
                Step::Mount { fstype, target: Target::Dir(t), .. } => format!("mount {fstype} {t}"),
                Step::Sysfs { target: Target::Dir(t), bind_host_if_refused } => {
                    format!("sysfs {t} {bind_host_if_refused}")
                }
                Step::Bind { target: Target::File(t) | Target::Dir(t), read_only, .. } => {
                    format!("bind {t} ro={read_only}")
                }
                Step::DevNode { name, bind_host, .. } => format!("dev {name} {bind_host}"),
                Step::Symlink { path, .. } => format!("symlink {path}"),
                Step::DefaultSymlink { path, .. } => format!("default-symlink {path}"),
                Step::Mkdir { path } => format!("mkdir {path}"),
                Step::ReplaceSpecial { path } => format!("replace {path}"),
                Step::Mask { path } => format!("mask {path}"),
                Step::ReadOnly { path } => format!("ro {path}"),
                Step::ReadOnlyRoot => "ro-root".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_default_app_gets_proc_sys_dev_and_masked_paths_in_this_order() {
        let (m, app) = fixture();
        let k = kinds(&app_mounts(&m, &app, &HostFacts::default()).unwrap());
        assert_eq!(&k[..4], ["mount proc proc", "sysfs sys false", "mount tmpfs dev", "dev null false"]);
        assert!(k.contains(&"mount devpts dev/pts".to_string()) && k.contains(&"symlink dev/ptmx".to_string()));
        let first_mask = k.iter().position(|s| s.starts_with("mask ")).unwrap();
        assert!(k[first_mask..].iter().all(|s| s.starts_with("mask ") || s.starts_with("ro ")));
        assert_eq!(k.iter().filter(|s| s.starts_with("mask ")).count(), MASKED_PATHS.len());
        assert!(!k.contains(&"ro-root".to_string()) && !k.iter().any(|s| s.starts_with("mkdir")));
    }

    #[test]
    fn etc_files_volumes_workdir_and_a_readonly_root_come_after_dev() {
        let (mut m, mut app) = fixture();
        m.volumes = vec![
            Volume { name: "data".into(), kind: VolumeKind::Host { source: "/srv".into(), read_only: true } },
            Volume { name: "scratch".into(), kind: VolumeKind::Empty },
        ];
        app.mounts = vec![
            MountPoint { volume: "data".into(), target: "/data".into(), read_only: false },
            MountPoint { volume: "scratch".into(), target: "/tmp/s".into(), read_only: false },
        ];
        app.working_dir = "/work/dir".into();
        app.readonly_rootfs = true;
        app.security.masked_paths = false;
        let facts = HostFacts {
            etc_files: vec![("hostname", "/p/etc/hostname".into()), ("resolv.conf", "/p/etc/resolv.conf".into())],
            volume_sources: [
                ("data".to_string(), ("/srv".into(), true)),
                ("scratch".to_string(), ("/p/volumes/scratch".into(), true)),
            ]
            .into_iter()
            .collect(),
            tty: None,
            notify_dir: None,
        };
        let k = kinds(&app_mounts(&m, &app, &facts).unwrap());
        let tail: Vec<&str> = k.iter().skip_while(|s| !s.starts_with("replace")).map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "replace etc/hostname",
                "bind etc/hostname ro=true",
                "replace etc/resolv.conf",
                "bind etc/resolv.conf ro=false",
                "default-symlink etc/mtab",
                "bind data ro=true",
                "bind tmp/s ro=false",
                "mkdir work/dir",
                "ro-root"
            ]
        );
    }

    #[test]
    fn private_users_bind_device_nodes_and_may_bind_the_hosts_sys() {
        let (mut m, app) = fixture();
        m.private_users = Some(IdRange { host_base: 1 << 20, count: 65536 });
        let k = kinds(&app_mounts(&m, &app, &HostFacts::default()).unwrap());
        assert!(k.contains(&"sysfs sys true".to_string()));
        assert!(k.iter().filter(|s| s.starts_with("dev ")).all(|s| s.ends_with("true")));
    }

    #[test]
    fn an_interactive_pod_binds_the_terminal_as_the_console() {
        let (mut m, app) = fixture();
        m.stdio = Stdio::Interactive;
        let facts = HostFacts { tty: Some("/dev/pts/3".into()), ..Default::default() };
        let plan = app_mounts(&m, &app, &facts).unwrap();
        assert!(plan.contains(&Step::Bind {
            source: "/dev/pts/3".into(),
            target: Target::File("dev/console".into()),
            read_only: false
        }));
        m.stdio = Stdio::Inherit;
        assert!(!app_mounts(&m, &app, &facts)
            .unwrap()
            .iter()
            .any(|s| matches!(s, Step::Bind { target: Target::File(t), .. } if t == "dev/console")));
    }

    #[test]
    fn bad_mounts_are_refused_by_the_planner() {
        let (m, mut app) = fixture();
        app.mounts = vec![MountPoint { volume: "nope".into(), target: "/x".into(), read_only: false }];
        assert!(matches!(app_mounts(&m, &app, &HostFacts::default()), Err(PlanError::UnknownVolume { .. })));
        let (mut m, mut app) = fixture();
        m.volumes = vec![Volume { name: "v".into(), kind: VolumeKind::Empty }];
        app.mounts = vec![MountPoint { volume: "v".into(), target: "/a/../../etc".into(), read_only: false }];
        let facts = HostFacts {
            volume_sources: [("v".to_string(), ("/p/v".into(), true))].into_iter().collect(),
            ..Default::default()
        };
        assert_eq!(app_mounts(&m, &app, &facts), Err(PlanError::BadPath("/a/../../etc".into())));
    }

    /// Every combination of the inputs that decide the pod init's namespaces, and where its
    /// network namespace comes from.
    #[test]
    fn init_namespaces_over_every_combination() {
        let cni = NetMode::Cni { networks: vec![], ports: vec![], plugin_dirs: vec![] };
        for ipc in [IpcMode::Private, IpcMode::Parent] {
            for net in [NetMode::None, NetMode::Host, cni.clone()] {
                for users in [None, Some(IdRange { host_base: 1 << 20, count: 65536 })] {
                    for flavor in [Flavor::Ns, Flavor::Fly, Flavor::Kvm] {
                        for made in [false, true] {
                            let (mut m, _) = fixture();
                            (m.ipc, m.net, m.private_users, m.flavor) =
                                (ipc.clone(), net.clone(), users, flavor.clone());
                            let ahead = netns_ahead(&m);
                            assert_eq!(ahead, net == NetMode::None && users.is_none() && flavor == Flavor::Ns);
                            let pod_net = pod_net(&m, made);
                            let want = match (&net, made) {
                                (NetMode::Host, _) => PodNet::Host,
                                (_, true) => PodNet::Made,
                                (_, false) => PodNet::New,
                            };
                            assert_eq!(pod_net, want);
                            let f = init_namespaces(&m, pod_net);
                            assert!(f.contains(F::CLONE_NEWPID | F::CLONE_NEWUTS));
                            assert_eq!(f.contains(F::CLONE_NEWNS), users.is_some());
                            assert_eq!(f.contains(F::CLONE_NEWIPC), ipc == IpcMode::Private);
                            assert_eq!(f.contains(F::CLONE_NEWNET), net != NetMode::Host && !made);
                            assert_eq!(f.contains(F::CLONE_NEWUSER), users.is_some());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn relative_paths_refuse_dotdot() {
        assert_eq!(rel_in_root(Path::new("/a/./b")).unwrap(), "a/b");
        assert!(rel_in_root(Path::new("/a/../../etc")).is_err());
    }
}
