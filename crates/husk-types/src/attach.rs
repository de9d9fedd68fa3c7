//! The frames between `husk attach` and the stage1 terminal relay of a detached pod, one per
//! packet of a `SOCK_SEQPACKET` socket (`attach.sock` in the pod dir): the packet boundaries
//! keep a window size from being read as input. The first byte is the frame's kind.

/// The most one frame carries (the relay reads and sends output in chunks of this size).
pub const MAX_FRAME: usize = 32 * 1024;

/// `husk attach` → relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToPod<'a> {
    /// Keystrokes (or piped input) for the app's terminal.
    Input(&'a [u8]),
    /// The attaching terminal's size: the relay sets it on the pty, the kernel tells the app
    /// (SIGWINCH).
    Resize { rows: u16, cols: u16 },
}

/// relay → `husk attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromPod<'a> {
    /// What the app wrote to its terminal.
    Output(&'a [u8]),
    /// Another client is attached; this one is turned away.
    Busy,
}

const INPUT: u8 = b'i';
const RESIZE: u8 = b'r';
const OUTPUT: u8 = b'o';
const BUSY: u8 = b'b';

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty attach frame")]
    Empty,
    #[error("unknown attach frame kind {0:#04x}")]
    Kind(u8),
    #[error("a resize frame has {0} bytes, not 5")]
    Resize(usize),
}

impl ToPod<'_> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToPod::Input(d) => [&[INPUT][..], d].concat(),
            ToPod::Resize { rows, cols } => {
                let (r, c) = (rows.to_le_bytes(), cols.to_le_bytes());
                vec![RESIZE, r[0], r[1], c[0], c[1]]
            }
        }
    }
}

impl<'a> ToPod<'a> {
    pub fn decode(b: &'a [u8]) -> Result<ToPod<'a>, FrameError> {
        match b.split_first() {
            None => Err(FrameError::Empty),
            Some((&INPUT, d)) => Ok(ToPod::Input(d)),
            Some((&RESIZE, [r0, r1, c0, c1])) => {
                Ok(ToPod::Resize { rows: u16::from_le_bytes([*r0, *r1]), cols: u16::from_le_bytes([*c0, *c1]) })
            }
            Some((&RESIZE, _)) => Err(FrameError::Resize(b.len())),
            Some((k, _)) => Err(FrameError::Kind(*k)),
        }
    }
}

impl FromPod<'_> {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            FromPod::Output(d) => [&[OUTPUT][..], d].concat(),
            FromPod::Busy => vec![BUSY],
        }
    }
}

impl<'a> FromPod<'a> {
    pub fn decode(b: &'a [u8]) -> Result<FromPod<'a>, FrameError> {
        match b.split_first() {
            None => Err(FrameError::Empty),
            Some((&OUTPUT, d)) => Ok(FromPod::Output(d)),
            Some((&BUSY, [])) => Ok(FromPod::Busy),
            Some((k, _)) => Err(FrameError::Kind(*k)),
        }
    }
}

/// Finds podman's detach sequence (default ctrl-p ctrl-q) in what the user types. Bytes that
/// might begin the sequence are held back until the next key shows whether they do; when the
/// sequence completes, what it held is dropped.
#[derive(Debug, Clone)]
pub struct DetachKeys {
    keys: Vec<u8>,
    matched: usize,
}

/// What [`DetachKeys::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Pass these bytes on (possibly none, while a partial match is held back).
    Pass(Vec<u8>),
    /// The sequence was typed: detach; the bytes before it are to be passed on first.
    Detach(Vec<u8>),
}

