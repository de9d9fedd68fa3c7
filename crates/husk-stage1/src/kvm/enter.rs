//! `husk enter` of a kvm pod: a command in one of the guest's apps, with that app's namespaces,
//! cgroup, user, capabilities and no_new_privs (the `ns` enter code, run by the guest's enter
//! service), its input and output carried over a vsock stream.
//!
//! The stream: the host sends one `enter` message, then the frames of [`super::stream`] (the
//! command's input, and with `--tty` its window sizes); the guest sends its stdout and stderr
//! (with `--tty`, the terminal's output as stdout) and, last, its exit status. With `--tty` the
//! command gets a pty of the app's devpts in the guest, as `enter -t` of an `ns` pod does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use husk_types::msg::{self, Message};
use husk_types::pod::exit;
use husk_types::ByteStr;

use super::stream::{self, frame, read_frame, EXIT, STDERR, STDIN, STDOUT};
use crate::common::{flag_value, pod_dir, read_manifest, read_stage1_state, Context, Fail, Step};

/// The vsock port of the guest's enter service.
pub const ENTER_PORT: u32 = 1027;

/// The host side: `enter --pid=PID --app=NAME [--tty] -- CMD…` in the pod dir.
pub fn enter(args: &[String], cmd: Option<Vec<ByteStr>>) -> Result<i32, Fail> {
    let dir = pod_dir()?;
    let m = read_manifest(&dir)?;
    let app = flag_value(args, "app").ok_or_else(|| Fail::Invalid("enter needs --app".into()))?;
    if !m.apps.iter().any(|a| a.name == app) {
        return Err(Fail::Invalid(format!("pod has no app {app:?}")));
    }
    let pid: i32 = match flag_value(args, "pid") {
        Some(p) => p.parse().ctx(Step::Pod, || format!("bad --pid {p:?}"))?,
        None => *read_stage1_state(&dir)?
            .app_pids
            .get(&app)
            .ok_or_else(|| Fail::Invalid(format!("app {app} is not running")))?,
    };
    let tty = args.iter().any(|a| a == "--tty");
    let cmd = match cmd {
        Some(c) if !c.is_empty() => c,
        _ => vec![ByteStr::from("/bin/sh")],
    };
    let uds =
        super::plan::Paths::of(Path::new("/"), "".into(), super::run_dir(&m.uuid), "".into(), |_| false).vsock_uds();
    let mut s =
        UnixStream::connect(&uds).ctx(Step::Pod, || format!("cannot reach the pod's guest ({})", uds.display()))?;
    // vhost-device-vsock's hybrid protocol: name the guest port, get "OK <port>".
    s.write_all(format!("CONNECT {ENTER_PORT}\n").as_bytes()).ctx(Step::Pod, || "cannot reach the guest".into())?;
    let mut r = BufReader::new(s.try_clone().ctx(Step::Pod, || "dup".into())?);
    let mut ok = String::new();
    r.read_line(&mut ok).ctx(Step::Pod, || "the guest's enter service did not answer".into())?;
    if !ok.starts_with("OK ") {
        return Err(Fail::Invalid(format!("the guest's enter service is not listening ({:?})", ok.trim())));
    }
    msg::send(&mut s, &Message::Enter { app, pid, cmd, tty }).map_err(|e| Fail::step(Step::Pod, "enter", e))?;
    drop(r); // it read only the answer: the guest sends nothing before the message
    if tty {
        return relay_terminal(s);
    }
    // Our stdin, to the command's, until its end.
    let mut w = s.try_clone().ctx(Step::Pod, || "dup".into())?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut input = std::io::stdin().lock();
        loop {
            let n = match input.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if w.write_all(&frame(STDIN, &buf[..n])).is_err() || n == 0 {
                return;
            }
        }
    });
    let mut r = s;
    loop {
        match read_frame(&mut r).ctx(Step::Pod, || "the entered command's stream".into())? {
            Some((STDOUT, d)) => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&d).and_then(|_| o.flush());
            }
            Some((STDERR, d)) => {
                let _ = std::io::stderr().write_all(&d);
            }
            Some((EXIT, d)) if d.len() == 4 => return Ok(i32::from_be_bytes([d[0], d[1], d[2], d[3]])),
            Some(_) | None => return Err(Fail::Invalid("the guest ended the session without an exit status".into())),
        }
    }
}

