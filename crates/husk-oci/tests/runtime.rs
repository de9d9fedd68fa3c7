//! husk-oci's commands and config.json sections, end to end on this host.

mod common;

use std::io::{Read as _, Write as _};
use std::process::Stdio;

use common::{ok, text, Bundle, SUBREAPER};
use serde_json::json;

#[test]
fn the_version_has_runcs_three_lines() {
    let o = std::process::Command::new(common::bin()).arg("--version").output().unwrap();
    let out = ok(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("husk-oci version "), "{out}");
    assert!(lines[1].starts_with("commit: "), "{out}");
    assert_eq!(lines[2], "spec: 1.2.0");
}

#[test]
fn run_passes_the_exit_status_and_sets_up_the_process() {
    let mut b = Bundle::new();
    b.config["hostname"] = json!("box");
    b.config["domainname"] = json!("example.org");
    b.config["process"]["env"] = json!(["PATH=/bin", "GREETING=hello there"]);
    b.config["process"]["cwd"] = json!("/tmp/work");
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 100, "umask": 63, "additionalGids": [5, 7]});
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]);
    b.config["process"]["oomScoreAdj"] = json!(500);
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "100"});
    b.config["process"]["capabilities"] = json!({
        "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
        "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]
    });
    b.script(
        "echo \"$GREETING\"; hostname; cat /proc/sys/kernel/domainname; pwd; id -u; id -g; id -G; umask; ulimit -n; ulimit -Hn; \
         cat /proc/self/oom_score_adj; cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni; \
         grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; exit 42",
    );
    let (code, out, err) = b.run("proc");
    assert_eq!(code, 42, "{out}\n{err}");
    let want = "hello there\nbox\nexample.org\n/tmp/work\n1000\n100\n100 5 7\n0077\n100\n200\n500\n1\n100\n\
                CapEff:\t0000000000000020\nCapBnd:\t0000000000000420\nCapAmb:\t0000000000000020\nNoNewPrivs:\t1\n";
    assert_eq!(out, want, "{err}");
    assert!(b.leftovers("proc").is_empty(), "run removes the container: {:?}", b.leftovers("proc"));
}

#[test]
fn the_init_becomes_the_callers_child_and_waits_for_start() {
    let mut b = Bundle::new();
    b.script("echo started; exit 7");
    let pidfile = b.path().join("init.pid");
    let out = std::process::Command::new("python3")
        .args(["-c", SUBREAPER, common::bin()])
        .arg(&b.root)
        .arg(b.path())
        .arg("reaped")
        .arg(&pidfile)
        .output()
        .expect("python3 is needed (scripts/install-deps.sh)");
    assert_eq!(text(&out.stdout), "ppid-ok\nstarted\nexit 7\n", "{}", text(&out.stderr));
    assert_eq!(b.status("reaped"), "stopped");
    assert_eq!(b.state("reaped")["pid"], 0, "a stopped container reports pid 0");
    ok(&b.oci(&["delete", "reaped"]));
    assert!(b.leftovers("reaped").is_empty());
}

#[test]
fn create_start_state_kill_delete() {
    let mut b = Bundle::new();
    b.config["annotations"] = json!({"org.example.k": "v"});
    b.script("trap 'echo term >/tmp/got; exit 3' TERM; echo up; while true; do sleep 0.05; done");
    let pidfile = b.path().join("pid");
    ok(&b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "--pid-file", pidfile.to_str().unwrap(), "life"]));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    let st = b.state("life");
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["id"], "life");
    assert_eq!(st["ociVersion"], "1.2.0");
    assert_eq!(st["bundle"], b.path().to_str().unwrap());
    assert_eq!(st["rootfs"], b.rootfs().to_str().unwrap());
    assert_eq!(st["annotations"]["org.example.k"], "v");
    assert!(st["created"].as_str().unwrap().starts_with("20"), "{st}");
    // A created container's process has not run yet: it has not printed.
    let e = b.oci(&["create", "--bundle", b.path().to_str().unwrap(), "life"]);
    assert!(!e.status.success() && text(&e.stderr).contains("container with id exists: life"), "{}", text(&e.stderr));
    ok(&b.oci(&["start", "life"]));
    assert_eq!(b.status("life"), "running");
    let e = b.oci(&["start", "life"]);
    assert!(!e.status.success() && text(&e.stderr).contains("running"), "{}", text(&e.stderr));
    let e = b.oci(&["delete", "life"]);
    assert!(!e.status.success() && text(&e.stderr).contains("not stopped: running"), "{}", text(&e.stderr));
    let list: serde_json::Value = serde_json::from_str(&ok(&b.oci(&["list", "--format", "json"]))).unwrap();
    assert_eq!(list[0]["id"], "life");
    assert!(ok(&b.oci(&["list", "-q"])).contains("life"));
    ok(&b.oci(&["kill", "life"])); // TERM by default
    for _ in 0..200 {
        if b.status("life") == "stopped" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(b.status("life"), "stopped");
    assert_eq!(std::fs::read_to_string(b.rootfs().join("tmp/got")).unwrap(), "term\n");
    let e = b.oci(&["kill", "life", "KILL"]);
    assert!(!e.status.success() && text(&e.stderr).contains("container not running"), "{}", text(&e.stderr));
    ok(&b.oci(&["delete", "life"]));
    assert!(b.leftovers("life").is_empty(), "{:?}", b.leftovers("life"));
}

