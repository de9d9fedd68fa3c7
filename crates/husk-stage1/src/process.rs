//! What every flavor does to become an app, shared by `ns` (each app, and `enter`) and `fly`:
//! its standard streams, its privileges (planned by [`app_privileges`], applied by
//! [`become_app_user`]), the exec, and how its end is recorded.

use std::ffi::CString;
use std::os::fd::OwnedFd;

use husk_types::pod::{exit, App, AppStatus, Outcome, PodManifest, Stdio};
use husk_types::ByteStr;
use nix::sys::wait::WaitStatus;
use nix::unistd::{Gid, Uid};

use crate::common::{lookup_path, Context, Fail, Step};

/// A function that never returns normally (its `Ok` cannot be built): `exec` either replaces
/// the process or fails.
pub enum Never {}

pub fn status_of(ws: Option<WaitStatus>, started: Option<chrono::DateTime<chrono::Utc>>) -> AppStatus {
    let outcome = match ws {
        Some(WaitStatus::Exited(_, c)) => Outcome::Exited(c),
        Some(WaitStatus::Signaled(_, s, _)) => Outcome::Killed(s as i32),
        other => Outcome::NotStarted { code: exit::STAGE1_FAILED, reason: format!("unexpected wait status {other:?}") },
    };
    AppStatus { outcome, oom_killed: false, started, finished: chrono::Utc::now() }
}

/// The app's standard streams: the invoker's (foreground), the terminal (interactive), or, for
/// a detached pod, `/dev/null` in and the log writer's pipe (`log`) out.
/// `out`: the pipes the app's stdout and stderr go to (a detached pod's log writer, the same pipe
/// twice; `--log-prefix`'s prefixer, two pipes).
pub fn wire_stdio(m: &PodManifest, out: Option<(&OwnedFd, &OwnedFd)>) -> Result<(), Fail> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .ctx(Step::Process, || "cannot open /dev/null".into())?;
    match m.stdio {
        // A terminal replaces all three once the app is in its root (`console::take_terminal`).
        Stdio::Interactive | Stdio::Terminal { .. } | Stdio::AttachableTerminal => {}
        Stdio::Inherit | Stdio::Log => {
            nix::unistd::dup2_stdin(&null).ctx(Step::Process, || "cannot redirect stdin".into())?;
            match out {
                Some((o, e)) => {
                    nix::unistd::dup2_stdout(o).ctx(Step::Process, || "cannot redirect stdout".into())?;
                    nix::unistd::dup2_stderr(e).ctx(Step::Process, || "cannot redirect stderr".into())?;
                }
                None if m.stdio == Stdio::Log => return Err(Fail::Invalid("a detached app has no log pipe".into())),
                None => {}
            }
        }
    }
    Ok(())
}

/// What an app runs with: its ids, the capabilities it keeps (the bounding set; for a root app
/// also the permitted and effective sets), no_new_privs. A pure plan of [`app_privileges`],
/// applied by [`become_app_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The bounding set: every other capability is dropped from it.
    pub keep: caps::CapsHashSet,
    /// The effective and permitted sets (the kept ones for root, none for other users).
    pub effective: caps::CapsHashSet,
}

/// The privileges of `app`: ids checked, capability names resolved.
pub fn app_privileges(app: &App) -> Result<Privileges, Fail> {
    use std::str::FromStr;
    // stage0 refused these already; a hand-written pod.json must not get root either.
    app.user.validate(None).map_err(Fail::Invalid)?;
    let mut keep = caps::CapsHashSet::new();
    for name in &app.security.capabilities {
        keep.insert(caps::Capability::from_str(name).ctx(Step::Process, || format!("unknown capability {name}"))?);
    }
    let effective = if app.user.uid == 0 { keep.clone() } else { caps::CapsHashSet::new() };
    Ok(Privileges { uid: app.user.uid, gid: app.user.gid, groups: app.user.additional_gids.clone(), keep, effective })
}

