//! The container commands: create, start, run, state, kill, delete, ps, pause/resume, update,
//! features, spec, list.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::Args;
use husk_stage1::oci::cgroups::{self, Cgroups};
use husk_stage1::oci::init::{self, Spawn};
use husk_stage1::oci::plan::{self, Facts, SpecError};
use husk_types::msg::{self, Message};
use oci_spec::runtime::{LinuxResources, Spec};

use crate::state::{self, Dir, Phase, Saved, Status};
use crate::{Ctx, Error};

/// What `create` and `exec` share: where the new process's pid, pty and fds go.
#[derive(Args, Debug, Clone)]
pub struct SpawnArgs {
    /// Write the new process's pid here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A unix socket that receives the pty master (with a terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Pass fds 3..3+N on to the process.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The bundle directory (holding config.json); default: the current directory.
    #[arg(short, long)]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub spawn: SpawnArgs,
    /// Move the root over / and chroot, instead of pivot_root.
    #[arg(long)]
    pub no_pivot: bool,
    /// Keep the caller's session keyring instead of creating one for the container.
    #[arg(long)]
    pub no_new_keyring: bool,
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the container runs, instead of waiting for it.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits (for `state` and `delete`).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// LinuxResources JSON from a file, or `-` for stdin.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    #[arg(long)]
    pub memory: Option<i64>,
    #[arg(long)]
    pub memory_swap: Option<i64>,
    #[arg(long)]
    pub memory_reservation: Option<i64>,
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    #[arg(long)]
    pub pids_limit: Option<i64>,
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    pub id: String,
}

fn spec_error(e: SpecError) -> Error {
    Error::User(format!("config.json: {e}"))
}

fn sys(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Sys(format!("{what}: {e}"))
}

/// Opens a container's state: missing is runc's "container does not exist".
fn open(ctx: &Ctx, id: &str) -> Result<(Dir, Saved), Error> {
    let dir = Dir::new(&ctx.root, id)?;
    if !dir.exists() {
        return Err(Error::NotFound);
    }
    let saved = dir.load()?;
    Ok((dir, saved))
}

fn detect_cgroups() -> Result<Cgroups, Error> {
    Cgroups::detect().map_err(sys("cannot read the host's cgroups"))
}

fn status_of(dir: &Dir, s: &Saved, cg: Option<&Cgroups>) -> Status {
    state::status(dir, s, || s.has_cgroup && cg.is_some_and(|cg| cgroups::frozen(cg, &s.cgroup_path)))
}

/// config.json, typed and raw (for the fields oci-spec does not model).
fn load_spec(bundle: &Path) -> Result<(Spec, serde_json::Value), Error> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| {
        Error::User(format!("cannot read {}: {e} (is --bundle the directory holding config.json?)", path.display()))
    })?;
    let bad = |e: serde_json::Error| Error::User(format!("{} is not a valid OCI config: {e}", path.display()));
    let raw: serde_json::Value = serde_json::from_slice(&text).map_err(bad)?;
    let spec = serde_json::from_value(raw.clone()).map_err(bad)?;
    Ok((spec, raw))
}

/// `mounts[i].uidMappings`/`gidMappings` from the raw config (runtime-spec 1.2 fields that
/// oci-spec's `Mount` does not model), as id map texts.
fn mount_idmaps(raw: &serde_json::Value) -> Result<BTreeMap<usize, (String, String)>, Error> {
    let mut out = BTreeMap::new();
    for (i, m) in raw["mounts"].as_array().into_iter().flatten().enumerate() {
        let map = |key: &str| -> Result<Option<String>, Error> {
            let Some(list) = m.get(key) else { return Ok(None) };
            let bad =
                || Error::User(format!("config.json: mounts[{i}].{key}: not a list of {{containerID, hostID, size}}"));
            let mut text = String::new();
            for r in list.as_array().ok_or_else(bad)? {
                let n = |k: &str| r.get(k).and_then(|v| v.as_u64()).filter(|v| *v <= u32::MAX as u64).ok_or_else(bad);
                let (c, h, sz) = (n("containerID")?, n("hostID")?, n("size")?);
                if sz == 0 {
                    return Err(Error::User(format!("config.json: mounts[{i}].{key}: a size must not be 0")));
                }
                text.push_str(&format!("{c} {h} {sz}\n"));
            }
            Ok(Some(text))
        };
        match (map("uidMappings")?, map("gidMappings")?) {
            (None, None) => {}
            (Some(u), Some(g)) if !u.is_empty() && !g.is_empty() => {
                out.insert(i, (u, g));
            }
            _ => {
                return Err(Error::User(format!(
                    "config.json: mounts[{i}]: an idmapped mount needs both uidMappings and gidMappings"
                )))
            }
        }
    }
    Ok(out)
}

