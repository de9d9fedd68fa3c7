//! What an exited `ns` pod leaves outside its pod dir — the supervisor's private mount namespace
//! (the app roots mounted in it), the pod init's and the apps' mount namespaces (held open by
//! the supervisor, [`Cleanup::hold`]), the pod's cgroups, its CNI networks — removed by a
//! detached process, so that the pod's exit status reaches its invoker without waiting for any
//! of it.
//!
//! Measured here: unmounting a pod's roots as the last process leaves its mount namespace
//! costs about 1 ms, removing its cgroups (two levels in four v1 hierarchies) about 0.7 ms,
//! and the CNI plugins' DEL (masquerade rules through `iptables`) tens of milliseconds. An app's
//! and the init's own mount namespaces, torn down by their exits, cost about 1 ms of a pod's
//! start to exit together.
//!
//! The order is what makes this safe: the supervisor, still holding the pod lock, takes
//! `cleanup.lock` ([`Cleanup::prepare`]), releases the pod lock, and starts the cleanup process
//! ([`Cleanup::spawn`]: a child sharing its memory that runs a plan of raw system calls, or a
//! fork when the cleanup needs more), which inherits `cleanup.lock` and never the pod lock. stage1's `gc`
//! ([`collect`], run by `husk gc` and `husk rm`) takes `cleanup.lock` before its own idempotent
//! removal, so it waits for a cleanup still running and never races it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_sys::proc::{fork, ForkResult};
use husk_sys::{Lock, LockKind};
use husk_types::abi::{PodDir, SPARE_NETNS_DIR};
use husk_types::pod::PodManifest;
use nix::sched::CloneFlags;

use crate::cgroup::Layout;
use crate::cni;
use crate::common::{Fail, Step};

/// How long `gc` waits for a cleanup still running (a CNI plugin that hangs is the only way
/// to reach it).
const COLLECT_WAIT: Duration = Duration::from_secs(60);

/// The cleanup of one exited pod, holding `cleanup.lock`.
pub struct Cleanup {
    dir: PathBuf,
    uuid: String,
    /// The pod's apps: their cgroups are removed by name.
    apps: Vec<String>,
    /// A kvm pod's cgroups and sockets are not the apps': its cleanup is always forked.
    kvm: bool,
    layout: Layout,
    /// The CNI plugin dirs, for a pod on CNI networks.
    net: Option<Vec<PathBuf>>,
    /// Whether the pod could have used a spare network namespace: its cleanup makes one.
    spare: bool,
    lock: Option<Lock>,
    /// The pod init's and apps' mount namespaces ([`Cleanup::hold`]), dropped by the cleanup.
    held: Vec<File>,
}

impl Cleanup {
    /// Takes `cleanup.lock`; called while the pod lock is still held, so that no `gc` can slip
    /// in between the two.
    pub fn prepare(dir: &Path, m: &PodManifest, layout: &Layout, net: Option<&[PathBuf]>) -> Cleanup {
        let lock = Lock::acquire(&PodDir::new(dir).cleanup_lock(), LockKind::Exclusive, || {}).ok();
        Cleanup {
            dir: dir.to_path_buf(),
            uuid: m.uuid.clone(),
            apps: m.apps.iter().map(|a| a.name.clone()).collect(),
            kvm: m.flavor == husk_types::pod::Flavor::Kvm,
            layout: layout.clone(),
            net: net.map(<[PathBuf]>::to_vec),
            spare: crate::plan::netns_ahead(m),
            lock,
            held: Vec::new(),
        }
    }

    /// Keeps these namespaces (the pod init's and apps' mount namespaces, opened while they ran)
    /// until the cleanup drops them. The last reference to a mount namespace unmounts all it
    /// holds and waits for an RCU grace period: without this, an app's exit and then the
    /// init's did that work before the pod's status could reach its invoker.
    pub fn hold(&mut self, namespaces: Vec<File>) {
        self.held.extend(namespaces);
    }

