//! `gc`.

use crate::cmd::stage1_gc;
use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_gc(ctx: &Ctx, a: &GcArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let r = pods.gc(a.grace_period, a.expire_prepared, &|d| stage1_gc(ctx, d))?;
    for u in &r.marked {
        eprintln!("moved pod {u} to exited-garbage");
    }
    for u in &r.removed {
        eprintln!("removed pod {u}");
    }
    for (u, e) in &r.failed {
        eprintln!("husk: could not collect pod {u}: {e}");
    }
    if let Ok(store) = ctx.store() {
        let _ = store.clean_tmp();
    }
    Ok(if r.failed.is_empty() { 0 } else { exit::POD })
}