/// What the planner needs from the host: bind sources, cgroup hierarchies, LSMs.
fn facts(spec: &Spec, bundle: &Path, cg: &Cgroups, cgroup_path: &str) -> Facts {
    let mut sources = BTreeMap::new();
    for m in spec.mounts().iter().flatten() {
        if let Some(src) = m.source() {
            let src = if src.is_absolute() { src.clone() } else { bundle.join(src) };
            if let Ok(md) = std::fs::metadata(&src) {
                sources.insert(src, md.is_dir());
            }
        }
    }
    // A namespace path that names this process's own namespace is the host's.
    let mut host_namespaces = std::collections::BTreeSet::new();
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default() {
        use std::os::unix::fs::MetadataExt;
        let Some(path) = ns.path() else { continue };
        let name = plan::ns_name(plan::ns_flag(ns.typ()));
        let (Ok(theirs), Ok(mine)) = (std::fs::metadata(path), std::fs::metadata(format!("/proc/self/ns/{name}")))
        else {
            continue;
        };
        if theirs.ino() == mine.ino() && theirs.dev() == mine.dev() {
            host_namespaces.insert(path.clone());
        }
    }
    Facts {
        bundle: bundle.to_path_buf(),
        sources,
        host_namespaces,
        mount_idmaps: BTreeMap::new(),
        cgroups: cg.named_dirs(cgroup_path),
        cgroup_v2_only: cg.v2_only(),
        apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y"),
        selinux: Path::new("/sys/fs/selinux/enforce").exists(),
    }
}

/// The systemd check of `--systemd-cgroup`: husk-oci writes systemd's cgroup layout itself,
/// which is only meaningful (and only safe from systemd's own cleanup) under systemd.
fn check_systemd(ctx: &Ctx) -> Result<(), Error> {
    if ctx.systemd_cgroup && !Path::new("/run/systemd/system").is_dir() {
        return Err(Error::User(
            "--systemd-cgroup needs systemd as PID 1 (/run/systemd/system is missing); drop the flag to use \
             cgroupfs paths"
                .into(),
        ));
    }
    Ok(())
}

/// Everything `create` made, undone in reverse on failure.
struct Undo<'a> {
    dir: &'a Dir,
    cg: Option<(&'a Cgroups, String)>,
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for pid in &self.pids {
            let _ = husk_sys::proc::kill_raw(*pid, libc::SIGKILL);
        }
        if let Some((cg, path)) = &self.cg {
            if let Ok(pids) = cgroups::pids(cg, path) {
                for p in pids {
                    let _ = husk_sys::proc::kill_raw(p, libc::SIGKILL);
                }
            }
            let _ = cgroups::remove(cg, path);
        }
        let _ = std::fs::remove_dir_all(&self.dir.path);
    }
}

/// The result of a successful create: the init's pid, and for a foreground `run` with a
/// terminal and no console socket, our end of the socket the init sends its pty master to.
pub struct Created {
    pub pid: i32,
    pub own_console: Option<UnixStream>,
}

pub fn create(ctx: &Ctx, a: &CreateArgs) -> Result<Created, Error> {
    create_with(ctx, a, false)
}

