//! Regression tests for the defects found by testing husk as an attacker and as a careless user
//! (issue 8). Each test is named after the defect it prevents; each failed before its fix.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{image, images_dir, Env};

fn oci(name: &str) -> String {
    format!("oci:{}", images_dir().join(name).display())
}

fn pods(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["list", "--format", "json"]).as_array().cloned().unwrap_or_default()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `husk ARGS` and gives up (failing the test) after `limit`, killing it: a hang is a bug.
fn run_with_limit(env: &Env, args: &[&OsStr], limit: Duration) -> std::process::Output {
    let mut child = env.cmd().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!("husk {args:?} hung for {limit:?}; stderr: {}", stderr(&o));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The id -1 means root.

#[test]
fn the_id_minus_one_never_means_root() {
    let env = Env::new();
    let wl = image("workload");
    for flags in [
        vec!["--user", "4294967295"],
        vec!["--group", "4294967295"],
        vec!["--user", "4294967295:0"],
        vec!["--user", "1000:4294967295"],
        vec!["--supplementary-gids", "5,4294967295"],
    ] {
        let mut a = vec!["run", "-q", "--net=none", &wl];
        a.extend_from_slice(&flags);
        let err = env.fails(&a, 120);
        assert!(err.contains("4294967295") && err.contains("-1"), "{flags:?}: {err}");
    }
    // The same from the image's own config (User "4294967295:4294967295").
    let err = env.fails(&["run", "-q", "--net=none", &oci("user-minus-one")], 120);
    assert!(err.contains("4294967295"), "{err}");
    // With private users, ids beyond the pod's 65536 are refused as well.
    let err = env.fails(&["run", "-q", "--net=none", "--private-users", &wl, "--user", "70000"], 120);
    assert!(err.contains("outside the pod's private user range"), "{err}");
    assert!(pods(&env).is_empty(), "a refused pod was left behind");
    // What status reports is what the app runs as.
    let out = env.ok(&["run", "-q", "--net=none", &wl, "--user", "1000:2000"]);
    let r: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!((r["uid"].as_u64(), r["gid"].as_u64()), (Some(1000), Some(2000)), "{r}");
    let uuid = pods(&env)[0]["uuid"].as_str().unwrap().to_string();
    let status = env.ok(&["status", &uuid]);
    assert!(status.contains("uid:1000 gid:2000"), "{status}");
}

// ---------------------------------------------------------------------------------------------
// 2. A pod reaches the host's loopback-only services (the CVE-2020-8558 class).

/// A raw SYN from a pod on `net` (forwarding `host_port`, if any) to `dst`:`port`.
fn syn_from_pod(env: &Env, net: &str, host_port: Option<u16>, dst: &str, port: u16) -> serde_json::Value {
    let p = port.to_string();
    let net = format!("--net={net}");
    let mut args = vec!["run", "-q", &net];
    let fwd = host_port.map(|h| format!("{h}:80"));
    if let Some(f) = &fwd {
        args.extend(["--port", f]);
    }
    let img = image("workload");
    args.extend([img.as_str(), "--", "syn", dst, &p]);
    let out = env.ok(&args);
    serde_json::from_str(out.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn raw_rules() -> String {
    String::from_utf8_lossy(&Command::new("iptables-save").args(["-t", "raw"]).output().unwrap().stdout).into_owned()
}

#[test]
fn pods_never_reach_the_hosts_loopback_only_services() {
    let env = Env::new();
    // A service bound to the host's loopback only, and (the control) one on every address.
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let any = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let (lp, ap) = (local.local_addr().unwrap().port(), any.local_addr().unwrap().port());
    // With a forwarded port (portmap turns route_localnet on: the guard rule stops them), and
    // without (no guard is inserted: the kernel drops packets for 127/8 from other interfaces).
    for (net, fwd) in
        [("default", Some(18841)), ("default-restricted", Some(18851)), ("default", None), ("default-restricted", None)]
    {
        // The control: a raw SYN to the host side's own address is answered, so the probe works.
        let control = syn_from_pod(&env, net, fwd, "gateway", ap);
        assert_eq!(control["synack"], true, "{net}: the probe itself does not work: {control}");
        let attack = syn_from_pod(&env, net, fwd.map(|f| f + 1), "127.0.0.1", lp);
        assert_eq!(attack["synack"], false, "{net}: a pod reached the host's 127.0.0.1:{lp}: {attack}");
    }
    env.ok(&["gc", "--grace-period=0s"]);
    let rules = raw_rules();
    for p in pods(&env) {
        assert!(!rules.contains(p["uuid"].as_str().unwrap()), "a pod's loopback guard was left: {rules}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Overlay-private xattrs from a layer reach the shared store.

#[test]
fn overlay_private_xattrs_never_reach_the_store() {
    let env = Env::new();
    env.ok(&["fetch", "-q", &oci("evil-xattr")]);
    let layers = env.dir().join("store/layers");
    let steered: Vec<PathBuf> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("rootfs/steered"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(steered.len(), 1, "the layer with /steered is in the store");
    let mut buf = [0u8; 256];
    for (path, name) in [
        (steered[0].clone(), "trusted.overlay.redirect"),
        (steered[0].clone(), "trusted.overlay.opaque"),
        (steered[0].join("meta"), "trusted.overlay.metacopy"),
        (steered[0].join("meta"), "trusted.overlay.origin"),
        (steered[0].join("meta"), "security.selinux"),
    ] {
        let got = rustix::fs::lgetxattr(&path, name, &mut buf);
        assert!(
            got.is_err() || name == "security.selinux" && is_host_label(&buf),
            "{name} on {} was stored",
            path.display()
        );
    }
    let n = rustix::fs::lgetxattr(&steered[0], "user.kept", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"yes");
    // And a pod over it sees the image's own content at /steered, not /etc.
    let out = env.ok(&["run", "-q", "--net=none", &oci("evil-xattr"), "--", "cat", "/steered/meta"]);
    assert_eq!(out, "data");
}

/// A host with SELinux labels every file itself; the image's label must not be the one stored.
fn is_host_label(buf: &[u8]) -> bool {
    !buf.starts_with(b"system_u:object_r:shadow_t")
}

// ---------------------------------------------------------------------------------------------
// 4. Private-user ranges are unique only within one data dir.

#[test]
fn private_user_ranges_are_unique_across_data_dirs() {
    let (a, b) = (Env::new(), Env::new());
    let bb = image("busybox");
    let ua = a.detached(&["--net=none", "--private-users", &bb, "--", "sleep", "60"]);
    let ub = b.detached(&["--net=none", "--private-users", &bb, "--", "sleep", "60"]);
    let ra = a.json(&["status", &ua, "--format", "json"])["private_users"]["host_base"].as_u64().unwrap();
    let rb = b.json(&["status", &ub, "--format", "json"])["private_users"]["host_base"].as_u64().unwrap();
    assert_ne!(ra, rb, "two live pods of two data dirs share the host range {ra}");
    a.ok(&["stop", "--timeout", "1s", &ua]);
    b.ok(&["stop", "--timeout", "1s", &ub]);
}

// ---------------------------------------------------------------------------------------------
// 5. A FIFO where husk expects a file hangs the pod for good; stop --force always ends a pod.

#[test]
fn a_fifo_in_the_image_never_hangs_the_pod() {
    let env = Env::new();
    let img = oci("evil-fifo");
    // /etc/hostname and /etc/hosts are FIFOs in the image: stage1 replaces them, never opens them.
    let args: Vec<&OsStr> = ["run", "-q", "--net=none", "--hostname", "fifo-pod", &img, "--", "cat", "/etc/hostname"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    let o = run_with_limit(&env, &args, Duration::from_secs(30));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "fifo-pod\n");
    // A volume mount target that is a FIFO is refused, naming it, and quickly.
    let f = env.tmp.path().join("file");
    std::fs::write(&f, "x").unwrap();
    let vol = format!("v,kind=host,source={}", f.display());
    let args: Vec<&OsStr> =
        ["run", "-q", "--net=none", "--volume", &vol, &img, "--mount", "volume=v,target=/fifo-target", "--", "true"]
            .into_iter()
            .map(OsStr::new)
            .collect();
    let o = run_with_limit(&env, &args, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("/fifo-target in the image is a FIFO"), "{}", stderr(&o));
}

/// A CNI plugin that never answers: stage1 blocks before the pod has a `stage1.json`.
fn hanging_network(env: &Env) -> String {
    let plugins = env.tmp.path().join("cni-bin");
    std::fs::create_dir_all(&plugins).unwrap();
    let marker = format!("{}", 4000 + std::process::id() % 1000);
    let plugin = plugins.join("husk-test-hang");
    std::fs::write(&plugin, format!("#!/bin/sh\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\nexec sleep {marker}.25\n"))
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let netd = env.tmp.path().join("etc/net.d");
    std::fs::create_dir_all(&netd).unwrap();
    std::fs::write(
        netd.join("hang.conflist"),
        r#"{"cniVersion": "0.4.0", "name": "hang", "plugins": [{"type": "husk-test-hang"}]}"#,
    )
    .unwrap();
    let conf = env.tmp.path().join("etc/husk.toml");
    let mut toml = std::fs::read_to_string(&conf).unwrap();
    toml.push_str(&format!("\n[paths]\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n", plugins.display()));
    std::fs::write(&conf, toml).unwrap();
    format!("sleep {marker}.25")
}

fn kill_processes_matching(cmdline: &str) {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&c).replace('\0', " ").trim() == cmdline {
            let _ = Command::new("kill").arg("-9").arg(e.file_name()).status();
        }
    }
}

#[test]
fn stop_force_ends_a_pod_stuck_while_starting() {
    let env = Env::new();
    let marker = hanging_network(&env);
    for force in [true, false] {
        let mut run = env.cmd().args(["run", "-q", "--net=hang", &image("busybox"), "--", "true"]).spawn().unwrap();
        // Wait until the pod is in run/ with its lock held and no stage1.json: stuck.
        let deadline = Instant::now() + Duration::from_secs(20);
        let uuid = loop {
            let p = pods(&env);
            if let Some(u) = p.iter().find(|p| p["state"] == "running").and_then(|p| p["uuid"].as_str()) {
                break u.to_string();
            }
            assert!(Instant::now() < deadline, "the pod never reached run/: {p:?}");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(300));
        let mut stop = vec!["stop", "--timeout", "1s"];
        if force {
            stop.push("--force");
        }
        stop.push(&uuid);
        let started = Instant::now();
        env.ok(&stop);
        assert!(started.elapsed() < Duration::from_secs(15));
        let st = run.wait().unwrap();
        assert!(!st.success(), "a stopped pod reports failure");
        kill_processes_matching(&marker);
        let s = env.json(&["status", &uuid, "--format", "json"]);
        assert_eq!(s["state"], "exited", "{s}");
        env.ok(&["rm", &uuid]);
    }
    assert!(pods(&env).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 6. Any non-UTF-8 argument panics.

#[test]
fn invalid_utf8_in_any_argument_never_panics_and_app_bytes_arrive_unchanged() {
    let env = Env::new();
    let bad = OsStr::from_bytes(b"x\xff\xfey");
    let bb = image("busybox");
    let s = |x: &str| OsStr::new(x).to_os_string();
    let b = bad.to_os_string();
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec![b.clone()],
        vec![s("fetch"), b.clone()],
        vec![s("run"), b.clone()],
        vec![s("run"), s("--net=none"), s(&bb), s("--name"), b.clone()],
        vec![s("run"), s("--net=none"), s(&bb), s("--user"), b.clone()],
        vec![s("run"), s("--net=none"), s(&bb), s("--set-env"), OsStr::from_bytes(b"\xff=v").to_os_string()],
        vec![s("run"), s("--net=none"), s("--hostname"), b.clone(), s(&bb)],
        vec![s("run"), s("--net=none"), s("--volume"), b.clone(), s(&bb)],
        vec![s("run"), s("--net=none"), s(&bb), s("---"), b.clone()],
        vec![s("prepare"), b.clone()],
        vec![s("run-prepared"), b.clone()],
        vec![s("status"), b.clone()],
        vec![s("cat-manifest"), b.clone()],
        vec![s("logs"), b.clone()],
        vec![s("enter"), b.clone()],
        vec![s("stop"), b.clone()],
        vec![s("rm"), b.clone()],
        vec![s("gc"), s("--grace-period"), b.clone()],
        vec![s("list"), s("--format"), b.clone()],
        vec![s("image"), s("list"), s("--format"), b.clone()],
        vec![s("image"), s("rm"), b.clone()],
        vec![s("image"), s("cat-manifest"), b.clone()],
        vec![s("image"), s("export"), b.clone(), b.clone()],
        vec![s("image"), s("extract"), b.clone(), b.clone()],
        vec![s("image"), s("import"), b.clone()],
        vec![s("completion"), b.clone()],
        vec![s("--insecure-options"), b.clone(), s("list")],
        vec![s("--config-dir"), b.clone(), s("list")],
        vec![s("--dir"), env.tmp.path().join(bad).into_os_string(), s("list")],
    ];
    for args in &cases {
        let o = env.cmd().args(args).stdin(Stdio::null()).output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked") && o.status.code() != Some(134), "husk {args:?} panicked: {err}");
        assert!(o.status.code().is_some(), "husk {args:?} died by a signal");
        let code = o.status.code().unwrap();
        assert!(code == 0 || (120..=125).contains(&code), "husk {args:?}: unexpected exit {code}: {err}");
    }
    // App arguments and environment values are bytes: they reach the app exactly.
    let o = env
        .cmd()
        .args(["run", "-q", "--net=none", &image("workload"), "--environment"])
        .arg(OsStr::from_bytes(b"RAW=\xfe\x01"))
        .args(["--", "argv"])
        .arg(bad)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_slice(o.stdout.split(|b| *b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    assert_eq!(r["argv"], serde_json::json!(["78fffe79"]));
    assert!(r["env"].as_array().unwrap().contains(&serde_json::json!("5241573dfe01")), "{r}");
    // And through enter.
    let uuid = env.detached(&["--net=none", &image("workload"), "--", "sleep", "60"]);
    let o = env.cmd().args(["enter", &uuid, "--", "/usr/bin/husk-workload", "argv"]).arg(bad).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["argv"], serde_json::json!(["78fffe79"]));
    env.ok(&["stop", "--timeout", "1s", &uuid]);
}

// ---------------------------------------------------------------------------------------------
// 7. gc with zero grace breaks pods being prepared; lock files appear at old paths.

#[test]
fn gc_at_zero_grace_never_breaks_parallel_runs_or_leaves_strays() {
    let env = Env::new();
    let bb = image("busybox");
    env.ok(&["fetch", "-q", &bb]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc = {
        let stop = stop.clone();
        let mut cmd = env.cmd();
        cmd.args(["gc", "--grace-period=0s", "--expire-prepared=0s"]);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let o = cmd.output().unwrap();
                assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
                n += 1;
            }
            n
        })
    };
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (next, failures) = (next.clone(), failures.clone());
            let mut cmd = env.cmd();
            cmd.args(["run", "-q", "--net=none", &bb, "--", "true"]);
            std::thread::spawn(move || {
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 100 {
                    let o = cmd.output().unwrap();
                    if !o.status.success() {
                        failures.lock().unwrap().push(format!("{:?}: {}", o.status.code(), stderr(&o)));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let gcs = gc.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{} of 100 runs failed beside {gcs} gc runs: {:?}", failures.len(), &failures[..]);
    env.ok(&["gc", "--grace-period=0s", "--expire-prepared=0s"]);
    for phase in ["embryo", "prepare", "prepared", "run", "exited-garbage", "garbage"] {
        let left: Vec<String> = std::fs::read_dir(env.dir().join("pods").join(phase))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "pods/{phase} still holds {left:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. image verify misses a deleted layer tree; run then fails late in stage1.

#[test]
fn a_deleted_layer_tree_is_found_by_verify_and_named_by_run() {
    let env = Env::new();
    let bb = image("busybox");
    env.ok(&["fetch", "-q", &bb]);
    let layer = std::fs::read_dir(env.dir().join("store/layers")).unwrap().flatten().next().unwrap().path();
    std::fs::remove_dir_all(&layer).unwrap();
    let o = env.husk(&["image", "verify"]);
    assert_eq!(o.status.code(), Some(123));
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(out.contains("layer tree") && out.contains("missing"), "{out}");
    let err = env.fails(&["run", "-q", "--net=none", &bb, "--", "true"], 121);
    assert!(err.contains("husk/busybox") && err.contains("--pull-policy=update"), "{err}");
    assert!(pods(&env).is_empty(), "run built a pod on a damaged image");
    // The fix the hint names works.
    env.ok(&["fetch", "-q", "--pull-policy=update", &bb]);
    env.ok(&["image", "verify"]);
    env.ok(&["run", "-q", "--net=none", &bb, "--", "true"]);
}

// ---------------------------------------------------------------------------------------------
// 9. Input validated before a pod exists.

#[test]
fn bad_pod_input_is_a_usage_error_naming_the_flag_and_leaves_no_pod() {
    let env = Env::new();
    let bb = image("busybox");
    env.ok(&["fetch", "-q", &bb]);
    let long = format!("{}/{}", common::registry(), "a".repeat(5000));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--hostname", "pod\n10.0.0.1 bank.example", &bb], "--hostname"),
        (vec!["run", "--hosts-entry", "10.1.2.3=a\n10.0.0.1 bank.example", &bb], "--hosts-entry"),
        (vec!["run", "--volume", "v,kind=empty", "--volume", "v,kind=empty", &bb], "--volume"),
        (vec!["run", "--volume", "v,kind=empty", &bb, "--mount", "volume=v,target=/a/../../etc"], "'..'"),
        (vec!["run", &bb, "--set-env-file", "/nonexistent/env"], "--set-env-file"),
        (vec!["run", &long], "at most 255"),
    ];
    for (args, names) in cases {
        let mut a = vec!["run", "-q", "--net=none"];
        a.extend_from_slice(&args[1..]);
        a.extend_from_slice(&["--", "true"]);
        let err = env.fails(&a, 120);
        assert!(err.contains(names), "{args:?}: the error does not name {names}: {err}");
        assert!(pods(&env).is_empty(), "{args:?} left a pod");
    }
    let err = env.fails(&["fetch", "-q", &long], 120);
    assert!(err.contains("at most 255"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 10. Limits on untrusted sizes.

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A copy of the test image `base` whose config and manifest `edit` may change (the blobs are
/// written under their new digests, the index points at the new manifest).
fn derived_layout(
    env: &Env,
    base: &str,
    name: &str,
    edit: impl Fn(&mut serde_json::Value, &mut serde_json::Value),
) -> String {
    let src = images_dir().join(base);
    let dst = env.tmp.path().join(name);
    std::fs::create_dir_all(dst.join("blobs/sha256")).unwrap();
    for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    std::fs::copy(src.join("oci-layout"), dst.join("oci-layout")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| std::fs::read(src.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let put = |data: &[u8]| {
        let d = sha(data);
        std::fs::write(dst.join("blobs/sha256").join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let (before_m, before_c) = (manifest.clone(), config.clone());
    edit(&mut config, &mut manifest);
    // An unchanged config keeps its bytes and digest (so it is the blob already stored).
    if config != before_c {
        let (cd, cn) = put(&serde_json::to_vec(&config).unwrap());
        manifest["config"]["digest"] = cd.into();
        if manifest["config"]["size"] == before_m["config"]["size"] {
            manifest["config"]["size"] = cn.into();
        }
    }
    let (md, mn) = put(&serde_json::to_vec(&manifest).unwrap());
    let mut idx = index.clone();
    idx["manifests"][0]["digest"] = md.into();
    idx["manifests"][0]["size"] = mn.into();
    std::fs::write(dst.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    format!("oci:{}", dst.display())
}

#[test]
fn untrusted_sizes_are_bounded() {
    let env = Env::new();
    // A config over 4 MiB is refused.
    let big = derived_layout(&env, "busybox", "big-config", |c, _| {
        c["config"]["Labels"] = serde_json::json!({"padding": "x".repeat(5 << 20)});
    });
    let err = env.fails(&["fetch", "-q", &big], 121);
    assert!(err.contains("4 MiB"), "{err}");
    // A descriptor whose size does not match the bytes is refused, also when the blob is stored.
    env.ok(&["fetch", "-q", &oci("busybox")]);
    let lying_layer = derived_layout(&env, "busybox", "lying-layer", |_, m| {
        let n = m["layers"][0]["size"].as_u64().unwrap();
        m["layers"][0]["size"] = (n + 1).into();
    });
    let err = env.fails(&["fetch", "-q", &lying_layer], 121);
    assert!(err.contains("size mismatch"), "{err}");
    let lying_config = derived_layout(&env, "busybox", "lying-config", |_, m| {
        let n = m["config"]["size"].as_u64().unwrap();
        m["config"]["size"] = (n + 7).into();
    });
    let err = env.fails(&["fetch", "-q", &lying_config], 121);
    assert!(err.contains("size mismatch"), "{err}");
    // The index's descriptor of the manifest, too.
    let lying_index = derived_layout(&env, "busybox", "lying-index", |_, _| {});
    let dir = PathBuf::from(lying_index.trim_start_matches("oci:"));
    let mut idx: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["size"] = (idx["manifests"][0]["size"].as_u64().unwrap() + 1).into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let err = env.fails(&["fetch", "-q", &lying_index], 121);
    assert!(err.contains("size mismatch"), "{err}");
    // A FIFO where a layout's index.json belongs is refused at once, not waited on.
    let fifo_layout = env.tmp.path().join("fifo-layout");
    std::fs::create_dir_all(&fifo_layout).unwrap();
    assert!(Command::new("mkfifo").arg(fifo_layout.join("index.json")).status().unwrap().success());
    let arg = format!("oci:{}", fifo_layout.display());
    let o = run_with_limit(&env, &[OsStr::new("fetch"), OsStr::new("-q"), OsStr::new(&arg)], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(121), "{}", stderr(&o));
    assert!(stderr(&o).contains("a FIFO"), "{}", stderr(&o));
}

#[test]
fn a_detached_pods_logs_are_bounded_with_rotation() {
    let env = Env::new();
    let uuid = env.detached(&[
        "--net=none",
        "--log-max-size",
        "64K",
        "--log-max-files",
        "2",
        &image("busybox"),
        "--",
        "sh",
        "-c",
        "yes husk-log-line | head -c 3000000; echo; echo the-end",
    ]);
    env.ok(&["status", &uuid, "--wait=60s"]);
    let logs = env.dir().join("pods/run").join(&uuid).join("logs");
    let size = |f: &str| std::fs::metadata(logs.join(f)).map(|m| m.len()).unwrap_or(0);
    assert!(
        size("busybox.log") <= 64 << 10 && size("busybox.log.1") == 64 << 10,
        "{} {}",
        size("busybox.log"),
        size("busybox.log.1")
    );
    assert!(!logs.join("busybox.log.2").exists(), "more files than --log-max-files");
    let out = env.ok(&["logs", &uuid]);
    assert!(out.len() <= 128 << 10, "logs printed {} bytes", out.len());
    assert!(out.ends_with("\nthe-end\n"), "the newest output is kept: {:?}", &out[out.len().saturating_sub(40)..]);
    assert!(env.ok(&["status", &uuid]).contains("exited 0"));
    // Usage errors for the flags.
    let err = env.fails(&["run", "-q", "-d", "--log-max-size", "1", &image("busybox")], 120);
    assert!(err.contains("--log-max-size"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 11. Statuses that go missing.

#[test]
fn an_app_killed_at_the_stop_timeout_has_status_137() {
    let env = Env::new();
    let uuid = env.detached(&[
        "--net=none",
        &image("busybox"),
        "--",
        "sh",
        "-c",
        "trap '' TERM; while true; do sleep 1; done",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    env.ok(&["stop", "--timeout", "1s", &uuid]);
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    let s = env.json(&["status", &uuid, "--format", "json"]);
    assert_eq!(s["apps"][0]["status"]["signal"], 9, "{s}");
    assert_eq!(s["exit_status"], 137, "{s}");
    // --force: killed at once, status recorded too.
    let uuid = env.detached(&["--net=none", &image("busybox"), "--", "sleep", "600"]);
    std::thread::sleep(Duration::from_millis(300));
    env.ok(&["stop", "--force", &uuid]);
    assert_eq!(env.json(&["status", &uuid, "--format", "json"])["exit_status"], 137);
}

#[test]
fn an_oom_kill_of_a_child_in_the_apps_cgroup_is_reported() {
    let env = Env::new();
    let o = env.husk(&[
        "run",
        "-q",
        "--net=none",
        &image("busybox"),
        "--memory",
        "16M",
        "--",
        "sh",
        "-c",
        "sh -c 'x=a; while true; do x=$x$x; done'; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let p = pods(&env);
    assert_eq!(p[0]["apps"][0]["status"]["oom_killed"], true, "{:?}", p[0]);
    let uuid = p[0]["uuid"].as_str().unwrap().to_string();
    let s = env.ok(&["status", &uuid]);
    assert!(s.contains("exited 3 (the OOM killer ended a process of the app)"), "{s}");
}

#[test]
fn parallel_rm_of_one_exited_pod_never_says_running() {
    let env = Env::new();
    env.ok(&["run", "-q", "--net=none", &image("busybox"), "--", "true"]);
    let uuid = pods(&env)[0]["uuid"].as_str().unwrap().to_string();
    let rms: Vec<_> = (0..8)
        .map(|_| env.cmd().args(["rm", &uuid]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<_> = rms.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert_eq!(outs.iter().filter(|o| o.status.success()).count(), 1, "exactly one rm removes it");
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = stderr(o);
        assert_eq!(o.status.code(), Some(122), "{err}");
        assert!(!err.contains("running") && !err.contains("stop it"), "a loser was told the pod runs: {err}");
    }
    assert!(pods(&env).is_empty());
    assert!(!Path::new(&env.dir().join("pods/garbage").join(&uuid)).exists());
}

// ---------------------------------------------------------------------------------------------
// Issue 9's untrusted-path item, which the same hostile-image review found: an image whose /etc
// is a symlink to the host's /etc made husk resolve users from the host's files.

#[test]
fn users_never_come_from_the_hosts_etc_through_an_image_symlink() {
    let env = Env::new();
    // "daemon" exists in the host's /etc/passwd, not in the image (whose /etc is a symlink).
    assert!(std::fs::read_to_string("/etc/passwd").unwrap().contains("\ndaemon:"));
    let err = env.fails(&["run", "-q", "--net=none", &oci("etc-symlink"), "--user", "daemon", "--", "true"], 120);
    assert!(err.contains("daemon") && err.contains("/etc/passwd"), "{err}");
}
