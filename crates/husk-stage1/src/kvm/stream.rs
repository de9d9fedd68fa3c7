//! The framed byte streams between a kvm pod's host and its guest over vsock: an entered
//! command's stdio, and a terminal's (the pod's `run -t`, `enter -t`).
//!
//! A frame is `[kind][length, 4 bytes big endian][data]`. Host → guest: kind 4, input (an empty
//! one is its end: the vsock daemon does not pass on a half-close), kind 5, a terminal's window
//! size (rows, cols: 2 bytes each, big endian). Guest → host: kind 1 stdout (a terminal's
//! output), 2 stderr, 3 the entered command's exit status (4 bytes, big endian), last.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use husk_sys::tty;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;
pub const STDIN: u8 = 4;
pub const RESIZE: u8 = 5;
/// A frame's data is at most this long (a larger length is a broken stream, not a frame).
pub const MAX_FRAME: u32 = 1 << 20;
/// The window size of a terminal whose invoker has none (a detached pod, a pipe).
pub const DEFAULT_SIZE: (u16, u16) = (24, 80);

/// One frame's bytes.
pub fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + data.len());
    v.push(kind);
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A window-size frame.
pub fn resize_frame(rows: u16, cols: u16) -> Vec<u8> {
    let mut d = rows.to_be_bytes().to_vec();
    d.extend_from_slice(&cols.to_be_bytes());
    frame(RESIZE, &d)
}

/// The size a window-size frame's data carries; `None` when it is not 4 bytes.
pub fn size_of(data: &[u8]) -> Option<(u16, u16)> {
    match data {
        [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
        _ => None,
    }
}

/// Reads one frame; `None` at a clean end of the stream.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME || !matches!(head[0], STDOUT | STDERR | EXIT | STDIN | RESIZE) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad frame (kind {}, {len} bytes)", head[0]),
        ));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data)?;
    Ok(Some((head[0], data)))
}

/// The host's side of a guest terminal, as the far end of [`tty::relay`] (the invoker's
/// terminal) or of a detached pod's attach service: output frames in, input and window sizes
/// out. Unbuffered, so that polling its fd never misses a frame already read.
pub struct Guest {
    sock: std::fs::File,
    /// Output of a frame larger than the reader's buffer, still to be handed out.
    pending: Vec<u8>,
    /// An entered command's exit status, once its frame came.
    pub status: Option<i32>,
}

impl Guest {
    pub fn new(sock: impl Into<OwnedFd>) -> Guest {
        Guest { sock: std::fs::File::from(sock.into()), pending: Vec::new(), status: None }
    }
}

impl tty::Far for Guest {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn read_output(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match read_frame(&mut self.sock)? {
                Some((STDOUT | STDERR, d)) => self.pending = d,
                Some((EXIT, d)) => {
                    self.status = size_of(&d).map(|_| i32::from_be_bytes([d[0], d[1], d[2], d[3]]));
                    return Ok(0);
                }
                Some(_) | None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }

    fn write_input(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(()); // an empty input frame would end the input
        }
        self.sock.write_all(&frame(STDIN, data))
    }

    fn resize(&mut self, rows: u16, cols: u16) -> std::io::Result<()> {
        self.sock.write_all(&resize_frame(rows, cols))
    }
}

/// The guest's end of a stream: what a buffered reader had read of it already (the bytes after
/// a message), then the socket itself.
pub struct Incoming {
    pre: std::io::Cursor<Vec<u8>>,
    pub sock: std::fs::File,
}

impl Incoming {
    pub fn new(pre: Vec<u8>, sock: std::fs::File) -> Incoming {
        Incoming { pre: std::io::Cursor::new(pre), sock }
    }

    /// Whether bytes already read wait (then polling the socket would miss them).
    fn buffered(&self) -> bool {
        (self.pre.position() as usize) < self.pre.get_ref().len()
    }
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.buffered() {
            self.pre.read(buf)
        } else {
            self.sock.read(buf)
        }
    }
}

