//! The guest init: PID 1 of a kvm pod's virtual machine, from the initramfs. It mounts what a
//! kernel without userspace lacks, loads the virtio modules, mounts the pod dir shared by the
//! host (at the same path as on the host, so that the manifest's paths hold), connects the
//! control channel to the supervisor, then does what the `ns` pod init does: the same apply code
//! gives each app its mount namespace, root, user, capabilities, seccomp filter and cgroup.
//! When the apps have ended it reports the pod's status and powers the machine off.

use std::io::BufReader;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_types::msg::{self, Message};
use husk_types::pod::{exit, NetMode, PodManifest, Stdio, VolumeKind};
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{Context, Fail, Step};
use crate::kvm::plan::{CONTROL_PORT, POD_TAG, STDERR_PORT, STDIN_PORT, STDOUT_PORT, TTY_PORT};

/// The host's vsock context id, as the guest sees it.
const HOST_CID: u32 = 2;

/// What the kernel command line tells the guest init.
#[derive(Debug, PartialEq, Eq)]
pub struct Boot {
    pub pod_dir: PathBuf,
    pub uuid: String,
    pub debug: bool,
}

/// Reads `husk.pod=`, `husk.uuid=` and `husk.debug=` off /proc/cmdline.
pub fn parse_cmdline(c: &str) -> Result<Boot, String> {
    let get = |k: &str| c.split_whitespace().find_map(|w| w.strip_prefix(k));
    let pod_dir = get("husk.pod=").ok_or("no husk.pod= on the kernel command line")?;
    let uuid = get("husk.uuid=").ok_or("no husk.uuid= on the kernel command line")?;
    if !pod_dir.starts_with('/') || pod_dir.split('/').any(|s| s == "..") {
        return Err(format!("husk.pod={pod_dir} is not an absolute path"));
    }
    Ok(Boot { pod_dir: pod_dir.into(), uuid: uuid.into(), debug: get("husk.debug=") == Some("1") })
}

/// The host shares each host volume at `<pod>/kvm/volumes/<name>` (read-only ones bound
/// read-only there): the guest's manifest names those instead of the host's paths.
pub fn guest_volumes(m: &mut PodManifest, pod_dir: &Path) {
    for v in &mut m.volumes {
        if let VolumeKind::Host { source, .. } = &mut v.kind {
            *source = volume_dir(pod_dir, &v.name);
        }
    }
}

/// Where a host volume is shared, in the pod dir (the same path on host and guest).
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join("kvm/volumes").join(name)
}