#[test]
fn an_unknown_container_does_not_exist() {
    let b = Bundle::new();
    for args in
        [&["state", "nope"][..], &["start", "nope"], &["kill", "nope"], &["delete", "nope"], &["exec", "nope", "true"]]
    {
        let o = b.oci(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(text(&o.stderr).contains("container does not exist"), "{args:?}: {}", text(&o.stderr));
    }
    ok(&b.oci(&["delete", "--force", "nope"]));
    let o = b.oci(&["state", "../x"]);
    assert!(text(&o.stderr).contains("invalid container id"), "{}", text(&o.stderr));
}

#[test]
fn signals_are_taken_by_number_and_name_and_all_reaches_every_process() {
    let mut b = Bundle::new();
    b.script("sleep 1000 & sleep 1000 & wait");
    for (i, sig) in ["9", "KILL", "SIGKILL", "sigkill"].iter().enumerate() {
        let id = format!("sig{i}");
        ok(&b.oci(&["create", &id]));
        ok(&b.oci(&["start", &id]));
        let cmd = if i == 3 { vec!["kill", "--all", &id, sig] } else { vec!["kill", &id, sig] };
        ok(&b.oci(&cmd));
        for _ in 0..300 {
            if b.status(&id) == "stopped" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(b.status(&id), "stopped", "{sig}");
        ok(&b.oci(&["delete", &id]));
    }
    let e = b.oci(&["kill", "x", "SIGNOPE"]);
    assert!(text(&e.stderr).contains("unknown signal"), "{}", text(&e.stderr));
}

#[test]
fn delete_force_kills_a_running_container_and_removes_everything() {
    let mut b = Bundle::new();
    b.script("sleep 1000");
    ok(&b.oci(&["create", "forced"]));
    ok(&b.oci(&["start", "forced"]));
    let pid = b.state("forced")["pid"].as_i64().unwrap();
    ok(&b.oci(&["delete", "--force", "forced"]));
    assert!(b.leftovers("forced").is_empty(), "{:?}", b.leftovers("forced"));
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z")).unwrap_or(false);
    assert!(!alive, "the init still runs");
    // A created (never started) container is deleted without --force, as with runc.
    ok(&b.oci(&["create", "waiting"]));
    ok(&b.oci(&["delete", "waiting"]));
    assert!(b.leftovers("waiting").is_empty());
}

#[test]
fn exec_runs_in_the_containers_namespaces_with_its_process_or_given_flags() {
    let mut b = Bundle::new();
    b.config["hostname"] = json!("execbox");
    b.script("echo ready >/tmp/ready; sleep 1000");
    ok(&b.oci(&["create", "ex"]));
    ok(&b.oci(&["start", "ex"]));
    let o = b.oci(&[
        "exec",
        "--env",
        "X=1",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        "ex",
        "sh",
        "-c",
        "hostname; cat ready; pwd; id -u; echo $X; exit 9",
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "execbox\nready\n/tmp\n1000\n1\n");
    // --process FILE, as podman and containerd pass it.
    let process = json!({"args": ["/bin/sh", "-c", "echo from-file; cat /proc/self/status | grep NoNewPrivs"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}, "noNewPrivileges": true});
    let pf = b.path().join("process.json");
    std::fs::write(&pf, process.to_string()).unwrap();
    let out = ok(&b.oci(&["exec", "--process", pf.to_str().unwrap(), "ex"]));
    assert_eq!(out, "from-file\nNoNewPrivs:\t1\n");
    // --detach: the process runs on and its pid is in the pid file.
    let epid = b.path().join("exec.pid");
    ok(&b.oci(&["exec", "--detach", "--pid-file", epid.to_str().unwrap(), "ex", "sleep", "1000"]));
    let pid: i32 = std::fs::read_to_string(&epid).unwrap().parse().unwrap();
    let pids: Vec<i32> = serde_json::from_str(&ok(&b.oci(&["ps", "--format", "json", "ex"]))).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    assert_eq!(pids.len(), 2);
    let table = ok(&b.oci(&["ps", "ex"]));
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");
    // A program that does not exist: 127 and a message, as a shell would.
    let o = b.oci(&["exec", "ex", "/nope"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("/nope"), "{}", text(&o.stderr));
    // A foreground exec with a terminal and no console socket gets a pty of its own.
    let o = b.oci(&["exec", "--tty", "ex", "sh", "-c", "tty; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("/dev/pts/"), "{}", text(&o.stdout));
    ok(&b.oci(&["delete", "--force", "ex"]));
}

#[test]
fn the_console_socket_receives_the_pty_master() {
    let mut b = Bundle::new();
    b.config["process"]["terminal"] = json!(true);
    b.config["process"]["consoleSize"] = json!({"height": 33, "width": 99});
    b.script("tty; stty size; echo on-the-pty; ls -l /dev/console | grep -c pts");
    let sock_path = b.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let b_ref = &b;
    let got = std::thread::scope(|s| {
        let server = s.spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let (n, fds) = husk_sys::tty::recv_with_fds(&conn, &mut buf).unwrap();
            (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
        });
        ok(&b_ref.oci(&["create", "--console-socket", sock_path.to_str().unwrap(), "tty"]));
        server.join().unwrap()
    });
    let (name, mut fds) = got;
    assert!(name.starts_with("/dev/pts/"), "the message is the pty's name: {name:?}");
    assert_eq!(fds.len(), 1, "exactly one fd");
    let mut master = std::fs::File::from(fds.remove(0));
    ok(&b.oci(&["start", "tty"]));
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The master reads until the container's side of the pty is closed (EIO).
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let out = text(&out);
    assert!(out.contains("/dev/pts/0") && out.contains("33 99") && out.contains("on-the-pty"), "{out:?}");
    ok(&b.oci(&["delete", "--force", "tty"]));
    let e = b.oci(&["create", "tty2"]);
    assert!(text(&e.stderr).contains("--console-socket"), "{}", text(&e.stderr));
    assert!(b.leftovers("tty2").is_empty());
}

#[test]
fn pause_freezes_and_resume_thaws() {
    let mut b = Bundle::new();
    b.script("i=0; while true; do i=$((i+1)); echo $i >/tmp/count; sleep 0.01; done");
    ok(&b.oci(&["create", "frozen"]));
    ok(&b.oci(&["start", "frozen"]));
    std::thread::sleep(std::time::Duration::from_millis(100));
    ok(&b.oci(&["pause", "frozen"]));
    assert_eq!(b.status("frozen"), "paused");
    let a = std::fs::read_to_string(b.rootfs().join("tmp/count")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(std::fs::read_to_string(b.rootfs().join("tmp/count")).unwrap(), a, "a paused container runs on");
    let e = b.oci(&["exec", "frozen", "true"]);
    assert!(text(&e.stderr).contains("paused"), "{}", text(&e.stderr));
    ok(&b.oci(&["resume", "frozen"]));
    assert_eq!(b.status("frozen"), "running");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_ne!(std::fs::read_to_string(b.rootfs().join("tmp/count")).unwrap(), a);
    let e = b.oci(&["resume", "frozen"]);
    assert!(text(&e.stderr).contains("not paused"), "{}", text(&e.stderr));
    // delete --force of a paused container thaws and kills it.
    ok(&b.oci(&["pause", "frozen"]));
    ok(&b.oci(&["delete", "--force", "frozen"]));
    assert!(b.leftovers("frozen").is_empty());
}

#[test]
fn resources_are_enforced_and_update_changes_them() {
    let mut b = Bundle::new();
    b.config["linux"]["resources"] = json!({
        "memory": {"limit": 67108864},
        "pids": {"limit": 30},
        "cpu": {"shares": 512, "quota": 20000, "period": 100000}
    });
    b.script("sleep 1000");
    ok(&b.oci(&["create", "res"]));
    let read = |c: &str, f: &str| std::fs::read_to_string(b.cgroup("res", c).join(f)).unwrap().trim().to_string();
    if std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("pids", "pids.max"), "30");
        let cpu = if std::path::Path::new("/sys/fs/cgroup/cpu").is_dir() { "cpu" } else { "cpu,cpuacct" };
        assert_eq!(read(cpu, "cpu.shares"), "512");
        assert_eq!(read(cpu, "cpu.cfs_quota_us"), "20000");
        let mut child = b.cmd(&["update", "--resources", "-", "res"]).stdin(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(br#"{"memory": {"limit": 33554432}, "pids": {"limit": 10}}"#).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(read("memory", "memory.limit_in_bytes"), "33554432");
        assert_eq!(read("pids", "pids.max"), "10");
        ok(&b.oci(&["update", "--pids-limit", "12", "res"]));
        assert_eq!(read("pids", "pids.max"), "12");
    } else {
        assert_eq!(read("memory", "memory.max"), "67108864");
        assert_eq!(read("pids", "pids.max"), "30");
    }
    // The pids limit holds inside.
    ok(&b.oci(&["start", "res"]));
    let o = b.oci(&["exec", "res", "sh", "-c", "for i in $(seq 40); do sleep 5 & done 2>/dev/null; echo spawned"]);
    assert!(!text(&o.stderr).is_empty() || !o.status.success() || text(&o.stdout).contains("spawned"));
    let pids: Vec<i32> = serde_json::from_str(&ok(&b.oci(&["ps", "--format", "json", "res"]))).unwrap();
    assert!(pids.len() <= 12, "{} processes under a limit of 12", pids.len());
    ok(&b.oci(&["delete", "--force", "res"]));
    assert!(b.leftovers("res").is_empty(), "{:?}", b.leftovers("res"));
}

#[test]
fn mounts_binds_tmpfs_copyup_cgroup_masks_and_a_read_only_root() {
    let mut b = Bundle::new();
    let host = b.path().join("host-data");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "host file\n").unwrap();
    let mut mounts = b.config["mounts"].as_array().unwrap().clone();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": host, "options": ["rbind", "ro", "nosuid"]}));
    mounts.push(json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "tmpcopyup", "size=1m"]}));
    mounts.push(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}));
    b.config["mounts"] = json!(mounts);
    b.config["root"]["readonly"] = json!(true);
    std::fs::write(b.rootfs().join("etc/secret"), "secret\n").unwrap();
    b.config["linux"]["maskedPaths"].as_array_mut().unwrap().push(json!("/etc/secret"));
    b.script(
        "cat /data/f; touch /data/x 2>/dev/null || echo data-ro; cat /run/image-file; touch /run/new && echo run-rw; \
         touch /x 2>/dev/null || echo root-ro; cat /etc/secret | wc -c; touch /proc/sys/x 2>/dev/null || echo sys-ro; \
         test -d /sys/fs/cgroup/memory -o -f /sys/fs/cgroup/cgroup.procs && echo cgroup-ok; \
         touch /sys/fs/cgroup/x 2>/dev/null || echo cgroup-ro; grep ' /run ' /proc/mounts | grep -c nosuid",
    );
    let (code, out, err) = b.run("mounts");
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, "host file\ndata-ro\nfrom the image\nrun-rw\nroot-ro\n0\nsys-ro\ncgroup-ok\ncgroup-ro\n1\n",
        "{err}"
    );
}

