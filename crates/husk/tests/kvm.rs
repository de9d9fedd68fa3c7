//! The kvm stage1 end to end: pods in qemu microvms (under TCG on this host: its /dev/kvm is the
//! PVM variant, which the probe detects). Few tests, each booting a guest (about 4 s), with
//! generous timeouts. They need the kvm assets (`scripts/setup-kvm.sh`, which scripts/test.sh
//! runs) in $HUSK_KVM_DIR.

mod common;
#[path = "common/term.rs"]
mod term;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{image, Env};
use husk_sys::tty;
use term::Term;

fn kvm_env() -> Env {
    let assets = std::env::var("HUSK_KVM_DIR")
        .expect("HUSK_KVM_DIR is not set: run the tests with scripts/test.sh (it runs scripts/setup-kvm.sh)");
    assert!(
        Path::new(&assets).join("modules/virtiofs.ko").is_file(),
        "{assets} has no kvm assets: run scripts/setup-kvm.sh"
    );
    Env::new()
}

/// The kvm pods of one test binary boot one at a time: two cores emulating several guests at
/// once would only make each slower.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Live (not zombie: this host's PID 1 reaps late) processes whose command line mentions `what`.
fn live_processes(what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if cmd.contains(what) && !status.contains("State:\tZ") {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

/// Nothing of a kvm pod is left: no qemu, virtiofsd or vsock daemon of it, no socket dir, no
/// mount of its dir, no cgroup.
fn assert_nothing_left(env: &Env, uuid: &str) {
    let run = PathBuf::from("/run/husk/kvm").join(uuid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = live_processes(&run.display().to_string());
        let left = (procs.clone(), run.exists(), common::mounts_under(&env.dir()), common::pod_cgroups(uuid));
        if left.0.is_empty() && !left.1 && left.2.is_empty() && left.3.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "kvm pod {uuid} left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_of(env: &Env, uuid: &str) -> String {
    env.ok(&["status", uuid])
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_string()
}

#[test]
fn a_kvm_pod_runs_its_apps_under_its_own_kernel_with_the_same_restrictions() {
    let _s = serial();
    let env = kvm_env();
    let vol = env.tmp.path().join("vol");
    std::fs::create_dir_all(vol.join("rw")).unwrap();
    std::fs::create_dir_all(vol.join("ro")).unwrap();
    std::fs::write(vol.join("ro/f"), "from the host\n").unwrap();
    let rw = format!("rw,kind=host,source={}", vol.join("rw").display());
    let ro = format!("ro,kind=host,source={},readOnly=true", vol.join("ro").display());
    let (wl, bb) = (image("workload"), image("busybox"));
    let o = env.husk(&[
        "run",
        "-q",
        "--stage1=kvm",
        "--net=none",
        "--exit-policy=all",
        "--volume",
        &rw,
        "--volume",
        &ro,
        &wl,
        "--name",
        "report",
        "--memory",
        "64M",
        "---",
        &bb,
        "--name",
        "files",
        "--mount",
        "volume=rw,target=/rw",
        "--mount",
        "volume=ro,target=/ro",
        "--",
        "sh",
        "-c",
        "cat /ro/f; echo written > /rw/out; if echo x > /ro/g; then echo ro-writable; fi; exit 7",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // The pod's status is the app's: the report exits 0, the other 7.
    assert_eq!(o.status.code(), Some(7), "stdout: {out}\nstderr: {err}");
    // The probe finds this host's PVM /dev/kvm and says it falls back.
    assert!(err.contains("TCG"), "{err}");
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no report in {out}"));
    let r: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_ne!(r["kernel"], host_kernel(), "the guest runs a kernel of its own");
    assert_eq!(r["init"], "/init", "PID 1 is husk's guest init");
    // The app's restrictions as in ns: default capabilities, seccomp, no_new_privs, own cgroup
    // namespace, an own mount namespace with a private /proc.
    assert_eq!(r["capeff"], "00000000a80425fb", "{r}");
    assert_eq!(r["capbnd"], "00000000a80425fb");
    assert_eq!(r["seccomp"], "2");
    assert_eq!(r["nonewprivs"], "1");
    assert_eq!(r["cgroup"][0], "0::/", "{r}");
    assert!(r["mounts"].as_array().unwrap().iter().any(|m| m.as_str().unwrap().starts_with("/proc proc")), "{r}");
    // Volumes: read-write and read-only honoured; written on the host's side.
    assert!(out.contains("from the host"), "{out}");
    assert!(!out.contains("ro-writable"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(std::fs::read_to_string(vol.join("rw/out")).unwrap(), "written\n");
    assert!(!vol.join("ro/g").exists());
    // Every app's status is recorded, as with ns.
    let uuid = env.json(&["list", "--format", "json"])[0]["uuid"].as_str().unwrap().to_string();
    let st = status_of(&env, &uuid);
    assert!(st.contains("flavor=kvm"), "{st}");
    assert!(st.contains("app-report=exited 0") && st.contains("app-files=exited 7"), "{st}");
    env.ok(&["rm", &uuid]);
    assert_nothing_left(&env, &uuid);
}

#[test]
fn a_kvm_pod_limits_its_app_inside_the_guest() {
    let _s = serial();
    let env = kvm_env();
    let bb = image("busybox");
    let o = env.husk(&[
        "run",
        "-q",
        "--stage1=kvm",
        "--net=none",
        &bb,
        "--memory",
        "96M",
        "--pids-limit",
        "50",
        "--",
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; grep MemTotal /proc/meminfo",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], (96u64 << 20).to_string(), "{out}");
    assert_eq!(lines[1], "50", "{out}");
    // The VM is sized for it: the limit plus the guest's overhead (128M by default), no more.
    let kib: u64 = lines[2].split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(kib > 96 << 10 && kib <= (96 + 128) << 10, "{out}");
}

#[test]
fn a_detached_kvm_pod_logs_and_stops_and_force_kills_its_vm() {
    let _s = serial();
    let env = kvm_env();
    let bb = image("busybox");
    let script = "trap 'echo got TERM; exit 3' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done";
    let uuid = env.detached(&["--stage1=kvm", "--net=none", &bb, "--", "sh", "-c", script]);
    // `logs -f` follows the guest's output as it is written.
    let mut follow = env.cmd().args(["logs", "-f", &uuid]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let mut l = String::new();
        assert!(std::io::BufRead::read_line(&mut reader, &mut l).unwrap() > 0, "logs -f ended early: {seen:?}");
        seen.push(l);
    }
    assert!(seen[0].starts_with("tick 0"), "{seen:?}");
    // enter: a command in the guest's app, with the app's restrictions, its input, output and
    // exit status carried over vsock.
    let mut c = env.cmd();
    c.args([
        "enter",
        &uuid,
        "--",
        "sh",
        "-c",
        "read x; echo got $x; grep CapEff /proc/self/status; echo oops >&2; exit 4",
    ]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"ping\n").unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(4), "{out}\n{err}");
    assert!(out.contains("got ping") && out.contains("00000000a80425fb"), "{out}");
    assert!(err.contains("oops"), "{err}");
    let err = env.fails(&["enter", &uuid, "--", "/no/such/command"], 127);
    assert!(err.contains("/no/such/command"), "{err}");
    // stop: SIGTERM reaches the app inside the guest, which exits with its own status.
    env.ok(&["stop", &uuid]);
    let st = status_of(&env, &uuid);
    assert!(st.contains("app-busybox=exited 3") && st.contains("exit-status=3"), "{st}");
    let _ = follow.wait();
    assert!(env.ok(&["logs", &uuid]).contains("got TERM"));
    assert_nothing_left(&env, &uuid);

    // stop --force kills the VM: the app is recorded as killed.
    let uuid = env.detached(&["--stage1=kvm", "--net=none", &bb, "--", "sleep", "1000"]);
    let started = Instant::now();
    env.ok(&["stop", "--force", &uuid]);
    assert!(started.elapsed() < Duration::from_secs(5), "stop --force waited {:?}", started.elapsed());
    let st = status_of(&env, &uuid);
    assert!(st.contains("app-busybox=killed by signal 9") && st.contains("exit-status=137"), "{st}");
    assert_nothing_left(&env, &uuid);
}

#[test]
fn a_kvm_pod_gives_its_app_a_terminal_of_the_guest_and_the_invokers_input() {
    let _s = serial();
    let env = kvm_env();
    let bb = image("busybox");
    env.ok(&["fetch", "-q", &bb]);
    // -it: a pty of the app's devpts in the guest, the invoker's size, resizes, raw input.
    let t = Term::spawn(&env, &["run", "--stage1=kvm", "--net=none", "-it", &bb, "--", "sh"], 33, 77);
    t.send(b"tty; stty size; [ /dev/console -ef /dev/pts/0 ] && echo CONSOLE-OK; echo R$((6*7))\r");
    let out = t.wait_for("R42");
    assert!(out.contains("/dev/pts/0") && out.contains("33 77") && out.contains("CONSOLE-OK"), "{out}");
    t.resize(40, 100);
    std::thread::sleep(Duration::from_millis(300));
    t.send(b"stty size; echo S$((1+1))\r");
    let out = t.wait_for("S2");
    assert!(out.contains("40 100"), "the new size reached the guest's app: {out}");
    // ctrl-c is the app's: the shell survives it.
    t.send(b"sleep 100\r");
    std::thread::sleep(Duration::from_millis(500));
    t.send(b"\x03");
    t.send(b"echo after-$((3*3))\r");
    t.wait_for("after-9");
    t.send(b"exit 3\r");
    let slave = t.pty.slave.try_clone().unwrap();
    let (code, out) = t.wait();
    assert_eq!(code, 3, "the app's status: {out}");
    assert!(tty::is_cooked(&slave).unwrap(), "the terminal was not restored");
    let uuid = env.json(&["list", "--format", "json"])[0]["uuid"].as_str().unwrap().to_string();
    assert_nothing_left(&env, &uuid);

    // -i without -t: our input is the app's stdin, to its end.
    let mut c = env.cmd();
    c.args([
        "run",
        "-q",
        "--stage1=kvm",
        "--net=none",
        "-i",
        &bb,
        "--",
        "sh",
        "-c",
        "read x; echo got $x; cat; echo end",
    ]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"ping\nrest of it\n").unwrap();
    drop(child.stdin.take());
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out, "got ping\nrest of it\nend\n");
}

#[test]
fn a_detached_kvm_terminal_is_logged_attached_to_and_entered_with_a_terminal() {
    let _s = serial();
    let env = kvm_env();
    let bb = image("busybox");
    let uuid =
        env.detached(&["--stage1=kvm", "--net=none", "-t", &bb, "--", "sh", "-c", "echo started-$((1+1)); exec sh"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.ok(&["logs", &uuid]).contains("started-2") {
        assert!(Instant::now() < deadline, "the terminal's output never reached the log");
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Term::spawn(&env, &["attach", &uuid], 25, 101);
    t.wait_for("attached to pod");
    t.send(b"stty size; echo A$((6*7))\r");
    let out = t.wait_for("A42");
    assert!(out.contains("25 101"), "the attaching terminal's size: {out}");
    t.send(b"\x10\x11");
    let (code, out) = t.wait();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("detached from pod"), "{out}");
    assert_eq!(env.json(&["status", &uuid, "--format", "json"])["state"], "running");
    assert!(env.ok(&["logs", &uuid]).contains("A42"), "what was shown while attached is logged too");

    // enter at a terminal: a pty of the app's devpts in the guest, our size, the status.
    let t = Term::spawn(&env, &["enter", &uuid, "sh"], 20, 60);
    t.send(b"tty; stty size; echo E$((2*3))\r");
    let out = t.wait_for("E6");
    assert!(out.contains("/dev/pts/1") && out.contains("20 60"), "{out}");
    t.send(b"exit 4\r");
    let (code, out) = t.wait();
    assert_eq!(code, 4, "{out}");
    // From a script: `--tty` still gives one; without it, none.
    let o = env.cmd().args(["enter", "--tty", &uuid, "tty"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/dev/pts/1\r\n", "{}", String::from_utf8_lossy(&o.stderr));
    let o = env.cmd().args(["enter", &uuid, "tty"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "not a tty\n");

    // Attach again; the app's exit ends the attach with its status, and the pod.
    let t = Term::spawn(&env, &["attach", &uuid], 25, 100);
    t.wait_for("attached to pod");
    t.send(b"exit 5\r");
    let (code, out) = t.wait();
    assert_eq!(code, 5, "{out}");
    assert_nothing_left(&env, &uuid);
}

/// The pid of the live process whose command line starts with a program named `name` and
/// mentions `run`.
fn daemon_pid(name: &str, run: &str) -> u32 {
    let found: Vec<u32> = live_processes(run)
        .iter()
        .filter_map(|l| {
            let (pid, cmd) = l.split_once(": ")?;
            let prog = cmd.split(' ').next()?;
            (Path::new(prog).file_name()? == name).then(|| pid.parse().ok())?
        })
        .collect();
    assert!(!found.is_empty(), "no {name} of {run}: {:?}", live_processes(run));
    found[0]
}

fn proc_status(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("no {field}: {s}"));
    line.split_once(':').unwrap().1.trim().to_string()
}

fn namespace(pid: &str, ns: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()
}

/// A guest that breaks out of qemu's device models reaches the daemons next: each runs in its
/// own namespaces, under seccomp, and the vsock daemon (which has no sandbox of its own) with no
/// capability and none of the host's files but the libraries it loads.
#[test]
fn the_kvm_pods_daemons_run_confined_in_their_own_namespaces_under_seccomp() {
    let _s = serial();
    let env = kvm_env();
    let uuid = env.detached(&["--stage1=kvm", "--net=none", &image("busybox"), "--", "sleep", "1000"]);
    let run = format!("/run/husk/kvm/{uuid}");
    let vsock = daemon_pid("vhost-device-vsock", &run);
    for field in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        assert_eq!(proc_status(vsock, field), "0000000000000000", "the vsock daemon's {field}");
    }
    assert_eq!(proc_status(vsock, "NoNewPrivs"), "1");
    assert_eq!(proc_status(vsock, "Seccomp"), "2", "a seccomp filter");
    for ns in ["mnt", "net", "pid", "ipc", "uts"] {
        assert_ne!(namespace(&vsock.to_string(), ns), namespace("self", ns), "the vsock daemon's {ns} namespace");
    }
    let root = PathBuf::from(format!("/proc/{vsock}/root"));
    assert!(root.join(&run[1..]).join("vsock").exists(), "its socket directory is there");
    for host_file in ["etc/passwd", "root", "var/lib", "proc/1", "dev/kvm"] {
        assert!(!root.join(host_file).exists(), "the vsock daemon sees the host's /{host_file}");
    }
    assert!(root.join("usr/lib").is_dir(), "its libraries are there");
    assert!(std::fs::File::create(root.join("usr/husk-test")).is_err(), "the host's /usr is read-only for it");
    let cgroup = std::fs::read_to_string(format!("/proc/{vsock}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("husk/{uuid}/vm")), "in the pod's vm cgroup: {cgroup}");

    // virtiofsd: its own sandbox (mount, pid, net namespaces) and its seccomp filter.
    let fs = daemon_pid("virtiofsd", &run);
    let fs_children: Vec<u32> = live_processes(&run)
        .iter()
        .filter_map(|l| l.split_once(": ")?.0.parse().ok())
        .filter(|p| proc_status(*p, "PPid") == fs.to_string())
        .collect();
    let sandboxed = fs_children.first().copied().unwrap_or(fs);
    assert_eq!(proc_status(sandboxed, "Seccomp"), "2", "virtiofsd's seccomp filter");
    for ns in ["mnt", "net", "pid"] {
        assert_ne!(namespace(&sandboxed.to_string(), ns), namespace("self", ns), "virtiofsd's {ns} namespace");
    }
    // qemu: its -sandbox filter.
    let qemu = daemon_pid("qemu-system-x86_64", &run);
    assert_eq!(proc_status(qemu, "Seccomp"), "2", "qemu's -sandbox filter");
    env.ok(&["stop", "--force", &uuid]);
    assert_nothing_left(&env, &uuid);
}

#[test]
fn kill_9_of_a_kvm_supervisor_takes_the_vm_down_and_gc_cleans_up() {
    let _s = serial();
    let env = kvm_env();
    let uuid = env.detached(&["--stage1=kvm", "--net=none", &image("busybox"), "--", "sleep", "1000"]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir().join("pods/run").join(&uuid).join("stage1.json")).unwrap())
            .unwrap();
    let sup = state["supervisor_pid"].as_i64().unwrap() as i32;
    let run = format!("/run/husk/kvm/{uuid}");
    assert_eq!(
        live_processes(&run).len(),
        5,
        "qemu, virtiofsd (and its sandbox), the vsock daemon (and its confine parent): {:?}",
        live_processes(&run)
    );
    assert!(std::process::Command::new("kill").args(["-9", &sup.to_string()]).status().unwrap().success());
    // The helpers are bound to the supervisor: they die with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !live_processes(&run).is_empty() {
        assert!(Instant::now() < deadline, "left running: {:?}", live_processes(&run));
        std::thread::sleep(Duration::from_millis(50));
    }
    env.ok(&["gc", "--grace-period=0s"]);
    assert_nothing_left(&env, &uuid);
}

#[test]
fn what_the_kvm_stage1_does_not_do_is_refused_before_anything_starts() {
    let env = kvm_env();
    let bb = image("busybox");
    for (flags, want) in [(vec!["--private-users"], "--private-users"), (vec!["--net=host"], "--net=host")] {
        let mut a = vec!["run", "-q", "--stage1=kvm"];
        a.extend(flags.iter().copied());
        a.extend([bb.as_str(), "--", "true"]);
        let err = env.fails(&a, 120);
        assert!(err.contains("kvm stage1") && err.contains(want), "{a:?}: {err}");
    }
    // No assets: the message says how to get them.
    let mut c = env.cmd();
    c.env("HUSK_KVM_DIR", env.tmp.path().join("none")).args([
        "run",
        "-q",
        "--stage1=kvm",
        "--net=none",
        &bb,
        "--",
        "true",
    ]);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(120), "{err}");
    assert!(err.contains("setup-kvm.sh"), "{err}");
    assert!(env.json(&["list", "--format", "json"]).as_array().unwrap().is_empty());
}

#[test]
fn a_kvm_pod_on_the_default_and_a_dual_stack_network_serves_both_families_and_leaves_no_network_state() {
    let _s = serial();
    let env = kvm_env();
    env.ok(&["fetch", "-q", &image("busybox")]);
    // A user network with an IPv4 and an IPv6 range (the pod's own private addresses).
    let net_d = env.tmp.path().join("etc/net.d");
    std::fs::create_dir_all(&net_d).unwrap();
    let ipam = serde_json::json!({
        "type": "host-local",
        "ranges": [[{"subnet": "172.16.31.0/24"}], [{"subnet": "fd00:4a5b:31::/64"}]],
        "routes": [{"dst": "fd00:4a5b:ff::/48"}],
        "dataDir": env.dir().join("cni/networks"),
    });
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "lab6", "plugins": [{"type": "ptp", "ipMasq": false, "ipam": ipam}]});
    std::fs::write(net_d.join("10-lab6.conflist"), conf.to_string()).unwrap();
    let before = common::host_net_state(&env);
    let serve = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www";
    let uuid = env.detached(&[
        "--stage1=kvm",
        "--net=default,lab6",
        "--hostname",
        "vmweb",
        "--port",
        "127.0.0.1:18091:80",
        &image("busybox"),
        "--",
        "sh",
        "-c",
        serve,
    ]);
    // The guest has the CNI result's address; the host reaches it directly and by the port.
    let s = env.json(&["status", &uuid, "--format", "json"]);
    let ip = match s["networks"][0]["addresses"][0].as_str() {
        Some(a) => a.split('/').next().unwrap().to_string(),
        None => {
            let pod = env.dir().join("pods/run").join(&uuid);
            let read = |p: &str| std::fs::read_to_string(pod.join(p)).unwrap_or_else(|e| format!("({p}: {e})"));
            panic!(
                "no address: {s}\nstatus: {}\nnet/state.json: {}\nconsole: {}\nlogs: {}",
                env.ok(&["status", &uuid]),
                read("net/state.json"),
                read("kvm/console.log"),
                read("logs/busybox.log")
            );
        }
    };
    assert!(ip.starts_with("172.16.28."), "{ip}");
    let get = |url: &str| {
        for _ in 0..100 {
            let o = std::process::Command::new("curl").args(["-s", "-g", "--max-time", "2", url]).output().unwrap();
            if o.status.success() {
                return String::from_utf8_lossy(&o.stdout).into_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{url} did not answer");
    };
    assert_eq!(get(&format!("http://{ip}/")), "vmweb\n");
    assert_eq!(get("http://127.0.0.1:18091/"), "vmweb\n", "the forwarded port on the host's loopback");
    // The second NIC has both of its network's addresses in the guest, and the IPv6 one serves.
    let lab6: Vec<String> = s["networks"][1]["addresses"]
        .as_array()
        .unwrap_or_else(|| panic!("no lab6 addresses: {s}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let v6 = lab6.iter().find(|a| a.contains(':')).unwrap_or_else(|| panic!("no IPv6 address: {lab6:?}"));
    let v6 = v6.split('/').next().unwrap().to_string();
    assert!(v6.starts_with("fd00:4a5b:31::"), "{v6}");
    let seen = env.ok(&["enter", &uuid, "--", "sh", "-c", "cat /proc/net/if_inet6; cat /proc/net/ipv6_route"]);
    let hex: String = v6.parse::<std::net::Ipv6Addr>().unwrap().octets().iter().map(|b| format!("{b:02x}")).collect();
    assert!(seen.lines().any(|l| l.starts_with(&hex) && l.ends_with("eth1")), "{v6} on eth1 in the guest: {seen}");
    assert!(
        seen.lines().any(|l| l.starts_with("fd004a5b00ff00000000000000000000 30") && l.ends_with("eth1")),
        "the network's IPv6 route in the guest: {seen}"
    );
    assert_eq!(get(&format!("http://[{v6}]/")), "vmweb\n", "the pod's IPv6 address from the host");
    env.ok(&["stop", &uuid]);
    env.ok(&["gc", "--grace-period=0s"]);
    assert_nothing_left(&env, &uuid);
    assert_eq!(common::host_net_state(&env), before, "links, rules, leases and namespaces are as before");
}
