//! A container's state on disk: `<root>/<id>/state.json` (written atomically), the exec fifo
//! while it is created, and a lock file that serialises the commands that change it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::Error;

/// What husk-oci keeps about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    /// The init's host pid; 0 until it exists.
    pub pid: i32,
    /// The init's start time (clock ticks after boot, /proc/PID/stat field 22): a pid reused by
    /// another process after the init died does not match.
    pub start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: DateTime<Utc>,
    /// `creating` until the init waits on the exec fifo, then `created`.
    pub phase: Phase,
    /// The container's cgroup, relative to each hierarchy's root.
    pub cgroup_path: String,
    /// The config the container was created from (hooks, resources, the process for exec).
    pub config: Spec,
    /// Every process the container ran (exec'd ones too) was created in the cgroup; a
    /// container without one (rootless, no resources) has `false` here.
    pub has_cgroup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Creating,
    Created,
}

/// The status callers see (runtime-spec `status`, plus runc's `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The state JSON of `husk-oci state` and of hooks' stdin.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: DateTime<Utc>,
    pub owner: String,
    pub annotations: BTreeMap<String, String>,
}

/// A container id: what runc accepts (letters, digits, `_`, `+`, `-`, `.`; not `.` or `..`).
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::User(format!("invalid container id {id:?}: use letters, digits, _, +, - and . only")))
    }
}

/// The state directory of one container.
pub struct Dir {
    pub path: PathBuf,
}

impl Dir {
    pub fn new(root: &Path, id: &str) -> Result<Dir, Error> {
        check_id(id)?;
        Ok(Dir { path: root.join(id) })
    }

    pub fn state_file(&self) -> PathBuf {
        self.path.join("state.json")
    }

    pub fn fifo(&self) -> PathBuf {
        self.path.join("exec.fifo")
    }

    /// Takes the container's lock (exclusive; blocking while another command holds it).
    pub fn lock(&self) -> Result<husk_sys::Lock, Error> {
        husk_sys::Lock::acquire(&self.path.join("lock"), husk_sys::LockKind::Exclusive, || {})
            .map_err(|e| Error::Sys(format!("cannot lock container state {}: {e}", self.path.display())))
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    pub fn load(&self) -> Result<Saved, Error> {
        let text = std::fs::read(self.state_file()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound
            } else {
                Error::Sys(format!("cannot read {}: {e}", self.state_file().display()))
            }
        })?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::Sys(format!(
                "{} is damaged ({e}); `husk-oci delete --force` removes it",
                self.state_file().display()
            ))
        })
    }

    pub fn save(&self, s: &Saved) -> Result<(), Error> {
        let data = serde_json::to_vec(s).map_err(|e| Error::Sys(format!("cannot encode the state: {e}")))?;
        // Runtime state: atomic through rename; meaningless after a reboot, so not fsynced
        // (runc does not either).
        husk_sys::atomic_write_volatile(&self.state_file(), &data, 0o600)
            .map_err(|e| Error::Sys(format!("cannot write {}: {e}", self.state_file().display())))
    }
}

/// (state char, start time) of a process, from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The fields after the command name (which may hold spaces and parentheses).
pub fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the saved init is alive (a zombie is not: it has exited).
pub fn init_alive(s: &Saved) -> bool {
    matches!(proc_stat(s.pid), Some((state, start)) if start == s.start_time && state != 'Z' && state != 'X')
}

/// The container's status now.
pub fn status(dir: &Dir, s: &Saved, frozen: impl FnOnce() -> bool) -> Status {
    if !init_alive(s) {
        return if s.pid == 0 && s.phase == Phase::Creating { Status::Creating } else { Status::Stopped };
    }
    if s.phase == Phase::Creating {
        return Status::Creating;
    }
    // The init holds an fd on the exec fifo until it execs: a fifo it no longer holds was left by
    // a `start` killed between releasing the init and removing the fifo.
    if dir.fifo().exists() && holds(s.pid, &dir.fifo()) != Some(false) {
        return Status::Created;
    }
    if frozen() {
        Status::Paused
    } else {
        Status::Running
    }
}

/// Whether process `pid` has an fd on `path`'s file (by device and inode); `None` when its fds
/// cannot be read (not ours to inspect).
pub fn holds(pid: i32, path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(path).ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten()
            .any(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())),
    )
}

pub fn state_json(s: &Saved, status: Status) -> StateJson {
    StateJson {
        oci_version: husk_stage1::oci::plan::OCI_VERSION_MAX.to_string(),
        id: s.id.clone(),
        pid: if status == Status::Stopped { 0 } else { s.pid },
        status,
        bundle: s.bundle.clone(),
        rootfs: s.rootfs.clone(),
        created: s.created,
        owner: String::new(),
        annotations: s.config.annotations().clone().unwrap_or_default().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_past_a_command_with_spaces_and_parentheses() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) Z"), None);
    }

    #[test]
    fn ids_are_what_runc_accepts() {
        for ok in ["a", "abc-123", "x.y_z+1", &"a".repeat(1024)] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"a".repeat(1025)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