#[test]
fn namespaces_joined_by_path_user_namespaces_and_time_offsets() {
    let mut b = Bundle::new();
    // A network namespace made by the caller (as podman and CNI do), joined by path.
    let ns = format!("husk-oci-test-{}", std::process::id());
    assert!(std::process::Command::new("ip").args(["netns", "add", &ns]).status().unwrap().success(), "ip netns add");
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "link", "add", "marker0", "type", "veth", "peer", "name", "marker1"])
        .status()
        .unwrap();
    let mut nss: Vec<serde_json::Value> = b.config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "network")
        .cloned()
        .collect();
    nss.push(json!({"type": "network", "path": format!("/run/netns/{ns}")}));
    nss.push(json!({"type": "user"}));
    nss.push(json!({"type": "time"}));
    b.config["linux"]["namespaces"] = json!(nss);
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    b.config["linux"]["timeOffsets"] = json!({"boottime": {"secs": 86400000, "nanosecs": 0}});
    b.script("grep -c marker0 /proc/net/dev; cat /proc/self/uid_map; id -u; cut -d. -f1 /proc/uptime");
    let (code, out, err) = b.run("nsjoin");
    std::process::Command::new("ip").args(["netns", "del", &ns]).status().unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "the joined namespace's device: {out}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["0", "200000", "65536"]);
    assert_eq!(lines[2], "0");
    assert!(lines[3].parse::<u64>().unwrap() >= 86_400_000, "boottime offset: {out}");
}

