//! `stop`.

use husk_pod::lifecycle;

use crate::cmd::uuids_of;
use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_stop(ctx: &Ctx, a: &StopArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let mut code = 0;
    for uuid in uuids_of(&pods, &a.uuids, a.uuid_file.as_deref())? {
        match lifecycle::stop(&pods, &uuid, a.force, a.timeout) {
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
