//! The cgroup v2 device filter on the real kernel: the program husk-oci generates, attached to
//! a cgroup of this host's v2 tree (the unified one of a hybrid host), decides what a process in
//! that cgroup may open. Needs root (CI runs as root).

use std::path::PathBuf;
use std::process::Command;

fn v2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cg = husk_stage1::oci::cgroups::Cgroups::from_mountinfo(&mi, |_| String::new());
    cg.hierarchies.iter().find(|h| h.v2).map(|h| h.mount.clone()).expect("this host mounts no cgroup v2 tree")
}

#[test]
fn the_ebpf_device_filter_allows_only_what_the_rules_allow() {
    assert!(rustix::process::geteuid().is_root(), "this test needs root (CI runs it as root)");
    let dir = v2_root().join(format!("husk-device-filter-test-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let rules: Vec<husk_stage1::oci::devices::Rule> = [(false, "a *:* rwm"), (true, "c 1:3 rwm"), (true, "c 1:5 r")]
        .iter()
        .map(|(a, l)| husk_stage1::oci::devices::parse(*a, l).unwrap())
        .collect();
    let fd = husk_sys::resolve::open_dir(&dir).unwrap();
    husk_sys::bpf::attach_device_program(&fd, &husk_stage1::oci::devices::program(&rules)).unwrap();
    // /dev/null: read and write; /dev/zero: read only; /dev/full: nothing.
    let script = format!(
        "echo $$ > {}/cgroup.procs || exit 99; \
         echo x >/dev/null && echo null-w; head -c1 /dev/null; echo null-r; \
         head -c1 /dev/zero >/dev/null && echo zero-r; echo x 2>/dev/null >/dev/zero || echo zero-w-denied; \
         head -c1 /dev/full >/dev/null 2>&1 || echo full-denied",
        dir.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "null-w\nnull-r\nzero-r\nzero-w-denied\nfull-denied\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
