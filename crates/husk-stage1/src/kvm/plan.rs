//! What a kvm pod's virtual machine is made of, decided before anything starts: qemu's command
//! line, the file-sharing and vsock daemons' command lines, and the guest kernel's. Pure
//! functions of the pod and the host's facts, so that every choice is unit-tested.

use std::path::{Path, PathBuf};

use husk_types::pod::{PodManifest, VmSettings};

/// The vsock port on the host side where the guest init connects its control channel.
pub const CONTROL_PORT: u32 = 1024;
/// The vsock ports where the guest init connects the apps' stdout and stderr (foreground pods).
pub const STDOUT_PORT: u32 = 1025;
pub const STDERR_PORT: u32 = 1026;
/// The vsock port of the app's terminal stream (`run -t`; frames of [`super::stream`]).
pub const TTY_PORT: u32 = 1028;
/// The vsock port of the invoker's input (`run -i` without a terminal).
pub const STDIN_PORT: u32 = 1029;
/// The guest's context id (any value above 2; each VM has its own vsock daemon).
pub const GUEST_CID: u32 = 3;
/// The virtio-fs tag of the pod dir.
pub const POD_TAG: &str = "husk-pod";

/// How the guest runs: hardware virtualisation or qemu's software emulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Kvm,
    Tcg,
}

/// Where a VM's pieces are on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub qemu: PathBuf,
    /// qemu's firmware and data directory (`-L`).
    pub qemu_data: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub virtiofsd: PathBuf,
    pub vsock: PathBuf,
    /// `/run/husk/kvm/<uuid>`: the daemons' sockets.
    pub run: PathBuf,
    /// Where the guest's console goes (the kernel's messages and the guest init's own errors).
    pub console: PathBuf,
}

impl Paths {
    /// The layout of an assets directory (docs/kvm.md): `vmlinux` (preferred: booted directly,
    /// PVH) or `vmlinuz`, `qemu/usr/bin/qemu-system-x86_64` (a private unpack) or the host's,
    /// `bin/virtiofsd`, `bin/vhost-device-vsock`.
    pub fn of(
        assets: &Path,
        initramfs: PathBuf,
        run: PathBuf,
        console: PathBuf,
        exists: impl Fn(&Path) -> bool,
    ) -> Paths {
        let private = assets.join("qemu/usr/bin/qemu-system-x86_64");
        let (qemu, qemu_data) = if exists(&private) {
            (private, assets.join("qemu/usr/share/qemu"))
        } else {
            (PathBuf::from("/usr/bin/qemu-system-x86_64"), PathBuf::from("/usr/share/qemu"))
        };
        let vmlinux = assets.join("vmlinux");
        let kernel = if exists(&vmlinux) { vmlinux } else { assets.join("vmlinuz") };
        Paths {
            qemu,
            qemu_data,
            kernel,
            initramfs,
            virtiofsd: assets.join("bin/virtiofsd"),
            vsock: assets.join("bin/vhost-device-vsock"),
            run,
            console,
        }
    }

    pub fn fs_socket(&self) -> PathBuf {
        self.run.join("fs.sock")
    }
    pub fn vhost_socket(&self) -> PathBuf {
        self.run.join("vsock-backend.sock")
    }
    /// The vsock daemon's "hybrid" socket: the host connects here to reach a guest port, and
    /// listens on `<this>_<port>` for the guest's connections to host port `port`.
    pub fn vsock_uds(&self) -> PathBuf {
        vsock_uds(&self.run)
    }
    pub fn vsock_listener(&self, port: u32) -> PathBuf {
        self.run.join(format!("vsock_{port}"))
    }
}

/// The vsock daemon's hybrid socket in a pod's run dir (see [`Paths::vsock_uds`]).
pub fn vsock_uds(run: &Path) -> PathBuf {
    run.join("vsock")
}

/// The guest kernel's command line. The guest init finds its pod dir (shared at the same path
/// as on the host, so that the manifest's paths hold in both) and the pod's UUID here.
pub fn kernel_cmdline(m: &PodManifest, pod_dir: &Path, engine: Engine, tsc_khz: Option<u64>, debug: bool) -> String {
    let mut c = vec![
        "console=ttyS0".to_string(),
        // The guest init is PID 1 and powers off: a panic must end the VM, not hang it.
        "panic=-1".into(),
        "reboot=t".into(),
        "rdinit=/init".into(),
        // No PCI bus (microvm), no keyboard, no persistent device names to wait for.
        "pci=off".into(),
        "i8042.noaux".into(),
        "i8042.nomux".into(),
        "i8042.nopnp".into(),
        "i8042.dumbkbd".into(),
        "cryptomgr.notests".into(),
        // The pod's cgroup limits inside the guest are cgroup v2's.
        "systemd.unified_cgroup_hierarchy=1".into(),
        format!("husk.pod={}", pod_dir.display()),
        format!("husk.uuid={}", m.uuid),
    ];
    if !debug {
        c.push("quiet".into());
        c.push("loglevel=1".into());
    }
    if debug {
        c.push("husk.debug=1".into());
    }
    if engine == Engine::Tcg {
        // Under emulation the TSC calibration takes a second and is wrong anyway.
        if let Some(khz) = tsc_khz {
            c.push(format!("tsc_early_khz={khz}"));
        }
        c.push("tsc=reliable".into());
    }
    c.join(" ")
}

