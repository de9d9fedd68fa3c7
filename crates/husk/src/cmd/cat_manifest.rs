//! `cat-manifest`.

use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_cat_manifest(ctx: &Ctx, r: &PodRef) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = r.resolve(&pods)?;
    let i = pods.info(&uuid)?;
    let m = i.manifest.ok_or_else(|| {
        Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no manifest yet ({})", i.phase.as_str()))
    })?;
    println!("{}", serde_json::to_string_pretty(&m).unwrap());
    Ok(0)
}
