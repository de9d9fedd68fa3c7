//! What every entrypoint shares: reading the pod dir, writing state files, errors.

use std::path::{Path, PathBuf};

use husk_types::abi::PodDir;
use husk_types::pod::{AppStatus, PodManifest, Stage1State, ABI_VERSION};

/// The kind of step of stage1 that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the pod dir: the manifest, the stage1 state, the arguments.
    Manifest,
    /// The pod's namespaces, its init, its supervision (signals, pipes, messages).
    Pod,
    /// An app's root and mount view.
    Mount,
    Cgroup,
    Network,
    /// An app's user, capabilities, seccomp filter, exec.
    Process,
    /// A detached pod's log writer.
    Log,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Manifest => "manifest",
            Step::Pod => "pod",
            Step::Mount => "mount",
            Step::Cgroup => "cgroup",
            Step::Network => "network",
            Step::Process => "process",
            Step::Log => "log",
        }
    }
}

/// A stage1 failure. A failed step keeps its cause (the errno, the I/O or parse error) as
/// `source`; [`Fail::chain`] is the whole message for the user (stage1 has no richer error
/// channel than stderr, the messages to stage0 and its exit code).
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error("{what}")]
    Step {
        step: Step,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// What the manifest, the arguments or the image ask for that cannot be done.
    #[error("{0}")]
    Invalid(String),
}

impl Fail {
    /// A failed step with its cause.
    pub fn step(step: Step, what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Fail {
        Fail::Step { step, what: what.into(), source: Box::new(source) }
    }

    /// The message with every cause: `what: cause: cause…`.
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            s.push_str(": ");
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    }

    /// The kind of step that failed (None: an invalid request).
    pub fn kind(&self) -> Option<Step> {
        match self {
            Fail::Step { step, .. } => Some(*step),
            Fail::Invalid(_) => None,
        }
    }
}

pub trait Context<T> {
    /// On error: a failed `step`, described by `what`, caused by the error.
    fn ctx(self, step: Step, what: impl FnOnce() -> String) -> Result<T, Fail>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, step: Step, what: impl FnOnce() -> String) -> Result<T, Fail> {
        self.map_err(|e| Fail::Step { step, what: what(), source: Box::new(e) })
    }
}

#[cfg(test)]
mod fail_tests {
    use super::*;

    /// stage1's errors were one string: the errno was gone by the time anyone could look.
    #[test]
    fn a_failed_step_keeps_its_cause() {
        let r: Result<(), nix::errno::Errno> = Err(nix::errno::Errno::EPERM);
        let e = r.ctx(Step::Mount, || "cannot mount proc on /proc".into()).unwrap_err();
        assert_eq!(e.kind(), Some(Step::Mount));
        assert_eq!(e.to_string(), "cannot mount proc on /proc");
        let src = std::error::Error::source(&e).unwrap();
        assert_eq!(src.downcast_ref::<nix::errno::Errno>(), Some(&nix::errno::Errno::EPERM));
        assert_eq!(e.chain(), "cannot mount proc on /proc: EPERM: Operation not permitted");
        let outer = Fail::step(Step::Network, "network default", e);
        assert_eq!(outer.chain(), "network default: cannot mount proc on /proc: EPERM: Operation not permitted");
        assert_eq!(Fail::Invalid("bad".into()).kind(), None);
    }
}

pub fn read_manifest(pod_dir: &Path) -> Result<PodManifest, Fail> {
    let p = PodDir::new(pod_dir).manifest();
    let data = std::fs::read(&p).ctx(Step::Manifest, || format!("cannot read {}", p.display()))?;
    let m: PodManifest =
        serde_json::from_slice(&data).ctx(Step::Manifest, || format!("invalid pod manifest {}", p.display()))?;
    if m.abi_version > ABI_VERSION {
        return Err(Fail::Invalid(format!(
            "pod manifest has stage1 ABI version {}, this stage1 knows up to {ABI_VERSION}; use a newer stage1",
            m.abi_version
        )));
    }
    Ok(m)
}

/// Writes a runtime state file of a running pod (atomic, not fsynced: see
/// `atomic_write_volatile`).
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), Fail> {
    husk_sys::atomic_write_volatile(path, &serde_json::to_vec_pretty(v).expect("serializable"), 0o644)
        .ctx(Step::Manifest, || format!("cannot write {}", path.display()))
}

/// What stage0 hands a `run` entrypoint (the stage1 ABI): the pod lock (`HUSK_LOCK_FD`), the
/// readiness fd of a detached pod (`HUSK_READY_FD`); then every other fd is made close-on-exec
/// (nothing of stage1 leaks into apps) and this process is recorded as the lock's holder.
pub fn take_run_fds(pod_dir: &Path) -> Result<(husk_sys::Lock, Option<std::fs::File>), Fail> {
    use husk_types::abi::env;
    let lock = husk_sys::Lock::from_inherited(env::LOCK_FD, pod_dir.to_path_buf())
        .ctx(Step::Pod, || env::LOCK_FD.into())?
        .ok_or_else(|| Fail::Invalid(format!("{} is not set: stage1 must be started by husk", env::LOCK_FD)))?;
    let ready = husk_sys::proc::take_inherited_fd(env::READY_FD)
        .ctx(Step::Pod, || env::READY_FD.into())?
        .map(std::fs::File::from);
    husk_sys::proc::cloexec_from(3).ctx(Step::Pod, || "cannot mark fds close-on-exec".into())?;
    write_lock_holder(pod_dir)?;
    Ok((lock, ready))
}

