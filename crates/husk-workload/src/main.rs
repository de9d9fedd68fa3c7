//! husk-workload: a tiny static program run inside test pods. It prints, as one JSON object,
//! the facts a test needs to assert on: identity, capabilities, environment, working
//! directory, hostname, mounts, namespaces, cgroups. It links statically and runs in any
//! image.
//!
//! Usage: `husk-workload [report]` (default), `argv [ARGS…]` (argv and environment as hex),
//! `syn DST PORT [MS]` (a raw TCP SYN out of eth0: does a SYN-ACK come back?),
//! `exit N`, `sleep SECS`, `write PATH TEXT`, `cat PATH`, `probe clone3|x32-getpid` (the errno
//! of a system call made harmless by its arguments: what the seccomp filter says).
#![forbid(unsafe_code)] // only husk-sys may use `unsafe` (STYLE.md)

mod syn;

use std::fmt::Write as _;
use std::fs;

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn status_field(status: &str, key: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix(&format!("{key}:"))).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn report() -> String {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ids = |k: &str| status_field(&status, k).split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut fields: Vec<(String, String)> = Vec::new();
    let arr = |v: &[String]| format!("[{}]", v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(","));
    fields.push(("uid".into(), ids("Uid").first().cloned().unwrap_or_default()));
    fields.push(("gid".into(), ids("Gid").first().cloned().unwrap_or_default()));
    fields.push(("groups".into(), format!("[{}]", ids("Groups").join(","))));
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"] {
        fields.push((k.to_lowercase(), json_str(&status_field(&status, k))));
    }
    fields.push(("pid".into(), std::process::id().to_string()));
    let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    fields.push(("env".into(), arr(&env)));
    fields
        .push(("cwd".into(), json_str(&std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default())));
    fields
        .push(("kernel".into(), json_str(fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim())));
    let init = fs::read("/proc/1/cmdline").unwrap_or_default();
    fields.push(("init".into(), json_str(&String::from_utf8_lossy(init.split(|b| *b == 0).next().unwrap_or(&[])))));
    fields.push((
        "hostname".into(),
        json_str(fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim()),
    ));
    let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let fstype = l.split(" - ").nth(1).and_then(|p| p.split(' ').next()).unwrap_or("");
            format!("{} {} {}", f.get(4).unwrap_or(&""), fstype, f.get(5).unwrap_or(&""))
        })
        .collect();
    fields.push(("mounts".into(), arr(&mounts)));
    let mut ns = Vec::new();
    for n in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        let v = fs::read_link(format!("/proc/self/ns/{n}")).map(|p| p.display().to_string()).unwrap_or_default();
        ns.push(format!("{}:{}", json_str(n), json_str(&v)));
    }
    fields.push(("namespaces".into(), format!("{{{}}}", ns.join(","))));
    let cg: Vec<String> =
        fs::read_to_string("/proc/self/cgroup").unwrap_or_default().lines().map(String::from).collect();
    fields.push(("cgroup".into(), arr(&cg)));
    let mut ifs: Vec<String> = fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    ifs.sort();
    fields.push(("interfaces".into(), arr(&ifs)));
    let fds: Vec<String> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let t = fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
                    format!("{}={}", e.file_name().to_string_lossy(), t)
                })
                .collect()
        })
        .unwrap_or_default();
    fields.push(("fds".into(), arr(&fds)));
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}:{}", json_str(k), v)).collect();
    format!("{{{}}}", body.join(","))
}

/// Every argument and environment entry as hex, exactly the bytes execve delivered.
fn argv_report() -> String {
    use std::os::unix::ffi::OsStrExt;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // After the program and the mode.
    let argv: Vec<String> = std::env::args_os().skip(2).map(|a| json_str(&hex(a.as_bytes()))).collect();
    let env: Vec<String> =
        std::env::vars_os().map(|(k, v)| json_str(&hex(&[k.as_bytes(), b"=", v.as_bytes()].concat()))).collect();
    format!("{{\"argv\":[{}],\"env\":[{}]}}", argv.join(","), env.join(","))
}

