//! `rm`.

use crate::cmd::{each_pod, stage1_gc};
use crate::exit::Failure;
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_rm(ctx: &Ctx, a: &RmArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    each_pod(&pods, &a.uuids, a.uuid_file.as_deref(), |uuid| {
        pods.lock_pod(uuid).and_then(|pod| pods.remove_locked(pod, &|d| stage1_gc(ctx, d)))
    })
}
