//! Privilege per operation (issue 13): `husk setup` and the `husk` group. Members fetch and
//! read without root; root-only commands are refused with the reason; outsiders are told which
//! group they lack; a member's fetch and root's run of the same image both work.

mod common;
#[path = "common/signing.rs"]
mod signing;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{image, Env};

const MEMBER: &str = "husk-test-member";
const OUTSIDER: &str = "husk-test-outsider";

fn ensure_user(name: &str) {
    let exists = Command::new("id").arg(name).output().unwrap().status.success();
    if !exists {
        let st = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
            .status()
            .expect("useradd (the passwd package)");
        assert!(st.success(), "useradd {name}");
    }
}

/// The test's own tree, reachable by the test users, with a copy of husk in it (the build tree
/// may be under a directory they cannot enter).
struct Shared {
    env: Env,
    bin: PathBuf,
}

impl Shared {
    fn new() -> Shared {
        let env = Env::new();
        std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = env.tmp.path().join("husk");
        std::fs::copy(Env::bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Shared { env, bin }
    }

    /// Runs husk as `user`, under the strictest umask: what husk writes must not depend on it.
    fn as_user(&self, user: &str, args: &[&str]) -> Output {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            user,
            "--regid",
            user,
            "--init-groups",
            "--",
            "sh",
            "-c",
            "umask 077 && exec \"$0\" \"$@\"",
        ])
        .arg(&self.bin);
        c.arg("--dir").arg(self.env.dir()).arg("--config-dir").arg(self.env.tmp.path().join("etc"));
        c.args(args).env("HUSK_LOG", "warn").env("HOME", "/nonexistent");
        c.output().expect("setpriv (util-linux)")
    }

    fn ok_as(&self, user: &str, args: &[&str]) -> String {
        let o = self.as_user(user, args);
        assert!(o.status.success(), "{user}: husk {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails_as(&self, user: &str, args: &[&str], code: i32) -> String {
        let o = self.as_user(user, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(code), "{user}: husk {args:?}: {err}");
        err
    }
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn members_fetch_and_read_root_runs_outsiders_are_told_which_group() {
    let s = Shared::new();
    let env = &s.env;
    let out = env.husk(&["setup"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = String::from_utf8_lossy(&env.husk(&["setup"]).stderr).into_owned();
    assert!(again.contains("nothing to change"), "setup is idempotent: {again}");
    env.ok(&["setup", "--check"]);
    assert_eq!(mode_of(&env.dir().join("store/refs")), 0o2770);
    assert_eq!(mode_of(&env.dir().join("store/layers")), 0o750);
    ensure_user(MEMBER);
    ensure_user(OUTSIDER);
    assert!(Command::new("usermod").args(["-aG", "husk", MEMBER]).status().unwrap().success());

    // A member fetches (blobs only: root unpacks), lists images and pods, reads the trust store.
    s.ok_as(MEMBER, &["fetch", "-q", &image("busybox")]);
    let list = s.ok_as(MEMBER, &["image", "list", "--format", "json"]);
    assert!(list.contains(&image("busybox")), "{list}");
    s.ok_as(MEMBER, &["list"]);
    s.ok_as(MEMBER, &["trust", "list"]);
    for e in std::fs::read_dir(env.dir().join("store/blobs/sha256")).unwrap().flatten() {
        let md = e.metadata().unwrap();
        assert_eq!(md.mode() & 0o777, 0o644, "{}", e.path().display());
        assert_eq!(Some(md.gid()), group_gid(), "setgid dirs give the group: {}", e.path().display());
    }
    assert_eq!(std::fs::read_dir(env.dir().join("store/layers")).unwrap().count(), 0, "a member never unpacks");
    // Its trees are pending, not damage; a member checks the blobs, exports the image.
    let v = s.as_user(MEMBER, &["image", "verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(String::from_utf8_lossy(&v.stderr).contains("only root can read every file"));
    env.ok(&["image", "verify"]);
    let out = env.tmp.path().join("export");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(uid_of(MEMBER)), None).unwrap();
    s.ok_as(MEMBER, &["image", "export", &image("busybox"), out.join("bb.tar").to_str().unwrap()]);
    s.ok_as(MEMBER, &["image", "cat-manifest", "--format", "json", &image("busybox")]);

    // Root-only commands say so, and why.
    for args in [
        vec!["run", "--net=none", &image("busybox"), "--", "true"],
        vec!["prepare", "--net=none", &image("busybox")],
        vec!["run-prepared", "0000"],
        vec!["enter", "0000", "--", "true"],
        vec!["attach", "0000"],
        vec!["stop", "0000"],
        vec!["rm", "0000"],
        vec!["gc"],
        vec!["image", "rm", &image("busybox")],
        vec!["image", "gc"],
        vec!["trust", "add", "--yes", "--prefix", "h.io/x", "/dev/null"],
        vec!["trust", "rm", "ABCDEF0123"],
        vec!["setup"],
    ] {
        let args: Vec<&str> = args.iter().map(|a| &**a).collect();
        let err = s.fails_as(MEMBER, &args, 120);
        assert!(err.contains("needs root") && err.contains("`husk` group may"), "{args:?}: {err}");
    }

    // What root fetches under umask 077 stays readable by members.
    let st = Command::new("sh")
        .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
        .arg(&s.bin)
        .arg("--dir")
        .arg(env.dir())
        .arg("--config-dir")
        .arg(env.tmp.path().join("etc"))
        .args(["fetch", "-q", &image("workload")])
        .env("HUSK_LOG", "warn")
        .status()
        .unwrap();
    assert!(st.success());
    s.ok_as(MEMBER, &["image", "cat-manifest", "--format", "json", &image("workload")]);

    // Root runs what the member fetched: the layers are unpacked now, from the verified blobs.
    assert_eq!(env.ok(&["run", "-q", "--net=none", &image("busybox"), "--", "echo", "ok"]).trim(), "ok");
    assert!(std::fs::read_dir(env.dir().join("store/layers")).unwrap().count() >= 1);
    // Now a member can extract it too (files owned by the member, as tar without root does).
    s.ok_as(MEMBER, &["image", "extract", &image("busybox"), out.join("bb").to_str().unwrap()]);
    assert!(out.join("bb/rootfs/bin/busybox").is_file());

    // A member reads a root pod's status and logs.
    let uuid = env.detached(&["--net=none", &image("busybox"), "--", "sh", "-c", "echo hello; sleep 30"]);
    let st = s.ok_as(MEMBER, &["status", "--format", "json", &uuid]);
    assert!(st.contains("\"running\""), "{st}");
    assert!(s.ok_as(MEMBER, &["cat-manifest", &uuid]).contains(&uuid));
    // A member imports a local image too (an OCI layout it can read).
    let layout = env.tmp.path().join("layout");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(common::images_dir().join("busybox"))
        .arg(&layout)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(&layout).status().unwrap().success());
    s.ok_as(MEMBER, &["image", "import", "--name", "localhost/imported:1", &format!("oci:{}", layout.display())]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !s.ok_as(MEMBER, &["logs", &uuid]).contains("hello") {
        assert!(std::time::Instant::now() < deadline, "a member cannot read the logs");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    env.ok(&["stop", &uuid]);

    // Root's run and a member's fetch of the same image at the same time both succeed.
    let run = env.cmd().args(["run", "-q", "--net=none", &image("big"), "--", "true"]).spawn().unwrap();
    let fetched = s.as_user(MEMBER, &["fetch", "-q", "--pull-policy=update", &image("big")]);
    let ran = run.wait_with_output().unwrap();
    assert!(fetched.status.success(), "member fetch: {}", String::from_utf8_lossy(&fetched.stderr));
    assert!(ran.status.success(), "root run: {}", String::from_utf8_lossy(&ran.stderr));

    // An outsider is told which group grants what, never a bare EACCES.
    for args in [vec!["fetch", "-q", &image("busybox")], vec!["list"], vec!["image", "list"]] {
        let o = s.as_user(OUTSIDER, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains("membership in the `husk` group"), "{args:?}: {err}");
    }

    // A signature a member's fetch verified is not root's to believe: root's run refuses until
    // root has verified it itself.
    let reg = common::registry();
    let signed = format!("{reg}/priv-signed/app:latest");
    signing::copy(&image("busybox"), &signed);
    let digest = signing::manifest_digest(&signed);
    let key = signing::CosignKey::new(env.tmp.path(), "priv", signing::Alg::P256);
    std::fs::set_permissions(&key.public, std::fs::Permissions::from_mode(0o644)).unwrap();
    let layer = signing::CosignLayer::signed(&key, signing::cosign_payload(&signed, &digest));
    signing::attach(&reg, "priv-signed/app", &digest, &[layer]);
    env.ok(&["trust", "add", "--yes", "--prefix", &format!("{reg}/priv-signed"), key.public.to_str().unwrap()]);
    s.ok_as(MEMBER, &["fetch", "-q", &signed]);
    let list = s.ok_as(MEMBER, &["image", "list", "--format", "json"]);
    assert!(list.contains(&key_fingerprint(env)), "the member's fetch verified it: {list}");
    let err = env.fails(&["run", "-q", "--net=none", &signed, "--", "true"], 121);
    assert!(err.contains("root does not take another user's word"), "{err}");
    env.ok(&["fetch", "-q", "--pull-policy=update", &signed]);
    env.ok(&["run", "-q", "--net=none", &signed, "--", "true"]);

    // --check notices what is wrong, and setup puts it right.
    std::fs::set_permissions(env.dir().join("store/refs"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let o = env.husk(&["setup", "--check"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("store/refs: mode 0700, want 2770"));
    env.ok(&["setup"]);
    env.ok(&["setup", "--check"]);
}

fn key_fingerprint(env: &Env) -> String {
    let keys = env.json(&["trust", "list", "--format", "json"]);
    keys[0]["fingerprint"].as_str().unwrap().to_string()
}

fn uid_of(user: &str) -> u32 {
    let o = Command::new("id").args(["-u", user]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

fn group_gid() -> Option<u32> {
    std::fs::read_to_string("/etc/group").ok()?.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"husk")).then(|| f.get(2)?.parse().ok())?
    })
}