impl DetachKeys {
    /// Parses podman's syntax: comma-separated keys, each `ctrl-<c>` (c in a-z, @, [, \, ], ^,
    /// _) or one printable character. The empty string disables detaching.
    pub fn parse(spec: &str) -> Result<DetachKeys, String> {
        let mut keys = Vec::new();
        for k in spec.split(',').filter(|k| !k.is_empty()) {
            let b = if let Some(c) = k.strip_prefix("ctrl-") {
                match c.as_bytes() {
                    [c @ b'a'..=b'z'] => c - b'a' + 1,
                    [c @ (b'@' | b'[' | b'\\' | b']' | b'^' | b'_')] => c - b'@',
                    _ => {
                        return Err(format!(
                        "{k:?} is not a control key (ctrl-a … ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_)"
                    ))
                    }
                }
            } else {
                match k.as_bytes() {
                    [c] if c.is_ascii_graphic() => *c,
                    _ => return Err(format!("{k:?} is not one key: write ctrl-<letter> or a single character")),
                }
            };
            keys.push(b);
        }
        Ok(DetachKeys { keys, matched: 0 })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Feeds typed bytes through the matcher.
    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut out = Vec::with_capacity(input.len());
        if self.keys.is_empty() {
            out.extend_from_slice(input);
            return Fed::Pass(out);
        }
        for &b in input {
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Fed::Detach(out);
                }
                continue;
            }
            // Not the sequence after all: what was held goes through, and this byte may begin
            // it again.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return Fed::Detach(out);
                }
            } else {
                out.push(b);
            }
        }
        Fed::Pass(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for f in [ToPod::Input(b"ls\r"), ToPod::Input(b""), ToPod::Resize { rows: 40, cols: 300 }] {
            assert_eq!(ToPod::decode(&f.encode()).unwrap(), f);
        }
        for f in [FromPod::Output(b"\x1b[1mhi"), FromPod::Busy] {
            assert_eq!(FromPod::decode(&f.encode()).unwrap(), f);
        }
    }

    #[test]
    fn bad_frames_are_errors_not_input() {
        assert_eq!(ToPod::decode(b""), Err(FrameError::Empty));
        assert_eq!(ToPod::decode(b"r\x01"), Err(FrameError::Resize(2)));
        assert_eq!(ToPod::decode(b"xyz"), Err(FrameError::Kind(b'x')));
        assert_eq!(FromPod::decode(b"bb"), Err(FrameError::Kind(b'b')));
        assert_eq!(FromPod::decode(b""), Err(FrameError::Empty));
    }

    #[test]
    fn detach_keys_parse_like_podman() {
        assert_eq!(DetachKeys::parse("ctrl-p,ctrl-q").unwrap().keys, vec![0x10, 0x11]);
        assert_eq!(DetachKeys::parse("ctrl-[,a").unwrap().keys, vec![0x1b, b'a']);
        assert!(DetachKeys::parse("").unwrap().is_empty());
        for bad in ["ctrl-", "ctrl-1", "ab", "ctrl-pq", " "] {
            assert!(DetachKeys::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn detach_sequence_is_found_across_reads_and_held_bytes_are_released() {
        let mut d = DetachKeys::parse("ctrl-p,ctrl-q").unwrap();
        assert_eq!(d.feed(b"ab\x10"), Fed::Pass(b"ab".to_vec()));
        // ctrl-p then x: not the sequence; both go through.
        assert_eq!(d.feed(b"x"), Fed::Pass(b"\x10x".to_vec()));
        // ctrl-p ctrl-p ctrl-q: the first ctrl-p is input, the rest detaches.
        assert_eq!(d.feed(b"\x10\x10"), Fed::Pass(b"\x10".to_vec()));
        assert_eq!(d.feed(b"\x11tail"), Fed::Detach(vec![]));
        assert_eq!(d.feed(b"z\x10\x11"), Fed::Detach(b"z".to_vec()));
        let mut none = DetachKeys::parse("").unwrap();
        assert_eq!(none.feed(b"\x10\x11"), Fed::Pass(b"\x10\x11".to_vec()));
        let mut one = DetachKeys::parse("ctrl-x").unwrap();
        assert_eq!(one.feed(b"ab\x18"), Fed::Detach(b"ab".to_vec()));
    }
}
