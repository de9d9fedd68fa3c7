//! Terminals: a pty from the current mount namespace's devpts (in a pod: the app's own), the
//! invoker's terminal in raw mode and restored, window sizes, a pty master passed between
//! processes (SCM_RIGHTS), the `SOCK_SEQPACKET` sockets of `husk attach`, and the relay between
//! the invoker's terminal and a pod's. All of it safe wrappers over rustix and nix.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
pub use rustix::termios::Winsize;
use rustix::termios::{OptionalActions, Termios};

/// A new pty: the master, the slave (its terminal) and the slave's path.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub path: PathBuf,
}

/// Opens a pty from `/dev/ptmx` as the current root sees it. Both ends are close-on-exec and
/// neither becomes a controlling terminal here (see [`make_controlling`]).
pub fn open_pty() -> io::Result<Pty> {
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    // TIOCGPTPEER opens the slave of this very master, never whatever sits at its path.
    let slave =
        rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes()));
    Ok(Pty { master, slave, path })
}

/// Starts a new session whose controlling terminal is `slave`, and makes it stdin, stdout and
/// stderr: what an app with a terminal, or a command entered with one, runs on.
pub fn make_controlling(slave: &OwnedFd) -> io::Result<()> {
    rustix::process::setsid()?;
    rustix::process::ioctl_tiocsctty(slave)?;
    rustix::stdio::dup2_stdin(slave)?;
    rustix::stdio::dup2_stdout(slave)?;
    rustix::stdio::dup2_stderr(slave)?;
    Ok(())
}

/// The window size of a terminal; `None` when `fd` is not one.
pub fn winsize(fd: impl AsFd) -> Option<Winsize> {
    rustix::termios::tcgetwinsize(fd).ok().filter(|w| w.ws_row > 0 && w.ws_col > 0)
}

pub fn set_winsize(fd: impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    Ok(rustix::termios::tcsetwinsize(fd, Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 })?)
}

pub fn is_terminal(fd: impl AsFd) -> bool {
    rustix::termios::isatty(fd)
}

/// Whether a terminal is in its cooked mode (canonical input, echo): what a shell leaves it
/// in, and what husk must restore after raw mode.
pub fn is_cooked(fd: impl AsFd) -> io::Result<bool> {
    use rustix::termios::LocalModes;
    let t = rustix::termios::tcgetattr(fd)?;
    Ok(t.local_modes.contains(LocalModes::ICANON | LocalModes::ECHO))
}

/// Starts `cmd` on a new pty as its controlling terminal (stdin, stdout and stderr), the way
/// a terminal emulator starts a shell: for tests and tools that drive husk at a terminal.
/// Returns the child and the pty (the caller keeps the master; the slave is for inspection).
pub fn spawn_on_pty(cmd: &mut std::process::Command, rows: u16, cols: u16) -> io::Result<(std::process::Child, Pty)> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let pty = open_pty()?;
    set_winsize(&pty.master, rows, cols)?;
    cmd.stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave.try_clone()?));
    // SAFETY: the closure runs in the forked child before exec and only makes two syscalls
    // (setsid, ioctl TIOCSCTTY on fd 0), both async-signal-safe; it allocates nothing and
    // touches no lock or state shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok((child, pty))
}

/// A terminal in raw mode until this is dropped, when its settings are restored.
pub struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    /// Puts `fd` in raw mode (keys reach the pod's terminal unchanged: ctrl-c is the app's);
    /// `None` when it is not a terminal.
    pub fn enable(fd: BorrowedFd<'a>) -> io::Result<Option<RawMode<'a>>> {
        let Ok(saved) = rustix::termios::tcgetattr(fd) else { return Ok(None) };
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(fd, OptionalActions::Now, &raw)?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        // Drain: what was written with the raw settings is shown before they change back.
        let _ = rustix::termios::tcsetattr(self.fd, OptionalActions::Drain, &self.saved);
    }
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// A socket path reached through an open directory, short whatever the directory's path.
fn via_dir(dir: &Path, name: &str) -> io::Result<(OwnedFd, SocketAddrUnix)> {
    use rustix::fs::{Mode, OFlags};
    let d = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let addr = SocketAddrUnix::new(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()))?;
    Ok((d, addr))
}

