//! One file per command. Each turns its parsed flags into calls of the libraries and prints the
//! result; shared pieces (resolving UUIDs, stage1's gc entrypoint, what list and status show) are
//! here and in [`show`]. Commands depend on [`crate::flags`]; nothing there depends on them.

pub mod attach;
pub mod cat_manifest;
pub mod enter;
pub mod fetch;
pub mod gc;
pub mod image;
pub mod list;
pub mod logs;
pub mod rm;
pub mod run;
pub mod setup;
pub mod show;
pub mod status;
pub mod stop;
pub mod trust;

use std::path::Path;

use anyhow::Context;
use husk_pod::lifecycle;
use husk_pod::{PodError, Pods};

use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

impl PodRef {
    pub fn resolve(&self, pods: &Pods) -> Result<String, Failure> {
        Ok(pods.resolve(&uuid_arg(self.uuid.as_deref(), self.uuid_file.as_deref())?)?)
    }

    /// The pod, which must be running: `what` says what only running pods can be (`entered`).
    pub fn running(&self, pods: &Pods, what: &str) -> Result<(String, husk_pod::PodInfo), Failure> {
        let uuid = self.resolve(pods)?;
        let i = pods.info(&uuid)?;
        if i.phase != husk_pod::Phase::Running {
            return Err(PodError::WrongPhase {
                uuid,
                phase: i.phase.as_str().into(),
                why: format!("only running pods can be {what}"),
            }
            .into());
        }
        Ok((uuid, i))
    }
}

pub fn uuid_arg(uuid: Option<&str>, file: Option<&Path>) -> Result<String, Failure> {
    match (uuid, file) {
        (Some(u), None) => Ok(u.to_string()),
        (None, Some(f)) => Ok(std::fs::read_to_string(f)
            .with_context(|| format!("cannot read UUID file {}", f.display()))?
            .trim()
            .to_string()),
        (Some(_), Some(_)) => Err(Failure::usage("give a UUID or --uuid-file, not both")),
        (None, None) => Err(Failure::usage("give a pod UUID (or --uuid-file)")),
    }
}

pub fn uuids_of(pods: &Pods, uuids: &[String], file: Option<&Path>) -> Result<Vec<String>, Failure> {
    let mut v = Vec::new();
    if let Some(f) = file {
        v.push(pods.resolve(&uuid_arg(None, Some(f))?)?);
    }
    for u in uuids {
        v.push(pods.resolve(u)?);
    }
    Ok(v)
}

/// stage1's `gc` entrypoint for one pod dir.
pub fn stage1_gc(ctx: &Ctx, dir: &Path) -> Result<(), PodError> {
    lifecycle::stage1_gc(&|f| ctx.stage1_path(f).ok(), dir)
}

/// Runs `op` on each pod named by `uuids` (and `file`), printing the UUID of each that
/// succeeded and reporting each failure; the exit code is the last failure's, else 0.
pub fn each_pod(
    pods: &Pods,
    uuids: &[String],
    file: Option<&Path>,
    op: impl Fn(&str) -> Result<(), PodError>,
) -> Result<i32, Failure> {
    let mut code = 0;
    for uuid in uuids_of(pods, uuids, file)? {
        match op(&uuid) {
            Ok(()) => println!("{uuid}"),
            Err(e) => {
                let f: Failure = e.into();
                exit::report(&f);
                code = f.code;
            }
        }
    }
    Ok(code)
}
