//! The messages between husk's processes: stage0, the stage1 supervisor, the pod init and an
//! app's child before it execs. One enum, one line of JSON per message, over any byte stream (a
//! pipe for `ns`; later vsock or virtio-serial for `kvm`). A malformed line or a message the
//! receiver does not expect is an error that says what was expected and what came.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "kebab-case")]
pub enum Message {
    /// supervisor → pod init: the app roots are mounted (and, with private users, the id maps
    /// written); start the apps.
    Go,
    /// pod init → supervisor: an app started, with its pid in the pod's PID namespace.
    AppStarted { app: String, pid: i32 },
    /// pod init → supervisor, and stage1 → stage0 (`HUSK_READY_FD`): every app started.
    Ready,
    /// pod init → supervisor, and stage1 → stage0: the pod did not start, and why.
    Failed { reason: String },
    /// An app's child → the pod init: setting the app up or its `execve` failed; `code` is the
    /// app's status to record (125 set-up, 126 not executable, 127 not found).
    ExecFailed { code: i32, reason: String },
    /// husk-oci's helper → husk-oci: the container's init (or an exec'd process) exists, with
    /// its pid on the host.
    Spawned { pid: i32 },
    /// An OCI container's init → husk-oci: the mounts are made; run the prestart and
    /// createRuntime hooks, then send [`Message::Continue`].
    Mounted,
    /// husk-oci → the container's init: go on; `state` is the state JSON its hooks read.
    Continue { state: String },
    /// A kvm pod's supervisor → its guest init: the signal the supervisor received (SIGTERM,
    /// SIGINT, … to pass on to the apps; SIGALRM: the stop deadline passed, kill them).
    Signal { signal: i32 },
    /// A kvm pod's guest init → its supervisor: every app has ended; the pod's status.
    PodExited { code: i32 },
    /// `husk enter` of a kvm pod → the guest's enter service: run `cmd` in app `app` (guest pid
    /// `pid`), with its restrictions (and, with `tty`, a terminal of the app's devpts); then the
    /// session's framed streams follow.
    Enter {
        app: String,
        pid: i32,
        cmd: Vec<crate::ByteStr>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tty: bool,
    },
}

impl Message {
    /// Its name, as in the wire format (for messages about unexpected ones).
    pub fn name(&self) -> &'static str {
        match self {
            Message::Go => "go",
            Message::AppStarted { .. } => "app-started",
            Message::Ready => "ready",
            Message::Failed { .. } => "failed",
            Message::ExecFailed { .. } => "exec-failed",
            Message::Spawned { .. } => "spawned",
            Message::Mounted => "mounted",
            Message::Continue { .. } => "continue",
            Message::Signal { .. } => "signal",
            Message::PodExited { .. } => "pod-exited",
            Message::Enter { .. } => "enter",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    #[error("malformed message {line:?}: {why}")]
    Malformed { line: String, why: String },
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: String, got: String },
    #[error("the peer closed the channel; expected {expected}")]
    Closed { expected: String },
    #[error("message channel")]
    Io(#[from] std::io::Error),
}

/// The wire form of a message: one line of JSON, newline-terminated.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut v = serde_json::to_vec(m).expect("messages serialize");
    v.push(b'\n');
    v
}

/// Parses one line (with or without its newline).
pub fn decode(line: &[u8]) -> Result<Message, MsgError> {
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(text).map_err(|e| MsgError::Malformed {
        line: String::from_utf8_lossy(text).chars().take(200).collect(),
        why: e.to_string(),
    })
}

/// Writes one message.
pub fn send(w: &mut impl Write, m: &Message) -> Result<(), MsgError> {
    w.write_all(&encode(m))?;
    w.flush()?;
    Ok(())
}

/// Reads the next message; `Ok(None)` when the peer closed the channel first.
pub fn recv(r: &mut impl BufRead) -> Result<Option<Message>, MsgError> {
    let mut line = Vec::new();
    // A line longer than this is no message of ours (and must not grow without bound).
    let n = std::io::Read::take(&mut *r, 64 << 10).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    decode(&line).map(Some)
}

/// Reads the next message, which must be one of `expected` (by name); the channel closing
/// first is [`MsgError::Closed`].
pub fn expect(r: &mut impl BufRead, expected: &[&str]) -> Result<Message, MsgError> {
    let want = || expected.join(" or ");
    match recv(r)? {
        None => Err(MsgError::Closed { expected: want() }),
        Some(m) if expected.contains(&m.name()) => Ok(m),
        Some(m) => Err(MsgError::Unexpected { expected: want(), got: m.name().to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_on_one_line() {
        let all = [
            Message::Go,
            Message::AppStarted { app: "web".into(), pid: 7 },
            Message::Ready,
            Message::Failed { reason: "app web: not found\nsecond line".into() },
            Message::ExecFailed { code: 127, reason: "x".into() },
            Message::Spawned { pid: 42 },
            Message::Mounted,
            Message::Continue { state: "{\"id\":\"c\"}".into() },
        ];
        for m in all {
            let wire = encode(&m);
            assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), 1, "{m:?} is not one line");
            assert_eq!(decode(&wire).unwrap(), m);
        }
        assert_eq!(encode(&Message::Go), b"{\"msg\":\"go\"}\n");
    }

    /// The old text protocol parsed a malformed line to pid 0 and an app silently dropped out.
    #[test]
    fn a_malformed_message_is_an_error_naming_the_line() {
        for bad in [&b"web 12"[..], b"{\"msg\":\"app-started\",\"app\":\"web\"}", b"{\"msg\":\"launch\"}", b"\xff"] {
            let e = decode(bad).unwrap_err();
            assert!(matches!(e, MsgError::Malformed { .. }), "{e}");
        }
        let e = decode(b"{\"msg\":\"app-started\",\"app\":\"web\",\"pid\":\"x\"}").unwrap_err();
        assert!(e.to_string().contains("app-started"), "{e}");
    }

    #[test]
    fn unexpected_and_missing_messages_say_what_was_expected() {
        let mut r = std::io::Cursor::new(encode(&Message::Ready));
        let e = expect(&mut r, &["go"]).unwrap_err();
        assert_eq!(e.to_string(), "expected go, got ready");
        let e = expect(&mut r, &["app-started", "ready"]).unwrap_err();
        assert_eq!(e.to_string(), "the peer closed the channel; expected app-started or ready");
        let mut two = std::io::Cursor::new([encode(&Message::Go), encode(&Message::Ready)].concat());
        assert_eq!(expect(&mut two, &["go"]).unwrap(), Message::Go);
        assert_eq!(recv(&mut two).unwrap(), Some(Message::Ready));
        assert_eq!(recv(&mut two).unwrap(), None);
    }

    #[test]
    fn an_endless_line_is_cut_off_not_buffered() {
        let mut r = std::io::Cursor::new(vec![b'a'; 1 << 20]);
        assert!(matches!(recv(&mut r), Err(MsgError::Malformed { .. })));
    }
}
