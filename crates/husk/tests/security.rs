//! Secure by default: capabilities, seccomp, masked paths, cgroup limits, user namespaces, and
//! regression tests named after the escapes they prevent.

mod common;

use std::path::PathBuf;

use common::{image, images_dir, Env};

fn oci(name: &str) -> String {
    format!("oci:{}", images_dir().join(name).display())
}

fn report(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["run", "-q"];
    a.extend_from_slice(args);
    let out = env.ok(&a);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

fn sh(env: &Env, pod_flags: &[&str], app_flags: &[&str], script: &str) -> std::process::Output {
    let mut a = vec!["run", "-q"];
    a.extend_from_slice(pod_flags);
    let bb = image("busybox");
    a.push(&bb);
    a.extend_from_slice(app_flags);
    a.extend_from_slice(&["--", "sh", "-c", script]);
    env.husk(&a)
}

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn default_capabilities_seccomp_and_no_new_privs() {
    let env = Env::new();
    let r = report(&env, &[&image("workload")]);
    assert_eq!(r["capeff"], "00000000a80425fb");
    assert_eq!(r["capprm"], "00000000a80425fb");
    assert_eq!(r["capbnd"], "00000000a80425fb");
    assert_eq!(r["capamb"], "0000000000000000");
    assert_eq!(r["nonewprivs"], "1");
    assert_eq!(r["seccomp"], "2", "a seccomp filter is installed");
    let r = report(&env, &[&image("workload"), "--user", "app"]);
    assert_eq!(r["capeff"], "0000000000000000");
    assert_eq!(r["capprm"], "0000000000000000");
    let s = env.json(&["list", "--format", "json"]);
    let sec = &s[0]["apps"][0]["security"];
    assert_eq!(sec["seccomp"], "default");
    assert_eq!(sec["masked_paths"], true);
}

#[test]
fn caps_retain_and_remove() {
    let env = Env::new();
    let r = report(&env, &[&image("workload"), "--caps-retain", "NET_BIND_SERVICE"]);
    assert_eq!(r["capeff"], "0000000000000400");
    assert_eq!(r["capbnd"], "0000000000000400");
    let r = report(&env, &[&image("workload"), "--caps-remove", "CAP_NET_RAW,chown"]);
    assert_eq!(r["capeff"], "00000000a80405fa");
    let err = env.fails(&["run", "-q", &image("workload"), "--caps-retain", "CAP_FLY"], 120);
    assert!(err.contains("CAP_FLY"), "{err}");
    let err = env.fails(&["run", "-q", &image("workload"), "--caps-retain", "chown", "--caps-remove", "kill"], 120);
    assert!(err.contains("exclude each other"), "{err}");
    // Every capability the host's root has (this host's root may lack some, e.g. SYS_RESOURCE).
    let host_bnd = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    let r = report(&env, &["--insecure-options=capabilities", &image("workload")]);
    assert_eq!(r["capbnd"], host_bnd);
}

#[test]
fn seccomp_blocks_with_eperm_even_with_all_capabilities() {
    let env = Env::new();
    // With every capability, only the seccomp filter stands between the app and mount(2).
    let o = sh(&env, &["--insecure-options=capabilities"], &[], "mkdir -p /m; mount -t tmpfs t /m && echo mounted");
    let text = out(&o);
    assert!(
        !text.contains("mounted") && (text.contains("Operation not permitted") || text.contains("permission denied")),
        "{text}"
    );
    let o = sh(&env, &["--insecure-options=all-run"], &[], "mkdir -p /m; mount -t tmpfs t /m && echo mounted");
    assert!(out(&o).contains("mounted"), "{}", out(&o));
    // New user namespaces are refused by default.
    let o = sh(&env, &[], &[], "unshare -U true");
    assert!(out(&o).contains("Operation not permitted"), "{}", out(&o));
    // Per-app rules with their own errno.
    let o = sh(&env, &[], &["--seccomp", "mode=remove,errno=ENOSYS,chmod,fchmodat"], "chmod 600 /tmp");
    assert!(out(&o).contains("Function not implemented"), "{}", out(&o));
    let o = sh(&env, &[], &["--seccomp", "mode=retain,@default"], "echo fine");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "fine\n");
    let err = env.fails(&["run", "-q", &image("busybox"), "--seccomp", "mode=remove,frobnicate"], 120);
    assert!(err.contains("frobnicate"), "{err}");
}

