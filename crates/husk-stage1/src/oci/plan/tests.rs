use serde_json::{json, Value};

use super::*;

/// runc's `spec` output, the shape every caller starts from.
fn base() -> Value {
    let mut v = serde_json::to_value(Spec::default()).unwrap();
    v.as_object_mut().unwrap().remove("hostname");
    v
}

fn spec(v: &Value) -> Spec {
    serde_json::from_value(v.clone()).unwrap()
}

fn facts() -> Facts {
    let mut sources = BTreeMap::new();
    sources.insert(PathBuf::from("/data"), true);
    sources.insert(PathBuf::from("/etc/hosts"), false);
    sources.insert(PathBuf::from("/b/rel"), true);
    Facts {
        bundle: "/b".into(),
        sources,
        cgroups: vec![
            ("memory".into(), "/sys/fs/cgroup/memory/c".into()),
            ("cpu,cpuacct".into(), "/cg/cpu,cpuacct/c".into()),
        ],
        cgroup_v2_only: false,
        host_namespaces: Default::default(),
        mount_idmaps: Default::default(),
        apparmor: false,
        selinux: false,
    }
}

fn plan_of(v: &Value) -> Result<ContainerPlan, SpecError> {
    plan(&spec(v), &facts())
}

fn field_of(v: &Value) -> String {
    plan_of(v).unwrap_err().field
}

#[test]
fn the_default_spec_plans_namespaces_mounts_devices_and_masks() {
    let p = plan_of(&base()).unwrap();
    assert_eq!(p.rootfs, PathBuf::from("/b/rootfs"));
    for f in [CloneFlags::CLONE_NEWPID, CloneFlags::CLONE_NEWNS, CloneFlags::CLONE_NEWIPC, CloneFlags::CLONE_NEWUTS] {
        assert!(p.create.contains(f), "{f:?}");
    }
    assert!(p.join.is_empty());
    assert_eq!(p.uid_map, None);
    assert_eq!(p.root_propagation, libc::MS_REC | libc::MS_SLAVE);
    // Config mounts first, in order.
    let Step::Fs { fstype, target, .. } = &p.mounts[0] else { panic!("{:?}", p.mounts[0]) };
    assert_eq!((fstype.as_str(), target), ("proc", &Target::Dir("proc".into())));
    let devs: Vec<&str> = p
        .mounts
        .iter()
        .filter_map(|s| match s {
            Step::Device { path, bind_host: None, mode: 0o666, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(devs, ["dev/null", "dev/zero", "dev/full", "dev/random", "dev/urandom", "dev/tty"]);
    assert!(p.mounts.contains(&Step::DefaultSymlink { path: "dev/ptmx".into(), to: "pts/ptmx".into() }));
    assert!(p.finish.contains(&Step::Mask { path: "proc/kcore".into() }));
    assert!(p.finish.contains(&Step::ReadOnly { path: "proc/sys".into() }));
    assert!(p.finish.contains(&Step::ReadOnlyRoot), "runc's default root is read-only");
    assert_eq!(
        p.mounts.last(),
        Some(&Step::DefaultSymlink { path: "dev/ptmx".into(), to: "pts/ptmx".into() }),
        "cwd is /"
    );
    let mut v = base();
    v["process"]["cwd"] = json!("/srv/app");
    assert_eq!(plan_of(&v).unwrap().mounts.last(), Some(&Step::Mkdir { path: "srv/app".into() }));
    assert_eq!(p.process.args, ["sh"]);
    assert!(p.process.caps.bounding.contains("CAP_KILL"));
    assert_eq!(p.process.rlimits, vec![(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, 1024)]);
    assert!(p.process.no_new_privileges);
    assert!(p.seccomp.is_none());
}

#[test]
fn namespaces_given_by_path_are_joined_user_first() {
    let mut v = base();
    v["linux"]["namespaces"] = json!([
        {"type": "mount"}, {"type": "network", "path": "/run/netns/n1"}, {"type": "user", "path": "/proc/7/ns/user"},
        {"type": "pid"}
    ]);
    let p = plan_of(&v).unwrap();
    assert_eq!(p.join[0], (CloneFlags::CLONE_NEWUSER, PathBuf::from("/proc/7/ns/user")));
    assert_eq!(p.join[1], (CloneFlags::CLONE_NEWNET, PathBuf::from("/run/netns/n1")));
    assert_eq!(p.create, CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID);
    v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "network", "path": "netns"}]);
    assert_eq!(field_of(&v), "linux.namespaces[1].path");
    v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "pid"}, {"type": "pid"}]);
    assert_eq!(field_of(&v), "linux.namespaces[2]");
    v["linux"]["namespaces"] = json!([{"type": "pid"}]);
    assert_eq!(field_of(&v), "linux.namespaces", "no mount namespace");
}

