use serde_json::json;

use super::*;

/// This machine's kind: v1 controllers, a v2 tree at /sys/fs/cgroup/unified holding hugetlb.
const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
41 35 0:36 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
42 35 0:37 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
43 35 0:38 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,devices
44 35 0:39 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,blkio
45 35 0:40 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,cpuset
46 35 0:41 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,freezer
";

const V2: &str =
    "30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

fn hybrid() -> Cgroups {
    Cgroups::from_mountinfo(HYBRID, |_| "hugetlb\n".into())
}

fn v2() -> Cgroups {
    Cgroups::from_mountinfo(V2, |_| "cpuset cpu io memory hugetlb pids rdma misc".into())
}

fn res(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

fn files(w: &[Write]) -> Vec<(String, String)> {
    w.iter().map(|w| (w.file.display().to_string(), w.value.clone())).collect()
}

fn pair(f: &str, v: &str) -> (String, String) {
    (f.to_string(), v.to_string())
}

#[test]
fn hierarchies_are_read_from_mountinfo() {
    let cg = hybrid();
    let names: Vec<&str> = cg.hierarchies.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["unified", "systemd", "memory", "cpu,cpuacct", "pids", "devices", "blkio", "cpuset", "freezer"]);
    assert!(!cg.v2_only());
    assert!(v2().v2_only());
    assert_eq!(cg.controller_dir("cpuacct", "a/b"), Some(("/sys/fs/cgroup/cpu,cpuacct/a/b".into(), false)));
    assert_eq!(cg.controller_dir("hugetlb", "a"), Some(("/sys/fs/cgroup/unified/a".into(), true)));
    assert_eq!(cg.procs_file("a"), PathBuf::from("/sys/fs/cgroup/pids/a/cgroup.procs"));
    assert_eq!(cg.dirs("a").len(), 9, "every hierarchy is joined");
}

#[test]
fn v1_resources_go_to_their_controllers_files() {
    let r = res(json!({
        "memory": {"limit": 67108864, "swap": 134217728, "reservation": 33554432, "swappiness": 10, "disableOOMKiller": true},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0", "mems": "0"},
        "pids": {"limit": 50},
        "blockIO": {"weight": 300, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]
    }));
    let w = resource_writes(&hybrid(), "c", &r, &[]).unwrap();
    let f = files(&w);
    for want in [
        pair("/sys/fs/cgroup/memory/c/memory.limit_in_bytes", "67108864"),
        pair("/sys/fs/cgroup/memory/c/memory.memsw.limit_in_bytes", "134217728"),
        pair("/sys/fs/cgroup/memory/c/memory.soft_limit_in_bytes", "33554432"),
        pair("/sys/fs/cgroup/memory/c/memory.swappiness", "10"),
        pair("/sys/fs/cgroup/memory/c/memory.oom_control", "1"),
        pair("/sys/fs/cgroup/cpu,cpuacct/c/cpu.shares", "512"),
        pair("/sys/fs/cgroup/cpu,cpuacct/c/cpu.cfs_period_us", "100000"),
        pair("/sys/fs/cgroup/cpu,cpuacct/c/cpu.cfs_quota_us", "50000"),
        pair("/sys/fs/cgroup/cpuset/c/cpuset.cpus", "0"),
        pair("/sys/fs/cgroup/pids/c/pids.max", "50"),
        pair("/sys/fs/cgroup/blkio/c/blkio.weight", "300"),
        pair("/sys/fs/cgroup/blkio/c/blkio.throttle.read_bps_device", "8:0 1048576"),
        // hugetlb is in the unified tree on this kind of host.
        pair("/sys/fs/cgroup/unified/c/hugetlb.2MB.max", "0"),
    ] {
        assert!(f.contains(&want), "{want:?} not in {f:#?}");
    }
    let period = f.iter().position(|x| x.0.ends_with("cfs_period_us")).unwrap();
    let quota = f.iter().position(|x| x.0.ends_with("cfs_quota_us")).unwrap();
    assert!(period < quota, "the period is set before the quota");
    assert!(
        w.iter().find(|w| w.file.ends_with("memory.memsw.limit_in_bytes")).unwrap().optional,
        "swap accounting may be off"
    );
}

#[test]
fn v2_resources_are_converted() {
    let r = res(json!({
        "memory": {"limit": 100, "swap": 300, "reservation": 50},
        "cpu": {"shares": 1024, "quota": 50000, "period": 100000},
        "pids": {"limit": 0},
        "blockIO": {"weight": 10, "weightDevice": [{"major": 8, "minor": 0, "weight": 1000}],
                    "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 20}]},
        "unified": {"memory.high": "90", "cgroup.max.depth": "2"}
    }));
    let f = files(&resource_writes(&v2(), "c", &r, &[]).unwrap());
    for want in [
        pair("/sys/fs/cgroup/c/memory.max", "100"),
        pair("/sys/fs/cgroup/c/memory.swap.max", "200"),
        pair("/sys/fs/cgroup/c/memory.low", "50"),
        pair("/sys/fs/cgroup/c/cpu.weight", "39"),
        pair("/sys/fs/cgroup/c/cpu.max", "50000 100000"),
        pair("/sys/fs/cgroup/c/pids.max", "max"),
        pair("/sys/fs/cgroup/c/io.weight", "default 1"),
        pair("/sys/fs/cgroup/c/io.weight", "8:0 10000"),
        pair("/sys/fs/cgroup/c/io.max", "8:0 wiops=20"),
        pair("/sys/fs/cgroup/c/memory.high", "90"),
        pair("/sys/fs/cgroup/c/cgroup.max.depth", "2"),
    ] {
        assert!(f.contains(&want), "{want:?} not in {f:#?}");
    }
    let f = files(&resource_writes(&v2(), "c", &res(json!({"memory": {"limit": -1, "swap": -1}})), &[]).unwrap());
    assert_eq!(f, [pair("/sys/fs/cgroup/c/memory.max", "max"), pair("/sys/fs/cgroup/c/memory.swap.max", "max")]);
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(262_144), 10_000);
}