/// The default filter's ENOSYS rules, seen from inside a pod: clone3 (its flags are in memory a
/// filter cannot read, so libc falls back to clone, whose flags it checks) and every x32 call
/// (their numbers would slip past rules written for x86_64's).
#[test]
fn clone3_and_x32_calls_get_enosys() {
    let env = Env::new();
    let probe = |flags: &[&str], call: &str| {
        let wl = image("workload");
        let mut a = vec!["run", "-q"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&[wl.as_str(), "--", "probe", call]);
        env.ok(&a).trim().to_string()
    };
    assert_eq!(probe(&[], "clone3"), "38");
    assert_eq!(probe(&[], "x32-getpid"), "38");
    // Without the filter the kernel answers clone3 itself: EINVAL, for its size of 0.
    assert_eq!(probe(&["--insecure-options=seccomp"], "clone3"), "22");
}

#[test]
fn masked_and_readonly_kernel_paths() {
    let env = Env::new();
    let o = sh(&env, &[], &[], "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; echo 1 > /proc/sys/vm/drop_caches || echo ro; echo b > /proc/sysrq-trigger || echo ro2");
    let text = out(&o);
    let lines: Vec<&str> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect::<Vec<_>>()
        .leak()
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(lines[0].trim(), "0", "timer_list is masked: {text}");
    assert_eq!(lines[1].trim(), "0", "/sys/firmware is empty: {text}");
    assert!(text.contains("ro") && text.contains("ro2"), "{text}");
    let o = sh(&env, &["--insecure-options=paths"], &[], "wc -c < /proc/timer_list");
    assert_ne!(String::from_utf8_lossy(&o.stdout).trim(), "0");
}

#[test]
fn cgroup_limits_read_back_inside_and_outside() {
    let env = Env::new();
    let uuid = env
        .ok(&[
            "run",
            "-q",
            "-d",
            &image("busybox"),
            "--name",
            "lim",
            "--memory",
            "48M",
            "--cpu",
            "250m",
            "--cpu-shares",
            "300",
            "--pids-limit",
            "25",
            "--",
            "sleep",
            "60",
        ])
        .trim()
        .to_string();
    let inside = env.ok(&["enter", &uuid, "--", "sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.shares"]);
    assert_eq!(inside, "50331648\n25\n25000\n300\n");
    let outside = |c: &str, f: &str| {
        std::fs::read_to_string(PathBuf::from(format!("/sys/fs/cgroup/{c}/husk/{uuid}/lim/{f}"))).unwrap()
    };
    assert_eq!(outside("memory", "memory.limit_in_bytes").trim(), "50331648");
    assert_eq!(outside("pids", "pids.max").trim(), "25");
    assert!(outside("devices", "devices.list").contains("c 1:3 rwm"));
    // The device allowlist holds even with every capability: no host disk.
    env.ok(&["stop", &uuid]);
    let o = sh(
        &env,
        &["--insecure-options=capabilities"],
        &[],
        "mknod /dev/sdz b 8 0 && head -c1 /dev/sdz >/dev/null && echo READ",
    );
    assert!(!out(&o).contains("READ"), "{}", out(&o));
    let err = env.fails(&["run", "-q", &image("busybox"), "--memory", "lots"], 120);
    assert!(err.contains("lots"), "{err}");
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(common::pod_cgroups(&uuid).is_empty());
}

/// The supervisor creates and limits an app's cgroup while the app sets up its mounts; the app
/// joins only once that is done. A limit the kernel refuses must stop the pod before the app
/// runs a single instruction of its own, outside its limits.
#[test]
fn an_app_never_runs_when_its_cgroup_limit_is_refused() {
    let env = Env::new();
    let vol = env.tmp.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let volume = format!("v,kind=host,source={}", vol.display());
    let uuid = env
        .ok(&[
            "prepare",
            "-q",
            "--net=none",
            "--volume",
            &volume,
            &image("busybox"),
            "--name",
            "lim",
            "--cpu",
            "500m",
            "--mount",
            "volume=v,target=/v",
            "--",
            "sh",
            "-c",
            "touch /v/ran",
        ])
        .trim()
        .to_string();
    // The kernel refuses a v1 cpu quota above its parent's: give the pod's cgroup 100m.
    let pod_cpu = PathBuf::from(format!("/sys/fs/cgroup/cpu/husk/{uuid}"));
    assert!(pod_cpu.parent().unwrap().parent().unwrap().is_dir(), "this host has no v1 cpu controller");
    std::fs::create_dir_all(&pod_cpu).unwrap();
    std::fs::write(pod_cpu.join("cpu.cfs_quota_us"), "10000").unwrap();
    let err = env.fails(&["run-prepared", &uuid], 125);
    assert!(err.contains("cpu.cfs_quota_us") && err.contains("50000"), "the error names the limit: {err}");
    assert!(!vol.join("ran").exists(), "the app ran although its limit was refused");
    let st = env.json(&["status", &uuid, "--format", "json"]);
    assert_eq!(st["state"], "exited", "{st}");
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(common::pod_cgroups(&uuid).is_empty(), "{:?}", common::pod_cgroups(&uuid));
    assert!(common::mounts_under(&env.dir()).is_empty(), "{:?}", common::mounts_under(&env.dir()));
}

