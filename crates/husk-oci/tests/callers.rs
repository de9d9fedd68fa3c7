//! The real callers, from Debian: podman (through conmon) and containerd (through its runc.v2
//! shim and `ctr`), switched from crun/runc to husk-oci. Images are the project's offline-built
//! test busybox ($HUSK_TEST_IMAGES, built by scripts/test.sh). Every service runs with its own
//! root, state and socket under a temporary directory; networking is loopback only.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{output_of, text};

fn busybox_layout() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("HUSK_TEST_IMAGES")
            .expect("HUSK_TEST_IMAGES is not set: run the tests with scripts/test.sh (it builds the test images)"),
    )
    .join("busybox");
    assert!(p.join("index.json").is_file(), "{} is not an OCI layout: run scripts/test.sh", p.display());
    p
}

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is not installed: scripts/install-deps.sh installs it");
}

/// A podman with a private store and a containers.conf naming husk-oci as its runtime.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        common::require_root();
        need("podman");
        need("conmon");
        let dir = tempfile::Builder::new().prefix("husk-oci-podman-").tempdir_in("/var/tmp").unwrap();
        let d = dir.path();
        // The rlimits: podman's defaults raise hard limits, which needs CAP_SYS_RESOURCE that
        // root lacks on this kind of host, whatever the runtime (crun needs the same).
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n\n\
             [engine]\nruntime = \"husk-oci\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\nstatic_dir = \"{d}/static\"\n\
             volume_path = \"{d}/volumes\"\nruntime_supports_json = [\"crun\", \"runc\", \"husk-oci\"]\n\n\
             [engine.runtimes]\nhusk-oci = [\"{bin}\"]\n",
            d = d.display(),
            bin = common::bin()
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        let p = Podman { dir };
        let o = p.run(&["pull", "-q", &format!("oci:{}:latest", busybox_layout().display())]);
        assert!(o.status.success(), "podman pull: {}", text(&o.stderr));
        let o = p.run(&["tag", text(&o.stdout).trim(), "localhost/bb:latest"]);
        assert!(o.status.success(), "podman tag: {}", text(&o.stderr));
        p
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(args)
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        output_of(self.cmd(args))
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?}: exit {:?}\n{}\n{}",
            o.status.code(),
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
    }
}

#[test]
fn podman_run_rm_passes_the_exit_status() {
    let p = Podman::new();
    let o =
        p.run(&["run", "--rm", "--runtime", "husk-oci", "localhost/bb", "sh", "-c", "echo hi from husk-oci; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hi from husk-oci\n");
    // The runtime podman used is husk-oci (its state dir), not crun.
    let info = p.ok(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]);
    assert_eq!(info.trim(), "husk-oci");
}

#[test]
fn podman_detached_logs_exec_top_pause_kill_and_stop() {
    let p = Podman::new();
    p.ok(&[
        "run",
        "-d",
        "--name",
        "svc",
        "localhost/bb",
        "sh",
        "-c",
        "echo started; trap 'echo got-term; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.ok(&["logs", "svc"]).contains("started") {
        assert!(Instant::now() < deadline, "no log line");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.ok(&["exec", "svc", "sh", "-c", "echo in-exec; exit 0"]), "in-exec\n");
    let o = p.run(&["exec", "svc", "sh", "-c", "exit 6"]);
    assert_eq!(o.status.code(), Some(6), "exec's exit status");
    let top = p.ok(&["top", "svc"]);
    assert!(top.contains("while true"), "{top}");
    p.ok(&["pause", "svc"]);
    assert_eq!(p.ok(&["inspect", "--format", "{{.State.Status}}", "svc"]).trim(), "paused");
    p.ok(&["unpause", "svc"]);
    assert_eq!(p.ok(&["inspect", "--format", "{{.State.Status}}", "svc"]).trim(), "running");
    // stop: SIGTERM, which the trap answers.
    p.ok(&["stop", "-t", "10", "svc"]);
    assert!(p.ok(&["logs", "svc"]).contains("got-term"));
    assert_eq!(p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "svc"]).trim(), "0");
    // A process that ignores SIGTERM is killed after the timeout.
    p.ok(&[
        "run",
        "-d",
        "--name",
        "stubborn",
        "localhost/bb",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 0.1; done",
    ]);
    let t = Instant::now();
    p.ok(&["stop", "-t", "1", "stubborn"]);
    assert!(t.elapsed() < Duration::from_secs(8), "stop took {:?}", t.elapsed());
    assert_eq!(p.ok(&["inspect", "--format", "{{.State.ExitCode}}", "stubborn"]).trim(), "137");
    p.ok(&["run", "-d", "--name", "killed", "localhost/bb", "sleep", "1000"]);
    p.ok(&["kill", "killed"]);
    p.ok(&["wait", "killed"]);
    assert_eq!(p.ok(&["inspect", "--format", "{{.State.Status}}", "killed"]).trim(), "exited");
}

#[test]
fn podman_run_it_gets_a_pty() {
    let p = Podman::new();
    need("script");
    // script(1) gives podman a terminal; podman gives the container one through conmon and
    // husk-oci's console socket. The container waits a little before and after it writes: on a
    // loaded host podman loses all of a tty container's output when the container writes it and
    // exits at once (with crun as the runtime too: 3 of 40 runs under load, here), so without
    // the waits this test failed now and then for podman's reason, not husk-oci's.
    let d = p.dir.path();
    let inner = format!(
        "CONTAINERS_CONF={}/containers.conf podman --root {}/root --runroot {}/run run --rm -it localhost/bb sh -c 'sleep 0.2; tty; stty size; sleep 0.2; exit 5'",
        d.display(),
        d.display(),
        d.display()
    );
    let mut c = Command::new("script");
    c.args(["-qec", &inner, "/dev/null"]).stdin(std::process::Stdio::null());
    let o = output_of(c);
    let out = text(&o.stdout);
    assert!(out.contains("/dev/pts/0"), "{out:?} {}", text(&o.stderr));
    assert_eq!(o.status.code(), Some(5), "{out:?}");
}