#[test]
fn a_new_user_namespace_needs_mappings_and_mappings_need_one() {
    let mut v = base();
    v["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    assert_eq!(field_of(&v), "linux.uidMappings");
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    v["linux"]["gidMappings"] =
        json!([{"containerID": 0, "hostID": 100000, "size": 1000}, {"containerID": 1000, "hostID": 5000, "size": 1}]);
    let p = plan_of(&v).unwrap();
    assert_eq!(p.uid_map.as_deref(), Some("0 100000 65536\n"));
    assert_eq!(p.gid_map.as_deref(), Some("0 100000 1000\n1000 5000 1\n"));
    // Inside a user namespace mknod is refused: the host's nodes are bound.
    assert!(p.mounts.iter().any(|s| matches!(s, Step::Device { path, bind_host: Some(h), .. }
        if path == "dev/null" && h == Path::new("/dev/null"))));
    v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 1, "size": 0}]);
    assert_eq!(field_of(&v), "linux.gidMappings[0].size");
    let mut v = base();
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1}]);
    assert_eq!(field_of(&v), "linux.uidMappings");
}

#[test]
fn a_hostname_needs_a_uts_namespace() {
    let mut v = base();
    v["hostname"] = json!("box");
    assert_eq!(plan_of(&v).unwrap().hostname.as_deref(), Some("box"));
    v["linux"]["namespaces"] = json!([{"type": "mount"}]);
    assert_eq!(field_of(&v), "hostname");
}

#[test]
fn root_propagation_modes() {
    for (mode, flags, shared) in [
        ("private", libc::MS_REC | libc::MS_PRIVATE, false),
        ("rslave", libc::MS_REC | libc::MS_SLAVE, false),
        ("shared", libc::MS_REC | libc::MS_SLAVE, true),
        ("unbindable", libc::MS_REC | libc::MS_UNBINDABLE, false),
    ] {
        let mut v = base();
        v["linux"]["rootfsPropagation"] = json!(mode);
        let p = plan_of(&v).unwrap();
        assert_eq!((p.root_propagation, p.rootfs_shared), (flags, shared), "{mode}");
    }
    let mut v = base();
    v["linux"]["rootfsPropagation"] = json!("sideways");
    assert_eq!(field_of(&v), "linux.rootfsPropagation");
}

fn with_mounts(mounts: Value) -> Value {
    let mut v = base();
    v["mounts"] = mounts;
    v
}

#[test]
fn binds_pick_file_or_directory_targets_and_remount_their_flags() {
    let v = with_mounts(json!([
        {"destination": "/data", "type": "bind", "source": "/data", "options": ["rbind", "ro", "nosuid", "rprivate"]},
        {"destination": "/etc/hosts", "source": "/etc/hosts", "options": ["bind"]},
        {"destination": "/rel", "source": "rel", "options": ["bind"]}
    ]));
    let p = plan_of(&v).unwrap();
    assert_eq!(
        p.mounts[0],
        Step::BindFlags {
            source: "/data".into(),
            target: Target::Dir("data".into()),
            recursive: true,
            remount: f::RDONLY | f::NOSUID
        }
    );
    assert_eq!(
        p.mounts[1],
        Step::Propagation { target: Target::Dir("data".into()), flags: libc::MS_REC | libc::MS_PRIVATE }
    );
    assert_eq!(
        p.mounts[2],
        Step::BindFlags {
            source: "/etc/hosts".into(),
            target: Target::File("etc/hosts".into()),
            recursive: false,
            remount: 0
        }
    );
    let Step::BindFlags { source, .. } = &p.mounts[3] else { panic!() };
    assert_eq!(source, Path::new("/b/rel"), "relative sources are in the bundle");
}