#[test]
fn oom_killed_app_is_reported() {
    let env = Env::new();
    let o = sh(&env, &[], &["--memory", "16M"], "x=a; while true; do x=$x$x; done");
    assert_eq!(o.status.code(), Some(137));
    let pods = env.json(&["list", "--format", "json"]);
    assert_eq!(pods[0]["apps"][0]["status"]["oom_killed"], true);
    let uuid = pods[0]["uuid"].as_str().unwrap().to_string();
    assert!(env.ok(&["status", &uuid]).contains("OOM killer"));
}

#[test]
fn private_users_own_range_ownership_and_volumes() {
    let env = Env::new();
    let host = env.tmp.path().join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("from-host"), "x").unwrap();
    let vol = format!("v,kind=host,source={}", host.display());
    let a = env
        .ok(&[
            "run",
            "-q",
            "-d",
            "--private-users",
            "--volume",
            &vol,
            "--volume",
            "e,kind=empty",
            &image("busybox"),
            "--mount",
            "volume=v,target=/v",
            "--mount",
            "volume=e,target=/e",
            "--",
            "sh",
            "-c",
            "touch /created /v/from-pod /e/in-empty; exec sleep 60",
        ])
        .trim()
        .to_string();
    let b = env.ok(&["run", "-q", "-d", "--private-users", &image("busybox"), "--", "sleep", "60"]).trim().to_string();
    let ra = env.json(&["status", &a, "--format", "json"])["private_users"].clone();
    let rb = env.json(&["status", &b, "--format", "json"])["private_users"].clone();
    assert_ne!(ra["host_base"], rb["host_base"], "two live pods never share a range");
    let base = ra["host_base"].as_u64().unwrap() as u32;
    assert!(base >= 1 << 20);
    let inside = env.ok(&[
        "enter",
        &a,
        "--",
        "sh",
        "-c",
        "cat /proc/self/uid_map; stat -c '%u:%g' /etc/passwd /v/from-host; id -u",
    ]);
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), vec!["0", &base.to_string(), "65536"]);
    assert_eq!(lines[1], "0:0", "the image's files appear owned by the pod's root (idmapped layers)");
    assert_eq!(lines[2], "0:0", "the volume's files appear owned by root (idmapped volume)");
    assert_eq!(lines[3], "0");
    // On the host, root in the pod is an unprivileged uid: the pod's own writes carry it.
    std::thread::sleep(std::time::Duration::from_millis(200));
    use std::os::unix::fs::MetadataExt;
    let dir = env.dir().join("pods/run").join(&a);
    assert_eq!(std::fs::metadata(dir.join("apps/busybox/upper/created")).unwrap().uid(), base);
    assert_eq!(std::fs::metadata(dir.join("volumes/e/in-empty")).unwrap().uid(), base);
    // The store was not chowned.
    for l in std::fs::read_dir(env.dir().join("store/layers")).unwrap() {
        assert_eq!(std::fs::metadata(l.unwrap().path().join("rootfs/etc")).unwrap().uid(), 0);
    }
    // And its process runs as that uid on the host.
    let pid = env.json(&["status", &a, "--format", "json"])["apps"][0]["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.contains(&base.to_string())), "{status}");
    env.ok(&["stop", &a, &b]);
    env.ok(&["gc", "--grace-period=0s"]);
}

#[test]
fn overwrite_runtime_binary_through_proc_exe_cve_2019_5736() {
    let env = Env::new();
    let stage1 = PathBuf::from(
        std::env::var("HUSK_STAGE1_DIR").unwrap_or_else(|_| Env::bin().parent().unwrap().display().to_string()),
    )
    .join("husk-stage1-ns");
    let before = std::fs::read(&stage1).unwrap();
    // (With --insecure-options=capabilities an app holds CAP_SYS_PTRACE and may read it: that
    // is what the option means.)
    for flags in [&[][..], &["--private-users"][..]] {
        let o = sh(
            &env,
            flags,
            &[],
            "cat /proc/1/exe > /dev/null && echo READ; echo x >> /proc/1/exe && echo WROTE; ls -l /proc/1/exe 2>&1",
        );
        let text = out(&o);
        assert!(!text.contains("READ") && !text.contains("WROTE"), "pod init's binary reachable: {text}");
    }
    let uuid = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sleep", "60"]).trim().to_string();
    let o = env.husk(&[
        "enter",
        &uuid,
        "--",
        "sh",
        "-c",
        "for p in /proc/[0-9]*; do cat $p/exe >/dev/null 2>&1 && echo READ $p; done; true",
    ]);
    assert!(!out(&o).contains("READ /proc/1"), "{}", out(&o));
    env.ok(&["stop", &uuid]);
    assert_eq!(std::fs::read(&stage1).unwrap(), before);
}