/// `enter -t`: our terminal (raw, its size passed on) relayed to the command's in the guest.
fn relay_terminal(s: UnixStream) -> Result<i32, Fail> {
    let mut guest = stream::Guest::new(s);
    let size = invoker_size().unwrap_or(stream::DEFAULT_SIZE);
    husk_sys::tty::Far::resize(&mut guest, size.0, size.1).ctx(Step::Pod, || "the session's stream".into())?;
    husk_sys::tty::relay(&mut guest, true, &mut None).ctx(Step::Pod, || "relaying the terminal".into())?;
    guest.status.ok_or_else(|| Fail::Invalid("the guest ended the session without an exit status".into()))
}

/// The window size of our terminal (stdin's, else stdout's).
pub fn invoker_size() -> Option<(u16, u16)> {
    let (i, o) = (std::io::stdin(), std::io::stdout());
    husk_sys::tty::winsize(i.as_fd()).or_else(|| husk_sys::tty::winsize(o.as_fd())).map(|w| (w.ws_row, w.ws_col))
}

/// The guest's enter service: a process of the guest init that accepts sessions on
/// [`ENTER_PORT`], one process each.
pub fn serve(pod_dir: &Path) -> Result<(), Fail> {
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};
    let sock = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .ctx(Step::Pod, || "cannot create a vsock socket".into())?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &VsockAddr::new(libc::VMADDR_CID_ANY, ENTER_PORT))
        .ctx(Step::Pod, || format!("cannot listen on vsock port {ENTER_PORT}"))?;
    listen(&sock, Backlog::new(16).unwrap_or(Backlog::MAXCONN)).ctx(Step::Pod, || "listen".into())?;
    match husk_sys::proc::fork().ctx(Step::Process, || "cannot fork the enter service".into())? {
        husk_sys::proc::ForkResult::Parent { .. } => Ok(()),
        husk_sys::proc::ForkResult::Child => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            loop {
                let Ok(conn) = rustix::net::accept_with(&sock, rustix::net::SocketFlags::CLOEXEC) else { continue };
                if let Ok(husk_sys::proc::ForkResult::Child) = husk_sys::proc::fork() {
                    drop(sock);
                    let code = session(pod_dir, conn).unwrap_or_else(|e| {
                        eprintln!("husk guest enter: {}", e.chain());
                        exit::STAGE1_FAILED
                    });
                    std::process::exit(code);
                }
                // The parent's copy of the connection closes here (dropped).
                let _ = nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            }
        }
    }
}

/// A session with a terminal: this process joins the app (the `ns` enter code), whose child
/// opens the pty in the app's devpts; its master is relayed over the stream.
fn terminal_session(
    pod_dir: &Path,
    mut sock: stream::Incoming,
    app: String,
    pid: i32,
    cmd: Vec<ByteStr>,
) -> Result<i32, Fail> {
    let mut out = sock.sock.try_clone().ctx(Step::Pod, || "dup".into())?;
    std::env::set_current_dir(pod_dir).ctx(Step::Pod, || format!("cannot enter {}", pod_dir.display()))?;
    let args = vec![format!("--pid={pid}"), format!("--app={app}"), "--tty".to_string()];
    let code = crate::ns::enter_relaying(&args, Some(cmd), |relay_end| {
        let Some(master) =
            husk_sys::tty::recv_fd(&relay_end).ctx(Step::Process, || "cannot receive the terminal".into())?
        else {
            return Ok(());
        };
        let (rows, cols) = stream::first_size(&mut sock).ctx(Step::Pod, || "the session's stream".into())?;
        let _ = husk_sys::tty::set_winsize(&master, rows, cols);
        crate::console::acknowledge(&relay_end);
        drop(relay_end);
        stream::pump(&master, &mut sock).ctx(Step::Pod, || "relaying the terminal".into())
    })
    .unwrap_or_else(|e| {
        let _ = out.write_all(&frame(STDOUT, format!("husk enter: {}\r\n", e.chain()).as_bytes()));
        exit::STAGE1_FAILED
    });
    out.write_all(&frame(EXIT, &code.to_be_bytes())).ctx(Step::Pod, || "the session's stream".into())?;
    Ok(code)
}