/// setgroups/setgid/setuid, the capability sets, no_new_privs: the app's privileges, which
/// `enter` applies too.
pub fn become_app_user(app: &App) -> Result<(), Fail> {
    use caps::CapSet;
    let p = app_privileges(app)?;
    for c in caps::all().into_iter().filter(|c| !p.keep.contains(c)) {
        // One prctl a capability, not a read and a drop: dropping one already gone succeeds, and
        // EINVAL means this kernel does not know it, so no set of ours can hold it.
        let one = rustix::thread::CapabilitySet::from_bits_retain(1 << c.index());
        match rustix::thread::remove_capability_from_bounding_set(one) {
            Err(rustix::io::Errno::INVAL) => Ok(()),
            r => r,
        }
        .ctx(Step::Process, || format!("cannot drop {c} from the bounding set"))?;
    }
    let groups: Vec<Gid> = p.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).ctx(Step::Process, || "cannot set supplementary groups".into())?;
    let gid = Gid::from_raw(p.gid);
    nix::unistd::setresgid(gid, gid, gid).ctx(Step::Process, || format!("cannot set gid {}", p.gid))?;
    let uid = Uid::from_raw(p.uid);
    nix::unistd::setresuid(uid, uid, uid).ctx(Step::Process, || format!("cannot set uid {}", p.uid))?;
    // What the app really runs as must be what it asked for (and what `status` reports).
    let r = nix::unistd::getresuid().ctx(Step::Process, || "cannot read the uids".into())?;
    let g = nix::unistd::getresgid().ctx(Step::Process, || "cannot read the gids".into())?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err(Fail::Invalid(format!(
            "the app runs as uid {}/gid {}, not the {}/{} it asked for",
            r.effective, g.effective, uid, gid
        )));
    }
    if p.uid == 0 {
        // Effective first: it must stay a subset of permitted at every step; a capability this
        // host's root lacks cannot be kept.
        let have = caps::read(None, CapSet::Permitted).ctx(Step::Process, || "cannot read capabilities".into())?;
        let set: caps::CapsHashSet = p.effective.intersection(&have).copied().collect();
        caps::set(None, CapSet::Effective, &set).ctx(Step::Process, || "cannot set effective capabilities".into())?;
        caps::set(None, CapSet::Permitted, &set).ctx(Step::Process, || "cannot set permitted capabilities".into())?;
    }
    caps::clear(None, CapSet::Inheritable).ctx(Step::Process, || "cannot clear inheritable capabilities".into())?;
    let _ = caps::clear(None, CapSet::Ambient);
    nix::sys::prctl::set_no_new_privs().ctx(Step::Process, || "cannot set no_new_privs".into())?;
    Ok(())
}

/// Socket-activated fds an app gets (sd_listen_fds(3)): they are fds 3… already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub count: u32,
    /// `$LISTEN_FDNAMES`, when the activator set it.
    pub names: Option<String>,
}

impl Listen {
    /// The fds of `$LISTEN_FDS` when `$LISTEN_PID` is this process (the supervisor: `husk run`
    /// exec'd into it, or handed over to it).
    pub fn from_env() -> Option<Listen> {
        let var = |k: &str| std::env::var(k).ok();
        let count = husk_types::pod::listen_fds(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            std::process::id(),
        )?;
        Some(Listen { count, names: var("LISTEN_FDNAMES").filter(|n| !n.is_empty()) })
    }

    /// The variables the app sees: its own pid (in its PID namespace), as systemd would set.
    pub fn env(&self, pid: u32) -> Vec<(String, String)> {
        let mut v = vec![("LISTEN_FDS".to_string(), self.count.to_string()), ("LISTEN_PID".into(), pid.to_string())];
        if let Some(n) = &self.names {
            v.push(("LISTEN_FDNAMES".into(), n.clone()));
        }
        v
    }
}

/// What one exec adds to the app's own: variables (they win over the app's) and fds kept.
#[derive(Debug, Clone, Default)]
pub struct ExecExtras {
    pub env: Vec<(String, String)>,
    /// fds 3..3+N stay open across the exec.
    pub keep_fds: u32,
}

/// chdir to the working dir and exec argv with the app's environment. Never returns on success.
/// Arguments and values are bytes, passed to execve unchanged.
pub fn exec_in_root(app: &App, argv: &[ByteStr]) -> Result<Never, (i32, Fail)> {
    exec_in_root_with(app, argv, &ExecExtras::default())
}

