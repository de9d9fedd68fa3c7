//! An app's terminal (`run -t`, `enter -t`).
//!
//! The pty is opened by the app's own process, after it pivoted into its root, from the app's
//! own devpts instance (`/dev/ptmx` → `pts/ptmx`), as runc and crun do: the app's `tty` names
//! `/dev/pts/0` of its own `/dev/pts`, and nothing of the host's devpts is visible. The slave
//! becomes the app's controlling terminal, stdin, stdout, stderr and `/dev/console`; the master
//! goes over a `SOCK_SEQPACKET` pair (SCM_RIGHTS) to the relay, a small process the supervisor
//! forks before the pod exists, which
//! - in the foreground (`Stdio::Terminal`) relays it to the invoker's terminal, in raw mode
//!   with `-i` (restored when the app ends) and with every window size change passed on;
//! - detached (`Stdio::AttachableTerminal`) writes its output to the app's log and serves one
//!   `husk attach` client at a time on `attach.sock` (frames: [`husk_types::attach`]).
//!
//! The app waits for the relay's acknowledgement before it execs, so that it starts with the
//! invoker's window size already set.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use husk_sys::tty;
use husk_types::abi::{PodDir, ATTACH_SOCKET};
use husk_types::attach::{FromPod, ToPod, MAX_FRAME};
use husk_types::pod::{PodManifest, Stdio};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::common::{Context, Fail, Step};
use crate::logger::Rotating;

/// A detached pod's terminal until someone attaches and sets theirs: the classic size.
const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// The sockets between the app and its relay: (the relay's end, the app's end).
pub fn sockets() -> Result<(OwnedFd, OwnedFd), Fail> {
    tty::seqpacket_pair().ctx(Step::Process, || "cannot create the terminal's socket".into())
}

/// The relay process (forked by the supervisor before the pod exists, holding only the relay's
/// end of [`sockets`] and its stdio): its exit status.
pub fn relay_process(dir: &Path, m: &PodManifest, sock: OwnedFd) -> i32 {
    match relay_main(dir, m, sock) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("husk stage1 (terminal): {}", e.chain());
            1
        }
    }
}

fn relay_main(dir: &Path, m: &PodManifest, sock: OwnedFd) -> Result<(), Fail> {
    use nix::sys::signal::{SigSet, Signal};
    // The relay ends when the app's terminal does, not on the terminal's ctrl-c or a hangup
    // (the supervisor forwards those to the pod).
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGTERM, Signal::SIGPIPE] {
        set.add(s);
    }
    set.thread_block().ctx(Step::Process, || "cannot block signals".into())?;
    // Nothing comes when the app failed before its terminal existed: the supervisor says why.
    let Some(master) = tty::recv_fd(&sock).ctx(Step::Process, || "cannot receive the app's terminal".into())? else {
        return Ok(());
    };
    match m.stdio {
        Stdio::Terminal { input } => {
            let (rows, cols) = invoker_size().unwrap_or(DEFAULT_SIZE);
            let _ = tty::set_winsize(&master, rows, cols);
            acknowledge(&sock);
            tty::relay(&mut tty::Master(master), input, &mut None)
                .ctx(Step::Process, || "relaying the app's terminal".into())?;
            Ok(())
        }
        Stdio::AttachableTerminal => {
            let _ = tty::set_winsize(&master, DEFAULT_SIZE.0, DEFAULT_SIZE.1);
            let served = Served::open(dir, m, Box::new(tty::Master(master)));
            acknowledge(&sock);
            served?.serve()
        }
        other => Err(Fail::Invalid(format!("a terminal relay for stdio {other:?}"))),
    }
}

/// The window size of our terminal (stdin's, else stdout's).
fn invoker_size() -> Option<(u16, u16)> {
    let (i, o) = (std::io::stdin(), std::io::stdout());
    tty::winsize(i.as_fd()).or_else(|| tty::winsize(o.as_fd())).map(|w| (w.ws_row, w.ws_col))
}

/// Tells the app it may exec (a relay that is gone tells it too, by closing).
pub(crate) fn acknowledge(sock: &OwnedFd) {
    let _ = tty::send_packet(sock, b"ok");
}

/// A detached pod's terminal (a pty master, or a kvm guest's terminal stream): the log, the
/// attach socket, at most one client.
pub(crate) struct Served {
    far: Box<dyn tty::Far + Send>,
    log: Rotating,
    listener: OwnedFd,
    socket: std::path::PathBuf,
    client: Option<OwnedFd>,
}

impl Served {
    pub(crate) fn open(dir: &Path, m: &PodManifest, far: Box<dyn tty::Far + Send>) -> Result<Served, Fail> {
        let app = &m.apps.first().ok_or_else(|| Fail::Invalid("a pod without apps".into()))?.name;
        let d = PodDir::new(dir);
        let logs = d.logs_dir();
        std::fs::create_dir_all(&logs).ctx(Step::Log, || format!("cannot create {}", logs.display()))?;
        let log =
            Rotating::open(&logs, app, m.log_limits).ctx(Step::Log, || format!("cannot open the log of app {app}"))?;
        let listener = tty::listen_seqpacket(dir, ATTACH_SOCKET)
            .ctx(Step::Process, || format!("cannot listen on {}", d.attach_socket().display()))?;
        Ok(Served { far, log, listener, socket: d.attach_socket(), client: None })
    }