#[test]
fn devices_and_the_device_cgroup() {
    let mut b = Bundle::new();
    b.config["linux"]["devices"] = json!([{"path": "/dev/loop-control", "type": "c", "major": 10, "minor": 237, "fileMode": 384, "uid": 0, "gid": 0}]);
    b.config["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set].as_array_mut().unwrap().push(json!("CAP_MKNOD"));
    }
    // A node the config lists is usable; one made inside (the host's first disk) is not.
    b.script(
        "stat -c '%F %t:%T %a' /dev/loop-control; mknod /tmp/sda b 8 0 2>&1 | grep -c 'not permitted'; \
         echo x >/dev/null && echo null-ok",
    );
    let (code, out, err) = b.run("devs");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "character special file a:ed 600\n1\nnull-ok\n", "{err}");
}

#[test]
fn seccomp_profiles_with_a_deny_default_and_argument_conditions() {
    let mut b = Bundle::new();
    let mut allowed: Vec<&str> = husk_types::syscalls::SYSCALLS.iter().map(|(n, _)| *n).collect();
    allowed.retain(|n| !["mkdir", "mkdirat", "personality"].contains(n));
    // mkdir is refused with EACCES by a rule, rmdir (not listed at all) with the default.
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    });
    b.script("mkdir /tmp/d; grep Seccomp: /proc/self/status; echo done");
    let (code, out, err) = b.run("sec");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Permission denied"), "mkdirat gets EACCES: {err}");
    assert_eq!(out, "Seccomp:\t2\ndone\n");
    // Without noNewPrivileges the filter is still installed (while the init holds CAP_SYS_ADMIN).
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.script("grep -E 'Seccomp:|NoNewPrivs' /proc/self/status");
    let (code, out, err) = b.run("sec2");
    assert_eq!((code, out.as_str()), (0, "NoNewPrivs:\t0\nSeccomp:\t2\n"), "{err}");
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let mut b = Bundle::new();
    let log = b.path().join("hooks.log");
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read s; echo {name} \"$s\" >>{}", log.display())]});
    b.config["hooks"] = json!({
        "prestart": [hook("prestart")], "createRuntime": [hook("createRuntime")],
        "createContainer": [hook("createContainer")], "startContainer": [json!({"path": "/bin/sh", "args": ["sh", "-c", "echo startContainer-in-container >/tmp/hooked"]})],
        "poststart": [hook("poststart")], "poststop": [hook("poststop")]
    });
    b.script("cat /tmp/hooked");
    let (code, out, err) = b.run("hooked");
    assert_eq!((code, out.as_str()), (0, "startContainer-in-container\n"), "{err}");
    let log = std::fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = log.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["prestart", "createRuntime", "createContainer", "poststart", "poststop"], "{log}");
    for l in log.lines() {
        let st: serde_json::Value = serde_json::from_str(l.split_once(' ').unwrap().1).unwrap();
        assert_eq!(st["id"], "hooked");
        assert!(st["pid"].as_i64().unwrap() > 0 || l.starts_with("poststop"), "{l}");
    }
    // A failing prestart hook fails create and leaves nothing behind.
    b.config["hooks"] = json!({"prestart": [{"path": "/bin/false"}]});
    b.script("true");
    let o = b.oci(&["create", "badhook"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("hooks.prestart[0]"), "{}", text(&o.stderr));
    assert!(b.leftovers("badhook").is_empty(), "{:?}", b.leftovers("badhook"));
}

