//! `rm`.

use crate::cmd::{stage1_gc, uuids_of};
use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_rm(ctx: &Ctx, a: &RmArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let mut code = 0;
    for uuid in uuids_of(&pods, &a.uuids, a.uuid_file.as_deref())? {
        let r = pods.lock_pod(&uuid).and_then(|pod| pods.remove_locked(pod, &|d| stage1_gc(ctx, d)));
        match r {
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
