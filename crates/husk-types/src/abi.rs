//! The names the stage1 ABI fixes (docs/stage1-abi.md), spelled once: the files of a pod
//! directory, the environment variables between stage0 and stage1, the stage1 executables, the
//! cgroup paths and the host-wide runtime paths. Pure path arithmetic, no I/O.

use std::path::{Path, PathBuf};

use crate::pod::Flavor;

/// Environment variables stage0 sets for stage1's `run`.
pub mod env {
    /// The fd holding the pod lock (exclusive `flock` on the pod directory).
    pub const LOCK_FD: &str = "HUSK_LOCK_FD";
    /// Detached pods only: the fd stage1 reports readiness on (`ok` / `error MESSAGE`).
    pub const READY_FD: &str = "HUSK_READY_FD";
    /// Where stage0 finds the stage1 executables (overrides husk.toml and the binary's dir).
    pub const STAGE1_DIR: &str = "HUSK_STAGE1_DIR";
}

/// The executable of a stage1 flavor: `husk-stage1-<flavor>`.
pub fn stage1_executable(flavor: &Flavor) -> String {
    format!("husk-stage1-{}", flavor.as_str())
}

/// Where the network namespaces of CNI pods are pinned: `<NETNS_DIR>/<uuid>`.
pub const NETNS_DIR: &str = "/run/husk/netns";

/// Where the `ns` flavor keeps its spare network namespaces (`husk_sys::netns`): slots `0`…,
/// and `lock`.
pub const SPARE_NETNS_DIR: &str = "/run/husk/spare-netns";

/// The host-wide registry of private-user ranges (one for every data dir).
pub const ID_RANGES_DIR: &str = "/run/husk/id-ranges";

/// The name of [`PodDir::attach_socket`]. Clients connect through `/proc/self/fd/<dir fd>/` so
/// that a long data dir never exceeds a socket path's 108 bytes.
pub const ATTACH_SOCKET: &str = "attach.sock";

/// A pod's cgroup, relative to each hierarchy's root.
pub fn pod_cgroup(uuid: &str) -> String {
    format!("husk/{uuid}")
}

/// An app's cgroup (or the pod init's, `init`), relative to each hierarchy's root.
pub fn app_cgroup(uuid: &str, app: &str) -> String {
    format!("husk/{uuid}/{app}")
}

/// The pod manifest's file name in a pod directory.
pub const MANIFEST: &str = "pod.json";