/// `create`; `reap`: this process waits for the init itself (`run`): it becomes a child
/// subreaper so that the init, orphaned by its helper, is re-parented here.
fn create_with(ctx: &Ctx, a: &CreateArgs, reap: bool) -> Result<Created, Error> {
    check_systemd(ctx)?;
    let bundle = match &a.bundle {
        Some(b) => std::fs::canonicalize(b).map_err(|e| Error::User(format!("bundle {}: {e}", b.display())))?,
        None => std::env::current_dir().map_err(sys("cannot read the current directory"))?,
    };
    let (spec, raw) = load_spec(&bundle)?;
    let dir = Dir::new(&ctx.root, &a.id)?;
    let cg = detect_cgroups()?;
    let cgroup_path = cgroups::cgroup_path(
        spec.linux().as_ref().and_then(|l| l.cgroups_path().as_deref()),
        &a.id,
        ctx.systemd_cgroup,
    )
    .map_err(spec_error)?;
    let mut facts = facts(&spec, &bundle, &cg, &cgroup_path);
    facts.mount_idmaps = mount_idmaps(&raw)?;
    let p = plan::plan(&spec, &facts).map_err(spec_error)?;
    for w in &p.process.warnings {
        ctx.log.warn(w);
    }
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone()).unwrap_or_default();
    let nodes = spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
    let writes = cgroups::resource_writes(&cg, &cgroup_path, &resources, &nodes).map_err(spec_error)?;
    let device_program = cgroups::device_program(&cg, &cgroup_path, &resources, &nodes).map_err(spec_error)?;
    // A foreground `run` relays a terminal itself, as runc's does.
    let relay_tty = p.process.terminal && a.spawn.console_socket.is_none() && reap;
    if p.process.terminal && a.spawn.console_socket.is_none() && !relay_tty {
        return Err(Error::User("process.terminal is set: pass --console-socket to receive the pty".into()));
    }
    if !p.process.terminal && a.spawn.console_socket.is_some() {
        return Err(Error::User("--console-socket was given but process.terminal is not set".into()));
    }

    // Root's alone, as runc's state: the exec fifo inside is writable by the init whatever its
    // uid (it reopens it through an fd, never by path).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ctx.root)
        .map_err(sys(format!("cannot create --root {}", ctx.root.display())))?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::User(format!("container with id exists: {}", a.id)))
        }
        Err(e) => return Err(Error::Sys(format!("cannot create {}: {e}", dir.path.display()))),
    }
    let lock = dir.lock()?;
    let mut undo = Undo { dir: &dir, cg: None, pids: Vec::new(), armed: true };
    let mut saved = Saved {
        id: a.id.clone(),
        pid: 0,
        start_time: 0,
        bundle: bundle.clone(),
        rootfs: p.rootfs.clone(),
        created: chrono::Utc::now(),
        phase: Phase::Creating,
        cgroup_path: cgroup_path.clone(),
        config: spec.clone(),
        has_cgroup: true,
    };
    dir.save(&saved)?;
    undo.cg = Some((&cg, cgroup_path.clone()));
    let enable = cgroups::v2_controllers_needed(&cg, &writes);
    if let Err(e) = cgroups::create(&cg, &cgroup_path, enable.as_ref()) {
        if ctx.rootless && writes.is_empty() {
            ctx.log.warn(&format!("running without a cgroup: {e}"));
            saved.has_cgroup = false;
            undo.cg = None;
        } else {
            return Err(Error::Sys(format!("{e}")));
        }
    }
    for w in cgroups::apply(&writes).map_err(spec_error)? {
        ctx.log.warn(&w);
    }
    if let (Some((dir, program)), true) = (&device_program, saved.has_cgroup) {
        let fd = husk_sys::resolve::open_dir(dir).map_err(sys(format!("cannot open cgroup {}", dir.display())))?;
        husk_sys::bpf::attach_device_program(&fd, program).map_err(|e| {
            Error::Sys(format!("linux.resources.devices: cannot attach the device filter to {}: {e}", dir.display()))
        })?;
    }
    nix::unistd::mkfifo(&dir.fifo(), nix::sys::stat::Mode::from_bits_truncate(0o622))
        .map_err(|e| Error::Sys(format!("cannot create {}: {e}", dir.fifo().display())))?;
    // Writable by the init whatever its uid (a user namespace's root is not the host's); the
    // umask applied to mkfifo.
    std::fs::set_permissions(dir.fifo(), std::os::unix::fs::PermissionsExt::from_mode(0o622))
        .map_err(sys(format!("cannot chmod {}", dir.fifo().display())))?;
    let fifo =
        rustix::fs::open(dir.fifo(), rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC, rustix::fs::Mode::empty())
            .map_err(|e| Error::Sys(format!("cannot open {}: {e}", dir.fifo().display())))?;
    let (console, own_console) = if relay_tty {
        let (ours, theirs) = UnixStream::pair().map_err(sys("cannot create a socket pair"))?;
        (Some(OwnedFd::from(theirs)), Some(ours))
    } else {
        (connect_console(a.spawn.console_socket.as_deref())?, None)
    };
    let (mine, theirs) = UnixStream::pair().map_err(sys("cannot create a socket pair"))?;
    if reap {
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::Sys(format!("cannot become a subreaper: {e}")))?;
    }
    let hooks = spec.hooks().clone().unwrap_or_default();
    let helper = match husk_sys::proc::fork().map_err(sys("cannot fork"))? {
        husk_sys::proc::ForkResult::Child => {
            // The state lock and our end of the socket stay with husk-oci (the init must not
            // hold the lock while it waits for `start`).
            drop(lock);
            drop(mine);
            drop(own_console);
            let code = init::helper(Spawn {
                plan: &p,
                create_container: hooks.create_container().clone(),
                start_container: hooks.start_container().clone(),
                chan: theirs,
                fifo,
                console,
                preserve_fds: a.spawn.preserve_fds,
                no_pivot: a.no_pivot,
                keyring: (!a.no_new_keyring).then(|| std::ffi::CString::new(a.id.clone()).unwrap_or_default()),
            });
            std::process::exit(code);
        }
        husk_sys::proc::ForkResult::Parent { child } => child.as_raw(),
    };
    drop(theirs);
    drop(console);
    undo.pids.push(helper);
    let talk = |m: &Message| {
        let mut w = &mine;
        msg::send(&mut w, m).map_err(|e| Error::Sys(format!("talking to the container's init: {e}")))
    };
    let mut reader = std::io::BufReader::new(&mine);
    let mut hear = |what: &[&str]| -> Result<Message, Error> {
        match msg::expect(&mut reader, &[what, &["failed"]].concat()) {
            Ok(Message::Failed { reason }) => Err(Error::Sys(reason)),
            Ok(m) => Ok(m),
            Err(e) => Err(Error::Sys(format!("the container's init: {e}"))),
        }
    };
    if saved.has_cgroup {
        cgroups::join(&cg, &cgroup_path, helper).map_err(sys("cannot put the container in its cgroup"))?;
    }
    talk(&Message::Go)?;
    let spawned = hear(&["spawned"]);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(helper), None);
    let Message::Spawned { pid } = spawned? else { unreachable!("expect returns only the messages asked for") };
    undo.pids.push(pid);
    let (_, start_time) =
        state::proc_stat(pid).ok_or_else(|| Error::Sys("the container's init died at once".into()))?;
    saved.pid = pid;
    saved.start_time = start_time;
    dir.save(&saved)?;
    talk(&Message::Go)?;
    hear(&["mounted"])?;
    let state_json = serde_json::to_string(&state::state_json(&saved, Status::Creating)).unwrap_or_default();
    husk_stage1::oci::hooks::run_all("prestart", hooks.prestart(), &state_json).map_err(Error::Sys)?;
    husk_stage1::oci::hooks::run_all("createRuntime", hooks.create_runtime(), &state_json).map_err(Error::Sys)?;
    talk(&Message::Continue { state: state_json })?;
    hear(&["ready"])?;
    saved.phase = Phase::Created;
    dir.save(&saved)?;
    if let Some(pf) = &a.spawn.pid_file {
        write_pid_file(pf, pid)?;
    }
    undo.armed = false;
    ctx.log.debug(&format!("created {} (init {pid})", a.id));
    Ok(Created { pid, own_console })
}

