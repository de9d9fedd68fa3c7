//! `exec`: a new process in a running container's namespaces and cgroup, with the container's
//! seccomp filter; and waiting for a process while forwarding signals to it (`run`, `exec`).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use clap::Args;
use husk_stage1::oci::cgroups;
use husk_stage1::oci::init::{self, ExecSpawn};
use husk_stage1::oci::plan::{self, Facts};
use husk_types::msg::{self, Message};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::Process;

use crate::container::{connect_console, running, write_pid_file};
use crate::{Ctx, Error};

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// The process, as a runtime-spec Process JSON file (what podman and containerd pass).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE).
    #[arg(short, long)]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Allocate a pty.
    #[arg(short, long)]
    pub tty: bool,
    /// UID[:GID]
    #[arg(short, long)]
    pub user: Option<String>,
    /// Supplementary groups.
    #[arg(short = 'g', long)]
    pub additional_gids: Vec<u32>,
    /// Add a capability (all five sets but ambient).
    #[arg(short, long)]
    pub cap: Vec<String>,
    #[arg(long)]
    pub no_new_privs: bool,
    /// Return once the process runs.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub spawn: crate::container::SpawnArgs,
    /// Accepted for runc compatibility; husk-oci does not run AppArmor or SELinux.
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long)]
    pub process_label: Option<String>,
    pub id: String,
    /// The command and its arguments (without --process).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The exec's Process: the `--process` file, or the container's own process with the command