fn main() {
    // Arguments may be any bytes (the argv mode reports them); modes and their operands are text.
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    match args.first().map(String::as_str) {
        None | Some("report") => println!("{}", report()),
        Some("argv") => println!("{}", argv_report()),
        Some("syn") => match syn::run(
            args.get(1).map(String::as_str).unwrap_or(""),
            args.get(2).map(String::as_str).unwrap_or(""),
            args.get(3).map(String::as_str),
        ) {
            Ok(r) => println!("{r}"),
            Err(e) => {
                eprintln!("syn: {e}");
                std::process::exit(1);
            }
        },
        Some("exit") => std::process::exit(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(0)),
        Some("sleep") => std::thread::sleep(std::time::Duration::from_secs_f64(
            args.get(1).and_then(|c| c.parse().ok()).unwrap_or(3600.0),
        )),
        Some("write") => {
            if let Err(e) = fs::write(&args[1], args.get(2).map(String::as_str).unwrap_or("")) {
                eprintln!("write {}: {e}", args[1]);
                std::process::exit(1);
            }
        }
        Some("cat") => match fs::read_to_string(&args[1]) {
            Ok(s) => print!("{s}"),
            Err(e) => {
                eprintln!("cat {}: {e}", args[1]);
                std::process::exit(1);
            }
        },
        Some("notify") => {
            if let Err(e) = notify(&args[1..]) {
                eprintln!("notify: {e}");
                std::process::exit(1);
            }
        }
        Some("probe") => {
            let probe = match args.get(1).map(String::as_str) {
                Some("clone3") => husk_sys::proc::Probe::Clone3,
                Some("x32-getpid") => husk_sys::proc::Probe::X32Getpid,
                other => {
                    eprintln!("probe: clone3 or x32-getpid, not {other:?}");
                    std::process::exit(2);
                }
            };
            println!("{}", husk_sys::proc::probe_syscall(probe));
        }
        Some("serve-fd3") => {
            if let Err(e) = serve_fd3() {
                eprintln!("serve-fd3: {e}");
                std::process::exit(1);
            }
        }
        Some(other) => {
            eprintln!("husk-workload: unknown mode {other}");
            std::process::exit(2);
        }
    }
}

/// `notify [--barrier] MESSAGE…`: sends each MESSAGE (`\n` in it is a newline) as a datagram to
/// `$NOTIFY_SOCKET`, as sd_notify(3) does (`--sleep=MS` among them waits that long first);
/// `--barrier` then sends `BARRIER=1` with a pipe's write end and waits (5 s at most) for the
/// receiver to close it, as sd_notify_barrier(3) does.
fn notify(args: &[String]) -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let path = std::env::var("NOTIFY_SOCKET").map_err(|_| "NOTIFY_SOCKET is not set".to_string())?;
    println!("NOTIFY_SOCKET={path}");
    let sock = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
    let barrier = args.iter().any(|a| a == "--barrier");
    for m in args.iter().filter(|a| *a != "--barrier") {
        if let Some(ms) = m.strip_prefix("--sleep=") {
            let ms: u64 = ms.parse().map_err(|_| format!("{m}: not a number of milliseconds"))?;
            std::thread::sleep(std::time::Duration::from_millis(ms));
            continue;
        }
        sock.send_to(m.replace("\\n", "\n").as_bytes(), &path).map_err(|e| format!("send to {path}: {e}"))?;
    }
    if barrier {
        let (r, w) = nix::unistd::pipe().map_err(|e| e.to_string())?;
        let addr = UnixAddr::new(path.as_str()).map_err(|e| e.to_string())?;
        let fds = [w.as_raw_fd()];
        sendmsg(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(b"BARRIER=1")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map_err(|e| format!("send the barrier: {e}"))?;
        drop(w);
        let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&r), nix::poll::PollFlags::POLLIN)];
        let n = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(5000u16)).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the barrier was not acknowledged within 5 s".into());
        }
        println!("barrier acknowledged");
    }
    Ok(())
}

/// `serve-fd3`: accepts one connection on the socket-activated fd 3 and answers with what
/// sd_listen_fds(3) would see: `LISTEN_FDS`, whether `LISTEN_PID` is this process, and
/// `LISTEN_FDNAMES`.
fn serve_fd3() -> Result<(), String> {
    use nix::sys::socket::{accept, send, MsgFlags};
    let fds = std::env::var("LISTEN_FDS").map_err(|_| "LISTEN_FDS is not set".to_string())?;
    let pid_ok = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // By number, as a socket-activated daemon does: fd 3 is the activator's listening socket.
    let conn = accept(3).map_err(|e| format!("accept on fd 3: {e}"))?;
    let answer = format!("LISTEN_FDS={fds} LISTEN_PID_IS_ME={pid_ok} LISTEN_FDNAMES={names}\n");
    send(conn, answer.as_bytes(), MsgFlags::empty()).map_err(|e| format!("send: {e}"))?;
    Ok(())
}