    /// Hands the cleanup to a detached process and returns at once, with the calling process
    /// back in the host's mount namespace `host_mnt`.
    ///
    /// The cleanup process must be the last one to leave the supervisor's mount namespace (the
    /// last one pays for its unmounting), so it waits until the supervisor has left (its end of
    /// a pipe closes) before it leaves too. Without a lock file to hold (the pod dir is gone?),
    /// or when fork fails, the cleanup runs in the foreground.
    ///
    /// What raw system calls can do (a pod without CNI networks and without a kvm pod's
    /// sockets: a mount namespace to leave, empty cgroups to remove) runs in a child sharing
    /// this process's memory ([`husk_sys::detach`], planned by [`Cleanup::plan`]); the rest in a
    /// forked one.
    pub fn spawn(self, host_mnt: &File) {
        let detached = match (&self.lock, pipe()) {
            (Some(_), Ok((left_r, left_w))) => {
                let shared = self.plan(host_mnt, &left_r, &left_w).is_some_and(|p| husk_sys::detach::spawn(p).is_ok());
                let started = if shared { Ok(None) } else { fork().map(Some) };
                match started {
                    Ok(Some(ForkResult::Child)) => {
                        drop(left_w);
                        self.detached(host_mnt, left_r)
                    }
                    Ok(_) => {
                        drop(left_r);
                        back_home(host_mnt);
                        drop(left_w);
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !detached {
            self.run_here(host_mnt);
        }
    }

    /// The steps of a detached cleanup in raw system calls, or `None` when it needs more (CNI
    /// networks to tear down, a kvm pod's cgroups and run directory). The child closes its copy of the
    /// pipe's write end, leaves the invoker's session and stdio, waits for the supervisor to
    /// have left the mount namespace, leaves it too, removes the pod's cgroups by name (the
    /// apps', and the `init` leaf a pod with private users has on cgroup v2, then the pod's),
    /// and, for a pod that could have used one, makes a spare network namespace for the next
    /// ([`husk_sys::netns`]). Whatever it cannot remove is reported in `cleanup.log` and left
    /// to `husk gc`.
    fn plan(&self, host_mnt: &File, left_r: &OwnedFd, left_w: &OwnedFd) -> Option<husk_sys::detach::Plan> {
        use husk_sys::detach::{Plan, Step};
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        if self.net.is_some() || self.kvm || crate::kvm::run_dir(&self.uuid).exists() {
            return None;
        }
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).ok();
        let mut steps = vec![
            Step::Close(left_w.as_raw_fd()),
            Step::NewSession,
            Step::NullStdio,
            Step::WaitEof(left_r.as_raw_fd()),
            Step::Close(left_r.as_raw_fd()),
            Step::JoinMountNs(host_mnt.as_raw_fd()),
        ];
        // The supervisor has gone: this child's copies are the last references.
        steps.extend(self.held.iter().map(|f| Step::Close(f.as_raw_fd())));
        let leaves: Vec<&str> = match self.layout {
            Layout::V2(_) => self.apps.iter().map(String::as_str).chain(["init"]).collect(),
            Layout::V1(_) => self.apps.iter().map(String::as_str).collect(),
        };
        for root in self.layout.roots() {
            let pod = root.join("husk").join(&self.uuid);
            for leaf in &leaves {
                steps.push(Step::Rmdir(c(&pod.join(leaf))?));
            }
            steps.push(Step::Rmdir(c(&pod)?));
        }
        // A pod that could have used a spare network namespace leaves one for the next.
        if self.spare {
            steps.push(Step::MakeSpareNetns(husk_sys::netns::SpareDir::new(Path::new(SPARE_NETNS_DIR))?));
        }
        Some(Plan { steps, log: c(&PodDir::new(&self.dir).cleanup_log())?, hint: "`husk gc` retries".into() })
    }

    /// The cleanup in the calling process (a pod that failed to start: its invoker is told why
    /// only once nothing is left).
    pub fn run_here(mut self, host_mnt: &File) {
        back_home(host_mnt);
        // Dropped here, under `cleanup.lock`: a `gc` that waited for it finds them gone.
        self.held.clear();
        for e in self.remove() {
            eprintln!("husk stage1: {}; `husk gc` retries", e.chain());
        }
    }

    /// The cleanup process: no stdio of the invoker's (a captured stdout must not wait for it),
    /// its messages in `cleanup.log`.
    fn detached(self, host_mnt: &File, supervisor_left: OwnedFd) -> ! {
        let _ = nix::unistd::setsid();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(PodDir::new(&self.dir).cleanup_log());
        let null = File::open("/dev/null");
        if let (Ok(log), Ok(null)) = (log, null) {
            let _ = nix::unistd::dup2_stdin(&null);
            let _ = nix::unistd::dup2_stdout(&log);
            let _ = nix::unistd::dup2_stderr(&log);
        }
        // EOF once the supervisor has left the namespace (or died).
        let mut byte = [0u8; 1];
        while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(&supervisor_left, &mut byte) {}
        drop(supervisor_left);
        self.run_here(host_mnt);
        std::process::exit(0)
    }

    /// In the host's mount namespace (the netns pin lives there): the cgroups, then the networks.
    fn remove(&self) -> Vec<Fail> {
        remove(&self.dir, &self.uuid, &self.apps, &self.layout, self.net.as_deref())
    }
}

fn remove(dir: &Path, uuid: &str, apps: &[String], layout: &Layout, net: Option<&[PathBuf]>) -> Vec<Fail> {
    let mut errors = Vec::new();
    if let Err(e) = layout.remove_pod(uuid, apps) {
        errors.push(e);
    }
    if let Some(plugin_dirs) = net {
        errors.extend(cni::teardown(dir, uuid, plugin_dirs));
    }
    // A kvm pod's daemon sockets (nothing for other flavors).
    let run = crate::kvm::run_dir(uuid);
    match std::fs::remove_dir_all(&run) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            errors.push(Fail::step(Step::Pod, format!("cannot remove {}", run.display()), e))
        }
        _ => {}
    }
    errors
}

/// stage1's `gc`: [`remove`], after any cleanup still running for the pod has finished, and the
/// shared masquerade of a network this pod was the last user of. Idempotent. `apps`: the pod's
/// app names, when its manifest could be read (else its cgroup tree is walked).
pub fn collect(dir: &Path, uuid: &str, apps: &[String], layout: &Layout, net: Option<&[PathBuf]>) -> Vec<Fail> {
    let _lock = if dir.is_dir() {
        match Lock::lock_timeout(&PodDir::new(dir).cleanup_lock(), LockKind::Exclusive, Some(COLLECT_WAIT), || {}) {
            Ok(l) => Some(l),
            Err(e) => return vec![Fail::step(Step::Pod, "cannot take the pod's cleanup lock", e)],
        }
    } else {
        None
    };
    let mut errors = remove(dir, uuid, apps, layout, net);
    if net.is_some() {
        for mq in cni::masquerades_of(dir) {
            if let Err(e) = mq.remove_if_unused() {
                errors.push(e);
            }
        }
    }
    errors
}

fn back_home(host_mnt: &File) {
    if let Err(e) = nix::sched::setns(host_mnt, CloneFlags::CLONE_NEWNS) {
        eprintln!("husk stage1: cannot return to the host's mount namespace: {e}");
    }
}

fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_sys::detach::Step;
    use std::os::fd::AsRawFd;