/// qemu's command line: a microvm with virtio-mmio devices only, memory a memfd that the
/// vhost-user daemons map, no firmware of its own beyond qemu's, no default devices.
pub fn qemu_args(vm: &VmSettings, engine: Engine, paths: &Paths, cmdline: &str, nics: &[TapNic]) -> Vec<String> {
    let mem = vm.memory_mib;
    let mut a: Vec<String> = vec![
        "-name".into(),
        "husk".into(),
        "-L".into(),
        paths.qemu_data.display().to_string(),
        "-M".into(),
        // Under TCG the guest needs the PIT and RTC for its clock (the known facts).
        match engine {
            Engine::Kvm => "microvm,acpi=on,memory-backend=mem".into(),
            Engine::Tcg => "microvm,pit=on,rtc=on,acpi=on,memory-backend=mem".into(),
        },
        "-accel".into(),
        match engine {
            Engine::Kvm => "kvm".into(),
            // A small translation cache: the default (1 GiB) is most of qemu's resident memory.
            Engine::Tcg => "tcg,tb-size=64".into(),
        },
        "-cpu".into(),
        match engine {
            Engine::Kvm => "host".into(),
            Engine::Tcg => "max".into(),
        },
        "-smp".into(),
        vm.cpus.to_string(),
        "-m".into(),
        format!("{mem}M"),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // qemu's own seccomp filter: no exec, no privilege changes, no obsolete syscalls.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-chardev".into(),
        format!("file,id=con,path={}", paths.console.display()),
        "-serial".into(),
        "chardev:con".into(),
        "-kernel".into(),
        paths.kernel.display().to_string(),
        "-initrd".into(),
        paths.initramfs.display().to_string(),
        "-append".into(),
        cmdline.to_string(),
        "-chardev".into(),
        format!("socket,id=fs,path={}", paths.fs_socket().display()),
        "-device".into(),
        format!("vhost-user-fs-device,chardev=fs,tag={POD_TAG}"),
        "-chardev".into(),
        format!("socket,id=vsock,path={}", paths.vhost_socket().display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsock".into(),
    ];
    for (n, nic) in nics.iter().enumerate() {
        a.push("-netdev".into());
        a.push(format!("tap,id=net{n},ifname={},script=no,downscript=no,vhost=off", nic.tap));
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=net{n},mac={}", nic.mac));
    }
    a
}

/// The guest's network card: a tap in the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapNic {
    pub tap: String,
    pub mac: String,
}

/// virtiofsd: shares the pod dir (the supervisor's mount namespace, where the app roots are
/// mounted), sandboxed in its own namespaces with its seccomp filter, and ends with the VM.
pub fn virtiofsd_args(paths: &Paths, pod_dir: &Path) -> Vec<String> {
    vec![
        format!("--socket-path={}", paths.fs_socket().display()),
        format!("--shared-dir={}", pod_dir.display()),
        // Its own mount, pid and network namespaces, pivoted into the shared dir.
        "--sandbox=namespace".into(),
        "--seccomp=kill".into(),
        "--cache=auto".into(),
        // The app roots are mounts under the pod dir: the guest sees them as mounts too, so that
        // inode numbers of different file systems never collide.
        "--announce-submounts".into(),
        // Ownership, modes and extended attributes as on the host (the apps' files).
        "--xattr".into(),
        "--inode-file-handles=never".into(),
        "--log-level=error".into(),
    ]
}

/// vhost-device-vsock: one VM, hybrid sockets under the pod's run dir.
pub fn vsock_args(paths: &Paths) -> Vec<String> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={GUEST_CID},uds-path={},socket={}",
            paths.vsock_uds().display(),
            paths.vhost_socket().display()
        ),
    ]
}

