//! `stop`.

use husk_pod::lifecycle;

use crate::cmd::each_pod;
use crate::exit::Failure;
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_stop(ctx: &Ctx, a: &StopArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    each_pod(&pods, &a.uuids, a.uuid_file.as_deref(), |uuid| lifecycle::stop(&pods, uuid, a.force, a.timeout))
}