/// PID 1 of the guest. Never returns: it powers the machine off.
pub fn main() -> ! {
    let code = match init() {
        Ok(c) => c,
        Err(e) => {
            // The console is the supervisor's console.log: it shows this if the pod fails.
            eprintln!("husk guest init: {}", e.chain());
            exit::STAGE1_FAILED
        }
    };
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Unreachable unless reboot(2) failed: ending PID 1 panics the kernel, which (panic=-1,
    // -no-reboot) ends the VM too.
    std::process::exit(code)
}

fn init() -> Result<i32, Fail> {
    load_modules(Path::new(super::initramfs::MODULES_DIR))?;
    leave_initramfs()?;
    early_mounts()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").ctx(Step::Pod, || "cannot read /proc/cmdline".into())?;
    let boot = parse_cmdline(&cmdline).map_err(Fail::Invalid)?;
    std::fs::create_dir_all(&boot.pod_dir).ctx(Step::Pod, || format!("cannot create {}", boot.pod_dir.display()))?;
    mount::<str, Path, str, str>(Some(POD_TAG), &boot.pod_dir, Some("virtiofs"), MsFlags::empty(), None)
        .ctx(Step::Mount, || format!("cannot mount the pod dir (virtio-fs {POD_TAG}) on {}", boot.pod_dir.display()))?;
    let control = connect(CONTROL_PORT)?;
    let mut m = crate::common::read_manifest(&boot.pod_dir)?;
    if m.uuid != boot.uuid {
        return Err(Fail::Invalid(format!("the shared pod dir holds pod {}, not {}", m.uuid, boot.uuid)));
    }
    guest_volumes(&mut m, &boot.pod_dir);
    let report =
        std::fs::File::from(control.try_clone().ctx(Step::Pod, || "cannot duplicate the control channel".into())?);
    let code = match pod(&boot, &m, report) {
        Ok(c) => c,
        Err(e) => {
            let mut r = std::fs::File::from(control.try_clone().ctx(Step::Pod, || "dup".into())?);
            let _ = msg::send(&mut r, &Message::Failed { reason: e.chain() });
            return Err(e);
        }
    };
    let mut c = std::fs::File::from(control);
    let _ = msg::send(&mut c, &Message::PodExited { code });
    Ok(code)
}

/// The pod itself: its stdio, hostname, network, cgroups and the apps.
fn pod(boot: &Boot, m: &PodManifest, report: std::fs::File) -> Result<i32, Fail> {
    if matches!(m.stdio, Stdio::Inherit | Stdio::Interactive) {
        // The apps' output goes straight to the supervisor, which writes it to its own.
        let out = connect(STDOUT_PORT)?;
        let err = connect(STDERR_PORT)?;
        nix::unistd::dup2_stdout(&out).ctx(Step::Process, || "cannot redirect stdout".into())?;
        if !boot.debug {
            nix::unistd::dup2_stderr(&err).ctx(Step::Process, || "cannot redirect stderr".into())?;
        }
    }
    // `-i`: the invoker's input, which ends when the supervisor closes the stream.
    let input = match m.stdio {
        Stdio::Interactive => std::fs::File::from(connect(STDIN_PORT)?),
        _ => std::fs::File::open("/dev/null").ctx(Step::Process, || "cannot open /dev/null".into())?,
    };
    nix::unistd::dup2_stdin(&input).ctx(Step::Process, || "cannot redirect stdin".into())?;
    drop(input);
    nix::unistd::sethostname(&m.hostname).ctx(Step::Pod, || format!("cannot set hostname {}", m.hostname))?;
    husk_sys::proc::loopback_up().ctx(Step::Pod, || "cannot bring up loopback".into())?;
    if let NetMode::Cni { .. } = m.net {
        super::net::configure_guest(&boot.pod_dir)?;
    }
    let layout = crate::cgroup::detect()?;
    let names: Vec<String> = m.apps.iter().map(|a| a.name.clone()).collect();
    layout.create_pod(&m.uuid, &names)?;
    for app in &m.apps {
        layout.apply_limits(&m.uuid, &app.name, &app.resources)?;
    }
    let sigs = crate::ns::signals();
    sigs.thread_block().ctx(Step::Pod, || "cannot block signals".into())?;
    signal_relay(report.try_clone().ctx(Step::Pod, || "dup".into())?)?;
    super::enter::serve(&boot.pod_dir)?;
    let (relay, console) =
        if m.stdio.has_terminal() { terminal_relay().map(|(p, c)| (Some(p), Some(c)))? } else { (None, None) };
    let code = crate::ns::run_apps(&boot.pod_dir, m, &layout, report, console, None, None);
    if let Some(pid) = relay {
        // The app's last output reaches the host before the pod is over.
        crate::ns::wait_briefly(pid);
    }
    code
}

/// `run -t`: a child that connects the terminal's stream to the supervisor, receives the app's
/// pty master (the app opens it in its own devpts, as in `ns`), sets the size the host sends
/// first, lets the app go on and relays the terminal until it ends. Returns its pid and the
/// app's end of the socket the master comes over.
fn terminal_relay() -> Result<(Pid, OwnedFd), Fail> {
    let (relay_end, app_end) = crate::console::sockets()?;
    match husk_sys::proc::fork().ctx(Step::Process, || "cannot start the terminal relay".into())? {
        husk_sys::proc::ForkResult::Parent { child } => Ok((child, app_end)),
        husk_sys::proc::ForkResult::Child => {
            drop(app_end);
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let _ = nix::sys::signal::SigSet::all().thread_block();
            let r = (|| -> Result<(), Fail> {
                let sock = std::fs::File::from(connect(TTY_PORT)?);
                let mut sock = super::stream::Incoming::new(Vec::new(), sock);
                // Nothing comes when the app failed before its terminal existed.
                let Some(master) = husk_sys::tty::recv_fd(&relay_end)
                    .ctx(Step::Process, || "cannot receive the app's terminal".into())?
                else {
                    return Ok(());
                };
                let (rows, cols) =
                    super::stream::first_size(&mut sock).ctx(Step::Process, || "the terminal's stream".into())?;
                let _ = husk_sys::tty::set_winsize(&master, rows, cols);
                crate::console::acknowledge(&relay_end);
                super::stream::pump(&master, &mut sock).ctx(Step::Process, || "relaying the app's terminal".into())
            })();
            if let Err(e) = r {
                eprintln!("husk guest init (terminal): {}", e.chain());
            }
            std::process::exit(0)
        }
    }
}

/// A child that reads the supervisor's messages and raises each signal in PID 1 (whose signals
/// are blocked, hence delivered), where the pod init's loop handles it as in `ns`. A process,
/// not a thread: the pod init forks the apps, which needs it single-threaded.
fn signal_relay(control: std::fs::File) -> Result<(), Fail> {
    match husk_sys::proc::fork().ctx(Step::Process, || "cannot fork the signal relay".into())? {
        husk_sys::proc::ForkResult::Parent { .. } => Ok(()),
        husk_sys::proc::ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let mut r = BufReader::new(control);
            while let Ok(Some(m)) = msg::recv(&mut r) {
                if let Message::Signal { signal } = m {
                    if let Ok(sig) = Signal::try_from(signal) {
                        let _ = kill(Pid::from_raw(1), sig);
                    }
                }
            }
            // The supervisor is gone: the pod ends (its apps get killed by the deadline).
            let _ = kill(Pid::from_raw(1), Signal::SIGTERM);
            let _ = kill(Pid::from_raw(1), Signal::SIGALRM);
            std::process::exit(0)
        }
    }
}

