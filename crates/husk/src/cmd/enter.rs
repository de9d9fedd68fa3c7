//! `enter`.

use std::os::unix::process::CommandExt;

use husk_pod::{Phase, PodError};

use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_enter(ctx: &Ctx, a: &EnterArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    let i = pods.info(&uuid)?;
    if i.phase != Phase::Running {
        return Err(PodError::WrongPhase {
            uuid,
            phase: i.phase.as_str().into(),
            why: "only running pods can be entered".into(),
        }
        .into());
    }
    let m = i.manifest.as_ref().expect("running pods have a manifest");
    let app = match (&a.app, m.apps.as_slice()) {
        (Some(n), _) => n.clone(),
        (None, [one]) => one.name.clone(),
        (None, many) => {
            return Err(Failure::usage(format!(
                "pod {uuid} has several apps; choose one with --app ({})",
                many.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let st =
        i.stage1.as_ref().ok_or_else(|| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} is still starting")))?;
    let pid = st
        .app_pids
        .get(&app)
        .ok_or_else(|| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no running app {app:?}")))?;
    let stage1 = ctx.stage1_path(&m.flavor)?;
    let mut cmd = std::process::Command::new(&stage1);
    cmd.arg("enter").arg(format!("--pid={pid}")).arg(format!("--app={app}")).arg("--").args(&a.cmd).current_dir(&i.dir);
    Err(PodError::Stage1 { path: stage1, source: cmd.exec() }.into())
}
