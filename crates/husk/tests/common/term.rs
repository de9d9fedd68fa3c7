//! husk at a terminal, for the tests of `run -t`, `attach` and `enter -t`: husk is started on
//! a pty as its controlling terminal, the way a terminal emulator starts a shell.
#![allow(dead_code)]

use std::io::Read;
use std::os::fd::AsFd;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_sys::tty;

use super::common::Env;

/// husk at a terminal: the pty's master is ours, everything husk writes is collected.
pub struct Term {
    pub child: Child,
    pub pty: tty::Pty,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Term {
    pub fn spawn(env: &Env, args: &[&str], rows: u16, cols: u16) -> Term {
        let mut cmd = env.cmd();
        cmd.args(args).env("TERM", "husk-test-term");
        let (child, pty) = tty::spawn_on_pty(&mut cmd, rows, cols).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut master = std::fs::File::from(pty.master.try_clone().unwrap());
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term { child, pty, seen }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits until the screen shows `needle`; fails with the whole transcript otherwise.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = self.text();
            if t.contains(needle) {
                return t;
            }
            assert!(Instant::now() < deadline, "never saw {needle:?}; the terminal showed:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn send(&self, keys: &[u8]) {
        tty::write_all(&self.pty.master, keys).unwrap();
    }

    /// As a terminal window resized by the user: the kernel signals husk (SIGWINCH).
    pub fn resize(&self, rows: u16, cols: u16) {
        tty::set_winsize(&self.pty.master, rows, cols).unwrap();
    }

    pub fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The last output may still be in flight from the pty.
                std::thread::sleep(Duration::from_millis(100));
                return (st.code().unwrap_or(-1), self.text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("husk did not exit; the terminal showed:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether husk left the terminal as it found it (cooked: line editing and echo).
    pub fn cooked(&self) -> bool {
        tty::is_cooked(self.pty.slave.as_fd()).unwrap()
    }
}
