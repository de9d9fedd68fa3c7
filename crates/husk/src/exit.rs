//! Exit codes and the error type every command returns.
//!
//! An app's exit status passes through `husk run` unchanged; husk's own failures use the codes
//! below, in a band apps rarely use (120-125, as podman uses 125), plus the shell's 126 and 127
//! for a command that cannot be executed or found. `husk status` always tells which it was.

use std::fmt;

pub const USAGE: i32 = 120;
pub const IMAGE: i32 = 121;
pub const POD: i32 = 122;
pub const DAMAGED: i32 = 123;
pub const TIMEOUT: i32 = 124;
pub const ENGINE: i32 = 125;

/// A failure to report: the message chain, an optional hint, and the exit code.
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(code: i32, error: impl Into<anyhow::Error>) -> Self {
        Failure { code, error: error.into(), hint: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn usage(msg: impl fmt::Display) -> Self {
        Failure::new(USAGE, anyhow::anyhow!("{msg}"))
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(ENGINE, e)
    }
}

impl From<husk_image::FetchError> for Failure {
    fn from(e: husk_image::FetchError) -> Self {
        let hint = e.hint();
        let code = match &e {
            _ if e.is_disk_full() => ENGINE,
            husk_image::FetchError::Store { source, .. }
                if !matches!(
                    source,
                    husk_image::StoreError::DigestMismatch { .. } | husk_image::StoreError::SizeMismatch { .. }
                ) =>
            {
                ENGINE
            }
            _ => IMAGE,
        };
        Failure { code, error: e.into(), hint }
    }
}

impl From<husk_image::StoreError> for Failure {
    fn from(e: husk_image::StoreError) -> Self {
        use husk_image::StoreError as S;
        let (code, hint) = match &e {
            S::UnknownImage { .. } => {
                (IMAGE, Some("list images with `husk image list`, or fetch it with `husk fetch`".to_string()))
            }
            S::Ambiguous { .. } => (IMAGE, None),
            S::InUse { .. } => (IMAGE, None),
            S::LayersMissing { name, .. } => (
                IMAGE,
                Some(format!("unpack it again with `husk fetch --pull-policy=update {name}`, then check the store with `husk image verify`")),
            ),
            S::Lock(husk_sys::LockError::Timeout { .. }) => (TIMEOUT, None),
            _ if e.is_disk_full() => {
                (ENGINE, Some("the disk holding the data dir is full; free space or run `husk image gc`".into()))
            }
            _ => (ENGINE, None),
        };
        Failure { code, error: e.into(), hint }
    }
}

impl From<husk_pod::PodError> for Failure {
    fn from(e: husk_pod::PodError) -> Self {
        let hint = e.hint();
        let code = e.exit_code();
        Failure { code, error: e.into(), hint }
    }
}

/// Prints a failure as `husk: <message>: <cause>: …` and a `hint:` line.
pub fn report(f: &Failure) {
    let mut msg = f.error.to_string();
    let mut src = f.error.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(": ");
            msg.push_str(&s_text);
        }
        src = s.source();
    }
    eprintln!("husk: {msg}");
    if let Some(h) = &f.hint {
        eprintln!("hint: {h}");
    }
}
