//! Pod networking with the standard CNI plugins. Only loopback and the pods' own private
//! addresses (172.16.28.0/24, 172.17.4.0/24) are ever contacted.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{host_net_state, image, ns_id, spare_netns, Env};

fn pod_ip(env: &Env, uuid: &str) -> String {
    let s = env.json(&["status", uuid, "--format", "json"]);
    s["networks"][0]["addresses"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no address: {s}"))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn http_get(url: &str) -> String {
    for _ in 0..50 {
        let o = Command::new("curl").args(["-s", "--max-time", "2", url]).output().unwrap();
        if o.status.success() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} did not answer");
}

/// The tests compare host-wide state, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const SERVE: &str = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www";

fn masquerade_jumps() -> usize {
    let rules = Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    String::from_utf8_lossy(&rules.stdout)
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING") && l.contains("husk network default: masquerade"))
        .count()
}

/// The default network's masquerade is one chain for all its pods: installed with the first,
/// shared by the second, kept while a pod's teardown runs, removed by gc once no pod uses it.
#[test]
fn the_default_networks_masquerade_is_shared_and_collected() {
    let _serial = serial();
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let before = host_net_state(&env);
    let users = std::path::Path::new("/run/husk/networks/default/users");
    let a = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sleep", "600"]).trim().to_string();
    let b = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sleep", "600"]).trim().to_string();
    assert_eq!(masquerade_jumps(), 1, "one rule for both pods");
    for u in [&a, &b] {
        assert!(users.join(u).exists(), "{u} is not recorded as a user of the network");
    }
    env.ok(&["stop", &a]);
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(!users.join(&a).exists());
    assert_eq!(masquerade_jumps(), 1, "still in use by {b}");
    // A pod that vanished without its teardown (no namespace pin left) does not keep the rule.
    let ghost = users.join("00000000-0000-0000-0000-00000000dead");
    std::fs::write(&ghost, b"").unwrap();
    env.ok(&["stop", &b]);
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(masquerade_jumps(), 0, "the last pod's gc removes the rule");
    assert!(!ghost.exists(), "the vanished pod's entry was forgotten");
    assert!(!std::path::Path::new("/run/husk/networks/default/masquerade").exists());
    assert_eq!(host_net_state(&env), before);
}

#[test]
fn pod_serves_http_by_ip_and_forwarded_port_and_cleans_up() {
    let _serial = serial();
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let before = host_net_state(&env);
    let uuid = env
        .ok(&[
            "run",
            "-q",
            "-d",
            "--hostname",
            "web",
            "--port",
            "127.0.0.1:18081:80",
            "--port",
            "18082:80",
            &image("busybox"),
            "--",
            "sh",
            "-c",
            SERVE,
        ])
        .trim()
        .to_string();
    let ip = pod_ip(&env, &uuid);
    assert!(ip.starts_with("172.16.28."), "{ip}");
    let raw = cmd("iptables-save", &["-t", "raw"]);
    assert!(raw.contains(&format!("husk {uuid}")), "a pod that forwards ports has its loopback guard: {raw}");
    assert_eq!(http_get(&format!("http://{ip}/")), "web\n");
    assert_eq!(http_get("http://127.0.0.1:18081/"), "web\n", "forwarded port on the host's loopback");
    // Another pod reaches it directly, and through the forwarded port on its gateway.
    let other = env.ok(&[
        "run",
        "-q",
        &image("busybox"),
        "--",
        "sh",
        "-c",
        &format!(
            "wget -q -O - http://{ip}/; gw=$(ip route | awk '/default/ {{print $3}}'); wget -q -O - http://$gw:18082/"
        ),
    ]);
    assert_eq!(other, "web\nweb\n");
    let table = env.ok(&["list"]);
    assert!(table.contains(&format!("default:eth0={ip}/24")), "{table}");
    // The same host port cannot be taken twice: an engine error (125, as podman's) naming the
    // pod that was being created and the one that has the port; nothing is left of the new pod.
    let pods_before = env.json(&["list", "--format", "json"]).as_array().unwrap().len();
    let err = env.fails(&["run", "-q", "--port", "127.0.0.1:18081:80", &image("busybox"), "--", "true"], 125);
    assert!(err.contains("18081") && err.contains(&uuid) && !err.contains("pod -:"), "{err}");
    assert_eq!(env.json(&["list", "--format", "json"]).as_array().unwrap().len(), pods_before);
    env.ok(&["stop", &uuid]);
    // Once exited (and torn down), the pod still reports the address it had.
    std::thread::sleep(Duration::from_millis(500));
    assert!(env.ok(&["list"]).contains(&format!("default:eth0={ip}/24")));
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(host_net_state(&env), before, "the host's links, rules, leases and namespaces are as before");
}

#[test]
fn pods_on_the_default_network_reach_each_other_and_the_host() {
    let _serial = serial();
    let env = Env::new();
    let a = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sh", "-c", SERVE]).trim().to_string();
    let b = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sh", "-c", SERVE]).trim().to_string();
    let (ia, ib) = (pod_ip(&env, &a), pod_ip(&env, &b));
    assert_ne!(ia, ib);
    let hb = env.ok(&["enter", &a, "--", "wget", "-q", "-O", "-", &format!("http://{ib}/")]);
    assert!(hb.starts_with("husk-"), "{hb}");
    let ha = env.ok(&["enter", &b, "--", "wget", "-q", "-O", "-", &format!("http://{ia}/")]);
    assert!(ha.starts_with("husk-"), "{ha}");
    let routes = env.ok(&["enter", &a, "--", "ip", "route"]);
    assert!(routes.contains("default via 172.16.28.1"), "{routes}");
    // husk's own ptp: the host side is named after the pod, holds the gateway and the route to
    // the pod, as ptp's; a pod that forwards no port needs no loopback guard rule.
    let host_if = format!("hsk{}", a.replace('-', "").get(..12).unwrap());
    let addr = cmd("ip", &["-4", "-o", "addr", "show", "dev", &host_if]);
    assert!(addr.contains("inet 172.16.28.1/32"), "{addr}");
    let route = cmd("ip", &["route", "show", &ia]);
    assert!(route.contains(&format!("dev {host_if}")), "{route}");
    let raw = cmd("iptables-save", &["-t", "raw"]);
    assert!(!raw.contains(&a), "no guard without --port: {raw}");
    let lease = std::fs::read_to_string(format!("/var/lib/cni/networks/default/{ia}")).unwrap();
    assert_eq!(lease, format!("{a}\r\neth0"), "host-local's lease format");
    env.ok(&["stop", &a, &b]);
    env.ok(&["gc", "--grace-period=0s"]);
    assert!(!cmd("ip", &["-o", "link"]).contains(&host_if));
    assert!(!std::path::Path::new(&format!("/var/lib/cni/networks/default/{ia}")).exists());
}

/// Pods started 8 at a time share the network's leases (host-local's lock) and masquerade
/// without a clash, and leave nothing behind.
#[test]
fn networked_pods_started_in_parallel_get_distinct_addresses_and_leave_nothing() {
    let _serial = serial();
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let before = host_net_state(&env);
    let img = image("busybox");
    let addrs: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| env.ok(&["run", "-q", "-d", &img, "--", "sleep", "60"]).trim().to_string())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).map(|uuid| pod_ip(&env, &uuid)).collect()
    });
    let distinct: std::collections::BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(distinct.len(), 24, "{addrs:?}");
    let uuids: Vec<String> = env
        .json(&["list", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uuid"].as_str().unwrap().to_string())
        .collect();
    let mut stop = vec!["stop"];
    stop.extend(uuids.iter().map(String::as_str));
    env.ok(&stop);
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(host_net_state(&env), before);
}

/// Restores a sysctl when dropped (also when the test fails).
struct Sysctl(&'static str, String);

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, value).unwrap();
        Sysctl(path, old)
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, self.1.trim());
    }
}