    fn cleanup(layout: Layout, net: Option<Vec<PathBuf>>) -> Cleanup {
        Cleanup {
            dir: PathBuf::from("/var/lib/husk/pods/run/u1"),
            uuid: "u1".into(),
            apps: vec!["web".into(), "db".into()],
            kvm: false,
            layout,
            net,
            spare: false,
            lock: None,
            held: Vec::new(),
        }
    }

    #[test]
    fn a_pod_without_networks_is_cleaned_up_in_raw_steps_others_by_a_fork() {
        let host_mnt = File::open("/dev/null").unwrap();
        let (r, w) = pipe().unwrap();
        let v1 = Layout::V1(vec!["/sys/fs/cgroup/memory".into(), "/sys/fs/cgroup/pids".into()]);
        let plan = cleanup(v1.clone(), None).plan(&host_mnt, &r, &w).unwrap();
        let rmdirs: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Rmdir(p) => Some(p.to_str().unwrap().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            rmdirs,
            [
                "/sys/fs/cgroup/memory/husk/u1/web",
                "/sys/fs/cgroup/memory/husk/u1/db",
                "/sys/fs/cgroup/memory/husk/u1",
                "/sys/fs/cgroup/pids/husk/u1/web",
                "/sys/fs/cgroup/pids/husk/u1/db",
                "/sys/fs/cgroup/pids/husk/u1",
            ]
        );
        // Its own copy of the write end closed first, the wait for the supervisor, the
        // namespace left, before any removal.
        assert_eq!(
            plan.steps[..6],
            [
                Step::Close(w.as_raw_fd()),
                Step::NewSession,
                Step::NullStdio,
                Step::WaitEof(r.as_raw_fd()),
                Step::Close(r.as_raw_fd()),
                Step::JoinMountNs(host_mnt.as_raw_fd()),
            ]
        );
        assert_eq!(plan.log.to_str().unwrap(), "/var/lib/husk/pods/run/u1/cleanup.log");
        // cgroup v2: the init leaf too (a pod with private users has one).
        let v2 = cleanup(Layout::V2("/sys/fs/cgroup".into()), None).plan(&host_mnt, &r, &w).unwrap();
        assert!(v2.steps.contains(&Step::Rmdir(c"/sys/fs/cgroup/husk/u1/init".into())));
        assert_eq!(v2.steps.last(), Some(&Step::Rmdir(c"/sys/fs/cgroup/husk/u1".into())));
        // CNI networks need their plugins, a kvm pod has its own cgroups: a forked cleanup.
        assert!(cleanup(v1.clone(), Some(vec![])).plan(&host_mnt, &r, &w).is_none());
        assert!(Cleanup { kvm: true, ..cleanup(v1.clone(), None) }.plan(&host_mnt, &r, &w).is_none());
        // A pod that could have used a spare network namespace makes one, last.
        let spare = Cleanup { spare: true, ..cleanup(v1, None) }.plan(&host_mnt, &r, &w).unwrap();
        let want = husk_sys::netns::SpareDir::new(Path::new("/run/husk/spare-netns")).unwrap();
        assert_eq!(spare.steps.last(), Some(&Step::MakeSpareNetns(want)));
        assert_eq!(spare.steps.len(), plan.steps.len() + 1);
        // Held namespaces are dropped once the supervisor has gone, before the removals.
        let (a, b) = (File::open("/dev/null").unwrap(), File::open("/dev/null").unwrap());
        let mut held = cleanup(Layout::V1(vec!["/sys/fs/cgroup/memory".into()]), None);
        held.hold(vec![a.try_clone().unwrap()]);
        held.hold(vec![b.try_clone().unwrap()]);
        let (fa, fb) = (held.held[0].as_raw_fd(), held.held[1].as_raw_fd());
        let steps = held.plan(&host_mnt, &r, &w).unwrap().steps;
        assert_eq!(steps[5..8], [Step::JoinMountNs(host_mnt.as_raw_fd()), Step::Close(fa), Step::Close(fb)]);
        assert!(matches!(steps[8], Step::Rmdir(_)));
    }
}