#[test]
fn what_a_host_cannot_enforce_is_refused_by_field() {
    let cases = [
        (hybrid(), json!({"memory": {"kernel": 1}}), "linux.resources.memory.kernel"),
        (v2(), json!({"memory": {"swappiness": 1}}), "linux.resources.memory.swappiness"),
        (v2(), json!({"memory": {"swap": 5}}), "linux.resources.memory.swap"),
        (v2(), json!({"cpu": {"realtimeRuntime": 5}}), "linux.resources.cpu.realtimeRuntime"),
        (hybrid(), json!({"network": {"classID": 5}}), "linux.resources.network.classID"),
        (hybrid(), json!({"rdma": {"mlx": {"hcaHandles": 1}}}), "linux.resources.rdma"),
        (hybrid(), json!({"unified": {"memory.high": "5"}}), "linux.resources.unified.memory.high"),
        (v2(), json!({"unified": {"../x": "5"}}), "linux.resources.unified.../x"),
        (hybrid(), json!({"devices": [{"allow": true, "access": "rwx"}]}), "linux.resources.devices[0].access"),
        (hybrid(), json!({"hugepageLimits": [{"pageSize": "2M/../x", "limit": 1}]}), "linux.resources.hugepageLimits"),
    ];
    for (cg, r, field) in cases {
        let e = resource_writes(&cg, "c", &res(r.clone()), &[]).unwrap_err();
        assert_eq!(e.field, field, "{r}: {e}");
    }
}

#[test]
fn device_rules_keep_their_order_and_add_the_default_devices() {
    let r = res(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"},
        {"allow": true, "type": "b", "major": 8, "access": "r"}
    ]}));
    let fuse: oci_spec::runtime::LinuxDevice =
        serde_json::from_value(json!({"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229})).unwrap();
    let w = resource_writes(&hybrid(), "c", &r, &[fuse]).unwrap();
    let lines: Vec<(String, String)> =
        w.iter().map(|w| (w.file.file_name().unwrap().to_string_lossy().into_owned(), w.value.clone())).collect();
    assert_eq!(lines[0], pair("devices.deny", "a *:* rwm"));
    assert_eq!(lines[1], pair("devices.allow", "c 10:229 rw"));
    assert_eq!(lines[2], pair("devices.allow", "b 8:* r"));
    assert!(lines.contains(&pair("devices.allow", "c 1:3 rwm")), "/dev/null stays usable");
    assert_eq!(lines.last().unwrap(), &pair("devices.allow", "c 10:229 rwm"), "a node the config creates is usable");
}

#[test]
fn cgroup_paths_are_relative_and_systemd_paths_are_expanded() {
    assert_eq!(cgroup_path(None, "c1", false).unwrap(), "husk-oci/c1");
    assert_eq!(
        cgroup_path(Some(Path::new("/libpod_parent/libpod-abc")), "c1", false).unwrap(),
        "libpod_parent/libpod-abc"
    );
    assert_eq!(cgroup_path(Some(Path::new("default/c1")), "c1", false).unwrap(), "default/c1");
    assert_eq!(
        cgroup_path(Some(Path::new("machine-app.slice:libpod:abc")), "c1", true).unwrap(),
        "machine.slice/machine-app.slice/libpod-abc.scope"
    );
    assert_eq!(cgroup_path(Some(Path::new(":crio:x")), "c1", true).unwrap(), "system.slice/crio-x.scope");
    for bad in ["/a/../b", "/", "./x"] {
        assert!(cgroup_path(Some(Path::new(bad)), "c", false).is_err(), "{bad}");
    }
    assert!(cgroup_path(Some(Path::new("system.slice:x:y")), "c", false).unwrap_err().why.contains("--systemd-cgroup"));
    assert!(cgroup_path(Some(Path::new("/a/b")), "c", true).is_err(), "not slice:prefix:name");
    assert!(cgroup_path(Some(Path::new("nope:x:y")), "c", true).is_err(), "not a slice");
}

#[test]
fn a_hybrid_hosts_unified_tree_gets_only_the_controllers_its_writes_use() {
    let none = resource_writes(&hybrid(), "c", &res(json!({"memory": {"limit": 1}})), &[]).unwrap();
    assert_eq!(v2_controllers_needed(&hybrid(), &none), Some(BTreeSet::new()), "memory is v1 here");
    let huge = resource_writes(&hybrid(), "c", &res(json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})), &[])
        .unwrap();
    assert_eq!(v2_controllers_needed(&hybrid(), &huge), Some(BTreeSet::from(["hugetlb".to_string()])));
    assert_eq!(v2_controllers_needed(&v2(), &huge), None, "a v2-only host enables all");
}

#[test]
fn v2_device_rules_become_an_ebpf_program_for_the_containers_cgroup() {
    let r = res(
        json!({"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]}),
    );
    assert!(resource_writes(&v2(), "c", &r, &[]).unwrap().is_empty(), "no files: a program");
    let (dir, prog) = device_program(&v2(), "c", &r, &[]).unwrap().unwrap();
    assert_eq!(dir, PathBuf::from("/sys/fs/cgroup/c"));
    assert!(prog.len() > 8);
    assert_eq!(device_program(&hybrid(), "c", &r, &[]).unwrap(), None, "v1 enforces them there");
    assert_eq!(device_program(&v2(), "c", &res(json!({})), &[]).unwrap(), None);
}
