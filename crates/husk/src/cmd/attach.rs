//! `attach`: the terminal of a detached pod (`run -d -t`), through its relay's `attach.sock`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use husk_pod::PodError;
use husk_sys::tty::{self, Far, RelayEnd};
use husk_types::abi::ATTACH_SOCKET;
use husk_types::attach::{FromPod, ToPod, MAX_FRAME};
use husk_types::pod::Stdio;

use crate::exit::{self, Failure};
use crate::flags::pod::*;
use crate::Ctx;

/// The connection to a pod's terminal relay, as the far side of the relay from ours.
struct Attached {
    sock: OwnedFd,
    packet: Vec<u8>,
}

impl Far for Attached {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    fn read_output(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = tty::recv_packet(&self.sock, &mut self.packet)?;
        if n == 0 {
            return Ok(0);
        }
        match FromPod::decode(&self.packet[..n]) {
            Ok(FromPod::Output(d)) => {
                let k = d.len().min(buf.len());
                buf[..k].copy_from_slice(&d[..k]);
                Ok(k)
            }
            Ok(FromPod::Busy) => Err(io::Error::other("another `husk attach` is attached to this pod")),
            Err(e) => Err(io::Error::other(format!("the pod's terminal relay sent a bad frame: {e}"))),
        }
    }

    fn write_input(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_FRAME) {
            tty::send_packet(&self.sock, &ToPod::Input(chunk).encode())?;
        }
        Ok(())
    }

    fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        tty::send_packet(&self.sock, &ToPod::Resize { rows, cols }.encode())
    }
}

pub fn cmd_attach(ctx: &Ctx, a: &AttachArgs) -> Result<i32, Failure> {
    let pods = ctx.pods()?;
    let (uuid, i) = a.pod.running(&pods, "attached to")?;
    if i.manifest.as_ref().map(|m| m.stdio) != Some(Stdio::AttachableTerminal) {
        return Err(Failure::new(exit::POD, anyhow::anyhow!("pod {uuid} has no terminal to attach to"))
            .hint("start the pod with `husk run -d -t …` (or -dit); see its output with `husk logs`"));
    }
    let sock = tty::connect_seqpacket(&i.dir, ATTACH_SOCKET).map_err(|e| {
        Failure::new(exit::POD, anyhow::anyhow!("cannot connect to the terminal of pod {uuid}: {e}"))
            .hint("the pod may have just exited: see `husk status`")
    })?;
    let mut far = Attached { sock, packet: vec![0u8; MAX_FRAME + 1] };
    let mut keys = Some(a.detach_keys.clone()).filter(|k| !k.is_empty());
    if tty::is_terminal(io::stdin()) {
        let how = if keys.is_some() { " (detach with the detach keys; default ctrl-p ctrl-q)" } else { "" };
        eprintln!("husk: attached to pod {uuid}{how}");
    }
    let end = tty::relay(&mut far, !a.no_stdin, &mut keys)
        .map_err(|e| Failure::new(exit::POD, anyhow::anyhow!("pod {uuid}: {e}")))?;
    match end {
        RelayEnd::Detached => {
            eprintln!("\r\nhusk: detached from pod {uuid}; it runs on (husk attach {uuid} to come back)");
            Ok(0)
        }
        // The app's terminal closed: the pod ends with it; its status is ours, as with `run`.
        RelayEnd::Ended => {
            let (_, dir) = pods.observe(&uuid)?;
            let _l = husk_sys::Lock::lock_dir_timeout(
                &dir,
                husk_sys::LockKind::Shared,
                Some(std::time::Duration::from_secs(30)),
                || {},
            )
            .map_err(PodError::from)?;
            Ok(pods.info(&uuid)?.exit_status().unwrap_or(exit::POD))
        }
    }
}
