//! What a podman or rkt user reaches for in the first hour (issue 15): the items done so far.

mod common;

use std::io::Read;
use std::process::Stdio;

use common::{image, Env};

/// `husk list | head -1` panicked ("failed printing to stdout: Broken pipe", rc 134).
#[test]
fn a_closed_pipe_ends_husk_quietly() {
    let env = Env::new();
    for args in [&["completion", "bash"][..], &["--help"], &["image", "list"]] {
        let mut child = env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        let _ = out.read(&mut first);
        drop(out); // the reader goes away, like `head -c 1`
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "husk {args:?}: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert!(o.status.success() || o.status.signal() == Some(libc_sigpipe()), "husk {args:?}: {:?}", o.status);
    }
}

fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn enter_without_double_dash_and_exec_as_its_alias() {
    let env = Env::new();
    let uuid = env.detached(&["--net=none", &image("busybox"), "--", "sleep", "60"]);
    assert_eq!(env.ok(&["enter", &uuid, "echo", "no-dashes"]), "no-dashes\n");
    assert_eq!(env.ok(&["exec", &uuid, "sh", "-c", "echo via-exec"]), "via-exec\n");
    assert_eq!(env.ok(&["enter", &uuid, "--", "echo", "-n", "x"]), "x");
    env.ok(&["stop", "--force", &uuid]);
}

#[test]
fn list_no_legend_prints_rows_and_quiet_prints_uuids() {
    let env = Env::new();
    env.ok(&["run", "-q", "--net=none", &image("busybox"), "--", "true"]);
    let uuid = env.json(&["list", "--format", "json"])[0]["uuid"].as_str().unwrap().to_string();
    let table = env.ok(&["list"]);
    assert!(table.starts_with("UUID"), "{table}");
    let rows = env.ok(&["list", "--no-legend"]);
    assert_eq!(rows.lines().count(), 1, "{rows}");
    assert!(rows.starts_with(&uuid[..8]) && rows.contains("busybox") && rows.contains("exited (0)"), "{rows}");
    assert_eq!(env.ok(&["list", "-q"]), format!("{uuid}\n"));
}

#[test]
fn ports_show_in_list_and_status() {
    let env = Env::new();
    let uuid =
        env.detached(&["-p", "127.0.0.1:18871:80", "--port", "18872:53/udp", &image("busybox"), "--", "sleep", "60"]);
    let s = env.json(&["status", &uuid, "--format", "json"]);
    assert_eq!(s["ports"][0]["host_port"], 18871, "{s}");
    assert_eq!(s["ports"][0]["host_ip"], "127.0.0.1");
    assert_eq!(s["ports"][1]["protocol"], "udp");
    let text = env.ok(&["status", &uuid]);
    assert!(text.contains("ports=127.0.0.1:18871->80/tcp,18872->53/udp"), "{text}");
    assert!(env.ok(&["list"]).contains("127.0.0.1:18871->80/tcp"));
    env.ok(&["stop", "--timeout", "1s", &uuid]);
}

#[test]
fn pods_have_etc_mtab_and_the_e_short_form() {
    let env = Env::new();
    let out = env.ok(&[
        "run",
        "-q",
        "--net=none",
        &image("busybox"),
        "-e",
        "SHORT=yes",
        "--",
        "sh",
        "-c",
        "readlink /etc/mtab; grep -c ' /proc ' /etc/mtab; echo $SHORT",
    ]);
    assert_eq!(out, "/proc/mounts\n1\nyes\n");
    // An image's own /etc/mtab is kept; a read-only root still gets the link.
    let out =
        env.ok(&["run", "-q", "--net=none", &image("busybox"), "--readonly-rootfs", "--", "readlink", "/etc/mtab"]);
    assert_eq!(out, "/proc/mounts\n");
}