/// In the guest: waits for the host's first window size on `sock` (frames before it are
/// dropped: there is no terminal yet to give them to).
pub fn first_size(sock: &mut Incoming) -> std::io::Result<(u16, u16)> {
    loop {
        match read_frame(sock)? {
            Some((RESIZE, d)) => return Ok(size_of(&d).unwrap_or(DEFAULT_SIZE)),
            Some(_) => continue,
            None => return Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// In the guest: relays a terminal's master to the host over `sock` until no process holds the
/// terminal any more. Input frames go to the terminal, window sizes set its size; a host that
/// went away only ends the input (the apps run on: the supervisor stops the VM if it is gone).
pub fn pump(master: &OwnedFd, sock: &mut Incoming) -> std::io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut input_open = true;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let buffered = input_open && sock.buffered();
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if input_open && !buffered {
            fds.push(PollFd::new(sock.sock.as_fd(), PollFlags::POLLIN));
        }
        let timeout = if buffered { PollTimeout::ZERO } else { PollTimeout::NONE };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        if ready[0] {
            let n = tty::read_master(master, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if sock.sock.write_all(&frame(STDOUT, &buf[..n])).is_err() {
                input_open = false;
            }
        }
        if buffered || ready.get(1) == Some(&true) {
            match read_frame(sock) {
                Ok(Some((STDIN, d))) => {
                    // An empty input frame (the invoker's input ended): a terminal has no end
                    // of input but the one typed (^D), so it changes nothing.
                    let _ = tty::write_all(master, &d);
                }
                Ok(Some((RESIZE, d))) => {
                    if let Some((rows, cols)) = size_of(&d) {
                        let _ = tty::set_winsize(master, rows, cols);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => input_open = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_sys::tty::Far;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut v = frame(STDOUT, b"hello");
        v.extend(frame(STDERR, b""));
        v.extend(resize_frame(33, 120));
        v.extend(frame(EXIT, &7i32.to_be_bytes()));
        let mut r = std::io::Cursor::new(v);
        assert_eq!(read_frame(&mut r).unwrap(), Some((STDOUT, b"hello".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), Some((STDERR, vec![])));
        let (k, d) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((k, size_of(&d)), (RESIZE, Some((33, 120))));
        assert_eq!(read_frame(&mut r).unwrap(), Some((EXIT, vec![0, 0, 0, 7])));
        let mut r2 = std::io::Cursor::new(frame(STDIN, b"in"));
        assert_eq!(read_frame(&mut r2).unwrap(), Some((STDIN, b"in".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        assert_eq!(size_of(b"abc"), None);
    }

    #[test]
    fn a_broken_stream_is_an_error_not_a_frame() {
        // An unknown kind, an absurd length, a truncated body.
        assert!(read_frame(&mut std::io::Cursor::new(vec![9, 0, 0, 0, 1, 0])).is_err());
        assert!(read_frame(&mut std::io::Cursor::new(vec![1, 0xff, 0xff, 0xff, 0xff])).is_err());
        assert!(read_frame(&mut std::io::Cursor::new(vec![1, 0, 0, 0, 5, b'a'])).is_err());
    }

    #[test]
    fn the_hosts_side_hands_out_output_in_pieces_and_takes_the_exit_status() {
        let (mut guest, host) = std::os::unix::net::UnixStream::pair().unwrap();
        guest.write_all(&frame(STDOUT, b"abcdef")).unwrap();
        guest.write_all(&frame(EXIT, &42i32.to_be_bytes())).unwrap();
        let mut g = Guest::new(host);
        let mut buf = [0u8; 4];
        assert_eq!(g.read_output(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(g.read_output(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        assert_eq!(g.read_output(&mut buf).unwrap(), 0);
        assert_eq!(g.status, Some(42));
        // Input (never an empty frame: that would end it) and sizes, framed.
        g.write_input(b"").unwrap();
        g.write_input(b"ls\r").unwrap();
        g.resize(50, 132).unwrap();
        drop(g);
        assert_eq!(read_frame(&mut guest).unwrap(), Some((STDIN, b"ls\r".to_vec())));
        assert_eq!(read_frame(&mut guest).unwrap(), Some((RESIZE, vec![0, 50, 0, 132])));
        assert_eq!(read_frame(&mut guest).unwrap(), None);
    }

    #[test]
    fn the_guests_pump_carries_a_terminal_both_ways_and_sets_its_size() {
        let pty = tty::open_pty().unwrap();
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut host = std::fs::File::from(OwnedFd::from(host));
        // What a buffered reader took off the socket already: a size, and the first 3 bytes of
        // an input frame (the socket holds the rest).
        let mut pre = resize_frame(7, 9);
        let input = frame(STDIN, b"hi\n");
        pre.extend_from_slice(&input[..3]);
        let mut g = Incoming::new(pre, std::fs::File::from(OwnedFd::from(guest)));
        assert_eq!(first_size(&mut g).unwrap(), (7, 9));
        host.write_all(&input[3..]).unwrap();
        host.write_all(&resize_frame(40, 100)).unwrap();
        let master = pty.master;
        let slave = pty.slave;
        let t = std::thread::spawn(move || pump(&master, &mut g));
        // The slave reads the input; its size came through.
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&slave, &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
        // The size frame follows the input: the pump applies it on its next turn, which may come
        // after we read the input.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let size = loop {
            let size = tty::winsize(&slave).map(|w| (w.ws_row, w.ws_col));
            if size == Some((40, 100)) || std::time::Instant::now() > deadline {
                break size;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(size, Some((40, 100)));
        tty::write_all(&slave, b"out").unwrap();
        drop(slave);
        t.join().unwrap().unwrap();
        // The echo of the input, then the output, as stdout frames; the end closes the stream.
        let mut got = Vec::new();
        let mut r = host;
        while let Ok(Some((STDOUT, d))) = read_frame(&mut r) {
            got.extend(d);
        }
        assert_eq!(got, b"hi\r\nout");
    }
}
