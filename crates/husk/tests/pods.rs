//! Pods on the ns stage1, driven through the real binary; assertions on what the test workload
//! reports from inside and on the host's state afterwards.

mod common;

use std::time::Duration;

use common::{image, mounts_under, pod_cgroups, Env};

fn report(env: &Env, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", "-q"];
    args.extend_from_slice(extra);
    let out = env.ok(&args);
    serde_json::from_str(out.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("workload output is not JSON ({e}): {out}"))
}

fn env_has(r: &serde_json::Value, kv: &str) -> bool {
    r["env"].as_array().unwrap().iter().any(|e| e == kv)
}

#[test]
fn pod_is_isolated_with_default_privileges() {
    let env = Env::new();
    let wl = image("workload");
    let r = report(&env, &["--net=none", &wl]);
    for ns in ["mnt", "pid", "uts", "ipc", "net", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap().display().to_string();
        assert_ne!(r["namespaces"][ns], host, "{ns} namespace is the host's");
    }
    assert_eq!(r["pid"], 2, "the app runs under the pod init (PID 1)");
    assert_eq!(r["uid"], 0);
    assert_eq!(r["capeff"], "00000000a80425fb", "default capability set");
    assert_eq!(r["capbnd"], "00000000a80425fb");
    assert_eq!(r["nonewprivs"], "1");
    assert_eq!(r["interfaces"], serde_json::json!(["lo"]));
    assert!(r["hostname"].as_str().unwrap().starts_with("husk-"));
    assert_eq!(r["cwd"], "/");
    assert!(env_has(&r, "WORKLOAD_FROM_IMAGE=yes"));
    let mounts: Vec<String> = r["mounts"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
    for want in [
        "/ overlay",
        "/proc proc",
        "/sys sysfs ro",
        "/dev tmpfs",
        "/dev/pts devpts",
        "/dev/shm tmpfs",
        "/dev/mqueue mqueue",
    ] {
        assert!(mounts.iter().any(|m| m.starts_with(want)), "missing {want} in {mounts:?}");
    }
    // Only stdio is open in the app: no fd of the runtime leaked (runc CVE-2024-21626 class).
    let fds: Vec<&str> = r["fds"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(
        fds.iter()
            .all(|f| f.starts_with("0=") || f.starts_with("1=") || f.starts_with("2=") || f.starts_with("3=/proc")),
        "leaked fds: {fds:?}"
    );
}

#[test]
fn app_flags_user_group_env_workdir() {
    let env = Env::new();
    let d = env.tmp.path().join("envfile");
    std::fs::write(&d, "FROM_FILE=1\nOVERRIDE_ME=file\n").unwrap();
    let wl = image("workload");
    let r = report(
        &env,
        &[
            &wl,
            "--user",
            "app",
            "--working-dir",
            "/home/app",
            "--set-env-file",
            d.to_str().unwrap(),
            "--set-env",
            "OVERRIDE_ME=set",
            "--environment",
            "OVERRIDE_ME=cli",
            "--hostname",
            "web1",
        ],
    );
    assert_eq!((r["uid"].as_u64(), r["gid"].as_u64()), (Some(1000), Some(1000)));
    assert_eq!(r["groups"], serde_json::json!([2000]), "supplementary groups from the image's /etc/group");
    assert_eq!(r["capeff"], "0000000000000000", "non-root apps have no effective capabilities");
    assert_eq!(r["cwd"], "/home/app");
    assert_eq!(r["hostname"], "web1");
    assert!(env_has(&r, "OVERRIDE_ME=cli") && env_has(&r, "FROM_FILE=1") && env_has(&r, "HOME=/home/app"));
    let err = env.fails(&["run", "-q", &wl, "--user", "ghost"], 120);
    assert!(err.contains("ghost"), "{err}");
}

#[test]
fn exit_statuses_and_multi_app_failure() {
    let env = Env::new();
    let bb = image("busybox");
    env.fails(&["run", "-q", &bb, "--", "sh", "-c", "exit 7"], 7);
    let err = env.fails(&["run", "-q", &bb, "--exec", "/no/such/cmd"], 127);
    assert!(err.contains("/no/such/cmd"), "{err}");
    // Two apps: when one fails the other is stopped and run returns the failure.
    let start = std::time::Instant::now();
    let o = env.husk(&[
        "run", "-q", &bb, "--name", "slow", "--", "sleep", "60", "---", &bb, "--name", "bad", "--", "sh", "-c",
        "exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(start.elapsed() < Duration::from_secs(30));
    let pods = env.json(&["list", "--format", "json"]);
    let pod = pods.as_array().unwrap().iter().find(|p| p["apps"].as_array().unwrap().len() == 2).unwrap();
    let slow = pod["apps"].as_array().unwrap().iter().find(|a| a["name"] == "slow").unwrap();
    assert_eq!(slow["status"]["signal"], 15, "the other app was stopped with SIGTERM");
    assert_eq!(pod["exit_status"], 5);
}

#[test]
fn volumes_host_readonly_and_empty_shared() {
    let env = Env::new();
    let host = env.tmp.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("hello"), "from host").unwrap();
    let bb = image("busybox");
    let vol = format!("data,kind=host,source={},readOnly=true", host.display());
    let out = env.ok(&[
        "run",
        "-q",
        "--volume",
        &vol,
        "--volume",
        "scratch,kind=empty",
        &bb,
        "--mount",
        "volume=data,target=/data",
        "--mount",
        "volume=scratch,target=/scratch",
        "--",
        "sh",
        "-c",
        "cat /data/hello; echo x > /scratch/f && echo wrote; touch /data/nope 2>/dev/null || echo read-only",
    ]);
    assert_eq!(out, "from hostwrote\nread-only\n");
    let err = env.fails(&["run", "-q", &bb, "--mount", "volume=undefined,target=/x"], 120);
    assert!(err.contains("undefined"), "{err}");
    // The read-only root option.
    let out = env.ok(&["run", "-q", &bb, "--readonly-rootfs", "--", "sh", "-c", "touch /x 2>/dev/null || echo ro"]);
    assert_eq!(out, "ro\n");
}

#[test]
fn prepare_run_prepared_status_manifest_rm() {
    let env = Env::new();
    let uuid_file = env.tmp.path().join("uuid");
    let uuid = env
        .ok(&[
            "prepare",
            "-q",
            "--uuid-file-save",
            uuid_file.to_str().unwrap(),
            &image("busybox"),
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .trim()
        .to_string();
    assert_eq!(std::fs::read_to_string(&uuid_file).unwrap().trim(), uuid);
    assert_eq!(env.json(&["status", "--uuid-file", uuid_file.to_str().unwrap(), "--format", "json"])["uuid"], uuid);
    let s = env.json(&["status", &uuid[..8], "--format", "json"]);
    assert_eq!(s["state"], "prepared");
    let m = env.json(&["cat-manifest", &uuid[..8]]);
    assert_eq!(m["apps"][0]["exec"], serde_json::json!(["sh", "-c", "exit 3"]));
    let prepared = std::fs::read(env.dir().join("pods/prepared").join(&uuid).join("pod.json")).unwrap();
    env.fails(&["run-prepared", &uuid[..8]], 3);
    let s = env.json(&["status", &uuid, "--format", "json"]);
    assert_eq!((s["state"].as_str(), s["exit_status"].as_i64()), (Some("exited"), Some(3)));
    // Run with the stdio it was prepared with: its manifest is the prepared one, unchanged.
    let pod = env.dir().join("pods/run").join(&uuid);
    assert_eq!(std::fs::read(pod.join("pod.json")).unwrap(), prepared);
    env.ok(&["rm", &uuid]);
    let err = env.fails(&["status", &uuid], 122);
    assert!(err.contains("no pod matches"), "{err}");
    // Detached, its stdio changes: the manifest run-prepared rewrote took the prepared one's
    // place, and no temp file is left.
    let uuid = env.ok(&["prepare", "-q", &image("busybox"), "--", "sh", "-c", "echo logged"]).trim().to_string();
    env.ok(&["run-prepared", "-d", &uuid]);
    env.ok(&["status", &uuid, "--wait=10s"]);
    assert_eq!(env.json(&["cat-manifest", &uuid])["stdio"], "log");
    assert_eq!(env.ok(&["logs", &uuid]), "logged\n");
    let pod = env.dir().join("pods/run").join(&uuid);
    let names: Vec<String> =
        std::fs::read_dir(&pod).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.contains(&"pod.json".to_string()) && !names.iter().any(|n| n.starts_with(".tmp-")), "{names:?}");
    assert_eq!(env.json(&["cat-manifest", &uuid])["apps"][0]["exec"], serde_json::json!(["sh", "-c", "echo logged"]));
}

#[test]
fn detached_pod_logs_enter_stop_gc_leave_nothing() {
    let env = Env::new();
    let uuid = env
        .ok(&["run", "-q", "-d", &image("busybox"), "--user", "app", "--", "sh", "-c", "echo hello; exec sleep 600"])
        .trim()
        .to_string();
    assert_eq!(env.json(&["status", &uuid, "--format", "json"])["state"], "running");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(env.ok(&["logs", &uuid]), "hello\n");
    // enter: the app's user and namespaces, never more (rkt CVE-2019-10144 class).
    let out = env.ok(&[
        "enter",
        &uuid,
        "--",
        "sh",
        "-c",
        "id -u; grep CapEff /proc/self/status; hostname; ps -o pid,comm | grep -c sleep",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert!(lines[1].ends_with("0000000000000000"), "{out}");
    assert!(lines[2].starts_with("husk-"));
    assert_eq!(lines[3], "1", "the pod's processes are visible: same PID namespace");
    // While it runs, rm refuses and names why.
    let err = env.fails(&["rm", &uuid], 122);
    assert!(err.contains("running") || err.contains("using it"), "{err}");
    env.ok(&["stop", &uuid, "--timeout", "5s"]);
    let s = env.json(&["status", &uuid, "--format", "json"]);
    assert_eq!(s["state"], "exited");
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(pod_cgroups(&uuid).is_empty(), "cgroups left: {:?}", pod_cgroups(&uuid));
    assert!(mounts_under(&env.dir()).is_empty(), "mounts left: {:?}", mounts_under(&env.dir()));
    assert!(env.json(&["list", "--format", "json"]).as_array().unwrap().is_empty());
}

/// What stage1 mounts onto in every app (/etc/hostname, /etc/hosts, /etc/resolv.conf, /etc/mtab,
/// /proc, /sys, /dev) comes from husk's base layer, beneath the image's: a pod that writes nothing
/// leaves its upper dir empty, the app still reads the pod's own /etc files, an image's own entry
/// wins over the base's, and the base layer is a store layer like any other (verified by `image
/// verify`, collected by `image gc` with the last image).
#[test]
fn mount_targets_come_from_a_base_layer_beneath_the_image() {
    let env = Env::new();
    let bb = image("busybox");
    env.ok(&["fetch", "-q", &bb]);
    let uuid_file = env.tmp.path().join("uuid");
    let u = uuid_file.to_str().unwrap();
    let script = "cat /etc/hostname /etc/resolv.conf; readlink /etc/mtab; grep -c ' /proc ' /proc/mounts";
    let out =
        env.ok(&["run", "-q", "--net=none", "--hostname=based", "--uuid-file-save", u, &bb, "--", "sh", "-c", script]);
    let uuid = std::fs::read_to_string(&uuid_file).unwrap().trim().to_string();
    let pod = env.dir().join("pods/run").join(&uuid);
    let etc = |name: &str| std::fs::read_to_string(pod.join("etc").join(name)).unwrap();
    assert!(etc("hostname").starts_with("based"), "{}", etc("hostname"));
    assert_eq!(out, format!("{}{}/proc/mounts\n1\n", etc("hostname"), etc("resolv.conf")));
    let upper: Vec<_> =
        std::fs::read_dir(pod.join("apps/busybox/upper")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(upper.is_empty(), "stage1 created mount targets in the pod's upper dir: {upper:?}");
    let m = env.json(&["cat-manifest", &uuid]);
    let layers = m["apps"][0]["layers"].as_array().unwrap().clone();
    assert_eq!(layers.len(), 2, "the base layer, then busybox's: {layers:?}");
    let base = std::path::PathBuf::from(layers[0].as_str().unwrap());
    assert!(base.join("etc/hosts").is_file() && base.starts_with(env.dir().join("store/layers")), "{base:?}");

    // An image's own /etc/mtab stays (the base's link is beneath it); its /etc/hosts is covered by
    // the pod's, as without the base.
    let own = format!("oci:{}", common::images_dir().join("etc-own").display());
    env.ok(&["fetch", "-q", "--insecure-options=image", &own]);
    let out = env.ok(&["run", "-q", "--net=none", "localhost/etc-own", "--", "sh", "-c", "cat /etc/mtab /etc/hosts"]);
    assert!(out.starts_with("the image's mtab\n") && !out.contains("the image's hosts"), "{out}");
    assert!(out.contains("localhost"), "{out}");

    env.ok(&["gc", "--grace-period=0s"]);
    env.ok(&["image", "verify"]);
    env.ok(&["image", "rm", &bb, "localhost/etc-own"]);
    env.ok(&["image", "gc"]);
    assert!(!base.exists(), "the base layer outlived the last image");
    assert_eq!(std::fs::read_dir(env.dir().join("store/layers")).unwrap().count(), 0);
}

/// The supervisor returns the pod's status before the pod's cgroups and mount namespace are gone:
/// a detached cleanup removes them on its own, and `rm` straight after `run` waits for it.
#[test]
fn the_cleanup_after_exit_finishes_alone_and_rm_waits_for_it() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let uuid_file = env.tmp.path().join("uuid");
    let u = uuid_file.to_str().unwrap();
    env.fails(&["run", "-q", "--uuid-file-save", u, &image("busybox"), "--", "sh", "-c", "exit 7"], 7);
    let uuid = std::fs::read_to_string(&uuid_file).unwrap().trim().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pod_cgroups(&uuid).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pod_cgroups(&uuid).is_empty(), "the cleanup left cgroups: {:?}", pod_cgroups(&uuid));
    let pod = env.dir().join("pods/run").join(&uuid);
    let log = std::fs::read_to_string(pod.join("cleanup.log")).unwrap_or_default();
    assert!(log.is_empty(), "the cleanup complained: {log}");
    // rm at once, many times over: it waits for the cleanup instead of racing it.
    for _ in 0..10 {
        env.fails(&["run", "-q", "--uuid-file-save", u, &image("busybox"), "--", "sh", "-c", "exit 3"], 3);
        let uuid = std::fs::read_to_string(&uuid_file).unwrap().trim().to_string();
        env.ok(&["rm", &uuid]);
        assert!(pod_cgroups(&uuid).is_empty(), "rm left cgroups: {:?}", pod_cgroups(&uuid));
    }
    assert!(mounts_under(&env.dir()).is_empty(), "mounts left: {:?}", mounts_under(&env.dir()));
}

/// The supervisor takes `cleanup.lock` once the apps have started (so that taking it is not on
/// the path of the status): a running pod holds it, `gc` passes the running pod by without
/// waiting for it, and once the pod is stopped its cleanup releases it and `rm` collects it.
#[test]
fn a_running_pod_holds_its_cleanup_lock_and_gc_passes_it_by() {
    let env = Env::new();
    let uuid = env.detached(&["--net=none", &image("busybox"), "--", "sleep", "600"]);
    let lock = env.dir().join("pods/run").join(&uuid).join("cleanup.lock");
    // The supervisor takes the lock just after it has told `run -d` that the pod is ready, so
    // allow it a moment: `held` is whether the file exists and another process holds it.
    let held = || {
        std::fs::File::open(&lock)
            .is_ok_and(|f| rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !held() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(held(), "a running pod's cleanup.lock is missing or free");
    // Not a timing: a gc that tried to collect the pod would wait out COLLECT_WAIT (60 s) for the lock.
    let t = std::time::Instant::now();
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(t.elapsed() < Duration::from_secs(30), "gc waited for a running pod's cleanup lock");
    assert_eq!(env.json(&["status", &uuid, "--format", "json"])["state"], "running");
    env.ok(&["stop", &uuid]);
    env.ok(&["rm", &uuid]);
    assert!(!lock.exists(), "rm left the pod");
    assert!(pod_cgroups(&uuid).is_empty(), "rm left cgroups: {:?}", pod_cgroups(&uuid));
}

#[test]
fn kill_9_of_the_supervisor_is_seen_as_exited_and_collected() {
    let env = Env::new();
    let uuid = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sleep", "600"]).trim().to_string();
    let s = env.json(&["status", &uuid, "--format", "json"]);
    let sup = s["supervisor_pid"].as_i64().unwrap() as i32;
    let init = s["pid"].as_i64().unwrap();
    unsafe_free_kill(sup);
    env.ok(&["status", &uuid, "--wait=10s"]);
    assert_eq!(env.json(&["status", &uuid, "--format", "json"])["state"], "exited");
    // The whole pod died with its supervisor (a pod init ends only once the kernel has killed
    // every process of its PID namespace: allow for a loaded machine).
    let alive =
        || std::fs::read_to_string(format!("/proc/{init}/status")).map(|s| !s.contains("State:\tZ")).unwrap_or(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "pod init survived its supervisor");
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(pod_cgroups(&uuid).is_empty());
    assert!(mounts_under(&env.dir()).is_empty());
    assert!(!env.dir().join("pods/run").join(&uuid).exists());
}

fn unsafe_free_kill(pid: i32) {
    let st = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(st.success());
}

#[test]
fn kill_9_of_husk_during_prepare_is_collected() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    for i in 0..15u64 {
        let mut c =
            env.cmd().args(["prepare", "-q", &image("busybox")]).stdout(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(Duration::from_micros(300 * i));
        let _ = c.kill();
        let _ = c.wait();
    }
    for p in env.json(&["list", "--format", "json"]).as_array().unwrap() {
        assert!(["prepared", "aborted-prepare"].contains(&p["state"].as_str().unwrap()), "{p}");
    }
    env.ok(&["gc", "--grace-period=0s", "--expire-prepared=0s"]);
    assert!(env.json(&["list", "--format", "json"]).as_array().unwrap().is_empty());
    for phase in ["embryo", "prepare", "prepared", "run", "exited-garbage", "garbage"] {
        assert_eq!(std::fs::read_dir(env.dir().join("pods").join(phase)).unwrap().count(), 0, "{phase} not empty");
    }
}

#[test]
fn fifty_parallel_runs_all_succeed() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let children: Vec<_> =
        (0..50).map(|_| env.cmd().args(["run", "-q", &image("busybox"), "--", "true"]).spawn().unwrap()).collect();
    let failed = children.into_iter().map(|mut c| c.wait().unwrap()).filter(|s| !s.success()).count();
    assert_eq!(failed, 0);
    env.ok(&["gc", "--grace-period=0s"]);
}

/// Starts `cmd` (a foreground `husk run` of one app that keeps running) and waits until its pod
/// runs: the child, the pod's UUID and its supervisor's pid.
#[allow(clippy::zombie_processes)] // the child is returned to the caller, which waits for it
fn foreground_pod(env: &Env, cmd: &mut std::process::Command) -> (std::process::Child, String, i64) {
    let mut child = cmd.stdout(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pods = env.json(&["list", "--format", "json"]);
        let running = pods.as_array().unwrap().iter().find(|p| p["state"] == "running").cloned();
        if let Some(uuid) = running.as_ref().and_then(|p| p["uuid"].as_str()) {
            let s = env.json(&["status", uuid, "--format", "json"]);
            if s["pid"].is_i64() {
                return (child, uuid.to_string(), s["supervisor_pid"].as_i64().unwrap());
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the pod never started: {pods}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A foreground pod whose `ns` stage1 is the one installed beside husk runs it in husk's own
/// process (no second program start); a stage1 directory elsewhere is exec'd as before, and so
/// is the stage1 of a run that asked a registry for its image (an exec wipes what the registry
/// client left in memory). Both behave alike from outside: exit status, output, the supervisor
/// in `status`, `stop`. The husk that handed over holds nothing of stage0's: no fd into the store.
#[test]
fn a_foreground_pod_runs_its_builtin_stage1_in_husk_and_another_stage1_by_exec() {
    let env = Env::new();
    let beside = Env::bin().parent().unwrap().to_path_buf();
    let exe = |pid: i64| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap();
    let run = |dir: &std::path::Path, args: &[&str]| {
        let mut c = env.cmd();
        c.env("HUSK_STAGE1_DIR", dir).args(["run", "-q", "--net=none", &image("busybox"), "--"]).args(args);
        c
    };
    let stop = |mut child: std::process::Child, uuid: &str| {
        env.ok(&["stop", uuid]);
        assert!(!child.wait().unwrap().success(), "a stopped pod reports failure");
        assert_eq!(env.json(&["status", uuid, "--format", "json"])["state"], "exited");
        env.ok(&["gc", "--grace-period=0s"]);
        assert!(pod_cgroups(uuid).is_empty());
    };

    // The image is not in the store yet: this run fetches it.
    let (child, uuid, sup) = foreground_pod(&env, &mut run(&beside, &["sleep", "600"]));
    assert_eq!(exe(sup), canon(&beside.join("husk-stage1-ns")), "a run that fetched execs its stage1");
    stop(child, &uuid);

    let elsewhere = env.tmp.path().join("stage1");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(beside.join("husk-stage1-ns"), elsewhere.join("husk-stage1-ns")).unwrap();
    for (dir, supervisor) in [(&beside, canon(&Env::bin())), (&elsewhere, canon(&elsewhere.join("husk-stage1-ns")))] {
        let o = run(dir, &["sh", "-c", "echo out; echo err >&2; exit 7"]).output().unwrap();
        assert_eq!(o.status.code(), Some(7), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
        assert!(String::from_utf8_lossy(&o.stderr).ends_with("err\n"), "{}", String::from_utf8_lossy(&o.stderr));

        let (child, uuid, sup) = foreground_pod(&env, &mut run(dir, &["sleep", "600"]));
        assert_eq!(sup, i64::from(child.id()), "the supervisor is the process the invoker started");
        assert_eq!(exe(sup), supervisor, "stage1 dir {}", dir.display());
        let store = env.dir().join("store");
        for fd in std::fs::read_dir(format!("/proc/{sup}/fd")).unwrap() {
            let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert!(!target.starts_with(&store), "the supervisor holds {} open", target.display());
        }
        stop(child, &uuid);
    }
    assert!(mounts_under(&env.dir()).is_empty());
}

/// The pod init shares the supervisor's private mount namespace (it mounts nothing) unless it
/// has a user namespace of its own, which must own its mount namespace; an app always has its
/// own, and none of them is the host's.
#[test]
fn the_pod_init_shares_the_supervisors_mount_namespace_unless_it_has_private_users() {
    let env = Env::new();
    let host = common::ns_id(std::path::Path::new("/proc/self/ns/mnt"));
    for private_users in [false, true] {
        let mut args = vec!["--net=none"];
        if private_users {
            args.push("--private-users");
        }
        let bb = image("busybox");
        args.extend([bb.as_str(), "--", "sleep", "600"]);
        let uuid = env.detached(&args);
        let s = env.json(&["status", &uuid, "--format", "json"]);
        let mnt = |pid: i64| common::ns_id(std::path::Path::new(&format!("/proc/{pid}/ns/mnt")));
        let (sup, init) = (mnt(s["supervisor_pid"].as_i64().unwrap()), mnt(s["pid"].as_i64().unwrap()));
        let app = mnt(s["apps"][0]["pid"].as_i64().unwrap_or_else(|| panic!("no app pid: {s}")));
        assert!(![sup, init, app].contains(&host), "a pod process in the host's mount namespace: {s}");
        assert_eq!(init == sup, !private_users, "private users {private_users}: {s}");
        assert!(app != init && app != sup, "the app has its own mount namespace: {s}");
        env.ok(&["stop", &uuid]);
    }
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(mounts_under(&env.dir()).is_empty());
}

#[test]
fn binary_replaced_while_a_detached_pod_runs() {
    let env = Env::new();
    let bin_dir = env.tmp.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let src = Env::bin().parent().unwrap().to_path_buf();
    let stage1 = std::env::var_os("HUSK_STAGE1_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| src.clone());
    std::fs::copy(Env::bin(), bin_dir.join("husk")).unwrap();
    for b in ["husk-stage1-ns", "husk-stage1-fly"] {
        std::fs::copy(stage1.join(b), bin_dir.join(b)).unwrap();
    }
    let old = bin_dir.join("husk");
    // The copies run from their own directory, as an installed husk does.
    let o = env
        .cmd_with(&old)
        .env_remove("HUSK_STAGE1_DIR")
        .args(["run", "-q", "-d", &image("busybox"), "--", "sleep", "600"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let uuid = String::from_utf8(o.stdout).unwrap().trim().to_string();
    // Replace the binary the way a package upgrade does: new file, rename over the old one.
    std::fs::copy(Env::bin(), bin_dir.join("husk.new")).unwrap();
    std::fs::rename(bin_dir.join("husk.new"), &old).unwrap();
    let run = |args: &[&str]| {
        let o = env.cmd_with(&old).env_remove("HUSK_STAGE1_DIR").args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(run(&["list", "--no-legend", "--full"]).contains(&uuid));
    assert_eq!(run(&["enter", &uuid, "--", "echo", "in"]), "in\n");
    run(&["stop", &uuid]);
    run(&["gc", "--grace-period=0s"]);
    assert!(pod_cgroups(&uuid).is_empty());
}

#[test]
fn pod_uuid_errors_and_image_in_use() {
    let env = Env::new();
    let err = env.fails(&["status", "ffffffff"], 122);
    assert!(err.contains("no pod matches") && err.contains("hint:"), "{err}");
    let uuid = env.ok(&["prepare", "-q", &image("busybox")]).trim().to_string();
    let err = env.fails(&["image", "rm", &image("busybox")], 121);
    assert!(err.contains(&uuid), "image rm must name the pod using it: {err}");
    env.ok(&["rm", &uuid]);
    env.ok(&["image", "rm", &image("busybox")]);
}

#[test]
fn fly_flavor_shares_host_namespaces() {
    let env = Env::new();
    let r = report(&env, &["--stage1=fly", &image("workload")]);
    let host_pid = std::fs::read_link("/proc/self/ns/pid").unwrap().display().to_string();
    assert_eq!(r["namespaces"]["pid"], host_pid);
    assert_ne!(r["namespaces"]["mnt"], std::fs::read_link("/proc/self/ns/mnt").unwrap().display().to_string());
}

#[test]
fn dns_and_hosts_entries() {
    let env = Env::new();
    let out = env.ok(&[
        "run",
        "-q",
        "--dns",
        "10.1.2.3",
        "--dns-search",
        "corp.example",
        "--hosts-entry",
        "192.0.2.7=db",
        &image("busybox"),
        "--",
        "sh",
        "-c",
        "cat /etc/resolv.conf /etc/hosts",
    ]);
    assert!(out.contains("nameserver 10.1.2.3") && out.contains("search corp.example"), "{out}");
    assert!(out.contains("192.0.2.7\tdb"), "{out}");
}

#[test]
fn a_relative_data_dir_works() {
    let env = Env::new();
    let o = std::process::Command::new(Env::bin())
        .current_dir(env.tmp.path())
        .args([
            "--dir",
            "rel-data",
            "--config-dir",
            "etc",
            "run",
            "-q",
            "--net=none",
            &image("busybox"),
            "--",
            "echo",
            "ok",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n", "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(Env::bin())
        .current_dir(env.tmp.path())
        .args(["--dir", "rel-data", "gc", "--grace-period=0s"])
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn interactive_app_gets_the_terminal() {
    let env = Env::new();
    // `script` gives husk a real pseudo-terminal, as an interactive shell would.
    let cmd = format!(
        "{} --dir {} --config-dir {} run -q --net=none --interactive {} -- sh -c 'tty; read x; echo got $x'",
        Env::bin().display(),
        env.dir().display(),
        env.tmp.path().join("etc").display(),
        image("busybox")
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("/dev/console") && text.contains("got typed"), "{text}");
}
