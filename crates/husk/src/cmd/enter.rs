//! `enter`.

use std::os::unix::process::CommandExt;

use husk_pod::PodError;

use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_enter(ctx: &Ctx, a: &EnterArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let (uuid, i) = a.pod.running(&pods, "entered")?;
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
    cmd.arg("enter").arg(format!("--pid={pid}")).arg(format!("--app={app}"));
    // As `docker exec -it` when typed at a terminal: output redirected to a file stays
    // untouched by a terminal's line discipline.
    let tty = a.tty.unwrap_or_else(|| {
        husk_sys::tty::is_terminal(std::io::stdin()) && husk_sys::tty::is_terminal(std::io::stdout())
    });
    if tty {
        cmd.arg("--tty");
    }
    cmd.arg("--").args(&a.cmd).current_dir(&i.dir);
    Err(PodError::Stage1 { path: stage1, source: cmd.exec() }.into())
}