    pub(crate) fn serve(mut self) -> Result<(), Fail> {
        let mut buf = vec![0u8; MAX_FRAME + 1];
        loop {
            let mut fds = vec![
                PollFd::new(self.far.fd(), PollFlags::POLLIN),
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(c) = &self.client {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Fail::step(Step::Process, "waiting on the app's terminal", e)),
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
            drop(fds);
            if ready[0] && !self.output(&mut buf[..MAX_FRAME]) {
                break;
            }
            if ready[1] {
                self.accept();
            }
            if ready.get(2) == Some(&true) {
                self.client_input(&mut buf);
            }
        }
        let _ = std::fs::remove_file(&self.socket);
        Ok(())
    }

    /// Copies the app's output to the log and the client; false when the app's terminal ended.
    fn output(&mut self, buf: &mut [u8]) -> bool {
        let n = match self.far.read_output(buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        if let Err(e) = self.log.write(&buf[..n]) {
            eprintln!("husk stage1: cannot write the terminal's log: {e}");
        }
        if let Some(c) = &self.client {
            if tty::send_packet(c, &FromPod::Output(&buf[..n]).encode()).is_err() {
                self.client = None;
            }
        }
        true
    }

    fn accept(&mut self) {
        let Ok(c) = tty::accept(&self.listener) else { return };
        if self.client.is_some() {
            let _ = tty::send_packet(&c, &FromPod::Busy.encode());
        } else {
            self.client = Some(c);
        }
    }

    /// Input and window sizes from the client; a client that left (or sent garbage) is
    /// detached, and the pod runs on.
    fn client_input(&mut self, buf: &mut [u8]) {
        let Some(c) = &self.client else { return };
        let n = match tty::recv_packet(c, buf) {
            Ok(0) | Err(_) => {
                self.client = None;
                return;
            }
            Ok(n) => n,
        };
        match ToPod::decode(&buf[..n]) {
            Ok(ToPod::Input(d)) => {
                let _ = self.far.write_input(d);
            }
            Ok(ToPod::Resize { rows, cols }) => {
                let _ = self.far.resize(rows, cols);
            }
            Err(e) => {
                eprintln!("husk stage1: attach client sent a bad frame ({e}); detaching it");
                self.client = None;
            }
        }
    }
}

/// In the process that becomes the app (or the entered command), in its root: opens a pty
/// from its devpts, makes it the controlling terminal and stdio (and, with `console`,
/// `/dev/console`), owned by `uid`, sends the master to the relay and waits for its go-ahead.
pub fn take_terminal(sock: &OwnedFd, uid: u32, console: bool) -> Result<(), Fail> {
    let pty = tty::open_pty().ctx(Step::Process, || "cannot open a terminal in the app's /dev/pts".into())?;
    if console {
        use nix::mount::{mount, MsFlags};
        let target = Path::new("/dev/console");
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .ctx(Step::Mount, || "cannot create /dev/console".into())?;
        mount::<Path, Path, str, str>(Some(&pty.path), target, None, MsFlags::MS_BIND, None)
            .ctx(Step::Mount, || format!("cannot bind {} on /dev/console", pty.path.display()))?;
    }
    if uid != 0 {
        // The terminal belongs to the user the app runs as (its group is tty, by devpts).
        nix::unistd::fchown(&pty.slave, Some(nix::unistd::Uid::from_raw(uid)), None)
            .ctx(Step::Process, || format!("cannot give {} to uid {uid}", pty.path.display()))?;
    }
    tty::make_controlling(&pty.slave).ctx(Step::Process, || "cannot make the terminal the app's".into())?;
    tty::send_fd(sock, pty.master.as_fd()).ctx(Step::Process, || "cannot pass the terminal to the relay".into())?;
    drop(pty.master);
    let mut ack = [0u8; 8];
    let _ = tty::recv_packet(sock, &mut ack);
    Ok(())
}

/// `enter -t`: the parent's half. Receives the entered command's terminal, relays it to ours
/// until the command ends.
pub fn relay_entered(sock: OwnedFd) -> Result<(), Fail> {
    let Some(master) = tty::recv_fd(&sock).ctx(Step::Process, || "cannot receive the terminal".into())? else {
        return Ok(());
    };
    if let Some((rows, cols)) = invoker_size() {
        let _ = tty::set_winsize(&master, rows, cols);
    }
    acknowledge(&sock);
    drop(sock);
    tty::relay(&mut tty::Master(master), true, &mut None).ctx(Step::Process, || "relaying the terminal".into())?;
    Ok(())
}
