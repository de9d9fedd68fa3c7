//! husk under systemd (issue 13): readiness through $NOTIFY_SOCKET (the pod's, and an app's
//! own through husk's proxy), socket activation by systemd-socket-activate, SIGTERM as a unit's
//! stop, journald-friendly output, and the documented unit files through systemd-analyze.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{image, Env};

/// A datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new(env: &Env) -> NotifySocket {
        let path = env.tmp.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket { sock, path }
    }

    /// The next datagram, within `secs`.
    fn recv(&self, secs: u64) -> Option<String> {
        self.sock.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Starts `husk ARGS…` with this socket as its `$NOTIFY_SOCKET`, output captured.
    fn spawn(&self, env: &Env, args: &[&str]) -> std::process::Child {
        env.cmd()
            .args(args)
            .env("NOTIFY_SOCKET", &self.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn nothing_pending(&self) -> bool {
        self.sock.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        let r = self.sock.recv(&mut buf);
        self.sock.set_nonblocking(false).unwrap();
        match r {
            Ok(n) => panic!("unexpected notification {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => true,
        }
    }
}

fn output(c: std::process::Child) -> (i32, String, String) {
    let o = c.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn the_pod_says_ready_with_its_supervisor_as_mainpid_and_apps_never_see_the_socket() {
    let env = Env::new();
    let ns = NotifySocket::new(&env);
    let child = ns.spawn(&env, &["run", "-q", "--net=none", &image("busybox"), "--", "sh", "-c", "env; sleep 1"]);
    let pid = child.id();
    let ready = ns.recv(30).expect("no READY=1 from the pod");
    assert_eq!(ready, format!("READY=1\nMAINPID={pid}\n"), "MAINPID is the process the unit started");
    let (code, out, err) = output(child);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("NOTIFY_SOCKET"), "the app saw NOTIFY_SOCKET: {out}");
    assert!(ns.nothing_pending());

    // ignore: nothing is sent.
    let (code, _, err) =
        output(ns.spawn(&env, &["run", "-q", "--net=none", "--sd-notify=ignore", &image("busybox"), "--", "true"]));
    assert_eq!(code, 0, "{err}");
    assert!(ns.nothing_pending());
    // Without the variable the default sends nothing either, and no flag is needed.
    env.ok(&["run", "-q", "--net=none", &image("busybox"), "--", "true"]);
    assert!(ns.nothing_pending());
}

#[test]
fn an_app_notifies_through_husk_which_passes_on_what_systemd_should_hear() {
    let env = Env::new();
    let ns = NotifySocket::new(&env);
    let child = ns.spawn(
        &env,
        &[
            "run",
            "-q",
            "--net=none",
            "--sd-notify=app:notifier",
            &image("workload"),
            "--name=notifier",
            "--user=1000",
            "--",
            "notify",
            "READY=1\\nSTATUS=serving",
            // After the supervisor has given back its start-up memory (100 ms in, when its wait
            // on the notify socket times out): it still passes messages on.
            "--sleep=300",
            "MAINPID=1\\nSTATUS=still serving\\nFDSTORE=1",
            "--barrier",
            "---",
            &image("busybox"),
            "--name=other",
            "--",
            "sh",
            "-c",
            "env",
        ],
    );
    let pid = child.id();
    assert_eq!(ns.recv(30).as_deref(), Some(format!("READY=1\nSTATUS=serving\nMAINPID={pid}\n").as_str()));
    assert_eq!(ns.recv(10).as_deref(), Some(format!("STATUS=still serving\nMAINPID={pid}\n").as_str()));
    let (code, out, err) = output(child);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("NOTIFY_SOCKET=/run/notify/notify.sock"), "{out}");
    assert!(out.contains("barrier acknowledged"), "the barrier's fd was closed: {out}");
    assert_eq!(out.matches("NOTIFY_SOCKET").count(), 1, "only the named app sees it: {out}");
    assert!(ns.nothing_pending(), "BARRIER=1 is never passed on");

    let err = env.fails(&["run", "--net=none", "--sd-notify=app:nope", &image("busybox"), "--", "true"], 120);
    assert!(err.contains("no app \"nope\""), "{err}");
    let err = env.fails(&["run", "--net=none", "--sd-notify=sometimes", &image("busybox")], 120);
    assert!(err.contains("use pod, app:NAME or ignore"), "{err}");
}

/// A free port on loopback (bound, then released for systemd-socket-activate).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn ask(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to 127.0.0.1:{port}: {e}"),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn socket_activated_fds_reach_the_named_app_only() {
    let env = Env::new();
    for net in ["--net=none", "--net=host"] {
        let port = free_port();
        let mut args: Vec<String> = vec!["-l".into(), format!("127.0.0.1:{port}"), "--fdname=web".into()];
        args.push(Env::bin().display().to_string());
        args.extend(["--dir".into(), env.dir().display().to_string()]);
        args.extend(["--config-dir".into(), env.tmp.path().join("etc").display().to_string()]);
        args.extend(
            [
                "run",
                "-q",
                net,
                "--socket-activated=web",
                &image("workload"),
                "--name=web",
                "--",
                "serve-fd3",
                "---",
                &image("busybox"),
                "--name=other",
                "--",
                "sh",
                "-c",
                "ls /proc/self/fd | tr '\\n' ' '",
            ]
            .map(String::from),
        );
        let child = Command::new("systemd-socket-activate")
            .args(&args)
            .env("HUSK_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("systemd-socket-activate (Debian's systemd package)");
        let answer = ask(port);
        assert_eq!(answer.trim(), "LISTEN_FDS=1 LISTEN_PID_IS_ME=true LISTEN_FDNAMES=web", "{net}");
        let (code, out, err) = output(child);
        assert_eq!(code, 0, "{net}: {out}\n{err}");
        // ls opens /proc/self/fd as fd 3 itself: a leaked socket would show as a 4.
        assert_eq!(out.trim(), "0 1 2 3", "{net}: the other app got an fd: {out}");
    }
    // Several apps and no --socket-activated: refused, naming the flag.
    let port = free_port();
    let child = Command::new("systemd-socket-activate")
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg(Env::bin())
        .arg("--dir")
        .arg(env.dir())
        .arg("--config-dir")
        .arg(env.tmp.path().join("etc"))
        .args(["run", "-q", "--net=none", &image("busybox"), "--", "true", "---", &image("busybox"), "--", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The activator starts husk on the first connection (once it listens).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "systemd-socket-activate does not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = output(child);
    assert_eq!(code, 120, "{err}");
    assert!(err.contains("--socket-activated=APP"), "{err}");
}

/// Starts a foreground pod and returns it once its app runs.
fn started(env: &Env, args: &[&str]) -> (std::process::Child, String) {
    let uuid_file = env.tmp.path().join(format!("uuid-{}", args.len()));
    let _ = std::fs::remove_file(&uuid_file);
    let mut a = vec!["run", "-q", "--net=none", "--uuid-file-save", uuid_file.to_str().unwrap()];
    a.extend_from_slice(args);
    let child = env.cmd().args(&a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let running = |u: &str| {
        let st = env.husk(&["status", "--format", "json", u]);
        String::from_utf8_lossy(&st.stdout).contains("\"running\"")
    };
    let uuid = loop {
        match std::fs::read_to_string(&uuid_file) {
            Ok(u) if running(u.trim()) => break u.trim().to_string(),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the pod did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The app's shell sets its trap first thing.
    std::thread::sleep(Duration::from_millis(300));
    (child, uuid)
}

#[test]
fn sigterm_stops_a_foreground_pod_as_a_unit_stop_does() {
    let env = Env::new();
    // An app that traps TERM ends with its own status.
    let (child, _) = started(
        &env,
        &[
            "--stop-timeout=3s",
            &image("busybox"),
            "--",
            "sh",
            "-c",
            "trap 'echo bye; exit 7' TERM; while :; do sleep 0.1; done",
        ],
    );
    nix_kill(child.id(), "TERM");
    let (code, out, _) = output(child);
    assert_eq!((code, out.trim()), (7, "bye"));

    // One that ignores TERM is killed when --stop-timeout passes: 137, as podman reports.
    let (child, uuid) = started(
        &env,
        &["--stop-timeout=2s", &image("busybox"), "--", "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
    );
    let t = Instant::now();
    nix_kill(child.id(), "TERM");
    let (code, _, _) = output(child);
    let took = t.elapsed();
    assert_eq!(code, 137);
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "took {took:?}");
    let st = env.json(&["status", "--format", "json", &uuid]);
    assert!(st.to_string().contains("137"), "{st}");
}

fn nix_kill(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success());
}

#[test]
fn log_prefix_marks_each_line_with_its_app() {
    let env = Env::new();
    let o = env
        .cmd()
        .args([
            "run",
            "-q",
            "--net=none",
            "--log-prefix",
            &image("busybox"),
            "--name=one",
            "--",
            "sh",
            "-c",
            "echo out1; echo err1 >&2; printf partial",
            "---",
            &image("busybox"),
            "--name=two",
            "--",
            "sh",
            "-c",
            "echo out2",
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["[one] out1", "[one] partial", "[two] out2"], "{out}");
    assert!(err.lines().any(|l| l == "[one] err1"), "{err}");
    let e = env.fails(&["run", "-d", "--log-prefix", &image("busybox"), "--", "true"], 120);
    assert!(e.contains("foreground"), "{e}");
}

/// Every unit file docs/systemd.md shows passes `systemd-analyze verify` (with husk's path
/// pointed at the binary under test, which must exist for verify).
#[test]
fn the_documented_units_verify() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/systemd");
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().replace("@.service", "@example.service");
        let text = std::fs::read_to_string(&p).unwrap().replace("/usr/local/bin/husk", Env::bin().to_str().unwrap());
        std::fs::write(dir.path().join(&name), text).unwrap();
        units.push(dir.path().join(name));
    }
    assert!(units.len() >= 6, "{units:?}");
    let doc = std::fs::read_to_string(src.join("../systemd.md")).unwrap();
    for u in &units {
        let name = u.file_name().unwrap().to_string_lossy().replace("@example.service", "@.service");
        assert!(doc.contains(&name), "docs/systemd.md does not show {name}");
    }
    let o = Command::new("systemd-analyze").arg("verify").args(&units).output().expect("systemd-analyze");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