#[test]
fn a_bind_of_a_missing_source_is_refused_by_index() {
    let v = with_mounts(json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/x", "type": "bind", "source": "/nope", "options": ["rbind"]}
    ]));
    let e = plan_of(&v).unwrap_err();
    assert_eq!(e.field, "mounts[1].source");
    assert!(e.why.contains("/nope"), "{e}");
    let v = with_mounts(json!([{"destination": "/x", "options": ["bind"]}]));
    assert_eq!(field_of(&v), "mounts[0].source");
    let v = with_mounts(json!([{"destination": "/x", "source": "/data", "options": ["bind", "size=1m"]}]));
    assert_eq!(field_of(&v), "mounts[0].options");
    let v = with_mounts(json!([{"destination": "../x", "type": "tmpfs", "source": "tmpfs"}]));
    assert_eq!(field_of(&v), "mounts[0].destination");
    let v = with_mounts(json!([{"destination": "/x", "source": "tmpfs"}]));
    assert_eq!(field_of(&v), "mounts[0].type");
}

#[test]
fn mount_options_become_flags_data_and_extensions() {
    let v = with_mounts(json!([
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nodev", "tmpcopyup", "z"]},
        {"destination": "/ro", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "rw", "noexec", "exec", "nodev"]}
    ]));
    let p = plan_of(&v).unwrap();
    assert_eq!(
        p.mounts[0],
        Step::Fs {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            target: Target::Dir("dev".into()),
            flags: f::NOSUID | f::STRICTATIME,
            data: Some("mode=755,size=65536k".into()),
            sysfs_fallback: false,
            copy_up: false,
        }
    );
    assert!(matches!(&p.mounts[1], Step::Fs { copy_up: true, flags, data: None, .. } if *flags == f::NODEV));
    assert!(matches!(&p.mounts[2], Step::Fs { flags, .. } if *flags == f::NODEV), "later options win");
    for refused in ["nosymfollow", "rro"] {
        let v = with_mounts(json!([{"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": [refused]}]));
        let e = plan_of(&v).unwrap_err();
        assert_eq!(e.field, "mounts[0].options", "{refused}");
        assert!(e.why.contains(refused), "{e}");
    }
}

#[test]
fn a_cgroup_mount_is_cgroup2_or_the_containers_own_v1_cgroups() {
    let v = with_mounts(json!([
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ]));
    let p = plan_of(&v).unwrap();
    let ro = f::NOSUID | f::NOEXEC | f::NODEV | f::RDONLY;
    assert!(matches!(&p.mounts[0], Step::Fs { fstype, .. } if fstype == "tmpfs"));
    assert_eq!(
        p.mounts[1],
        Step::BindFlags {
            source: "/sys/fs/cgroup/memory/c".into(),
            target: Target::Dir("sys/fs/cgroup/memory".into()),
            recursive: false,
            remount: ro
        }
    );
    assert!(p
        .mounts
        .contains(&Step::DefaultSymlink { path: "sys/fs/cgroup/cpuacct".into(), to: "cpu,cpuacct".into() }));
    assert!(p.mounts.contains(&Step::Remount {
        target: Target::Dir("sys/fs/cgroup".into()),
        flags: libc::MS_BIND | f::NOSUID | f::NOEXEC | f::NODEV | f::RDONLY
    }));
    let mut fx = facts();
    fx.cgroup_v2_only = true;
    let p = plan(&spec(&v), &fx).unwrap();
    assert!(matches!(&p.mounts[0], Step::Fs { fstype, flags, .. } if fstype == "cgroup2" && *flags == ro));
}

