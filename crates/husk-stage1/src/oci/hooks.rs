//! OCI hooks: a program run with the container's state JSON on stdin, its own argv and
//! environment, and an optional timeout (runtime-spec config.md "POSIX-platform Hooks").

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// Runs one hook; an error says which hook and why (a non-zero exit, a timeout, no program).
pub fn run(kind: &str, i: usize, hook: &Hook, state_json: &str) -> Result<(), String> {
    let path = hook.path();
    let name = format!("hooks.{kind}[{i}] ({})", path.display());
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(path);
    if let Some(argv0) = args.first() {
        cmd.arg0(argv0);
    }
    cmd.args(args.iter().skip(1)).env_clear().stdin(Stdio::piped()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
    for kv in hook.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("{name}: cannot run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine (EPIPE).
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let timeout = hook.timeout().filter(|t| *t > 0).map(|t| Duration::from_secs(t as u64));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => return Err(format!("{name}: cannot wait for it: {e}")),
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name}: timed out after {} s", timeout.unwrap_or_default().as_secs()));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name}: failed ({status})"))
    }
}

/// Runs every hook of a kind in order; the first failure stops them.
pub fn run_all(kind: &str, hooks: &Option<Vec<Hook>>, state_json: &str) -> Result<(), String> {
    for (i, h) in hooks.iter().flatten().enumerate() {
        run(kind, i, h, state_json)?;
    }
    Ok(())
}