/// [`exec_in_root`], with `extras`.
pub fn exec_in_root_with(app: &App, argv: &[ByteStr], extras: &ExecExtras) -> Result<Never, (i32, Fail)> {
    let mut env = app.environment();
    for (k, v) in &extras.env {
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), ByteStr::from(v.as_str())));
    }
    std::env::set_current_dir(&app.working_dir).map_err(|e| {
        (
            exit::STAGE1_FAILED,
            Fail::Invalid(format!("cannot enter working directory {}: {e}", app.working_dir.display())),
        )
    })?;
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.to_string_lossy())
        .unwrap_or_else(|| husk_types_default_path().to_string());
    let cmd = argv.first().ok_or((exit::STAGE1_FAILED, Fail::Invalid("empty command".into())))?;
    let Some(prog) = lookup_path(cmd.as_os_str(), &path_var) else {
        return Err((exit::NOT_FOUND, Fail::Invalid(format!("{cmd}: not found in the app's PATH ({path_var})"))));
    };
    let c = |b: Vec<u8>| {
        CString::new(b).map_err(|e| {
            let shown = String::from_utf8_lossy(&e.into_vec()).into_owned();
            (exit::STAGE1_FAILED, Fail::Invalid(format!("argument {shown:?} contains a NUL byte")))
        })
    };
    let prog_c = CString::new(prog.as_os_str().as_encoded_bytes())
        .map_err(|_| (exit::STAGE1_FAILED, Fail::Invalid("bad program path".into())))?;
    let argv_c: Vec<CString> = argv.iter().map(|a| c(a.as_bytes().to_vec())).collect::<Result<_, _>>()?;
    let env_c: Vec<CString> =
        env.iter().map(|(k, v)| c([k.as_bytes(), b"=", v.as_bytes()].concat())).collect::<Result<_, _>>()?;
    husk_sys::proc::cloexec_from(3).map_err(|e| (exit::STAGE1_FAILED, Fail::Invalid(e.to_string())))?;
    if extras.keep_fds > 0 {
        husk_sys::proc::keep_across_exec(3, extras.keep_fds).map_err(|e| {
            (exit::STAGE1_FAILED, Fail::Invalid(format!("the socket-activated fds 3..{}: {e}", 3 + extras.keep_fds)))
        })?;
    }
    // The app starts with default signal dispositions (stage1's runtime ignores SIGPIPE).
    husk_sys::proc::reset_signal_dispositions();
    // Last: from here on only execve runs under the filter.
    if let Some(policy) = &app.security.seccomp {
        let programs = crate::seccomp::compile(policy).map_err(|e| (exit::STAGE1_FAILED, e))?;
        crate::seccomp::install(&programs).map_err(|e| (exit::STAGE1_FAILED, e))?;
    }
    let e = nix::unistd::execve(&prog_c, &argv_c, &env_c).unwrap_err();
    let code = if e == nix::errno::Errno::ENOENT { exit::NOT_FOUND } else { exit::CANNOT_EXEC };
    Err((code, Fail::Invalid(format!("cannot execute {}: {e}", prog.display()))))
}

fn husk_types_default_path() -> &'static str {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_keeps_its_capabilities_others_get_none_effective() {
        let (_, mut app) = crate::plan::tests_fixture();
        app.security.capabilities = vec!["CAP_CHOWN".into(), "CAP_NET_RAW".into()];
        let p = app_privileges(&app).unwrap();
        assert_eq!(p.keep.len(), 2);
        assert_eq!(p.effective, p.keep);
        app.user.uid = 1000;
        let p = app_privileges(&app).unwrap();
        assert_eq!((p.keep.len(), p.effective.len()), (2, 0));
    }

    #[test]
    fn bad_privileges_are_refused_before_anything_changes() {
        let (_, mut app) = crate::plan::tests_fixture();
        app.security.capabilities = vec!["CAP_FLY".into()];
        assert!(app_privileges(&app).unwrap_err().chain().contains("CAP_FLY"));
        let (_, mut app) = crate::plan::tests_fixture();
        app.user.uid = husk_types::pod::INVALID_ID;
        assert!(app_privileges(&app).unwrap_err().chain().contains("-1"));
    }
}
