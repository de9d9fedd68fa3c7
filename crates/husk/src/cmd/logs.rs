//! `logs`.

use std::io::{Read, Write};
use std::time::Duration;

use husk_pod::Phase;
use husk_types::abi::PodDir;

use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

pub fn cmd_logs(ctx: &Ctx, a: &LogsArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let uuid = a.pod.resolve(&pods)?;
    let i = pods.info(&uuid)?;
    let m = i
        .manifest
        .as_ref()
        .ok_or_else(|| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no manifest yet")))?;
    if !m.stdio.is_logged() {
        return Err(Failure::new(
            exit::POD,
            anyhow::anyhow!("pod {uuid} ran in the foreground: its apps wrote to the terminal that started it"),
        )
        .hint("start pods with --detach to keep their output in `husk logs`"));
    }
    let apps: Vec<&str> = match &a.app {
        Some(n) if m.apps.iter().any(|x| &x.name == n) => vec![n.as_str()],
        Some(n) => {
            return Err(Failure::new(
                exit::POD,
                anyhow::anyhow!(
                    "pod {uuid} has no app {n:?} (apps: {})",
                    m.apps.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
        None => m.apps.iter().map(|x| x.name.as_str()).collect(),
    };
    let pd = PodDir::new(&i.dir);
    let max_files = m.log_limits.max_files.max(1);
    let prefix = apps.len() > 1;
    let print = |app: &str, buf: &[u8]| {
        let mut out = std::io::stdout().lock();
        if prefix {
            for line in buf.split_inclusive(|b| *b == b'\n') {
                let _ = write!(out, "{app}: ");
                let _ = out.write_all(line);
            }
        } else {
            let _ = out.write_all(buf);
        }
        let _ = out.flush();
    };
    // What rotation kept, oldest first; then the current file, followed while the pod runs.
    let mut current: Vec<Option<std::fs::File>> = Vec::new();
    for app in &apps {
        for g in (1..max_files).rev() {
            if let Ok(data) = std::fs::read(pd.app_log(app, g)) {
                print(app, &data);
            }
        }
        current.push(std::fs::File::open(pd.app_log(app, 0)).ok());
    }
    loop {
        let running = a.follow && pods.observe(&uuid).map(|(p, _)| p == Phase::Running).unwrap_or(false);
        for (k, app) in apps.iter().enumerate() {
            let path = pd.app_log(app, 0);
            if let Some(f) = current[k].as_mut() {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).ok();
                print(app, &buf);
            }
            // Rotated meanwhile: what we hold is now .log.1 and is read to its end; go on with
            // the new file.
            use std::os::unix::fs::MetadataExt;
            let held = current[k].as_ref().and_then(|f| f.metadata().ok()).map(|m| m.ino());
            let now = std::fs::metadata(&path).ok().map(|m| m.ino());
            if now.is_some() && held != now {
                current[k] = std::fs::File::open(&path).ok();
                if let Some(f) = current[k].as_mut() {
                    let mut buf = Vec::new();
                    f.read_to_end(&mut buf).ok();
                    print(app, &buf);
                }
            }
        }
        if !running {
            // One last read after the pod exited has been done above.
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