#[test]
fn sysfs_falls_back_to_the_hosts_in_a_user_namespace_without_a_network_one() {
    let mut v = base();
    v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "user"}]);
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    v["linux"]["gidMappings"] = v["linux"]["uidMappings"].clone();
    v["mounts"] = json!([{"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]}]);
    assert!(matches!(&plan_of(&v).unwrap().mounts[0], Step::Fs { sysfs_fallback: true, .. }));
    v["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "network"}));
    assert!(matches!(&plan_of(&v).unwrap().mounts[0], Step::Fs { sysfs_fallback: false, .. }));
}

#[test]
fn config_devices_are_created_under_dev_only() {
    let mut v = base();
    v["linux"]["devices"] =
        json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}]);
    let p = plan_of(&v).unwrap();
    assert!(p.mounts.contains(&Step::Device {
        path: "dev/fuse".into(),
        block: false,
        major: 10,
        minor: 229,
        mode: 0o666,
        uid: 0,
        gid: 0,
        bind_host: None
    }));
    v["linux"]["devices"] = json!([{"path": "/etc/sda", "type": "b", "major": 8, "minor": 0}]);
    assert_eq!(field_of(&v), "linux.devices[0].path");
    v["linux"]["devices"] = json!([{"path": "/dev/fifo", "type": "p", "major": 0, "minor": 0}]);
    assert_eq!(field_of(&v), "linux.devices[0].type");
    v["linux"]["devices"] = json!([{"path": "/dev/x", "type": "c", "major": -1, "minor": 0}]);
    assert_eq!(field_of(&v), "linux.devices[0].major");
}

#[test]
fn a_bound_dev_gets_no_default_nodes() {
    let v = with_mounts(json!([{"destination": "/dev", "source": "/data", "options": ["rbind"]}]));
    assert!(!plan_of(&v).unwrap().mounts.iter().any(|s| matches!(s, Step::Device { .. })));
}

#[test]
fn only_sysctls_of_the_containers_own_namespaces_are_set() {
    let mut v = base();
    v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "65536", "fs.mqueue.msg_max": "20"});
    let p = plan_of(&v).unwrap();
    assert_eq!(p.sysctl[0], ("fs/mqueue/msg_max".into(), "20".into()));
    assert_eq!(p.sysctl[2], ("net/ipv4/ip_forward".into(), "1".into()));
    for key in ["kernel.randomize_va_space", "vm.swappiness", "../etc", "kernel/../x"] {
        let mut v = base();
        v["linux"]["sysctl"] = json!({key: "1"});
        assert_eq!(field_of(&v), format!("linux.sysctl.{key}"), "{key}");
    }
    let mut v = base();
    v["linux"]["namespaces"] = json!([{"type": "mount"}]);
    v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    assert_eq!(field_of(&v), "linux.sysctl.net.ipv4.ip_forward", "no network namespace of its own");
    // A joined namespace is the container's own unless it is the host's.
    v["linux"]["namespaces"] = json!([{"type": "mount"}, {"type": "network", "path": "/run/netns/n"}]);
    assert!(plan_of(&v).is_ok());
    let mut fx = facts();
    fx.host_namespaces.insert("/run/netns/n".into());
    assert_eq!(plan(&spec(&v), &fx).unwrap_err().field, "linux.sysctl.net.ipv4.ip_forward");
}

#[test]
fn personality_and_time_offsets() {
    let mut v = base();
    v["linux"]["personality"] = json!({"domain": "LINUX32"});
    assert_eq!(plan_of(&v).unwrap().personality, Some(0x0008));
    v["linux"]["personality"] = json!({"domain": "LINUX", "flags": ["x"]});
    assert_eq!(field_of(&v), "linux.personality.flags");
    let mut v = base();
    v["linux"]["timeOffsets"] = json!({"monotonic": {"secs": 3600, "nanosecs": 5}});
    assert_eq!(field_of(&v), "linux.timeOffsets");
    v["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"}));
    assert_eq!(plan_of(&v).unwrap().time_offsets, vec![("monotonic".into(), 3600, 5)]);
    v["linux"]["timeOffsets"] = json!({"realtime": {"secs": 1}});
    assert_eq!(field_of(&v), "linux.timeOffsets.realtime");
}