#[test]
fn a_field_that_cannot_be_honoured_fails_create_naming_it_and_leaves_nothing() {
    for (patch, field) in [
        (json!({"process": {"apparmorProfile": "docker-default"}}), "process.apparmorProfile"),
        (json!({"linux": {"intelRdt": {"closID": "x"}}}), "linux.intelRdt"),
        (
            json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}}}),
            "linux.seccomp.listenerPath",
        ),
        (json!({"linux": {"resources": {"memory": {"kernel": 1000000}}}}), "linux.resources.memory.kernel"),
        (json!({"linux": {"sysctl": {"kernel.randomize_va_space": "0"}}}), "linux.sysctl.kernel.randomize_va_space"),
        (json!({"ociVersion": "9.0.0"}), "ociVersion"),
    ] {
        let mut b = Bundle::new();
        merge(&mut b.config, &patch);
        b.script("true");
        let o = b.oci(&["create", "refused"]);
        assert_eq!(o.status.code(), Some(1), "{patch}");
        assert!(text(&o.stderr).contains(field), "{field}: {}", text(&o.stderr));
        assert!(b.leftovers("refused").is_empty(), "{patch}: {:?}", b.leftovers("refused"));
    }
}

fn merge(into: &mut serde_json::Value, patch: &serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[test]
fn raising_a_hard_rlimit_without_cap_sys_resource_is_a_clear_error() {
    let mut b = Bundle::new();
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap().1;
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": hard + 1, "hard": hard + 1}]);
    b.script("true");
    let o = b.oci(&["run", "rlim"]);
    let has_sys_resource = caps_has_sys_resource();
    if has_sys_resource {
        assert!(o.status.success(), "{}", text(&o.stderr));
    } else {
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("process.rlimits") && text(&o.stderr).contains("CAP_SYS_RESOURCE"),
            "{}",
            text(&o.stderr)
        );
        assert!(b.leftovers("rlim").is_empty());
    }
}

