use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("failed to {action} {path}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] husk_sys::LockError),
    #[error("no pod matches {0:?}")]
    Unknown(String),
    #[error("{prefix:?} matches {count} pods ({examples}); give more of the UUID")]
    Ambiguous { prefix: String, count: usize, examples: String },
    #[error("pod {uuid} is {phase}; {why}")]
    WrongPhase { uuid: String, phase: String, why: String },
    #[error("pod {uuid} is being worked on by another husk command (a parallel rm, gc or stop)")]
    Busy { uuid: String },
    #[error("pod {uuid} cannot move from {from}/ to {to}/ (a husk bug: report it)")]
    IllegalMove { uuid: String, from: &'static str, to: &'static str },
    #[error("pod {uuid}: {why}")]
    Invalid { uuid: String, why: String },
    /// What a front end asked for cannot be a pod (a usage error: nothing was created).
    #[error("{0}")]
    Request(String),
    #[error("pod {uuid}: {why}")]
    PortTaken { uuid: String, why: String },
    #[error("private users cannot reach the pods: {dir} may not be searched by others, and the pod's root is an unprivileged user on the host")]
    PrivateUsersCannotReach { dir: PathBuf },
    #[error("pod {uuid} failed to start: {reason}")]
    StartFailed { uuid: String, reason: String },
    #[error("pod {uuid}: stage1 gc failed: {why}")]
    Stage1Gc { uuid: String, why: String },
    #[error("pod file {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("app {app:?}: {why}")]
    App { app: String, why: String },
    #[error(transparent)]
    Store(#[from] husk_image::StoreError),
    #[error("cannot run stage1 {path}")]
    Stage1 {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PodError {
    pub fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        PodError::Io { path: path.to_path_buf(), action, source }
    }
}