/// The engine to use: what `[stage1.kvm] accel` asks, given whether the probe found a /dev/kvm
/// that can run a stock guest kernel. `Err` when KVM is required and unusable.
pub fn choose_engine(
    asked: husk_types::pod::Accel,
    probe: &Result<(), String>,
) -> Result<(Engine, Option<String>), String> {
    use husk_types::pod::Accel;
    match (asked, probe) {
        (Accel::Tcg, _) => Ok((Engine::Tcg, None)),
        (Accel::Kvm | Accel::Auto, Ok(())) => Ok((Engine::Kvm, None)),
        (Accel::Kvm, Err(why)) => Err(format!(
            "[stage1.kvm] accel = \"kvm\", but {why}; set accel = \"auto\" or \"tcg\" to run under emulation"
        )),
        (Accel::Auto, Err(why)) => {
            Ok((Engine::Tcg, Some(format!("husk: {why}: the kvm pod runs under emulation (TCG), much slower"))))
        }
    }
}

/// Whether this host's KVM can run a stock guest kernel, from facts read off the host: `/dev/kvm`
/// must exist, the CPU must offer hardware virtualisation (vmx or svm), and the module must not
/// be the PVM variant (`kvm_pvm`), under which a stock kernel never boots.
pub fn probe_kvm(dev_kvm: bool, cpuinfo: &str, modules: &[String]) -> Result<(), String> {
    if !dev_kvm {
        return Err("/dev/kvm does not exist (no KVM on this host)".into());
    }
    if modules.iter().any(|m| m == "kvm_pvm") {
        return Err("/dev/kvm is the PVM variant (module kvm_pvm), which cannot boot a stock guest kernel".into());
    }
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !hw {
        return Err("the CPU offers no hardware virtualisation (no vmx or svm flag)".into());
    }
    Ok(())
}