/// A fetch into a pipe (a CI log) said nothing for seconds; now one line per layer when done.
#[test]
fn a_fetch_without_a_terminal_prints_one_line_per_layer() {
    let env = Env::new();
    let o = env.husk(&["fetch", &image("big")]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("layer ")).collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(lines.iter().all(|l| l.contains(" in ") && l.ends_with(" s")), "{err}");
    // Fetched again: said so, and -q silences it.
    let o = env.husk(&["fetch", "--pull-policy=update", &image("big")]);
    assert!(String::from_utf8_lossy(&o.stderr)
        .lines()
        .all(|l| !l.starts_with("layer") || l.contains("already in the store")));
    // -q silences progress; what remains is the trust notice (docs/trust.md), which -q keeps.
    let o = env.husk(&["fetch", "-q", "--pull-policy=update", &image("big")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().all(|l| l.starts_with("unsigned: no trust root for ")), "{err}");
}

/// One app exiting 0 while another ran kept the pod running, with no say in it.
#[test]
fn the_exit_policy_decides_when_a_pod_ends() {
    let env = Env::new();
    let bb = image("busybox");
    let started = std::time::Instant::now();
    // any: the first app to exit ends the pod; the sleeper is stopped; the status is the first's.
    let o = env.husk(&[
        "run",
        "-q",
        "--net=none",
        "--exit-policy=any",
        &bb,
        "--name",
        "quick",
        "--",
        "true",
        "---",
        &bb,
        "--name",
        "sleeper",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let p = env.json(&["list", "--format", "json"]);
    let sleeper = p[0]["apps"].as_array().unwrap().iter().find(|a| a["name"] == "sleeper").unwrap().clone();
    assert_eq!(sleeper["status"]["signal"], 15, "{sleeper}");
    // all: a failing app does not stop the other, which finishes its work; the status is the failure's.
    let o = env.husk(&[
        "run",
        "-q",
        "--net=none",
        "--exit-policy=all",
        &bb,
        "--name",
        "bad",
        "--",
        "sh",
        "-c",
        "exit 3",
        "---",
        &bb,
        "--name",
        "worker",
        "--",
        "sh",
        "-c",
        "sleep 1; echo done",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "done\n");
    // failure (the default) stops the others at the first failure.
    let o = env.husk(&[
        "run",
        "-q",
        "--net=none",
        &bb,
        "--name",
        "bad",
        "--",
        "sh",
        "-c",
        "exit 4",
        "---",
        &bb,
        "--name",
        "long",
        "--",
        "sleep",
        "60",
    ]);
    assert_eq!(o.status.code(), Some(4));
    let err = env.fails(&["run", "-q", "--exit-policy=sometimes", &bb], 120);
    assert!(err.contains("--exit-policy"), "{err}");
}

/// Every foreground run stayed until gc; `--rm` removes the pod when it exits.
#[test]
fn run_rm_removes_the_pod_when_it_exits() {
    let env = Env::new();
    let bb = image("busybox");
    let o = env.husk(&["run", "-q", "--rm", "--net=none", &bb, "--", "sh", "-c", "echo out; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "the app's status passes through");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n", "only the app writes to stdout");
    assert!(env.json(&["list", "--format", "json"]).as_array().unwrap().is_empty(), "the pod is still there");
    // On the default network too: removed once its networks are torn down.
    env.ok(&["run", "-q", "--rm", &bb, "--", "true"]);
    assert!(env.json(&["list", "--format", "json"]).as_array().unwrap().is_empty());
    // Detached: removed when it ends.
    let uuid = env.detached(&["--rm", "--net=none", &bb, "--", "sleep", "1"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while env.json(&["list", "--format", "json"]).as_array().unwrap().iter().any(|p| p["uuid"] == uuid.as_str()) {
        assert!(std::time::Instant::now() < deadline, "the detached --rm pod was not removed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for phase in ["run", "exited-garbage", "garbage"] {
        assert_eq!(std::fs::read_dir(env.dir().join("pods").join(phase)).unwrap().count(), 0, "{phase}");
    }
    let err = env.fails(&["prepare", "-q", "--rm", &bb], 120);
    assert!(err.contains("--rm"), "{err}");
}

/// `--private-users` failed late ("cannot open …/rootfs: Permission denied") under any 0700
/// directory; now refused up front, naming the directory and the fix.
#[test]
fn private_users_under_an_unsearchable_directory_is_refused_up_front() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let bb = image("busybox");
    env.ok(&["fetch", "-q", &bb]);
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = env.husk(&["run", "-q", "--net=none", "--private-users", &bb, "--", "true"]);
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(120), "{err}");
    assert!(err.contains(&env.tmp.path().display().to_string()) && err.contains("chmod o+x"), "{err}");
    assert!(env.json(&["list", "--format", "json"]).as_array().unwrap().is_empty());
    env.ok(&["run", "-q", "--net=none", "--private-users", &bb, "--", "true"]);
}

/// docker's and podman's `--volume /host:/ctr[:ro]`, in one flag, mounted in every app.
#[test]
fn the_docker_style_volume_shorthand_mounts_a_host_path() {
    let env = Env::new();
    let host = env.tmp.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("greeting"), "hi\n").unwrap();
    let ro = format!("{}:/data:ro", host.display());
    let out = env.ok(&[
        "run",
        "-q",
        "--net=none",
        "--volume",
        &ro,
        &image("busybox"),
        "--",
        "sh",
        "-c",
        "cat /data/greeting; touch /data/x 2>/dev/null && echo writable || echo read-only",
    ]);
    assert_eq!(out, "hi\nread-only\n");
    let rw = format!("{}:/w", host.display());
    env.ok(&["run", "-q", "--net=none", "--volume", &rw, &image("busybox"), "--", "touch", "/w/made"]);
    assert!(host.join("made").exists());
    let err = env.fails(&["run", "-q", "--volume", "/nonexistent-x:/d", &image("busybox")], 120);
    assert!(err.contains("/nonexistent-x"), "{err}");
}