fn caps_has_sys_resource() -> bool {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = s.lines().find(|l| l.starts_with("CapEff:")).unwrap().split_whitespace().nth(1).unwrap().to_string();
    u64::from_str_radix(&eff, 16).unwrap() & (1 << 24) != 0
}

#[test]
fn preserved_fds_and_listen_fds_reach_the_process() {
    let mut b = Bundle::new();
    b.config["process"]["env"] = json!(["PATH=/bin", "LISTEN_FDS=1"]);
    b.script("cat <&3; echo LISTEN_FDS=$LISTEN_FDS; ls /proc/self/fd | wc -l");
    let file = b.path().join("passed");
    std::fs::write(&file, "through fd 3\n").unwrap();
    // Python puts the file at fd 3 and execs husk-oci with it (close_fds=False).
    let o = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.dup2(fd, 3); os.set_inheritable(3, True); \
             os.execv(sys.argv[2], sys.argv[2:])",
        ])
        .arg(&file)
        .arg(common::bin())
        .arg("--root")
        .arg(&b.root)
        .args(["run", "--preserve-fds", "1", "fds"])
        .current_dir(b.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // fds: 0, 1, 2, 3 and the one ls opens to read the directory.
    assert_eq!(text(&o.stdout), "through fd 3\nLISTEN_FDS=1\n5\n", "{}", text(&o.stderr));
}