/// line's changes.
fn process_of(a: &ExecArgs, container: &Process) -> Result<Process, Error> {
    if let Some(p) = &a.process {
        let text = std::fs::read(p).map_err(|e| Error::User(format!("cannot read --process {}: {e}", p.display())))?;
        return serde_json::from_slice(&text)
            .map_err(|e| Error::User(format!("--process {}: not a runtime-spec process: {e}", p.display())));
    }
    if a.command.is_empty() {
        return Err(Error::User("exec needs a command (or --process FILE)".into()));
    }
    let mut p = container.clone();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &a.env {
        let key = kv.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(c) = &a.cwd {
        p.set_cwd(c.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
        let bad = || Error::User(format!("--user {u:?}: give UID[:GID] as numbers"));
        let mut user = p.user().clone();
        user.set_uid(uid.parse().map_err(|_| bad())?);
        user.set_gid(gid.parse().map_err(|_| bad())?);
        p.set_user(user);
    }
    if !a.additional_gids.is_empty() {
        let mut user = p.user().clone();
        user.set_additional_gids(Some(a.additional_gids.clone()));
        p.set_user(user);
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &a.cap {
            let c: oci_spec::runtime::Capability = name
                .trim_start_matches("CAP_")
                .parse()
                .map_err(|_| Error::User(format!("--cap {name}: unknown capability")))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(c);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
            caps.set_inheritable(add(caps.inheritable()));
        }
        p.set_capabilities(Some(caps));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

pub fn exec(ctx: &Ctx, a: &ExecArgs) -> Result<i32, Error> {
    if a.apparmor.as_ref().is_some_and(|s| !s.is_empty()) || a.process_label.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(Error::User("--apparmor/--process-label: this host enables neither AppArmor nor SELinux".into()));
    }
    let (_dir, saved, cg) = running(ctx, &a.id)?;
    let container_process = saved.config.process().clone().unwrap_or_default();
    let process = process_of(a, &container_process)?;
    let facts = Facts { bundle: saved.bundle.clone(), ..Default::default() };
    let pplan = plan::process_plan(&process, "process", &facts).map_err(|e| Error::User(format!("exec: {e}")))?;
    for w in &pplan.warnings {
        ctx.log.warn(w);
    }
    let seccomp = match saved.config.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => plan::seccomp_plan(s).map_err(|e| Error::User(format!("config.json: {e}")))?,
        None => None,
    };
    // A foreground terminal without a socket: the process sends its pty master to us, and we
    // copy between it and our own stdio.
    let (console, own_console) = match (&a.spawn.console_socket, pplan.terminal) {
        (Some(p), true) => (connect_console(Some(p))?, None),
        (Some(_), false) => {
            return Err(Error::User("--console-socket was given but the process has no terminal".into()))
        }
        (None, true) if a.detach => {
            return Err(Error::User("a detached exec with a terminal needs --console-socket".into()))
        }
        (None, true) => {
            let (ours, theirs) = UnixStream::pair().map_err(|e| Error::Sys(format!("socket pair: {e}")))?;
            (Some(OwnedFd::from(theirs)), Some(ours))
        }
        (None, false) => (None, None),
    };
    let (mine, theirs) = UnixStream::pair().map_err(|e| Error::Sys(format!("cannot create a socket pair: {e}")))?;
    if !a.detach {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::Sys(format!("cannot become a subreaper: {e}")))?;
    }
    let helper = match husk_sys::proc::fork().map_err(|e| Error::Sys(format!("cannot fork: {e}")))? {
        husk_sys::proc::ForkResult::Child => {
            drop(mine);
            drop(own_console);
            let code = init::exec_helper(ExecSpawn {
                process: &pplan,
                seccomp: seccomp.as_ref(),
                init_pid: saved.pid,
                chan: theirs,
                console,
                preserve_fds: a.spawn.preserve_fds,
            });
            std::process::exit(code);
        }
        husk_sys::proc::ForkResult::Parent { child } => child.as_raw(),
    };
    drop(theirs);
    drop(console);
    let fail = |e: Error| {
        let _ = husk_sys::proc::kill_raw(helper, libc::SIGKILL);
        let _ = waitpid(Pid::from_raw(helper), None);
        e
    };
    if saved.has_cgroup {
        cgroups::join(&cg, &saved.cgroup_path, helper)
            .map_err(|e| fail(Error::Sys(format!("cannot put the process in the container's cgroup: {e}"))))?;
    }
    let mut w = &mine;
    msg::send(&mut w, &Message::Go).map_err(|e| fail(Error::Sys(format!("talking to the helper: {e}"))))?;
    let mut r = std::io::BufReader::new(&mine);
    let first = msg::expect(&mut r, &["spawned", "failed"]);
    let _ = waitpid(Pid::from_raw(helper), None);
    let pid = match first {
        Ok(Message::Spawned { pid }) => pid,
        Ok(Message::Failed { reason }) => return Err(Error::Sys(reason)),
        Ok(_) => unreachable!("expect returns only the messages asked for"),
        Err(e) => return Err(Error::Sys(format!("exec in {}: {e}", a.id))),
    };
    // The process's end closes when it execs (close-on-exec): a message first is a failure.
    match msg::recv(&mut r) {
        Ok(None) => {}
        Ok(Some(Message::Failed { reason })) => {
            let _ = waitpid(Pid::from_raw(pid), None);
            return Err(Error::Sys(reason));
        }
        Ok(Some(m)) => return Err(Error::Sys(format!("exec: unexpected message {}", m.name()))),
        Err(e) => return Err(Error::Sys(format!("exec in {}: {e}", a.id))),
    }
    if let Some(pf) = &a.spawn.pid_file {
        write_pid_file(pf, pid)?;
    }
    if a.detach {
        return Ok(0);
    }
    if let Some(sock) = own_console {
        relay_console(&sock)?;
    }
    Ok(wait_forwarding(pid))
}

/// Receives the pty master a process sends to our end of its console socket, and copies
/// between it and our own stdio until the process's side closes (`run -t`, `exec -t` without
/// `--console-socket`).
pub fn relay_console(sock: &UnixStream) -> Result<(), Error> {
    let master = husk_sys::tty::recv_fd(sock)
        .map_err(|e| Error::Sys(format!("cannot receive the pty: {e}")))?
        .ok_or_else(|| Error::Sys("the process sent no pty".into()))?;
    let mut far = husk_sys::tty::Master(master);
    if let Some(ws) = husk_sys::tty::winsize(std::io::stdin()) {
        let _ = husk_sys::tty::Far::resize(&mut far, ws.ws_row, ws.ws_col);
    }
    let _ = husk_sys::tty::relay(&mut far, true, &mut None);
    Ok(())
}

/// Waits for `pid` (a child, or re-parented to this subreaper), forwarding the usual signals
/// to it; reaps any other re-parented process meanwhile. Returns its exit status as a shell
/// shows it (128 + signal for a killed one).
pub fn wait_forwarding(pid: i32) -> i32 {
    let forwarded = [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ];
    let mut set = SigSet::empty();
    for s in forwarded {
        set.add(s);
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
    let target = Pid::from_raw(pid);
    loop {
        // Reap whatever has exited; the target's status ends the wait.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == target => return code,
                Ok(WaitStatus::Signaled(p, sig, _)) if p == target => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        if crate::state::proc_stat(pid).is_none() {
            // Not ours to reap (no subreaper): it is gone, its status unknown.
            return 255;
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = husk_sys::proc::kill_raw(pid, sig as i32);
            }
            Err(_) => {}
        }
    }
}
