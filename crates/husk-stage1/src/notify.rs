//! sd_notify(3) for a pod: readiness to `$NOTIFY_SOCKET`, and the proxy an app's own
//! notifications go through (`--sd-notify=app:NAME`).
//!
//! Everything reaches systemd from the supervisor, which is the unit's main process (`husk run`
//! exec's into it), so a unit's default `NotifyAccess=main` accepts it; `MAINPID` is always the
//! supervisor. Hand-written because the protocol is one datagram of `KEY=VALUE` lines; the
//! `sd-notify` crate sends only from the calling process and knows no filtering.

use std::os::fd::{AsFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use husk_types::pod::{Notify, PodManifest};

use crate::common::{Context, Fail, Step};

/// What an app may tell systemd through husk (the rest, MAINPID and BARRIER above all, stays
/// with husk).
const PASSED_ON: &[&str] = &["READY", "STATUS", "RELOADING", "STOPPING", "WATCHDOG", "EXTEND_TIMEOUT_USEC", "ERRNO"];

/// Where notifications go: the unit's `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
/// socket).
pub struct Notifier {
    addr: SocketAddr,
    sock: UnixDatagram,
}

/// The mode in effect: [`Notify::Auto`] is `pod` when `$NOTIFY_SOCKET` is set.
pub fn mode(m: &PodManifest, socket_set: bool) -> Notify {
    match &m.systemd.notify {
        Notify::Auto if socket_set => Notify::Pod,
        Notify::Auto => Notify::Ignore,
        other => other.clone(),
    }
}

impl Notifier {
    /// The notifier of `$NOTIFY_SOCKET`; None when it is unset or empty.
    pub fn from_env() -> Result<Option<Notifier>, Fail> {
        let Some(v) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else { return Ok(None) };
        let v = v.to_string_lossy().into_owned();
        let addr = match v.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None => SocketAddr::from_pathname(&v),
        }
        .ctx(Step::Pod, || format!("NOTIFY_SOCKET={v:?} is not a socket address"))?;
        let sock = UnixDatagram::unbound().ctx(Step::Pod, || "cannot create a notify socket".into())?;
        Ok(Some(Notifier { addr, sock }))
    }

    /// Sends one notification; a failure is reported, never fatal (systemd may have gone).
    pub fn send(&self, text: &str) {
        if let Err(e) = self.sock.send_to_addr(text.as_bytes(), &self.addr) {
            eprintln!("husk stage1: cannot notify systemd ({text:?}): {e}");
        }
    }
}

/// The readiness message of the pod.
pub fn ready(mainpid: i32) -> String {
    format!("READY=1\nMAINPID={mainpid}\n")
}

/// What an app's datagram becomes: its lines husk passes on, then `MAINPID=` the supervisor;
/// None when nothing is left to pass on (a lone `BARRIER=1`, garbage).
pub fn filter(datagram: &[u8], mainpid: i32) -> Option<String> {
    let text = std::str::from_utf8(datagram).ok()?;
    let kept: Vec<&str> =
        text.lines().filter(|l| l.split_once('=').is_some_and(|(k, _)| PASSED_ON.contains(&k))).collect();
    if kept.is_empty() {
        return None;
    }
    Some(format!("{}\nMAINPID={mainpid}\n", kept.join("\n")))
}

/// The app side: a datagram socket in the pod dir, bound at `/run/notify` in the app.
pub struct Proxy {
    pub sock: UnixDatagram,
    pub dir: PathBuf,
}

impl Proxy {
    /// Binds `<pod>/notify/notify.sock` (mode 0666: the app may run as any user).
    pub fn bind(pod_dir: &Path) -> Result<Proxy, Fail> {
        use std::os::unix::fs::PermissionsExt;
        let dir = husk_types::abi::PodDir::new(pod_dir).notify_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ctx(Step::Pod, || format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .ctx(Step::Pod, || format!("cannot set the mode of {}", dir.display()))?;
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).ctx(Step::Pod, || format!("cannot bind {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .ctx(Step::Pod, || format!("cannot set the mode of {}", path.display()))?;
        sock.set_nonblocking(true).ctx(Step::Pod, || "cannot make the notify socket non-blocking".into())?;
        Ok(Proxy { sock, dir })
    }

    /// Passes on what the app sent (every datagram waiting). Fds that came with a datagram
    /// (`BARRIER=1` sends one) are closed, which is what the app's barrier waits for.
    pub fn forward(&self, to: Option<&Notifier>, mainpid: i32) {
        loop {
            let mut buf = [0u8; 4096];
            let (n, fds) = match husk_sys::tty::recv_with_fds(self.sock.as_fd(), &mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("husk stage1: reading the app's notification: {e}");
                    return;
                }
            };
            drop::<Vec<OwnedFd>>(fds);
            if let (Some(text), Some(to)) = (filter(&buf[..n], mainpid), to) {
                to.send(&text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_systemd_should_hear_from_an_app_is_passed_on() {
        assert_eq!(filter(b"READY=1\nSTATUS=serving", 42).as_deref(), Some("READY=1\nSTATUS=serving\nMAINPID=42\n"));
        assert_eq!(filter(b"MAINPID=1\nREADY=1\n", 7).as_deref(), Some("READY=1\nMAINPID=7\n"), "MAINPID is ours");
        assert_eq!(filter(b"BARRIER=1", 7), None);
        assert_eq!(filter(b"FDSTORE=1\nFDNAME=x", 7), None, "no fd store through husk");
        assert_eq!(filter(b"\xff\xfe", 7), None);
        assert_eq!(
            filter(b"WATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000\nRELOADING=1\nSTOPPING=1", 1).as_deref(),
            Some("WATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000\nRELOADING=1\nSTOPPING=1\nMAINPID=1\n")
        );
        assert_eq!(ready(9), "READY=1\nMAINPID=9\n");
    }
}
