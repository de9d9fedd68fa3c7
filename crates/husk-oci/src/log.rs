//! Messages: to stderr always, and to `--log FILE` as text or as runc's JSON lines
//! (`{"level":"error","msg":"…","time":"…"}`), which conmon and containerd's shim read back
//! for the error they show.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

pub struct Log {
    file: Option<File>,
    json: bool,
    debug: bool,
}

impl Log {
    pub fn new(path: Option<&Path>, format: &str, debug: bool) -> Result<Log, String> {
        let json = match format {
            "text" => false,
            "json" => true,
            other => return Err(format!("--log-format={other:?}: use text or json")),
        };
        let file = match path {
            None => None,
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("cannot open --log {}: {e}", p.display()))?,
            ),
        };
        Ok(Log { file, json, debug })
    }

    fn write(&self, level: &str, msg: &str) {
        let Some(mut f) = self.file.as_ref() else { return };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let line = if self.json {
            let mut v = serde_json::to_string(&serde_json::json!({"level": level, "msg": msg, "time": time}))
                .unwrap_or_default();
            v.push('\n');
            v
        } else {
            format!("{time} {level} {msg}\n")
        };
        let _ = f.write_all(line.as_bytes());
    }

    pub fn error(&self, msg: &str) {
        eprintln!("husk-oci: {msg}");
        self.write("error", msg);
    }

    /// A warning goes to the log file when there is one (callers such as conmon and
    /// containerd's shim always pass one), else to stderr.
    pub fn warn(&self, msg: &str) {
        if self.file.is_none() {
            eprintln!("husk-oci: warning: {msg}");
        }
        self.write("warning", msg);
    }

    pub fn debug(&self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
        }
    }
}