/// The host's TSC frequency in kHz from /proc/cpuinfo's "cpu MHz", for the guest's early
/// calibration under TCG.
pub fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let mhz: f64 = cpuinfo.lines().find_map(|l| l.strip_prefix("cpu MHz")?.split(':').nth(1)?.trim().parse().ok())?;
    (mhz.is_finite() && mhz > 0.0).then_some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_types::pod::Accel;

    fn paths(private_qemu: bool, vmlinux: bool) -> Paths {
        Paths::of(
            Path::new("/k"),
            "/run/i.cpio".into(),
            "/run/husk/kvm/u".into(),
            "/pods/u/kvm/console.log".into(),
            |p| {
                (private_qemu && p == Path::new("/k/qemu/usr/bin/qemu-system-x86_64"))
                    || (vmlinux && p == Path::new("/k/vmlinux"))
            },
        )
    }

    fn vm() -> VmSettings {
        VmSettings { assets: "/k".into(), accel: Accel::Auto, memory_mib: 640, cpus: 2 }
    }

    #[test]
    fn assets_prefer_the_private_qemu_and_the_uncompressed_kernel() {
        let p = paths(true, true);
        assert_eq!(p.qemu, Path::new("/k/qemu/usr/bin/qemu-system-x86_64"));
        assert_eq!(p.qemu_data, Path::new("/k/qemu/usr/share/qemu"));
        assert_eq!(p.kernel, Path::new("/k/vmlinux"));
        let p = paths(false, false);
        assert_eq!(p.qemu, Path::new("/usr/bin/qemu-system-x86_64"));
        assert_eq!(p.qemu_data, Path::new("/usr/share/qemu"));
        assert_eq!(p.kernel, Path::new("/k/vmlinuz"));
        assert_eq!(p.vsock_listener(1024), Path::new("/run/husk/kvm/u/vsock_1024"));
    }

    fn has_pair(a: &[String], flag: &str, value: &str) -> bool {
        a.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn qemu_under_tcg_gets_the_clocks_and_a_small_cache() {
        let a = qemu_args(&vm(), Engine::Tcg, &paths(true, true), "x", &[]);
        assert!(has_pair(&a, "-M", "microvm,pit=on,rtc=on,acpi=on,memory-backend=mem"));
        assert!(has_pair(&a, "-accel", "tcg,tb-size=64"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(&a, "-smp", "2"));
        assert!(has_pair(&a, "-m", "640M"));
        assert!(has_pair(&a, "-object", "memory-backend-memfd,id=mem,size=640M,share=on"));
        assert!(has_pair(&a, "-kernel", "/k/vmlinux"));
        assert!(has_pair(&a, "-initrd", "/run/i.cpio"));
        assert!(has_pair(&a, "-append", "x"));
        assert!(a.iter().any(|s| s == "-nodefaults"));
        assert!(a.iter().any(|s| s.starts_with("on,") && s.contains("spawn=deny")), "qemu's sandbox is on");
        assert!(has_pair(&a, "-device", "vhost-user-fs-device,chardev=fs,tag=husk-pod"));
        assert!(has_pair(&a, "-chardev", "socket,id=fs,path=/run/husk/kvm/u/fs.sock"));
        assert!(has_pair(&a, "-chardev", "socket,id=vsock,path=/run/husk/kvm/u/vsock-backend.sock"));
        assert!(has_pair(&a, "-chardev", "file,id=con,path=/pods/u/kvm/console.log"));
        assert!(!a.iter().any(|s| s == "-netdev"), "no network card without a network");
    }

    #[test]
    fn qemu_under_kvm_uses_the_host_cpu_and_no_emulated_clocks() {
        let a = qemu_args(&vm(), Engine::Kvm, &paths(true, true), "x", &[]);
        assert!(has_pair(&a, "-M", "microvm,acpi=on,memory-backend=mem"));
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host"));
    }

    #[test]
    fn a_network_gives_the_guest_a_tap_card() {
        let nics = [
            TapNic { tap: "tap0".into(), mac: "02:00:0a:58:00:05".into() },
            TapNic { tap: "tap1".into(), mac: "02:00:0a:59:00:05".into() },
        ];
        let a = qemu_args(&vm(), Engine::Tcg, &paths(true, true), "x", &nics);
        assert!(has_pair(&a, "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no,vhost=off"));
        assert!(has_pair(&a, "-device", "virtio-net-device,netdev=net0,mac=02:00:0a:58:00:05"));
        assert!(has_pair(&a, "-netdev", "tap,id=net1,ifname=tap1,script=no,downscript=no,vhost=off"));
    }

    #[test]
    fn the_kernel_is_told_the_pod_and_quiet_unless_debugging() {
        let (m, _) = crate::plan::tests_fixture();
        let c = kernel_cmdline(&m, Path::new("/var/lib/husk/pods/run/u"), Engine::Tcg, Some(2_000_000), false);
        for want in ["husk.pod=/var/lib/husk/pods/run/u", "quiet", "panic=-1", "tsc_early_khz=2000000", "rdinit=/init"]
        {
            assert!(c.split(' ').any(|w| w == want), "{want} in {c}");
        }
        assert!(c.contains(&format!("husk.uuid={}", m.uuid)));
        let d = kernel_cmdline(&m, Path::new("/p"), Engine::Kvm, Some(2_000_000), true);
        assert!(!d.contains("quiet") && d.contains("husk.debug=1") && !d.contains("tsc_early_khz"));
    }

    #[test]
    fn the_daemons_are_sandboxed_and_share_only_the_pod_dir() {
        let p = paths(true, true);
        let v = virtiofsd_args(&p, Path::new("/pods/u"));
        for want in
            ["--shared-dir=/pods/u", "--sandbox=namespace", "--seccomp=kill", "--socket-path=/run/husk/kvm/u/fs.sock"]
        {
            assert!(v.iter().any(|s| s == want), "{want}");
        }
        let s = vsock_args(&p);
        assert_eq!(s[1], "guest-cid=3,uds-path=/run/husk/kvm/u/vsock,socket=/run/husk/kvm/u/vsock-backend.sock");
    }

    #[test]
    fn the_probe_refuses_pvm_and_missing_hardware_support() {
        let vmx = "processor : 0\nflags : fpu vmx sse\n";
        let none = "processor : 0\nflags : fpu sse hypervisor\n";
        assert!(probe_kvm(true, vmx, &["kvm".into(), "kvm_intel".into()]).is_ok());
        assert!(probe_kvm(true, "flags : svm\n", &["kvm".into()]).is_ok());
        assert!(probe_kvm(false, vmx, &[]).unwrap_err().contains("does not exist"));
        assert!(probe_kvm(true, vmx, &["kvm".into(), "kvm_pvm".into()]).unwrap_err().contains("PVM"));
        assert!(probe_kvm(true, none, &["kvm".into()]).unwrap_err().contains("vmx or svm"));
        // A flag name that merely contains "vmx" is not the flag.
        assert!(probe_kvm(true, "flags : vmxnet\n", &["kvm".into()]).is_err());
    }

    #[test]
    fn auto_falls_back_to_tcg_with_a_notice_and_kvm_refuses() {
        let bad = Err("no kvm".to_string());
        assert_eq!(choose_engine(Accel::Auto, &Ok(())).unwrap(), (Engine::Kvm, None));
        let (e, notice) = choose_engine(Accel::Auto, &bad).unwrap();
        assert_eq!(e, Engine::Tcg);
        assert!(notice.unwrap().contains("TCG"));
        assert!(choose_engine(Accel::Kvm, &bad).unwrap_err().contains("accel = \"auto\""));
        assert_eq!(choose_engine(Accel::Tcg, &Ok(())).unwrap(), (Engine::Tcg, None));
    }

    #[test]
    fn tsc_frequency_from_cpuinfo() {
        assert_eq!(tsc_khz("processor\t: 0\ncpu MHz\t\t: 2449.998\n"), Some(2_449_998));
        assert_eq!(tsc_khz("processor: 0\n"), None);
        assert_eq!(tsc_khz("cpu MHz : nan\n"), None);
        assert_eq!(tsc_khz("cpu MHz : -3\n"), None);
    }
}