/// Moves a fresh tmpfs over the initramfs and makes it the root, as switch_root does: the
/// kernel refuses pivot_root(2) while the root is the initramfs itself (it has no parent mount),
/// and each app's root is entered with pivot_root. The initramfs's files are removed first, so
/// that their memory is freed (this executable stays mapped).
fn leave_initramfs() -> Result<(), Fail> {
    let _ = std::fs::remove_dir_all(super::initramfs::MODULES_DIR);
    let _ = std::fs::remove_file("/init");
    let new = "/sysroot";
    std::fs::create_dir_all(new).ctx(Step::Mount, || format!("cannot create {new}"))?;
    mount::<str, str, str, str>(Some("tmpfs"), new, Some("tmpfs"), MsFlags::MS_NOSUID, Some("mode=0755"))
        .ctx(Step::Mount, || format!("cannot mount a tmpfs on {new}"))?;
    std::env::set_current_dir(new).ctx(Step::Mount, || format!("cannot enter {new}"))?;
    mount::<str, str, str, str>(Some("."), "/", None, MsFlags::MS_MOVE, None)
        .ctx(Step::Mount, || "cannot move the new root over the initramfs".into())?;
    nix::unistd::chroot(".").ctx(Step::Mount, || "cannot change root to the new root".into())?;
    std::env::set_current_dir("/").ctx(Step::Mount, || "cannot enter /".into())?;
    Ok(())
}

fn early_mounts() -> Result<(), Fail> {
    let m = |src: &str, target: &str, fs: &str, flags: MsFlags, data: Option<&str>| {
        std::fs::create_dir_all(target).ctx(Step::Mount, || format!("cannot create {target}"))?;
        mount::<str, str, str, str>(Some(src), target, Some(fs), flags, data)
            .ctx(Step::Mount, || format!("cannot mount {fs} on {target}"))
    };
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    m("proc", "/proc", "proc", nosuid, None)?;
    m("sysfs", "/sys", "sysfs", nosuid, None)?;
    m("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    m("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    m("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    std::fs::create_dir_all("/dev/pts").ctx(Step::Mount, || "cannot create /dev/pts".into())?;
    Ok(())
}

/// Loads the initramfs's modules in name order (the builder numbered them in load order).
fn load_modules(dir: &Path) -> Result<(), Fail> {
    let mut kos: Vec<PathBuf> = std::fs::read_dir(dir)
        .ctx(Step::Pod, || format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    kos.sort();
    for ko in kos {
        let f = std::fs::File::open(&ko).ctx(Step::Pod, || format!("cannot open {}", ko.display()))?;
        match nix::kmod::finit_module(f.as_fd(), c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Fail::step(Step::Pod, format!("cannot load module {}", ko.display()), e)),
        }
    }
    Ok(())
}

/// A vsock stream to the supervisor's `port`. The vsock device may appear a moment after its
/// module loaded: retried briefly.
fn connect(port: u32) -> Result<OwnedFd, Fail> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let addr = VsockAddr::new(HOST_CID, port);
    let mut last = None;
    for _ in 0..200 {
        let s = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
            .ctx(Step::Pod, || "cannot create a vsock socket".into())?;
        match connect(std::os::fd::AsRawFd::as_raw_fd(&s), &addr) {
            Ok(()) => return Ok(s),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(Fail::step(
        Step::Pod,
        format!("cannot connect to the supervisor (vsock port {port})"),
        last.unwrap_or(nix::errno::Errno::ETIMEDOUT),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cmdline_names_the_pod() {
        let b = parse_cmdline("console=ttyS0 husk.pod=/var/lib/husk/pods/run/u husk.uuid=u quiet\n").unwrap();
        assert_eq!(b, Boot { pod_dir: "/var/lib/husk/pods/run/u".into(), uuid: "u".into(), debug: false });
        assert!(parse_cmdline("husk.pod=/p husk.uuid=u husk.debug=1").unwrap().debug);
        assert!(parse_cmdline("husk.uuid=u").unwrap_err().contains("husk.pod"));
        assert!(parse_cmdline("husk.pod=/p").unwrap_err().contains("husk.uuid"));
        assert!(parse_cmdline("husk.pod=rel husk.uuid=u").is_err());
        assert!(parse_cmdline("husk.pod=/a/../b husk.uuid=u").is_err());
    }

    #[test]
    fn host_volumes_are_read_from_their_shared_place() {
        let (mut m, _) = crate::plan::tests_fixture();
        m.volumes = vec![
            husk_types::pod::Volume {
                name: "data".into(),
                kind: VolumeKind::Host { source: "/srv/data".into(), read_only: true },
            },
            husk_types::pod::Volume { name: "scratch".into(), kind: VolumeKind::Empty },
        ];
        guest_volumes(&mut m, Path::new("/pods/u"));
        assert_eq!(m.volumes[0].kind, VolumeKind::Host { source: "/pods/u/kvm/volumes/data".into(), read_only: true });
        assert_eq!(m.volumes[1].kind, VolumeKind::Empty);
    }
}