#[test]
fn podman_security_and_resource_options() {
    let p = Podman::new();
    let out = p.ok(&[
        "run",
        "--rm",
        "--read-only",
        "localhost/bb",
        "sh",
        "-c",
        "touch /x 2>/dev/null || echo ro; touch /tmp/y && echo tmp-rw",
    ]);
    assert_eq!(out, "ro\ntmp-rw\n");
    let out = p.ok(&["run", "--rm", "--cap-drop", "all", "localhost/bb", "grep", "CapEff", "/proc/self/status"]);
    assert_eq!(out, "CapEff:\t0000000000000000\n");
    let out = p.ok(&[
        "run",
        "--rm",
        "--cap-drop",
        "chown",
        "localhost/bb",
        "sh",
        "-c",
        "chown 1 /tmp && echo chowned || echo refused",
    ]);
    assert!(out.contains("refused"), "{out}");
    let out = p.ok(&["run", "--rm", "--memory", "64m", "--pids-limit", "50", "localhost/bb", "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"]);
    assert_eq!(out, "67108864\n50\n");
    let out = p.ok(&[
        "run",
        "--rm",
        "--uidmap",
        "0:300000:65536",
        "--gidmap",
        "0:300000:65536",
        "localhost/bb",
        "sh",
        "-c",
        "cat /proc/self/uid_map; id -u",
    ]);
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields, ["0", "300000", "65536", "0"], "{out}");
}

#[test]
fn podman_publishes_a_port_on_loopback() {
    let p = Podman::new();
    need("curl");
    let port = 18000 + (std::process::id() % 1000) as u16;
    let publish = format!("127.0.0.1:{port}:8080");
    p.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        "localhost/bb",
        "sh",
        "-c",
        "mkdir -p /www && echo served-by-husk-oci >/www/index.html && exec httpd -f -p 8080 -h /www",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .unwrap();
        if text(&o.stdout) == "served-by-husk-oci\n" {
            break;
        }
        assert!(Instant::now() < deadline, "no answer on port {port}: {}", text(&o.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    p.ok(&["rm", "-f", "-t", "0", "web"]);
}

/// containerd with its own root, state and sockets, stopped when dropped.
struct Containerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Containerd {
    fn start() -> Containerd {
        common::require_root();
        need("containerd");
        need("ctr");
        need("skopeo");
        let dir = tempfile::Builder::new().prefix("husk-oci-ctrd-").tempdir_in("/var/tmp").unwrap();
        let d = dir.path();
        let conf = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n[metrics]\n  address = \"\"\n",
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), conf).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd { dir, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not start: {}", c.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        let tar = c.dir.path().join("bb.tar");
        let o = Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:latest", busybox_layout().display()))
            .arg(format!("oci-archive:{}:localhost/bb:latest", tar.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "skopeo: {}", text(&o.stderr));
        c.ok(&["images", "import", "--base-name", "localhost/bb", tar.to_str().unwrap()]);
        c
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.dir.path().join("c.sock")).args(args).stdin(std::process::Stdio::null());
        output_of(c)
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(o.status.success(), "ctr {args:?}: {}\n{}\n{}", text(&o.stdout), text(&o.stderr), self.log());
        text(&o.stdout)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn status(&self, id: &str) -> String {
        let ls = self.ok(&["task", "ls"]);
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The shims outlive containerd by design; stop ours.
        let _ = Command::new("pkill").arg("-f").arg(format!("containerd-shim.*{}", self.dir.path().display())).status();
    }
}

fn runc_binary() -> String {
    format!("--runc-binary={}", common::bin())
}

#[test]
fn containerd_runs_execs_kills_pauses_and_deletes_through_husk_oci() {
    let c = Containerd::start();
    let rb = runc_binary();
    // run --rm: the exit status passes through the shim.
    let o = c.ctr(&["run", "--rm", &rb, "localhost/bb:latest", "once", "sh", "-c", "echo hello-containerd; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}\n{}", text(&o.stderr), c.log());
    assert_eq!(text(&o.stdout), "hello-containerd\n");
    // A detached task: exec, ps, pause/resume, kill, delete.
    c.ok(&[
        "run",
        "-d",
        &rb,
        "localhost/bb:latest",
        "svc",
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(c.status("svc"), "RUNNING");
    let out = c.ok(&["task", "exec", "--exec-id", "e1", "svc", "sh", "-c", "echo exec-ok; hostname"]);
    assert!(out.starts_with("exec-ok\n"), "{out}");
    let o = c.ctr(&["task", "exec", "--exec-id", "e2", "svc", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    let ps = c.ok(&["task", "ps", "svc"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    c.ok(&["task", "pause", "svc"]);
    assert_eq!(c.status("svc"), "PAUSED");
    c.ok(&["task", "resume", "svc"]);
    assert_eq!(c.status("svc"), "RUNNING");
    c.ok(&["task", "kill", "--signal", "SIGTERM", "svc"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.status("svc") != "STOPPED" {
        assert!(Instant::now() < deadline, "the task did not stop: {}", c.ok(&["task", "ls"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["task", "delete", "svc"]);
    c.ok(&["container", "delete", "svc"]);
    assert!(!c.ok(&["task", "ls"]).contains("svc"));
    // husk-oci's state of the task is gone with it.
    let state_root = c.dir.path().join("state/io.containerd.runtime.v2.task/default");
    assert!(!Path::new(&state_root).join("svc").exists());
}