/// Listens on `dir/name` (replacing a stale socket there), mode 0600.
pub fn listen_seqpacket(dir: &Path, name: &str) -> io::Result<OwnedFd> {
    let (_d, addr) = via_dir(dir, name)?;
    match std::fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::net::bind(&sock, &addr)?;
    rustix::fs::chmod(dir.join(name), rustix::fs::Mode::from_raw_mode(0o600))?;
    rustix::net::listen(&sock, 4)?;
    Ok(sock)
}

/// Connects to the socket `dir/name`.
pub fn connect_seqpacket(dir: &Path, name: &str) -> io::Result<OwnedFd> {
    let (_d, addr) = via_dir(dir, name)?;
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::net::connect(&sock, &addr)?;
    Ok(sock)
}

pub fn accept(listener: impl AsFd) -> io::Result<OwnedFd> {
    Ok(rustix::net::accept_with(listener, SocketFlags::CLOEXEC)?)
}

/// Sends one packet; a peer that is gone is an error (EPIPE), never a SIGPIPE.
pub fn send_packet(sock: impl AsFd, data: &[u8]) -> io::Result<()> {
    rustix::net::send(sock, data, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives one packet into `buf`; 0 when the peer closed.
pub fn recv_packet(sock: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(&sock, &mut *buf, RecvFlags::empty()) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `fd` over a Unix socket (SCM_RIGHTS).
pub fn send_fd(sock: impl AsFd, fd: BorrowedFd<'_>) -> io::Result<()> {
    send_fd_with(sock, b"fd", fd)
}

/// Sends `fd` with `data` as the message (an OCI console socket takes the pty's name).
pub fn send_fd_with(sock: impl AsFd, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the file descriptor"));
    }
    rustix::net::sendmsg(sock, &[IoSlice::new(data)], &mut cmsg, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Receives a file descriptor sent by [`send_fd`]; `None` when the peer closed without one.
pub fn recv_fd(sock: impl AsFd) -> io::Result<Option<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 8];
    let got = loop {
        match rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(&mut buf)], &mut cmsg, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => break r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            if let Some(fd) = fds.next() {
                return Ok(Some(fd));
            }
        }
    }
    if got.bytes == 0 {
        return Ok(None);
    }
    Err(io::Error::other("the message carried no file descriptor"))
}

/// Receives one message (a datagram) and every fd that came with it (at most 16; close-on-exec).
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(&sock, &mut [IoSliceMut::new(buf)], &mut cmsg, RecvFlags::CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(f) = m {
            fds.extend(f);
        }
    }
    Ok((got.bytes, fds))
}

/// The other side of a relay from the invoker's terminal: a pty master, or `husk attach`'s
/// connection to a detached pod.
pub trait Far {
    fn fd(&self) -> BorrowedFd<'_>;
    /// Reads output into `buf`: `Ok(0)` when the other side is gone.
    fn read_output(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_input(&mut self, data: &[u8]) -> io::Result<()>;
    fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()>;
}

/// A pty master as the far side: read until every slave is closed (EIO).
pub struct Master(pub OwnedFd);

impl Far for Master {
    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
    fn read_output(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_master(&self.0, buf)
    }
    fn write_input(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&self.0, data)
    }
    fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        set_winsize(&self.0, rows, cols)
    }
}