#[test]
fn a_killed_create_leaves_state_that_delete_force_clears() {
    let mut b = Bundle::new();
    b.config["hooks"] = json!({"prestart": [{"path": "/bin/sleep", "args": ["sleep", "30"]}]});
    b.script("true");
    let mut child = b.cmd(&["create", "killed"]).spawn().unwrap();
    // Wait until the init exists (the hook runs after it), then kill -9 husk-oci.
    for _ in 0..500 {
        if b.root.join("killed/state.json").exists()
            && std::fs::read_to_string(b.root.join("killed/state.json")).unwrap().contains("\"pid\":")
            && !std::fs::read_to_string(b.root.join("killed/state.json")).unwrap().contains("\"pid\":0")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let st = b.state("killed");
    let pid = st["pid"].as_i64().unwrap();
    ok(&b.oci(&["delete", "--force", "killed"]));
    assert!(b.leftovers("killed").is_empty(), "{:?}", b.leftovers("killed"));
    for _ in 0..100 {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z")).unwrap_or(false);
        if !alive {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the init {pid} of the killed create still runs");
}

#[test]
fn errors_go_to_the_log_as_json_lines() {
    let mut b = Bundle::new();
    b.config["process"]["apparmorProfile"] = json!("x");
    b.script("true");
    let log = b.path().join("log.json");
    let mut c = std::process::Command::new(common::bin());
    c.arg("--root").arg(&b.root).arg("--log").arg(&log).args(["--log-format", "json", "create", "logged"]);
    c.current_dir(b.path());
    let o = common::output_of(c);
    assert!(!o.status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(last["msg"].as_str().unwrap().contains("process.apparmorProfile"), "{last}");
    assert!(last["time"].as_str().unwrap().starts_with("20"), "{last}");
}

#[test]
fn features_spec_and_systemd_cgroups() {
    let b = Bundle::new();
    let f: serde_json::Value = serde_json::from_str(&ok(&b.oci(&["features"]))).unwrap();
    assert_eq!(f["ociVersionMin"], "1.0.0");
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert!(f["linux"]["namespaces"].as_array().unwrap().contains(&json!("time")));
    assert!(f["linux"]["seccomp"]["actions"].as_array().unwrap().contains(&json!("SCMP_ACT_ERRNO")));
    assert_eq!(f["linux"]["apparmor"]["enabled"], false);
    let e = b.oci(&["spec", "--bundle", b.path().to_str().unwrap()]);
    assert!(text(&e.stderr).contains("exists already"), "{}", text(&e.stderr));
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        let e = b.oci(&["--systemd-cgroup", "create", "sd"]);
        assert!(text(&e.stderr).contains("--systemd-cgroup needs systemd"), "{}", text(&e.stderr));
    }
}

#[test]
fn a_no_pivot_root_and_a_relative_root_path() {
    let mut b = Bundle::new();
    b.script("echo pivoted-or-not; ls /");
    let o = b.oci(&["run", "--no-pivot", "np"]);
    let out = ok(&o);
    assert!(out.starts_with("pivoted-or-not\n") && out.contains("bin"), "{out}");
}

#[test]
fn exec_reads_a_config_process_from_stdin_free_of_the_callers_fds() {
    let mut b = Bundle::new();
    b.script("sleep 1000");
    ok(&b.oci(&["create", "fdc"]));
    ok(&b.oci(&["start", "fdc"]));
    let out = ok(&b.oci(&["exec", "fdc", "sh", "-c", "ls /proc/self/fd | wc -l"]));
    assert_eq!(out.trim(), "4", "only stdio and ls's own fd: the runtime leaks none");
    let mut o = String::new();
    let mut c = b.cmd(&["exec", "fdc", "cat"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(b"piped in\n").unwrap();
    c.stdout.take().unwrap().read_to_string(&mut o).unwrap();
    assert!(c.wait().unwrap().success());
    assert_eq!(o, "piped in\n");
    ok(&b.oci(&["delete", "-f", "fdc"]));
}

#[test]
fn each_container_gets_a_session_keyring_of_its_own_unless_told_not_to() {
    let mut b = Bundle::new();
    b.config["linux"]["maskedPaths"] = json!([]);
    b.script("grep -c 'keyring *keys1:' /proc/keys || true");
    assert_eq!(ok(&b.oci(&["run", "keys1"])), "1\n", "the session keyring named after the container");
    b.script("grep -c 'keyring *keys2:' /proc/keys || true");
    assert_eq!(ok(&b.oci(&["run", "--no-new-keyring", "keys2"])), "0\n");
}

#[test]
fn idmapped_mounts_show_the_hosts_ids_shifted() {
    use std::os::unix::fs::MetadataExt;
    let mut b = Bundle::new();
    let host = b.path().join("idmapped");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("root-owned"), "x").unwrap();
    std::fs::write(host.join("user-owned"), "y").unwrap();
    std::os::unix::fs::chown(host.join("user-owned"), Some(1234), Some(1234)).unwrap();
    let maps = json!([{"containerID": 0, "hostID": 5000, "size": 2000}]);
    let mut mounts = b.config["mounts"].as_array().unwrap().clone();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": host, "options": ["rbind", "idmap"],
        "uidMappings": maps, "gidMappings": maps}));
    b.config["mounts"] = json!(mounts);
    // uid 5000 in the container is the mount's root: it owns the directory and writes as 0.
    b.config["process"]["user"] = json!({"uid": 5000, "gid": 5000});
    b.script("stat -c '%n %u %g' /data/root-owned /data/user-owned; touch /data/new && echo wrote");
    let (code, out, err) = b.run("idmapped");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "/data/root-owned 5000 5000\n/data/user-owned 6234 6234\nwrote\n");
    let md = std::fs::metadata(host.join("new")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0), "written through the mapping, stored as the host's ids");
    // Mappings on a mount without both lists are refused by name.
    let mut mounts = b.config["mounts"].as_array().unwrap().clone();
    mounts.last_mut().unwrap().as_object_mut().unwrap().remove("gidMappings");
    b.config["mounts"] = json!(mounts);
    b.write();
    let o = b.oci(&["create", "halfmapped"]);
    assert!(text(&o.stderr).contains("gidMappings"), "{}", text(&o.stderr));
    assert!(b.leftovers("halfmapped").is_empty());
}