/// The files and directories of one pod directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    pub fn new(root: impl Into<PathBuf>) -> PodDir {
        PodDir { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The pod manifest, written by stage0.
    pub fn manifest(&self) -> PathBuf {
        self.root.join(MANIFEST)
    }

    /// stage1's state once the pod runs.
    pub fn stage1_state(&self) -> PathBuf {
        self.root.join("stage1.json")
    }

    /// The pid holding the pod lock while the pod is prepared or started.
    pub fn lock_holder(&self) -> PathBuf {
        self.root.join("lock-holder.pid")
    }

    /// The timeout `husk stop` asked for.
    pub fn stop_request(&self) -> PathBuf {
        self.root.join("stop.json")
    }

    /// Detached pods: stage1's own stderr.
    pub fn stage1_log(&self) -> PathBuf {
        self.root.join("stage1.log")
    }

    /// The start of an exited pod's grace period, set by `gc`.
    pub fn gc_marked(&self) -> PathBuf {
        self.root.join("gc-marked")
    }

    /// The /etc files stage1 writes for the pod (`hostname`, `hosts`, `resolv.conf`).
    pub fn etc_dir(&self) -> PathBuf {
        self.root.join("etc")
    }

    pub fn etc(&self, name: &str) -> PathBuf {
        self.etc_dir().join(name)
    }

    /// The shared mount holding every app's root (and the idmapped clones of host volumes).
    pub fn apps_dir(&self) -> PathBuf {
        self.root.join("apps")
    }

    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.apps_dir().join(app)
    }

    /// The overlay upper directory: the app's writes.
    pub fn app_upper(&self, app: &str) -> PathBuf {
        self.app_dir(app).join("upper")
    }

    pub fn app_work(&self, app: &str) -> PathBuf {
        self.app_dir(app).join("work")
    }

    /// The mount point of the app's root.
    pub fn app_rootfs(&self, app: &str) -> PathBuf {
        self.app_dir(app).join("rootfs")
    }

    /// With private users: the idmapped clones of the app's layers (`lower/0`, `lower/1`, …).
    pub fn app_lower(&self, app: &str) -> PathBuf {
        self.app_dir(app).join("lower")
    }

    /// How the app ended (`AppStatus`).
    pub fn app_status(&self, app: &str) -> PathBuf {
        self.app_dir(app).join("status.json")
    }

    /// With private users: where a host volume's idmapped clone is attached.
    pub fn idmapped_volume(&self, volume: &str) -> PathBuf {
        self.apps_dir().join(format!(".vol-{volume}"))
    }

    /// An empty volume's directory.
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    /// The socket `husk attach` connects to, served by stage1 for an attachable terminal.
    pub fn attach_socket(&self) -> PathBuf {
        self.root.join(ATTACH_SOCKET)
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `--sd-notify=app:NAME`: the directory holding the app's notify socket, bound at
    /// `/run/notify` in that app.
    pub fn notify_dir(&self) -> PathBuf {
        self.root.join("notify")
    }

    /// An app's log: generation 0 is the current file, 1 the one before, …
    pub fn app_log(&self, app: &str, generation: u32) -> PathBuf {
        match generation {
            0 => self.logs_dir().join(format!("{app}.log")),
            n => self.logs_dir().join(format!("{app}.log.{n}")),
        }
    }

    pub fn net_dir(&self) -> PathBuf {
        self.root.join("net")
    }

    /// The CNI networks joined (recorded before each ADD, with results after).
    pub fn net_state(&self) -> PathBuf {
        self.net_dir().join("state.json")
    }

    /// `net_state` once the networks were torn down (kept for `list` and `status`).
    pub fn net_released(&self) -> PathBuf {
        self.net_dir().join("released.json")
    }

    /// Held by the cleanup of an exited pod (its mount namespace, cgroups and networks), which
    /// runs detached after the supervisor returned the pod's status; `gc` waits for it.
    pub fn cleanup_lock(&self) -> PathBuf {
        self.root.join("cleanup.lock")
    }

    /// The messages of that cleanup.
    pub fn cleanup_log(&self) -> PathBuf {
        self.root.join("cleanup.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These names are the ABI: changing one breaks pods started by another husk.
    #[test]
    fn the_pod_dir_layout_is_the_documented_one() {
        let d = PodDir::new("/p");
        let cases = [
            (d.manifest(), "/p/pod.json"),
            (d.stage1_state(), "/p/stage1.json"),
            (d.lock_holder(), "/p/lock-holder.pid"),
            (d.stop_request(), "/p/stop.json"),
            (d.stage1_log(), "/p/stage1.log"),
            (d.gc_marked(), "/p/gc-marked"),
            (d.etc("hosts"), "/p/etc/hosts"),
            (d.app_upper("a"), "/p/apps/a/upper"),
            (d.app_work("a"), "/p/apps/a/work"),
            (d.app_rootfs("a"), "/p/apps/a/rootfs"),
            (d.app_lower("a"), "/p/apps/a/lower"),
            (d.app_status("a"), "/p/apps/a/status.json"),
            (d.idmapped_volume("v"), "/p/apps/.vol-v"),
            (d.volume("v"), "/p/volumes/v"),
            (d.app_log("a", 0), "/p/logs/a.log"),
            (d.app_log("a", 2), "/p/logs/a.log.2"),
            (d.net_state(), "/p/net/state.json"),
            (d.net_released(), "/p/net/released.json"),
            (d.cleanup_lock(), "/p/cleanup.lock"),
            (d.cleanup_log(), "/p/cleanup.log"),
        ];
        for (got, want) in cases {
            assert_eq!(got, Path::new(want));
        }
        assert_eq!(stage1_executable(&Flavor::Ns), "husk-stage1-ns");
        assert_eq!(app_cgroup("u", "a"), "husk/u/a");
        assert_eq!(pod_cgroup("u"), "husk/u");
    }
}