/// Reads a pty master: `Ok(0)` once no process holds the slave (the kernel says EIO).
pub fn read_master(master: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::io::read(&master, &mut *buf) {
            Ok(n) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::IO) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

pub fn write_all(fd: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(&fd, data) {
            Ok(n) => data = &data[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How [`relay`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The far side ended (the app, or the entered command, closed its terminal).
    Ended,
    /// The user typed the detach keys.
    Detached,
}

/// Signals delivered through a signalfd while this lives; the previous mask comes back after.
struct SignalsAsFd {
    fd: SignalFd,
    old: SigSet,
}

impl SignalsAsFd {
    fn new(sigs: &[Signal]) -> io::Result<SignalsAsFd> {
        let mut set = SigSet::empty();
        for s in sigs {
            set.add(*s);
        }
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(SignalsAsFd { fd, old })
    }
}

impl Drop for SignalsAsFd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Relays between this process's stdin/stdout (the invoker's terminal, or pipes) and `far`
/// until `far` ends or the detach keys are typed. With `input`, stdin is forwarded (in raw mode
/// when it is a terminal, restored on return); the terminal's size is passed on at the start and
/// at every SIGWINCH.
pub fn relay(
    far: &mut dyn Far,
    input: bool,
    detach: &mut Option<husk_types::attach::DetachKeys>,
) -> io::Result<RelayEnd> {
    use husk_types::attach::Fed;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let stdin = stdin.as_fd();
    let stdout = std::io::stdout();
    let tty = if is_terminal(stdin) { Some(stdin) } else { Some(stdout.as_fd()).filter(|f| is_terminal(f)) };
    let _raw = match (input, tty) {
        (true, Some(t)) if t.as_raw_fd() == 0 => RawMode::enable(t)?,
        _ => None,
    };
    let resize = |far: &mut dyn Far| {
        if let Some(w) = tty.and_then(winsize) {
            let _ = far.resize(w.ws_row, w.ws_col);
        }
    };
    resize(far);
    let winch = SignalsAsFd::new(&[Signal::SIGWINCH])?;
    let mut input_open = input;
    let mut buf = vec![0u8; husk_types::attach::MAX_FRAME];
    loop {
        let mut fds = vec![PollFd::new(far.fd(), PollFlags::POLLIN), PollFd::new(winch.fd.as_fd(), PollFlags::POLLIN)];
        if input_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        if ready[0] {
            let n = far.read_output(&mut buf)?;
            if n == 0 {
                return Ok(RelayEnd::Ended);
            }
            // A closed stdout must not stop the app: its output is dropped, the relay goes on.
            let mut out = stdout.lock();
            let _ = out.write_all(&buf[..n]).and_then(|_| out.flush());
        }
        if ready[1] {
            while let Ok(Some(_)) = winch.fd.read_signal() {}
            resize(far);
        }
        if input_open && ready[2] {
            let n = match rustix::io::read(stdin, &mut buf[..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                Err(_) => 0,
            };
            if n == 0 {
                // The input ended (a pipe): output still flows until the far side ends.
                input_open = false;
                continue;
            }
            match detach.as_mut().map(|d| d.feed(&buf[..n])) {
                None => far.write_input(&buf[..n])?,
                Some(Fed::Pass(b)) => far.write_input(&b)?,
                Some(Fed::Detach(b)) => {
                    far.write_input(&b)?;
                    return Ok(RelayEnd::Detached);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_carries_bytes_both_ways_and_its_size() {
        let pty = open_pty().unwrap();
        assert!(pty.path.starts_with("/dev/pts"), "{}", pty.path.display());
        assert!(is_terminal(&pty.slave) && !is_terminal(std::fs::File::open("/dev/null").unwrap()));
        set_winsize(&pty.master, 33, 77).unwrap();
        let w = winsize(&pty.slave).unwrap();
        assert_eq!((w.ws_row, w.ws_col), (33, 77));
        write_all(&pty.master, b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&pty.slave, &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
        drop(pty.slave);
        // The echo of the input ("hi\r\n"), then the end: EIO once the slave is closed.
        assert_eq!(read_master(&pty.master, &mut buf).unwrap(), 4);
        assert_eq!(read_master(&pty.master, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_file_descriptor_crosses_a_socket() {
        let (a, b) = seqpacket_pair().unwrap();
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        send_fd(&a, f.as_fd()).unwrap();
        let got = recv_fd(&b).unwrap().unwrap();
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{}", got.as_raw_fd())).unwrap(),
            std::fs::read_link("/proc/self/exe").unwrap()
        );
        drop(a);
        assert!(recv_fd(&b).unwrap().is_none(), "a closed peer is None");
    }

    #[test]
    fn seqpacket_sockets_under_a_long_directory_keep_packets_apart() {
        let d = tempfile::tempdir().unwrap();
        let long = d.path().join("x".repeat(120));
        std::fs::create_dir(&long).unwrap();
        let l = listen_seqpacket(&long, "attach.sock").unwrap();
        let c = connect_seqpacket(&long, "attach.sock").unwrap();
        let s = accept(&l).unwrap();
        send_packet(&c, b"one").unwrap();
        send_packet(&c, b"two").unwrap();
        let mut buf = [0u8; 64];
        for want in [&b"one"[..], b"two"] {
            let n = recv_packet(&s, &mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
        drop(c);
        assert_eq!(recv_packet(&s, &mut buf).unwrap(), 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(long.join("attach.sock")).unwrap().permissions().mode() & 0o777, 0o600);
        // A stale socket is replaced.
        drop(l);
        listen_seqpacket(&long, "attach.sock").unwrap();
    }
}