/// A pod without ports gets no loopback guard only while nothing lets its host side route to
/// 127/8: with `conf/default/route_localnet` on (which a new interface inherits) it gets one.
#[test]
fn the_loopback_guard_follows_route_localnet() {
    let _serial = serial();
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let before = host_net_state(&env);
    let guarded = {
        let _on = Sysctl::set("/proc/sys/net/ipv4/conf/default/route_localnet", "1");
        env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sleep", "60"]).trim().to_string()
    };
    let plain = env.ok(&["run", "-q", "-d", &image("busybox"), "--", "sleep", "60"]).trim().to_string();
    let raw = cmd("iptables-save", &["-t", "raw"]);
    assert!(raw.contains(&format!("husk {guarded}")), "{raw}");
    assert!(!raw.contains(&plain), "{raw}");
    env.ok(&["stop", &guarded, &plain]);
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(host_net_state(&env), before);
}

fn cmd(bin: &str, args: &[&str]) -> String {
    let o = Command::new(bin).args(args).output().unwrap();
    assert!(o.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn host_none_and_restricted_networks() {
    let _serial = serial();
    let env = Env::new();
    let none =
        env.ok(&["run", "-q", "--net=none", &image("busybox"), "--", "sh", "-c", "ls /sys/class/net | tr '\\n' ' '"]);
    assert_eq!(none.trim(), "lo");
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string();
    let host = env.ok(&["run", "-q", "--net=host", &image("busybox"), "--", "readlink", "/proc/self/ns/net"]);
    assert_eq!(host.trim(), host_ns);
    let restricted = env.ok(&[
        "run",
        "-q",
        "--net=default-restricted",
        &image("busybox"),
        "--",
        "sh",
        "-c",
        "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route",
    ]);
    assert!(restricted.contains("inet 172.17.4."), "{restricted}");
    assert!(!restricted.contains("default"), "no route out: {restricted}");
    let err = env.fails(&["run", "-q", "--net=nosuchnet", &image("busybox"), "--", "true"], 120);
    assert!(err.contains("nosuchnet") && err.contains("default-restricted"), "{err}");
}

#[test]
fn user_networks_requested_addresses_and_conflicts() {
    let _serial = serial();
    let env = Env::new();
    let net_d = env.tmp.path().join("etc/net.d");
    std::fs::create_dir_all(&net_d).unwrap();
    let ipam = env.dir().join("cni/networks");
    // host-local returns DNS from a resolv.conf-style file: the pod must get it.
    let lab_dns = env.tmp.path().join("lab-resolv.conf");
    std::fs::write(&lab_dns, "nameserver 172.16.29.53\nsearch lab.test\n").unwrap();
    std::fs::write(
        net_d.join("10-lab.conflist"),
        serde_json::json!({"cniVersion": "1.0.0", "name": "lab", "plugins": [{"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "subnet": "172.16.29.0/24", "dataDir": ipam, "resolvConf": lab_dns}}]}).to_string(),
    )
    .unwrap();
    let resolv = env.ok(&["run", "-q", "--net=lab", &image("busybox"), "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 172.16.29.53") && resolv.contains("search lab.test"),
        "DNS from the CNI result: {resolv}"
    );
    // gc waits for that pod's network teardown.
    env.ok(&["gc", "--grace-period=0s"]);
    let before = host_net_state(&env);
    let a = env
        .ok(&["run", "-q", "-d", "--net=default:IP=172.16.28.50,lab", &image("busybox"), "--", "sleep", "60"])
        .trim()
        .to_string();
    let s = env.json(&["status", &a, "--format", "json"]);
    assert_eq!(s["networks"][0]["addresses"][0], "172.16.28.50/24");
    assert_eq!(s["networks"][1]["interface"], "eth1");
    assert!(s["networks"][1]["addresses"][0].as_str().unwrap().starts_with("172.16.29."));
    // The same address again: refused, naming it, and nothing left behind by the half setup.
    let err = env.fails(&["run", "-q", "--net=lab,default:IP=172.16.28.50", &image("busybox"), "--", "true"], 125);
    assert!(err.contains("172.16.28.50"), "{err}");
    env.ok(&["stop", &a]);
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(host_net_state(&env), before);
}

#[test]
fn kill_9_of_a_networked_pod_is_cleaned_by_gc() {
    let _serial = serial();
    let env = Env::new();
    env.ok(&["fetch", "-q", &image("busybox")]);
    let before = host_net_state(&env);
    let uuid =
        env.ok(&["run", "-q", "-d", "--port", "18083:80", &image("busybox"), "--", "sleep", "60"]).trim().to_string();
    let sup = env.json(&["status", &uuid, "--format", "json"])["supervisor_pid"].as_i64().unwrap();
    assert!(Command::new("kill").args(["-9", &sup.to_string()]).status().unwrap().success());
    env.ok(&["status", &uuid, "--wait=10s"]);
    assert_ne!(host_net_state(&env), before, "the crash left network state for gc");
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(host_net_state(&env), before);
}

#[test]
fn dns_options_reach_resolv_conf() {
    let _serial = serial();
    let env = Env::new();
    let out = env.ok(&[
        "run",
        "-q",
        "--dns",
        "172.16.28.1",
        "--dns-opt",
        "ndots:2",
        "--dns-domain",
        "pods.test",
        &image("busybox"),
        "--",
        "cat",
        "/etc/resolv.conf",
    ]);
    assert!(
        out.contains("nameserver 172.16.28.1") && out.contains("options ndots:2") && out.contains("domain pods.test"),
        "{out}"
    );
    let host = env.ok(&["run", "-q", "--dns", "host", &image("busybox"), "--", "cat", "/etc/resolv.conf"]);
    assert_eq!(host, std::fs::read_to_string("/etc/resolv.conf").unwrap());
}

/// Waits until /run/husk/spare-netns holds a spare (a pod's cleanup makes it after the pod).
fn wait_for_spare() -> Vec<u64> {
    for _ in 0..100 {
        let s = spare_netns();
        if !s.is_empty() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no spare network namespace was made");
}

/// `net:[N]` as readlink prints a namespace link.
fn ns_text(id: u64) -> String {
    format!("net:[{id}]")
}

/// A `--net=none` pod's network namespace may be made ahead, as a spare by the cleanup of the
/// pod before: each is fresh (what a pod changed in its own is gone with it), loopback is up,
/// no two pods ever share one, the host's is never used, and no more than four are kept.
#[test]
fn spare_network_namespaces_are_fresh_never_shared_and_bounded() {
    let _serial = serial();
    let env = Env::new();
    let img = image("busybox");
    // A pod that may change its namespace (CAP_NET_ADMIN) does: its lo's MTU.
    let out = env.ok(&[
        "run",
        "-q",
        "--net=none",
        "--caps-retain=CAP_NET_ADMIN",
        &img,
        "--",
        "sh",
        "-c",
        "ip link set lo mtu 1280 && cat /sys/class/net/lo/mtu",
    ]);
    assert_eq!(out.trim(), "1280");
    let spares = wait_for_spare();
    // Pods started together, each reporting its namespace, its lo's MTU and interfaces, and
    // whether loopback carries traffic (nc answers itself on 127.0.0.1).
    let script = "readlink /proc/self/ns/net; cat /sys/class/net/lo/mtu; ls /sys/class/net | tr '\\n' ' '; echo; \
                  ip addr show lo | grep -c 'inet 127.0.0.1'; exec sleep 60";
    let uuids: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> =
            (0..6).map(|_| s.spawn(|| env.detached(&["--net=none", &img, "--", "sh", "-c", script]))).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let host = ns_id(Path::new("/proc/self/ns/net"));
    let mut seen = std::collections::BTreeSet::new();
    for u in &uuids {
        let mut logs = String::new();
        for _ in 0..50 {
            logs = env.ok(&["logs", u]);
            if logs.lines().count() >= 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 4, "{u}: {logs}");
        // The namespace of the pod's init, as the host sees it, is the app's.
        let pid = env.json(&["status", u, "--format", "json"])["pid"].as_i64().unwrap();
        let id = ns_id(Path::new(&format!("/proc/{pid}/ns/net")));
        assert_eq!(lines[0], ns_text(id), "{u}");
        assert_ne!(id, host, "{u} is in the host's network namespace");
        assert!(seen.insert(id), "two pods share the network namespace {id}");
        assert_eq!(lines[1], "65536", "{u}: a namespace another pod changed");
        assert_eq!(lines[2].trim(), "lo", "{u}");
        assert_eq!(lines[3], "1", "{u}: loopback is not up");
    }
    // Every spare there was went to one of them.
    for sp in &spares {
        assert!(seen.contains(sp), "spare {sp} was not used: {seen:?}");
    }
    let mut stop = vec!["stop"];
    stop.extend(uuids.iter().map(String::as_str));
    env.ok(&stop);
    env.ok(&["gc", "--grace-period=0s"]);
    // Each pod's cleanup makes a spare when a slot is free: four at most.
    std::thread::sleep(Duration::from_millis(300));
    let kept = spare_netns();
    assert!(!kept.is_empty() && kept.len() <= 4, "{kept:?}");
    // A pod with private users never takes one: its own user namespace owns its network
    // namespace, so its root may change it (here: its lo's MTU).
    let out = env.ok(&[
        "run",
        "-q",
        "--net=none",
        "--private-users",
        "--caps-retain=CAP_NET_ADMIN",
        &img,
        "--",
        "sh",
        "-c",
        "readlink /proc/self/ns/net; ip link set lo mtu 1280 && echo changed",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(!kept.iter().any(|k| lines[0] == ns_text(*k)), "{out} took one of {kept:?}");
    assert_eq!(lines.get(1), Some(&"changed"), "{out}");
}

/// A prepared `--net=none` pod takes a spare network namespace when it runs, as `run` does; with
/// private users it makes its own (its user namespace must own it); and without a spare (all
/// taken, or none made since boot) the pod makes its own and runs as well.
#[test]
fn a_prepared_pod_takes_a_spare_network_namespace() {
    let _serial = serial();
    let env = Env::new();
    let img = image("busybox");
    let before = host_net_state(&env);
    let script = "readlink /proc/self/ns/net; ip addr show lo | grep -c 'inet 127.0.0.1'";
    let prepare = |extra: &[&str]| {
        let mut a = vec!["prepare", "-q", "--net=none"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&[&img, "--", "sh", "-c", script]);
        env.ok(&a).trim().to_string()
    };
    // A pod run first leaves a spare (rm waits for its cleanup, which makes it last).
    let saved = env.tmp.path().join("uuid");
    env.ok(&["run", "-q", "--net=none", "--uuid-file-save", saved.to_str().unwrap(), &img, "--", "true"]);
    env.ok(&["rm", "--uuid-file", saved.to_str().unwrap()]);
    let spares = wait_for_spare();
    let first = prepare(&[]);
    let out = env.ok(&["run-prepared", &first]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(spares.iter().any(|s| lines[0] == ns_text(*s)), "{out} took none of {spares:?}");
    assert_eq!(lines[1], "1", "loopback is not up: {out}");
    // With private users: not a spare.
    let spares = wait_for_spare();
    let u = prepare(&["--private-users"]);
    let out = env.ok(&["run-prepared", &u]);
    assert!(!spares.iter().any(|s| out.starts_with(&ns_text(*s))), "{out} took one of {spares:?}");
    assert!(out.ends_with("\n1\n"), "{out}");
    // No spare at all: the pod makes its own namespace. (rm waits for the first pod's cleanup,
    // which makes a spare last.)
    env.ok(&["rm", &first]);
    let taken: Vec<_> = (0..4).filter_map(take_spare_by_hand).collect();
    assert!(spare_netns().is_empty());
    let u = prepare(&[]);
    let out = env.ok(&["run-prepared", &u]);
    assert!(out.ends_with("\n1\n") && !taken.iter().any(|t| out.starts_with(&ns_text(*t))), "{out}");
    env.ok(&["gc", "--grace-period=0s"]);
    assert_eq!(host_net_state(&env), before);
}

/// Unpins spare slot `i` as a pod's supervisor would (under the spares' lock); its namespace's id.
fn take_spare_by_hand(i: usize) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dir = Path::new("/run/husk/spare-netns");
    let lock = std::fs::File::open(dir.join("lock")).ok()?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let slot = dir.join(i.to_string());
    let id = std::fs::metadata(&slot).ok()?.ino();
    rustix::mount::unmount(&slot, rustix::mount::UnmountFlags::DETACH).ok()?;
    std::fs::remove_file(&slot).unwrap();
    Some(id)
}