fn with_seccomp(s: Value) -> Value {
    let mut v = base();
    v["linux"]["seccomp"] = s;
    v
}

#[test]
fn seccomp_profiles_become_filters() {
    let v = with_seccomp(json!({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["read", "write", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["kexec_load"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    }));
    let s = plan_of(&v).unwrap().seccomp.unwrap();
    assert_eq!(s.flags, libc::SECCOMP_FILTER_FLAG_LOG as u32);
    assert_eq!(s.filter.default, Action::Errno(38));
    let nr = |n| husk_types::syscalls::number(n).unwrap();
    assert_eq!(s.filter.rules.len(), 6, "the unknown name is skipped");
    assert!(s.filter.rules.contains(&Rule {
        nr: nr("personality"),
        action: Action::Allow,
        conds: vec![Cond { arg: 0, op: CmpOp::Eq, value: 8 }]
    }));
    assert!(s.filter.rules.contains(&Rule {
        nr: nr("clone"),
        action: Action::Allow,
        conds: vec![Cond { arg: 0, op: CmpOp::MaskedEq(2114060288), value: 0 }]
    }));
    assert!(s.filter.rules.contains(&Rule { nr: nr("mount"), action: Action::Errno(1), conds: vec![] }));
    assert!(s.filter.rules.contains(&Rule { nr: nr("kexec_load"), action: Action::KillProcess, conds: vec![] }));
    // One compact program: no syscall has rules of two actions.
    assert_eq!(crate::seccomp::compile_filter(&s.filter).unwrap().len(), 1);
}

#[test]
fn seccomp_what_cannot_be_honoured_is_refused() {
    let v = with_seccomp(json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock"}));
    assert_eq!(field_of(&v), "linux.seccomp.listenerPath");
    let v = with_seccomp(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert_eq!(field_of(&v), "linux.seccomp.defaultAction");
    let v = with_seccomp(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]}));
    assert_eq!(field_of(&v), "linux.seccomp.architectures");
    let v = with_seccomp(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}));
    assert_eq!(field_of(&v), "linux.seccomp.syscalls[0].args[0].index");
    let v = with_seccomp(
        json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
    );
    assert_eq!(plan_of(&v).unwrap().seccomp, None, "allowing everything needs no filter");
}

#[test]
fn process_fields_are_checked() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("args", json!([]), "process.args"),
        ("cwd", json!("rel"), "process.cwd"),
        ("apparmorProfile", json!("docker-default"), "process.apparmorProfile"),
        ("selinuxLabel", json!("system_u:system_r:container_t:s0"), "process.selinuxLabel"),
        ("env", json!(["PATH=/bin", "JUSTAKEY"]), "process.env[1]"),
        ("rlimits", json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]), "process.rlimits[0]"),
        (
            "rlimits",
            json!([{"type": "RLIMIT_CORE", "soft": 1, "hard": 1}, {"type": "RLIMIT_CORE", "soft": 1, "hard": 1}]),
            "process.rlimits[1]",
        ),
        ("capabilities", json!({"effective": ["CAP_KILL"], "permitted": []}), "process.capabilities.effective"),
        ("ioPriority", json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0}), "process.ioPriority"),
    ];
    for (key, value, field) in cases {
        let mut v = base();
        v["process"][key] = value;
        let e = plan_of(&v).unwrap_err();
        assert_eq!(e.field, field, "{key}: {e}");
    }
    let mut v = base();
    v["process"]["capabilities"] = json!({"ambient": ["CAP_KILL"], "permitted": ["CAP_KILL"], "inheritable": []});
    let p = plan_of(&v).unwrap().process;
    assert!(p.caps.ambient.is_empty(), "an impossible ambient capability is dropped");
    assert!(p.warnings[0].contains("process.capabilities.ambient: CAP_KILL"), "{:?}", p.warnings);
    let mut v = base();
    v["process"]["user"] = json!({"uid": 1000, "gid": 100, "umask": 18, "additionalGids": [5, 6]});
    v["process"]["terminal"] = json!(true);
    v["process"]["consoleSize"] = json!({"height": 40, "width": 120});
    v["process"]["oomScoreAdj"] = json!(500);
    let p = plan_of(&v).unwrap().process;
    assert_eq!((p.uid, p.gid, p.groups, p.umask), (1000, 100, vec![5, 6], Some(0o22)));
    assert_eq!((p.terminal, p.console_size, p.oom_score_adj), (true, Some((40, 120)), Some(500)));
}

