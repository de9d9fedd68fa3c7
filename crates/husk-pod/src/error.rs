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

    pub fn hint(&self) -> Option<String> {
        match self {
            PodError::Unknown(_) => Some("list pods with `husk list`".into()),
            PodError::Busy { .. } => Some("try again in a moment".into()),
            PodError::WrongPhase { phase, .. } if phase == "running" => Some("stop it first with `husk stop`".into()),
            PodError::Stage1 { .. } => {
                Some("install the stage1 binaries next to husk or set paths.stage1_dir in husk.toml".into())
            }
            PodError::Io { source, .. }
                if source.raw_os_error() == Some(libc::EPERM) || source.raw_os_error() == Some(libc::EACCES) =>
            {
                Some("pods need root: run husk as root".into())
            }
            _ => None,
        }
    }

    /// husk's exit code for this error (see the CLI's exit module).
    pub fn exit_code(&self) -> i32 {
        match self {
            PodError::Unknown(_) | PodError::Ambiguous { .. } | PodError::WrongPhase { .. } | PodError::Busy { .. } => {
                122
            }
            PodError::App { .. } | PodError::Invalid { .. } => 120,
            PodError::Lock(husk_sys::LockError::Timeout { .. }) => 124,
            PodError::Store(husk_image::StoreError::UnknownImage { .. }) => 121,
            _ => 125,
        }
    }
}
