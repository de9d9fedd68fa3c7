//! The `fly` flavor: one app, host namespaces (pid, net, uts, ipc), chroot into its overlay
//! root in a private mount namespace (so nothing is left mounted on the host when it ends).
//! For trusted host tools that need the host's view. The supervisor (this process, holding the
//! pod lock) waits for the app and records its exit status.

use husk_sys::proc::{fork, ForkResult};
use husk_types::abi;
use husk_types::pod::{exit, Stage1State, ABI_VERSION};
use nix::sys::wait::waitpid;

use crate::common::{pod_dir, read_manifest, write_json, write_status, Context, Fail, Step};
use crate::process::{become_app_user, exec_in_root, status_of, wire_stdio};

pub fn main(raw: Vec<std::ffi::OsString>) -> i32 {
    let (args, _) = crate::common::split_args(raw);
    let r = match args.get(1).map(String::as_str) {
        Some("run") => run(),
        Some("gc") => Ok(0),
        Some("enter") => Err(Fail::Invalid(
            "the fly flavor shares the host's namespaces; use the host's own tools instead of enter".into(),
        )),
        _ => Err(Fail::Invalid("usage: husk-stage1-fly run|gc … (see docs/stage1-abi.md)".into())),
    };
    r.unwrap_or_else(|e| {
        eprintln!("husk stage1 (fly): {}", e.chain());
        exit::STAGE1_FAILED
    })
}

fn run() -> Result<i32, Fail> {
    let dir = pod_dir()?;
    let m = read_manifest(&dir)?;
    let [app] = m.apps.as_slice() else {
        return Err(Fail::Invalid(format!("the fly flavor runs exactly one app; this pod has {}", m.apps.len())));
    };
    if m.stdio.has_terminal() {
        return Err(Fail::Invalid(
            "the fly flavor has no devpts of its own to give the app a terminal; use -i (the invoker's terminal)"
                .into(),
        ));
    }
    let (_lock, mut ready) = crate::common::take_run_fds(&dir)?;
    crate::rootfs::write_etc(&dir, &m, None)?;
    let started = chrono::Utc::now();
    let (logger, mut log_fds) = match m.stdio {
        husk_types::pod::Stdio::Log => {
            let (pid, fds) = crate::logger::spawn(&dir, std::slice::from_ref(&app.name), m.log_limits)?;
            (Some(pid), fds)
        }
        _ => (None, vec![]),
    };
    let log_fd = log_fds.pop();
    let child = match fork().ctx(Step::Pod, || "cannot fork".into())? {
        ForkResult::Child => {
            let r = (|| {
                let setup = |e: Fail| (exit::STAGE1_FAILED, e);
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(|e| setup(Fail::step(Step::Pod, "cannot create the app's mount namespace", e)))?;
                crate::rootfs::make_root_slave().map_err(setup)?;
                crate::rootfs::mount_roots(&dir, &m, None).map_err(setup)?;
                let root = crate::rootfs::setup(&dir, &m, app).map_err(setup)?;
                wire_stdio(&m, log_fd.as_ref().map(|f| (f, f))).map_err(setup)?;
                nix::unistd::chroot(&root)
                    .map_err(|e| setup(Fail::step(Step::Mount, format!("chroot {}", root.display()), e)))?;
                become_app_user(app).map_err(setup)?;
                exec_in_root(app, &app.exec)
            })();
            let (code, e) = match r {
                Err(e) => e,
                Ok(never) => match never {},
            };
            eprintln!("husk: app {}: {}", app.name, e.chain());
            std::process::exit(code);
        }
        ForkResult::Parent { child } => child,
    };
    drop(log_fd);
    let me = nix::unistd::getpid().as_raw();
    let mut app_pids = std::collections::BTreeMap::new();
    app_pids.insert(app.name.clone(), child.as_raw());
    write_json(
        &abi::PodDir::new(&dir).stage1_state(),
        &Stage1State {
            abi_version: ABI_VERSION,
            supervisor_pid: me,
            init_pid: child.as_raw(),
            started,
            cgroup: None,
            app_pids,
        },
    )?;
    if let Some(r) = ready.as_mut() {
        let _ = husk_types::msg::send(r, &husk_types::msg::Message::Ready);
    }
    drop(ready);
    let ws = loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.ok(),
        }
    };
    if let Some(pid) = logger {
        // The writer ends when the app's output does (a process it left behind may keep it).
        let _ = waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
    let st = status_of(ws, Some(started));
    write_status(&dir, &app.name, &st)?;
    drop(_lock);
    crate::common::run_exit_command(&m);
    Ok(st.shell_status())
}