#[test]
fn fields_husk_oci_does_not_implement_are_refused_by_name() {
    for (path, value, field) in [
        (vec!["linux", "intelRdt"], json!({"closID": "x"}), "linux.intelRdt"),
        (vec!["linux", "netDevices"], json!({"eth1": {}}), "linux.netDevices"),
        (vec!["linux", "mountLabel"], json!("system_u:object_r:container_file_t:s0"), "linux.mountLabel"),
        (vec!["process", "scheduler"], json!({"policy": "SCHED_OTHER"}), "process.scheduler"),
    ] {
        let mut v = base();
        v[path[0]][path[1]] = value;
        assert_eq!(field_of(&v), field);
    }
}

#[test]
fn only_runtime_spec_1_0_to_1_2_is_accepted() {
    for ok in ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.0", "1.2.1+dev"] {
        assert!(check_version(ok).is_ok(), "{ok}");
    }
    for bad in ["", "0.9.0", "1.3.0", "2.0.0", "1.x.0", "1.0"] {
        assert!(check_version(bad).is_err(), "{bad}");
    }
    let mut v = base();
    v["ociVersion"] = json!("1.3.0");
    assert_eq!(field_of(&v), "ociVersion");
    let mut v = base();
    v.as_object_mut().unwrap().remove("process");
    assert_eq!(field_of(&v), "process");
    let mut v = base();
    v.as_object_mut().unwrap().remove("root");
    assert_eq!(field_of(&v), "root");
}

#[test]
fn idmapped_binds_take_their_own_mappings_or_the_containers() {
    let mounts = json!([
        {"destination": "/data", "type": "bind", "source": "/data", "options": ["rbind", "idmap", "ro"]},
        {"destination": "/rel", "source": "rel", "options": ["bind"]}
    ]);
    let v = with_mounts(mounts.clone());
    let e = plan_of(&v).unwrap_err();
    assert_eq!(e.field, "mounts[0].uidMappings", "{e}");
    // The mount's own mappings.
    let mut fx = facts();
    fx.mount_idmaps.insert(0, ("0 1000 10\n".into(), "0 2000 10\n".into()));
    fx.mount_idmaps.insert(1, ("0 3000 1\n".into(), "0 3000 1\n".into()));
    let p = plan(&spec(&v), &fx).unwrap();
    assert_eq!(
        p.idmapped,
        vec![
            IdmapMount {
                source: "/data".into(),
                recursive: true,
                uid_map: "0 1000 10\n".into(),
                gid_map: "0 2000 10\n".into()
            },
            IdmapMount {
                source: "/b/rel".into(),
                recursive: false,
                uid_map: "0 3000 1\n".into(),
                gid_map: "0 3000 1\n".into()
            },
        ],
        "mappings without the option make a mount idmapped too"
    );
    assert_eq!(p.mounts[0], Step::IdmappedBind { tree: 0, target: Target::Dir("data".into()), remount: f::RDONLY });
    assert_eq!(p.mounts[1], Step::IdmappedBind { tree: 1, target: Target::Dir("rel".into()), remount: 0 });
    // The container's user namespace's.
    let mut v = with_mounts(json!([{"destination": "/data", "source": "/data", "options": ["bind", "idmap"]}]));
    v["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "user"}));
    v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    v["linux"]["gidMappings"] = v["linux"]["uidMappings"].clone();
    let p = plan_of(&v).unwrap();
    assert_eq!(p.idmapped[0].uid_map, "0 100000 65536\n");
    let v = with_mounts(json!([{"destination": "/t", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}]));
    assert_eq!(field_of(&v), "mounts[0].options");
}