/// One session: runs the command (the `ns` enter code, in a child with pipes for its stdio)
/// and relays its streams as frames.
fn session(pod_dir: &Path, conn: OwnedFd) -> Result<i32, Fail> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let sock = std::fs::File::from(conn);
    let mut reader = BufReader::new(sock.try_clone().ctx(Step::Pod, || "dup".into())?);
    let (app, pid, cmd, tty) =
        match msg::expect(&mut reader, &["enter"]).map_err(|e| Fail::step(Step::Pod, "enter", e))? {
            Message::Enter { app, pid, cmd, tty } => (app, pid, cmd, tty),
            _ => unreachable!("expect() returns only the named messages"),
        };
    if tty {
        // What the reader took beyond the message (the host's first frames) comes first.
        let incoming = stream::Incoming::new(reader.buffer().to_vec(), sock);
        drop(reader);
        return terminal_session(pod_dir, incoming, app, pid, cmd);
    }
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(Step::Pod, || "pipe".into());
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let child = match husk_sys::proc::fork().ctx(Step::Process, || "fork".into())? {
        husk_sys::proc::ForkResult::Child => {
            // The session's ends of the pipes: the command must see its stdin end with ours.
            drop((in_w, out_r, err_r));
            let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
            let _ = nix::unistd::dup2_stdin(&in_r);
            let _ = nix::unistd::dup2_stdout(&out_w);
            let _ = nix::unistd::dup2_stderr(&err_w);
            let _ = std::env::set_current_dir(pod_dir);
            let args = vec![format!("--pid={pid}"), format!("--app={app}")];
            let code = match crate::ns::enter(&args, Some(cmd)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("husk enter: {}", e.chain());
                    exit::STAGE1_FAILED
                }
            };
            std::process::exit(code);
        }
        husk_sys::proc::ForkResult::Parent { child } => child,
    };
    drop((in_r, out_w, err_w));
    let mut stdin = Some(std::fs::File::from(in_w));
    let mut outs: Vec<(u8, Option<std::fs::File>)> =
        vec![(STDOUT, Some(std::fs::File::from(out_r))), (STDERR, Some(std::fs::File::from(err_r)))];
    let mut out = sock;
    let mut buf = vec![0u8; 64 << 10];
    while outs.iter().any(|(_, f)| f.is_some()) {
        let mut fds: Vec<PollFd> = Vec::new();
        let mut which: Vec<usize> = Vec::new();
        for (k, (_, f)) in outs.iter().enumerate() {
            if let Some(f) = f {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                which.push(k);
            }
        }
        // Frames the reader holds already need no wait.
        let buffered = stdin.is_some() && !reader.buffer().is_empty();
        let sock_at = (stdin.is_some() && !buffered).then(|| {
            fds.push(PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let timeout = if buffered { PollTimeout::ZERO } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Fail::step(Step::Pod, "poll", e)),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        for (slot, k) in which.iter().enumerate() {
            if !ready[slot] {
                continue;
            }
            let (kind, f) = &mut outs[*k];
            let n = f.as_mut().map(|f| f.read(&mut buf).unwrap_or(0)).unwrap_or(0);
            if n == 0 {
                *f = None;
            } else {
                out.write_all(&frame(*kind, &buf[..n])).ctx(Step::Pod, || "the session's stream".into())?;
            }
        }
        if buffered || sock_at.is_some_and(|at| ready[at]) {
            match read_frame(&mut reader) {
                Ok(Some((STDIN, d))) if !d.is_empty() => {
                    if stdin.as_mut().is_some_and(|i| i.write_all(&d).is_err()) {
                        stdin = None;
                    }
                }
                // Its end, the host gone, or garbage: no more input.
                _ => stdin = None,
            }
        }
    }
    drop(stdin);
    let code = match nix::sys::wait::waitpid(child, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => exit::STAGE1_FAILED,
    };
    out.write_all(&frame(EXIT, &code.to_be_bytes())).ctx(Step::Pod, || "the session's stream".into())?;
    Ok(code)
}