/// `take_run_fds` for a process that hands over to stage1 instead of exec'ing it
/// (`ns::run_handed_over`): the caller already holds the lock, and there is no readiness pipe
/// (the pod runs in the foreground). What an exec'd stage1 would find at its start is made so:
/// every fd from 3 up close-on-exec, SIGPIPE ignored, the pod's directory the working directory.
pub fn take_handed_over(pod_dir: &Path) -> Result<(), Fail> {
    husk_sys::proc::ignore_sigpipe();
    std::env::set_current_dir(pod_dir).ctx(Step::Pod, || format!("cannot enter {}", pod_dir.display()))?;
    husk_sys::proc::cloexec_from(3).ctx(Step::Pod, || "cannot mark fds close-on-exec".into())?;
    write_lock_holder(pod_dir)
}

/// Records this process as the pod lock's holder (stage1 ABI: `lock-holder.pid`), so that `husk
/// stop` can end the pod even before `stage1.json` exists.
pub fn write_lock_holder(pod_dir: &Path) -> Result<(), Fail> {
    let p = PodDir::new(pod_dir).lock_holder();
    let me = format!("{}\n", std::process::id());
    // A foreground pod's stage1 is stage0 exec'd: the file already names this process.
    if std::fs::read_to_string(&p).is_ok_and(|c| c == me) {
        return Ok(());
    }
    husk_sys::atomic_write_volatile(&p, me.as_bytes(), 0o644)
        .ctx(Step::Manifest, || format!("cannot write {}", p.display()))
}

/// Runs the pod's exit command (after its lock was released) and waits for it: its output goes
/// to stage1's stderr, never to the invoker's stdout.
pub fn run_exit_command(m: &PodManifest) {
    let Some((prog, args)) = m.exit_command.split_first() else { return };
    let status = std::process::Command::new(prog.as_os_str())
        .args(args.iter().map(|a| a.as_os_str()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("husk stage1: the exit command of pod {} failed ({s}); `husk gc` collects the pod", m.uuid),
        Err(e) => eprintln!("husk stage1: cannot run the exit command of pod {}: {e}", m.uuid),
    }
}

pub fn write_status(pod_dir: &Path, app: &str, st: &AppStatus) -> Result<(), Fail> {
    write_json(&PodDir::new(pod_dir).app_status(app), st)
}

pub fn read_stage1_state(pod_dir: &Path) -> Result<Stage1State, Fail> {
    let p = PodDir::new(pod_dir).stage1_state();
    let data = std::fs::read(&p).ctx(Step::Manifest, || format!("cannot read {}", p.display()))?;
    serde_json::from_slice(&data).ctx(Step::Manifest, || format!("invalid {}", p.display()))
}

/// `--flag=value` or `--flag value` parsing for the few entrypoint flags.
pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    let eq = format!("--{name}=");
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v.to_string());
        }
        if a == &format!("--{name}") {
            return args.get(i + 1).cloned();
        }
    }
    None
}

pub fn pod_dir() -> Result<PathBuf, Fail> {
    std::env::current_dir().ctx(Step::Manifest, || "cannot find the pod directory (the working directory)".into())
}

pub fn debug_enabled(args: &[String]) -> bool {
    args.iter().any(|a| a == "--debug")
}

/// The argv[0]-relative lookup of an executable in the app's PATH, inside the (already
/// pivoted) root.
pub fn lookup_path(cmd: &std::ffi::OsStr, path_var: &str) -> Option<PathBuf> {
    if cmd.as_encoded_bytes().contains(&b'/') {
        return Some(PathBuf::from(cmd));
    }
    use std::os::unix::fs::PermissionsExt;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(cmd);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Some(p);
            }
        }
    }
    None
}

/// Splits an entrypoint's raw arguments at the first `--`: before it, UTF-8 flags (an argument
/// that is not UTF-8 becomes U+FFFD text and then fails as an unknown value, never a panic);
/// after it, the bytes of a command, untouched. `None` when there is no `--`.
pub fn split_args(raw: Vec<std::ffi::OsString>) -> (Vec<String>, Option<Vec<husk_types::ByteStr>>) {
    let mut flags = Vec::new();
    let mut it = raw.into_iter();
    for a in it.by_ref() {
        if a == "--" {
            return (flags, Some(it.map(husk_types::ByteStr::from).collect()));
        }
        flags.push(a.to_string_lossy().into_owned());
    }
    (flags, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn entrypoint_arguments_split_at_the_double_dash_and_keep_bytes() {
        let raw: Vec<OsString> = ["x", "enter", "--app=a", "--", "sh", "--"]
            .iter()
            .map(OsString::from)
            .chain([OsString::from_vec(vec![0xff])])
            .collect();
        let (flags, cmd) = split_args(raw);
        assert_eq!(flags, vec!["x", "enter", "--app=a"]);
        let cmd = cmd.unwrap();
        assert_eq!(cmd.len(), 3);
        assert_eq!(cmd[1], "--");
        assert_eq!(cmd[2].as_bytes(), &[0xff]);
        assert_eq!(split_args(vec![OsString::from_vec(vec![b'a', 0xff])]).0, vec!["a\u{fffd}"]);
    }
}
