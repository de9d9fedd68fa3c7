//! A real terminal (issue 15): `run -t/-it`, `attach` with detach keys, `enter -t`. Each test
//! starts husk on a pty as its controlling terminal, the way a terminal emulator starts a shell,
//! types into it, resizes it, and reads what a user would see.

mod common;
#[path = "common/term.rs"]
mod term;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{image, Env};
use husk_sys::tty;
use term::Term;

#[test]
fn run_it_gives_the_app_a_terminal_of_the_pods_devpts_and_passes_resizes() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let t = Term::spawn(&env, &["run", "--net=none", "-it", &image("busybox"), "--", "sh"], 33, 77);
    assert!(t.cooked());
    t.send(b"tty; stty size; echo TERM=$TERM; ls /dev/pts; [ /dev/console -ef /dev/pts/0 ] && echo CONSOLE-OK; echo R$((6*7))\r");
    let out = t.wait_for("R42");
    assert!(out.contains("/dev/pts/0"), "the app's own devpts: {out}");
    assert!(out.contains("33 77"), "the invoker's size: {out}");
    assert!(out.contains("TERM=husk-test-term"), "the invoker's TERM: {out}");
    assert!(out.contains("0     ptmx") || out.contains("0  ptmx") || out.contains("0\r\nptmx"), "only its pty: {out}");
    assert!(out.contains("CONSOLE-OK"), "/dev/console is the terminal: {out}");
    t.resize(40, 100);
    std::thread::sleep(Duration::from_millis(200));
    t.send(b"stty size; echo S$((1+1))\r");
    let out = t.wait_for("S2");
    assert!(out.contains("40 100"), "the new size reached the app: {out}");
    // ctrl-c is the app's (raw mode): the shell survives it, and so does the pod.
    t.send(b"sleep 100\r");
    std::thread::sleep(Duration::from_millis(300));
    t.send(b"\x03");
    t.send(b"echo after-$((3*3))\r");
    t.wait_for("after-9");
    t.send(b"exit 3\r");
    let cooked_before_exit = t.pty.slave.try_clone().unwrap();
    let (code, out) = t.wait();
    assert_eq!(code, 3, "the app's status: {out}");
    assert!(tty::is_cooked(&cooked_before_exit).unwrap(), "the terminal was not restored");
}

#[test]
fn run_t_alone_gives_a_terminal_and_works_without_one() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let t =
        Term::spawn(&env, &["run", "--net=none", "-t", &image("busybox"), "--", "sh", "-c", "tty; stty size"], 30, 90);
    let (code, out) = t.wait();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/dev/pts/0") && out.contains("30 90"), "{out}");
    // From a script (no terminal anywhere) the app still gets its own.
    let o = env
        .cmd()
        .args(["run", "--net=none", "-t", &image("busybox"), "--", "tty"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/dev/pts/0\r\n");
    // Misuse is refused up front, naming the fix.
    let err = env.fails(&["run", "--net=none", "-d", "-i", &image("busybox")], 120);
    assert!(err.contains("--tty"), "{err}");
    let err = env.fails(&["run", "--stage1=fly", "-t", &image("busybox")], 120);
    assert!(err.contains("no devpts"), "{err}");
    let err = env.fails(&["run", "--net=none", "-t", &image("busybox"), "---", &image("busybox")], 120);
    assert!(err.contains("exactly one app"), "{err}");
}

#[test]
fn a_detached_terminal_is_logged_attached_to_and_detached_from() {
    let env = Env::new();
    let uuid =
        env.detached(&["--net=none", "-t", &image("busybox"), "--", "sh", "-c", "echo started-$((1+1)); exec sh"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.ok(&["logs", &uuid]).contains("started-2") {
        assert!(Instant::now() < deadline, "the terminal's output never reached the log");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only pods with a terminal can be attached to.
    let plain = env.detached(&["--net=none", &image("busybox"), "--", "sleep", "100"]);
    let err = env.fails(&["attach", &plain], 122);
    assert!(err.contains("no terminal") && err.contains("run -d -t"), "{err}");

    let t = Term::spawn(&env, &["attach", &uuid], 25, 101);
    t.wait_for("attached to pod");
    t.send(b"stty size; echo A$((6*7))\r");
    let out = t.wait_for("A42");
    assert!(out.contains("25 101"), "the attaching terminal's size: {out}");
    // One client at a time.
    let o = env.cmd().args(["attach", &uuid]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(o.status.code(), Some(122));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another `husk attach`"), "{o:?}");
    // ctrl-p ctrl-q: detached, the pod runs on, the terminal is restored.
    t.send(b"\x10\x11");
    let slave = t.pty.slave.try_clone().unwrap();
    let (code, out) = t.wait();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("detached from pod"), "{out}");
    assert!(tty::is_cooked(&slave).unwrap());
    let st = env.json(&["status", &uuid, "--format", "json"]);
    assert_eq!(st["state"], "running", "{st}");
    assert!(env.ok(&["logs", &uuid]).contains("A42"), "what was shown while attached is logged too");

    // Attach again; the app's exit ends the attach with its status.
    let t = Term::spawn(&env, &["attach", "--detach-keys=ctrl-x", &uuid], 25, 100);
    t.wait_for("attached to pod");
    t.send(b"\x10\x11echo still-$((2+2))\r");
    t.wait_for("still-4");
    t.send(b"exit 5\r");
    let (code, out) = t.wait();
    assert_eq!(code, 5, "{out}");
}

#[test]
fn enter_gives_a_terminal_when_typed_at_one() {
    let env = Env::new();
    let uuid = env.detached(&["--net=none", &image("busybox"), "--", "sleep", "100"]);
    let t = Term::spawn(&env, &["enter", &uuid, "sh"], 20, 60);
    t.send(b"tty; stty size; echo E$((2*3))\r");
    let out = t.wait_for("E6");
    assert!(out.contains("/dev/pts/0") && out.contains("20 60"), "{out}");
    t.send(b"exit 4\r");
    let (code, out) = t.wait();
    assert_eq!(code, 4, "{out}");
    // From a script: no terminal, output byte for byte.
    let o = env.cmd().args(["enter", &uuid, "tty"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "not a tty\n");
    let o = env.cmd().args(["enter", "--tty", &uuid, "tty"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "/dev/pts/0\r\n");
}