pub fn write_pid_file(path: &Path, pid: i32) -> Result<(), Error> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(sys("cannot read the current directory"))?.join(path)
    };
    husk_sys::atomic_write_volatile(&path, pid.to_string().as_bytes(), 0o644)
        .map_err(sys(format!("cannot write --pid-file {}", path.display())))
}

pub fn connect_console(path: Option<&Path>) -> Result<Option<OwnedFd>, Error> {
    let Some(p) = path else { return Ok(None) };
    let s = UnixStream::connect(p)
        .map_err(|e| Error::User(format!("cannot connect to --console-socket {}: {e}", p.display())))?;
    Ok(Some(OwnedFd::from(s)))
}

pub fn start(ctx: &Ctx, id: &str) -> Result<(), Error> {
    let (dir, saved) = open(ctx, id)?;
    let _lock = dir.lock()?;
    let cg = detect_cgroups()?;
    match status_of(&dir, &saved, Some(&cg)) {
        Status::Created => {}
        Status::Stopped => return Err(Error::User(format!("cannot start a container that has stopped: {id}"))),
        s => return Err(Error::User(format!("cannot start container {id}: it is {}, not created", s.as_str()))),
    }
    // Opening the read end releases the init's blocking open of the write end; it then writes
    // one byte and execs.
    let fifo = rustix::fs::open(
        dir.fifo(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::Sys(format!("cannot open {}: {e}", dir.fifo().display())))?;
    let mut got = [0u8; 1];
    let mut not_held: Option<std::time::Instant> = None;
    loop {
        match rustix::io::read(&fifo, &mut got) {
            Ok(1) => break,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(10u8));
            }
            // No writer (yet): the init opens the fifo right after it reported ready. It must still
            // be alive and hold the fifo, else it will never write.
            Ok(_) => {
                if !state::init_alive(&saved) {
                    return Err(Error::Sys(format!("the init of container {id} exited before it was started")));
                }
                // Not holding it: either another start consumed the byte and the init exec'd, or
                // the init has not opened it yet (a busy machine). Only the first lasts.
                if state::holds(saved.pid, &dir.fifo()) == Some(false) {
                    let since = *not_held.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > std::time::Duration::from_secs(2) {
                        let _ = std::fs::remove_file(dir.fifo());
                        return Err(Error::User(format!("cannot start container {id}: it was started already")));
                    }
                } else {
                    not_held = None;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(Error::Sys(format!("cannot read {}: {e}", dir.fifo().display()))),
        }
    }
    let _ = std::fs::remove_file(dir.fifo());
    let hooks = saved.config.hooks().clone().unwrap_or_default();
    let st = serde_json::to_string(&state::state_json(&saved, Status::Running)).unwrap_or_default();
    // Poststart hooks that fail are warnings: the container runs already (runtime-spec).
    if let Err(e) = husk_stage1::oci::hooks::run_all("poststart", hooks.poststart(), &st) {
        ctx.log.warn(&e);
    }
    Ok(())
}

pub fn run(ctx: &Ctx, a: &RunArgs) -> Result<i32, Error> {
    let created = create_with(ctx, &a.create, !a.detach)?;
    if let Err(e) = start(ctx, &a.create.id) {
        let _ = delete(ctx, &a.create.id, true);
        return Err(e);
    }
    if a.detach {
        return Ok(0);
    }
    if let Some(sock) = created.own_console {
        crate::exec::relay_console(&sock)?;
    }
    let code = crate::exec::wait_forwarding(created.pid);
    if !a.keep {
        delete(ctx, &a.create.id, true)?;
    }
    Ok(code)
}

pub fn state(ctx: &Ctx, id: &str) -> Result<(), Error> {
    let (dir, saved) = open(ctx, id)?;
    let cg = Cgroups::detect().ok();
    let st = state::state_json(&saved, status_of(&dir, &saved, cg.as_ref()));
    println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
    Ok(())
}

/// A signal by number, or by name with or without SIG (`9`, `KILL`, `SIGKILL`, `sigkill`).
pub fn parse_signal(s: &str) -> Result<i32, Error> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    if let Some(rest) = name.strip_prefix("SIGRTMIN") {
        let off: i32 = if rest.is_empty() { 0 } else { rest.trim_start_matches('+').parse().unwrap_or(-1) };
        let n = libc::SIGRTMIN() + off;
        if off >= 0 && n <= libc::SIGRTMAX() {
            return Ok(n);
        }
    }
    <nix::sys::signal::Signal as std::str::FromStr>::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| Error::User(format!("unknown signal {s:?} (give a number or a name such as TERM or SIGKILL)")))
}