/// runc CVE-2019-5736: a process of the container reopening the runtime's binary through
/// /proc/PID/exe of the runtime's process in the container (here the created container's
/// init, a copy of husk-oci until it execs).
#[test]
fn the_runtimes_binary_is_out_of_reach_through_proc_exe_cve_2019_5736() {
    let mut b = Bundle::new();
    b.script("true");
    ok(&b.oci(&["create", "cve"]));
    let o = b.oci(&[
        "exec",
        "cve",
        "sh",
        "-c",
        "readlink /proc/1/exe || echo refused; cat /proc/1/exe >/dev/null 2>&1 || echo refused",
    ]);
    assert_eq!(text(&o.stdout), "refused\nrefused\n", "{}", text(&o.stderr));
    ok(&b.oci(&["delete", "cve"]));
}

#[test]
fn a_foreground_run_with_a_terminal_and_no_console_socket_relays_its_own_pty() {
    let mut b = Bundle::new();
    b.config["process"]["terminal"] = json!(true);
    b.script("tty; exit 6");
    let o = b.oci(&["run", "tty-run"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("/dev/pts/"), "{:?}", text(&o.stdout));
    assert!(b.leftovers("tty-run").is_empty());
    // Detached, it still needs a socket to hand the pty to.
    let o = b.oci(&["run", "--detach", "tty-d"]);
    assert!(text(&o.stderr).contains("--console-socket"), "{}", text(&o.stderr));
}

#[test]
fn concurrent_forced_deletes_both_succeed_and_leave_nothing() {
    let mut b = Bundle::new();
    b.script("sleep 1000");
    for round in 0..3 {
        let id = format!("race{round}");
        ok(&b.oci(&["create", &id]));
        ok(&b.oci(&["start", &id]));
        let mut c1 = b.cmd(&["delete", "--force", &id]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut c2 = b.cmd(&["delete", "--force", &id]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let (s1, s2) = (c1.wait().unwrap(), c2.wait().unwrap());
        let mut e = String::new();
        c1.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        c2.stderr.take().unwrap().read_to_string(&mut e).unwrap();
        assert!(s1.success() && s2.success(), "{e}");
        assert!(b.leftovers(&id).is_empty(), "{:?}", b.leftovers(&id));
    }
}

/// A `start` killed after it released the init but before it removed the exec fifo leaves the
/// fifo behind: the container runs, and neither `state` nor a second `start` may be fooled.
#[test]
fn a_fifo_left_by_a_killed_start_is_not_taken_for_a_created_container() {
    let mut b = Bundle::new();
    b.script("sleep 1000");
    ok(&b.oci(&["create", "stale"]));
    ok(&b.oci(&["start", "stale"]));
    let fifo = b.root.join("stale/exec.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622)).unwrap();
    assert_eq!(b.status("stale"), "running");
    let t = std::time::Instant::now();
    let o = b.oci(&["start", "stale"]);
    assert!(!o.status.success() && text(&o.stderr).contains("running"), "{}", text(&o.stderr));
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "start hung");
    ok(&b.oci(&["delete", "--force", "stale"]));
    assert!(b.leftovers("stale").is_empty());
}

#[test]
fn the_state_directories_are_roots_alone() {
    use std::os::unix::fs::PermissionsExt;
    let mut b = Bundle::new();
    b.script("true");
    ok(&b.oci(&["create", "modes"]));
    for d in [b.root.clone(), b.root.join("modes")] {
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
    }
    ok(&b.oci(&["delete", "modes"]));
}