#[test]
fn host_fd_and_cwd_do_not_leak_into_app_cve_2024_21626() {
    let env = Env::new();
    let r = report(&env, &[&image("workload"), "--working-dir", "/home/app"]);
    let fds: Vec<String> = r["fds"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    let numbers: Vec<&str> = fds.iter().map(|f| f.split('=').next().unwrap()).collect();
    assert_eq!(numbers, vec!["0", "1", "2", "3"], "{fds:?}");
    assert_eq!(r["cwd"], "/home/app");
    let o = sh(
        &env,
        &[],
        &["--working-dir", "/tmp"],
        "readlink /proc/self/cwd; ls /proc/self/fd | wc -l; cd ../../../..; pwd; ls / | grep -c husk-stage1 || true",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/tmp\n4\n/\n0\n", "{}", out(&o));
}

#[test]
fn symlinked_mount_targets_stay_in_the_root_cve_2021_30465() {
    let env = Env::new();
    let host_target = PathBuf::from("/var/tmp/husk-escape-target");
    let _ = std::fs::remove_dir_all(&host_target);
    std::fs::create_dir_all(&host_target).unwrap();
    let shadow_before = std::fs::read("/etc/shadow").unwrap();
    let vol_dir = env.tmp.path().join("vol");
    std::fs::create_dir(&vol_dir).unwrap();
    std::fs::write(vol_dir.join("marker"), "volume").unwrap();
    let vol = format!("v,kind=host,source={}", vol_dir.display());
    // /escape is a symlink to /var/tmp/husk-escape-target; /etc/hostname one to /etc/shadow.
    let o = env.husk(&[
        "run",
        "-q",
        "--volume",
        &vol,
        &oci("escape"),
        "--mount",
        "volume=v,target=/escape/inner",
        "--",
        "sh",
        "-c",
        "cat /var/tmp/husk-escape-target/inner/marker; cat /etc/hostname",
    ]);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.starts_with("volume") && text.contains("husk-"), "{text}");
    assert_eq!(std::fs::read_dir(&host_target).unwrap().count(), 0, "the host directory was touched");
    assert!(common::mounts_under(&host_target).is_empty());
    assert_eq!(std::fs::read("/etc/shadow").unwrap(), shadow_before);
    std::fs::remove_dir_all(&host_target).unwrap();
}

#[test]
fn device_nodes_shipped_in_an_image_are_inert() {
    let env = Env::new();
    let o = env.husk(&[
        "run",
        "-q",
        "--insecure-options=capabilities",
        &oci("escape"),
        "--",
        "sh",
        "-c",
        "head -c 1 /disk > /dev/null && echo READ-DISK; echo done",
    ]);
    let text = out(&o);
    assert!(text.contains("done") && !text.contains("READ-DISK"), "{text}");
}

#[test]
fn images_whose_proc_or_dev_are_not_directories_are_refused() {
    let env = Env::new();
    let err = env.fails(&["run", "-q", &oci("evil-proc"), "--", "true"], 125);
    assert!(err.contains("/proc") && err.contains("symlink"), "{err}");
    let err = env.fails(&["run", "-q", &oci("evil-dev"), "--", "true"], 125);
    assert!(err.contains("/dev") && err.contains("file"), "{err}");
}

#[test]
fn enter_has_no_more_privilege_than_the_app_cve_2019_10144() {
    let env = Env::new();
    let uuid = env
        .ok(&[
            "run",
            "-q",
            "-d",
            &image("busybox"),
            "--caps-retain",
            "CHOWN",
            "--memory",
            "64M",
            "--seccomp",
            "mode=remove,errno=ENOSYS,chmod,fchmodat",
            "--",
            "sleep",
            "60",
        ])
        .trim()
        .to_string();
    let app = env.ok(&["enter", &uuid, "--", "sh", "-c", "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; cat /proc/self/cgroup | grep memory; chmod 600 /tmp 2>&1; true"]);
    let lines: Vec<&str> = app.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("CapEff:") && l.ends_with("0000000000000001")), "{app}");
    assert!(lines.iter().any(|l| l.starts_with("CapBnd:") && l.ends_with("0000000000000001")), "{app}");
    assert!(lines.iter().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{app}");
    assert!(lines.iter().any(|l| l.starts_with("Seccomp:") && l.ends_with('2')), "{app}");
    assert!(app.contains("memory:/"), "entered into the app's own cgroup namespace: {app}");
    assert!(app.contains("Function not implemented"), "the app's seccomp rules apply: {app}");
    env.ok(&["stop", &uuid]);
}