pub fn kill(ctx: &Ctx, id: &str, signal: &str, all: bool) -> Result<(), Error> {
    let sig = parse_signal(signal)?;
    let (dir, saved) = open(ctx, id)?;
    let cg = detect_cgroups()?;
    let status = status_of(&dir, &saved, Some(&cg));
    if all && saved.has_cgroup {
        let pids = cgroups::pids(&cg, &saved.cgroup_path).unwrap_or_default();
        if pids.is_empty() && status == Status::Stopped {
            return Err(Error::User("container not running".into()));
        }
        for p in pids {
            let _ = husk_sys::proc::kill_raw(p, sig);
        }
        return Ok(());
    }
    if status == Status::Stopped {
        return Err(Error::User("container not running".into()));
    }
    husk_sys::proc::kill_raw(saved.pid, sig).map_err(sys(format!("cannot signal container {id}")))
}

/// Kills everything in the container and waits (up to 10 s) for it to be gone.
fn kill_all(cg: &Cgroups, saved: &Saved) {
    let mut pids = if saved.has_cgroup { cgroups::pids(cg, &saved.cgroup_path).unwrap_or_default() } else { vec![] };
    if state::init_alive(saved) && !pids.contains(&saved.pid) {
        pids.push(saved.pid);
    }
    if saved.has_cgroup && cgroups::frozen(cg, &saved.cgroup_path) {
        for p in &pids {
            let _ = husk_sys::proc::kill_raw(*p, libc::SIGKILL);
        }
        let _ = cgroups::freeze(cg, &saved.cgroup_path, false);
    }
    for _ in 0..1000 {
        let alive: Vec<i32> = if saved.has_cgroup {
            cgroups::pids(cg, &saved.cgroup_path).unwrap_or_default()
        } else {
            pids.iter().copied().filter(|p| state::proc_stat(*p).is_some_and(|(s, _)| s != 'Z')).collect()
        };
        let init_left = state::init_alive(saved);
        if alive.is_empty() && !init_left {
            return;
        }
        for p in alive {
            let _ = husk_sys::proc::kill_raw(p, libc::SIGKILL);
        }
        if init_left {
            let _ = husk_sys::proc::kill_raw(saved.pid, libc::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn delete(ctx: &Ctx, id: &str, force: bool) -> Result<(), Error> {
    let dir = Dir::new(&ctx.root, id)?;
    if !dir.exists() {
        // runc's rule: forcing the delete of what is gone already is done.
        return if force { Ok(()) } else { Err(Error::NotFound) };
    }
    let _lock = match dir.lock() {
        Ok(l) => l,
        // Another delete removed it while this one waited for the lock.
        Err(_) if !dir.exists() => return if force { Ok(()) } else { Err(Error::NotFound) },
        Err(e) => return Err(e),
    };
    if !dir.state_file().exists() && !dir.exists() {
        return if force { Ok(()) } else { Err(Error::NotFound) };
    }
    let cg = detect_cgroups()?;
    let saved = match dir.load() {
        Ok(s) => s,
        // A create killed before it wrote any state: nothing but the directory to remove.
        Err(Error::NotFound) => {
            std::fs::remove_dir_all(&dir.path).map_err(sys(format!("cannot remove {}", dir.path.display())))?;
            return Ok(());
        }
        Err(e) if force => {
            ctx.log.warn(&format!("{e}; removing the state anyway"));
            std::fs::remove_dir_all(&dir.path).map_err(sys(format!("cannot remove {}", dir.path.display())))?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let status = status_of(&dir, &saved, Some(&cg));
    match status {
        Status::Stopped | Status::Created => {}
        // A create that died (killed) part way: its init may still wait on the socket.
        Status::Creating if force => {}
        s if force => ctx.log.debug(&format!("killing {} container {id}", s.as_str())),
        s => {
            return Err(Error::User(format!(
                "cannot delete container {id} that is not stopped: {} (stop it, or use delete --force)",
                s.as_str()
            )))
        }
    }
    kill_all(&cg, &saved);
    if saved.has_cgroup {
        cgroups::remove(&cg, &saved.cgroup_path).map_err(sys("cannot remove the container's cgroup"))?;
    }
    let hooks = saved.config.hooks().clone().unwrap_or_default();
    let st = serde_json::to_string(&state::state_json(&saved, Status::Stopped)).unwrap_or_default();
    if let Err(e) = husk_stage1::oci::hooks::run_all("poststop", hooks.poststop(), &st) {
        ctx.log.warn(&e);
    }
    std::fs::remove_dir_all(&dir.path).map_err(sys(format!("cannot remove {}", dir.path.display())))
}

pub fn ps(ctx: &Ctx, id: &str, format: &str, ps_args: &[String]) -> Result<(), Error> {
    let (_, saved) = open(ctx, id)?;
    let cg = detect_cgroups()?;
    let pids = if saved.has_cgroup {
        cgroups::pids(&cg, &saved.cgroup_path).map_err(sys("cannot read the container's processes"))?
    } else if state::init_alive(&saved) {
        vec![saved.pid]
    } else {
        vec![]
    };
    match format {
        "json" => {
            println!("{}", serde_json::to_string(&pids).unwrap_or_default());
            Ok(())
        }
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() { vec!["-ef".into()] } else { ps_args.to_vec() };
            let out = std::process::Command::new("ps").args(&args).output().map_err(sys("cannot run ps(1)"))?;
            if !out.status.success() {
                return Err(Error::User(format!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or("");
            let col = header
                .split_whitespace()
                .position(|c| c == "PID")
                .ok_or_else(|| Error::User(format!("ps {} printed no PID column", args.join(" "))))?;
            println!("{header}");
            for l in lines {
                if l.split_whitespace().nth(col).and_then(|p| p.parse::<i32>().ok()).is_some_and(|p| pids.contains(&p))
                {
                    println!("{l}");
                }
            }
            Ok(())
        }
        other => Err(Error::User(format!("--format {other:?}: use table or json"))),
    }
}

pub fn pause(ctx: &Ctx, id: &str, freeze: bool) -> Result<(), Error> {
    let (dir, saved) = open(ctx, id)?;
    let _lock = dir.lock()?;
    let cg = detect_cgroups()?;
    let status = status_of(&dir, &saved, Some(&cg));
    match (freeze, status) {
        (true, Status::Running | Status::Created) | (false, Status::Paused) => {}
        (true, s) => return Err(Error::User(format!("cannot pause container {id}: it is {}", s.as_str()))),
        (false, s) => {
            return Err(Error::User(format!("cannot resume container {id}: it is {}, not paused", s.as_str())))
        }
    }
    if !saved.has_cgroup {
        return Err(Error::User(format!("container {id} has no cgroup, so it cannot be frozen")));
    }
    cgroups::freeze(&cg, &saved.cgroup_path, freeze).map_err(sys(format!("cannot freeze container {id}")))
}

/// The resources of `update`: a LinuxResources JSON, or runc's single-value flags.
fn update_resources(a: &UpdateArgs) -> Result<LinuxResources, Error> {
    if let Some(path) = &a.resources {
        let mut text = Vec::new();
        if path.as_os_str() == "-" {
            std::io::stdin().read_to_end(&mut text).map_err(sys("cannot read the resources from stdin"))?;
        } else {
            text = std::fs::read(path).map_err(|e| Error::User(format!("cannot read {}: {e}", path.display())))?;
        }
        return serde_json::from_slice(&text)
            .map_err(|e| Error::User(format!("--resources: not a LinuxResources JSON object: {e}")));
    }
    let mut v = serde_json::json!({});
    let mut set = |section: &str, key: &str, value: serde_json::Value| {
        v[section][key] = value;
    };
    if let Some(m) = a.memory {
        set("memory", "limit", m.into());
    }
    if let Some(m) = a.memory_swap {
        set("memory", "swap", m.into());
    }
    if let Some(m) = a.memory_reservation {
        set("memory", "reservation", m.into());
    }
    if let Some(c) = a.cpu_shares {
        set("cpu", "shares", c.into());
    }
    if let Some(c) = a.cpu_quota {
        set("cpu", "quota", c.into());
    }
    if let Some(c) = a.cpu_period {
        set("cpu", "period", c.into());
    }
    if let Some(c) = &a.cpuset_cpus {
        set("cpu", "cpus", c.clone().into());
    }
    if let Some(c) = &a.cpuset_mems {
        set("cpu", "mems", c.clone().into());
    }
    if let Some(p) = a.pids_limit {
        set("pids", "limit", p.into());
    }
    if let Some(w) = a.blkio_weight {
        set("blockIO", "weight", w.into());
    }
    serde_json::from_value(v).map_err(|e| Error::User(format!("update: {e}")))
}

pub fn update(ctx: &Ctx, a: &UpdateArgs) -> Result<(), Error> {
    let (dir, mut saved) = open(ctx, &a.id)?;
    let _lock = dir.lock()?;
    let cg = detect_cgroups()?;
    if status_of(&dir, &saved, Some(&cg)) == Status::Stopped {
        return Err(Error::User(format!("cannot update container {}: it has stopped", a.id)));
    }
    if !saved.has_cgroup {
        return Err(Error::User(format!("container {} has no cgroup to update", a.id)));
    }
    let r = update_resources(a)?;
    if cgroups::device_program(&cg, &saved.cgroup_path, &r, &[]).map_err(|e| Error::User(e.to_string()))?.is_some() {
        return Err(Error::User(
            "update: changing the device rules of a cgroup v2 container is not supported (its filter is fixed at create)".into(),
        ));
    }
    let writes = cgroups::resource_writes(&cg, &saved.cgroup_path, &r, &[])
        .map_err(|e| Error::User(format!("update: {}", e.to_string().replace("linux.resources.", ""))))?;
    for w in cgroups::apply(&writes).map_err(|e| Error::Sys(e.to_string()))? {
        ctx.log.warn(&w);
    }
    // Keep the config current, as runc does: merge the sections that were given.
    let mut config = serde_json::to_value(&saved.config).unwrap_or_default();
    let given = serde_json::to_value(&r).unwrap_or_default();
    if let (Some(obj), true) = (given.as_object(), config.get("linux").is_some()) {
        for (k, v) in obj {
            config["linux"]["resources"][k] = v.clone();
        }
    }
    if let Ok(c) = serde_json::from_value(config) {
        saved.config = c;
    }
    dir.save(&saved)
}

pub fn features() -> Result<(), Error> {
    use husk_stage1::oci::plan::{OCI_VERSION_MAX, OCI_VERSION_MIN};
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    let mut caps = caps;
    caps.sort();
    let f = serde_json::json!({
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "iversion", "lazytime",
            "loud", "mand", "noatime", "nodev", "nodiratime", "noexec", "noiversion", "nolazytime", "nomand",
            "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro", "rprivate",
            "rshared", "rslave", "runbindable", "rw", "shared", "silent", "slave", "strictatime", "suid", "sync",
            "unbindable", "idmap", "ridmap", "tmpcopyup", "notmpcopyup"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false },
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": ["SCMP_ARCH_X86_64"],
                "knownFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"]
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": true } }
        },
        "annotations": {
            "io.github.husk.oci.version": env!("CARGO_PKG_VERSION")
        }
    });
    println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
    Ok(())
}

pub fn spec(bundle: Option<&Path>, rootless: bool) -> Result<(), Error> {
    let dir = bundle.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let path = dir.join("config.json");
    if path.exists() {
        return Err(Error::User(format!("{} exists already; remove it first", path.display())));
    }
    let s = if rootless {
        Spec::rootless(rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw())
    } else {
        Spec::default()
    };
    let mut s = s;
    s.set_hostname(Some("husk".into()));
    s.set_version(husk_stage1::oci::plan::OCI_VERSION_MAX.into());
    let text = serde_json::to_vec_pretty(&s).map_err(|e| Error::Sys(format!("cannot encode the spec: {e}")))?;
    husk_sys::atomic_write(&path, &text, 0o644).map_err(sys(format!("cannot write {}", path.display())))
}

pub fn list(ctx: &Ctx, format: &str, quiet: bool) -> Result<(), Error> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&ctx.root) {
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Ok(dir) = Dir::new(&ctx.root, &id) else { continue };
            let Ok(saved) = dir.load() else { continue };
            all.push((dir, saved));
        }
    }
    all.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    let cg = Cgroups::detect().ok();
    let states: Vec<_> = all.iter().map(|(d, s)| state::state_json(s, status_of(d, s, cg.as_ref()))).collect();
    if quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match format {
        "json" => println!("{}", serde_json::to_string(&states).unwrap_or_default()),
        "table" => {
            println!("{:<20} {:<8} {:<10} {:<40} {:<31} OWNER", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
            for s in &states {
                println!(
                    "{:<20} {:<8} {:<10} {:<40} {:<31} {}",
                    s.id,
                    s.pid,
                    s.status.as_str(),
                    s.bundle.display(),
                    s.created.to_rfc3339(),
                    if s.owner.is_empty() { "root" } else { &s.owner }
                );
            }
        }
        other => return Err(Error::User(format!("--format {other:?}: use table or json"))),
    }
    Ok(())
}

/// For exec: the saved state of a container whose init runs.
pub fn running(ctx: &Ctx, id: &str) -> Result<(Dir, Saved, Cgroups), Error> {
    let (dir, saved) = open(ctx, id)?;
    let cg = detect_cgroups()?;
    match status_of(&dir, &saved, Some(&cg)) {
        Status::Running | Status::Created => Ok((dir, saved, cg)),
        Status::Paused => Err(Error::User(format!("cannot exec in paused container {id}; resume it first"))),
        s => Err(Error::User(format!("cannot exec in a container that is {}: {id}", s.as_str()))),
    }
}
