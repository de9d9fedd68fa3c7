//! Security settings of an app, as pure data: capability sets, the seccomp policy, resource
//! limits. stage0 computes them from flags; stage1 applies them. Parsers live here so they are
//! tested without a kernel.

use serde::{Deserialize, Serialize};

use crate::syscalls;

/// All capabilities the kernel knows (names as in capabilities(7)).
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The default set (appc's, Docker's): what a root app gets unless told otherwise.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    #[error("unknown capability {0:?} (names look like CAP_NET_ADMIN; see capabilities(7))")]
    UnknownCap(String),
    #[error("--caps-retain and --caps-remove exclude each other")]
    RetainAndRemove,
    #[error("unknown syscall or group {0:?} in --seccomp")]
    UnknownSyscall(String),
    #[error("--seccomp: {0}")]
    BadSeccomp(String),
    #[error("{flag}: {why}")]
    BadLimit { flag: &'static str, why: String },
}

/// Normalises `net_admin`, `NET_ADMIN`, `cap_net_admin` to `CAP_NET_ADMIN`, checking it exists.
pub fn cap_name(s: &str) -> Result<String, SecurityError> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SecurityError::UnknownCap(s.to_string()))
    }
}

/// The capability set of an app from `--caps-retain` / `--caps-remove`.
pub fn capability_set(retain: &[String], remove: &[String], all: bool) -> Result<Vec<String>, SecurityError> {
    if !retain.is_empty() && !remove.is_empty() {
        return Err(SecurityError::RetainAndRemove);
    }
    if !retain.is_empty() {
        let mut v = retain.iter().map(|c| cap_name(c)).collect::<Result<Vec<_>, _>>()?;
        v.sort();
        v.dedup();
        return Ok(v);
    }
    let base: &[&str] = if all { ALL_CAPS } else { DEFAULT_CAPS };
    let removed = remove.iter().map(|c| cap_name(c)).collect::<Result<Vec<_>, _>>()?;
    Ok(base.iter().map(|s| s.to_string()).filter(|c| !removed.contains(c)).collect())
}

/// Named groups of syscalls for `--seccomp`.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("@clock", &["clock_adjtime", "clock_settime", "settimeofday", "adjtimex"]),
    ("@keyring", &["add_key", "keyctl", "request_key"]),
    ("@module", &["init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms"]),
    (
        "@mount",
        &[
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
        ],
    ),
    ("@reboot", &["reboot", "kexec_load", "kexec_file_load"]),
    ("@swap", &["swapon", "swapoff"]),
    ("@raw-io", &["ioperm", "iopl"]),
    ("@debug", &["ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "perf_event_open"]),
    (
        "@obsolete",
        &[
            "_sysctl",
            "uselib",
            "ustat",
            "sysfs",
            "nfsservctl",
            "vserver",
            "afs_syscall",
            "tuxcall",
            "security",
            "putpmsg",
            "getpmsg",
        ],
    ),
    (
        "@privileged",
        &[
            "acct",
            "bpf",
            "lookup_dcookie",
            "open_by_handle_at",
            "quotactl",
            "quotactl_fd",
            "setns",
            "syslog",
            "vhangup",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    ),
];

/// What the default filter blocks (besides new user namespaces): every group except @clock's
/// read-only `adjtimex`. Close in effect to the widely used default container profile.
pub fn default_blocked() -> Vec<&'static str> {
    let mut v: Vec<&str> = GROUPS.iter().flat_map(|(_, s)| s.iter().copied()).filter(|s| *s != "adjtimex").collect();
    v.sort();
    v.dedup();
    v
}

const CLONE_NEWUSER: u64 = 0x1000_0000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "action", content = "errno")]
pub enum SeccompAction {
    Allow,
    Errno(i32),
}

/// One rule: a syscall (by number) and, optionally, "argument `arg` masked with `mask` equals
/// `value`".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompRule {
    pub syscall: String,
    pub nr: i64,
    pub action: SeccompAction,
    #[serde(default)]
    pub arg_masked_eq: Option<(u8, u64, u64)>,
}

/// A compiled policy: the default action and the exceptions to it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompPolicy {
    /// Short description for `husk status`.
    pub summary: String,
    pub default: SeccompAction,
    pub rules: Vec<SeccompRule>,
}

fn errno_of(name: &str) -> Option<i32> {
    Some(match name {
        "EPERM" => 1,
        "ENOENT" => 2,
        "EIO" => 5,
        "EACCES" => 13,
        "EFAULT" => 14,
        "EINVAL" => 22,
        "ENOSYS" => 38,
        "EOPNOTSUPP" => 95,
        n => return n.parse().ok().filter(|v: &i32| (1..4096).contains(v)),
    })
}

fn expand(item: &str) -> Result<Vec<&'static str>, SecurityError> {
    if item == "@default" {
        // Every syscall the default filter lets through.
        let blocked = default_blocked();
        return Ok(syscalls::SYSCALLS.iter().map(|(n, _)| *n).filter(|n| !blocked.contains(n)).collect());
    }
    if let Some((_, list)) = GROUPS.iter().find(|(g, _)| *g == item) {
        return Ok(list.to_vec());
    }
    syscalls::SYSCALLS
        .iter()
        .find(|(n, _)| *n == item)
        .map(|(n, _)| vec![*n])
        .ok_or_else(|| SecurityError::UnknownSyscall(item.to_string()))
}

fn rule(name: &str, action: SeccompAction) -> SeccompRule {
    SeccompRule {
        syscall: name.to_string(),
        nr: syscalls::number(name).expect("known syscall"),
        action,
        arg_masked_eq: None,
    }
}

/// The default policy: allow, except the blocked groups (EPERM), new user namespaces through
/// `unshare`/`clone` (EPERM), and `clone3` (ENOSYS, whose flags a filter cannot inspect; libc
/// then falls back to `clone`).
pub fn default_policy() -> SeccompPolicy {
    let mut rules: Vec<SeccompRule> = default_blocked()
        .into_iter()
        .filter(|n| syscalls::number(n).is_some())
        .map(|n| rule(n, SeccompAction::Errno(1)))
        .collect();
    rules.extend(user_ns_rules(1));
    SeccompPolicy { summary: "default".into(), default: SeccompAction::Allow, rules }
}

fn user_ns_rules(errno: i32) -> Vec<SeccompRule> {
    vec![
        SeccompRule {
            arg_masked_eq: Some((0, CLONE_NEWUSER, CLONE_NEWUSER)),
            ..rule("unshare", SeccompAction::Errno(errno))
        },
        SeccompRule {
            arg_masked_eq: Some((0, CLONE_NEWUSER, CLONE_NEWUSER)),
            ..rule("clone", SeccompAction::Errno(errno))
        },
        rule("clone3", SeccompAction::Errno(38)),
    ]
}

/// Parses `--seccomp mode=retain|remove[,errno=NAME],SYSCALL|@group,…` into a policy.
/// - `remove`: the default policy, plus the listed syscalls blocked.
/// - `retain`: only the listed syscalls allowed; everything else fails with the errno (default
///   EPERM). Use `@default` for "what the default policy allows".
pub fn parse_seccomp(spec: &str) -> Result<SeccompPolicy, SecurityError> {
    let mut mode = None;
    let mut errno = 1;
    let mut names: Vec<&'static str> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(m) = item.strip_prefix("mode=") {
            mode = Some(match m {
                "retain" => true,
                "remove" => false,
                other => {
                    return Err(SecurityError::BadSeccomp(format!("mode must be retain or remove, not {other:?}")))
                }
            });
        } else if let Some(e) = item.strip_prefix("errno=") {
            errno = errno_of(e).ok_or_else(|| {
                SecurityError::BadSeccomp(format!("unknown errno {e:?} (EPERM, ENOSYS, EACCES, … or a number)"))
            })?;
        } else {
            names.extend(expand(item)?);
        }
    }
    let retain = mode.ok_or_else(|| SecurityError::BadSeccomp("needs mode=retain or mode=remove".into()))?;
    if names.is_empty() {
        return Err(SecurityError::BadSeccomp("lists no syscall".into()));
    }
    names.sort();
    names.dedup();
    if retain {
        let rules = names.iter().map(|n| rule(n, SeccompAction::Allow)).collect();
        Ok(SeccompPolicy {
            summary: format!("retain {} syscalls, errno {errno}", names.len()),
            default: SeccompAction::Errno(errno),
            rules,
        })
    } else {
        let mut p = default_policy();
        for n in names {
            p.rules.retain(|r| r.syscall != n);
            p.rules.push(rule(n, SeccompAction::Errno(errno)));
        }
        p.summary = format!("default plus {spec}");
        Ok(p)
    }
}

/// Resource limits of an app (its cgroup) and its OOM score.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resources {
    /// Bytes.
    pub memory: Option<u64>,
    /// CPU quota in millicores (1000 = one CPU).
    pub cpu_millis: Option<u64>,
    /// Relative CPU weight, cgroup v1 shares (2..262144).
    pub cpu_shares: Option<u64>,
    pub pids_limit: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

/// `512M`, `1G`, `1048576`, `64Ki`.
pub fn parse_size(s: &str) -> Result<u64, SecurityError> {
    let bad = || SecurityError::BadLimit {
        flag: "--memory",
        why: format!("{s:?} is not a size (examples: 256M, 1G, 1048576)"),
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim_end_matches(['B', 'b', 'i']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        "T" | "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let v = n.checked_mul(mult).ok_or_else(bad)?;
    if v < 1 << 20 {
        return Err(SecurityError::BadLimit { flag: "--memory", why: format!("{s} is below the 1M minimum") });
    }
    Ok(v)
}

/// `500m` (millicores), `1.5` or `2` (CPUs).
pub fn parse_cpu(s: &str) -> Result<u64, SecurityError> {
    let bad = || SecurityError::BadLimit {
        flag: "--cpu",
        why: format!("{s:?} is not a CPU amount (examples: 500m, 1, 1.5)"),
    };
    let t = s.trim();
    let millis = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let f: f64 = t.parse().map_err(|_| bad())?;
        if !f.is_finite() || f <= 0.0 {
            return Err(bad());
        }
        (f * 1000.0).round() as u64
    };
    if millis < 10 {
        return Err(SecurityError::BadLimit { flag: "--cpu", why: format!("{s} is below the 10m minimum") });
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert_eq!(cap_name("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert!(cap_name("CAP_FLY").is_err());
        let s = capability_set(&[], &["NET_RAW".into()], false).unwrap();
        assert_eq!(s.len(), 13);
        assert!(!s.contains(&"CAP_NET_RAW".to_string()));
        assert_eq!(capability_set(&["chown".into()], &[], false).unwrap(), vec!["CAP_CHOWN"]);
        assert_eq!(
            capability_set(&["chown".into()], &["kill".into()], false).unwrap_err(),
            SecurityError::RetainAndRemove
        );
        assert_eq!(capability_set(&[], &[], true).unwrap().len(), ALL_CAPS.len());
    }

    #[test]
    fn default_policy_blocks_the_dangerous_calls() {
        let p = default_policy();
        for s in [
            "kexec_load",
            "init_module",
            "keyctl",
            "add_key",
            "bpf",
            "perf_event_open",
            "ptrace",
            "mount",
            "umount2",
            "reboot",
            "swapon",
            "clock_settime",
            "open_by_handle_at",
        ] {
            assert!(p.rules.iter().any(|r| r.syscall == s && r.action == SeccompAction::Errno(1)), "{s} not blocked");
        }
        let unshare = p.rules.iter().find(|r| r.syscall == "unshare").unwrap();
        assert_eq!(unshare.arg_masked_eq, Some((0, CLONE_NEWUSER, CLONE_NEWUSER)));
        assert!(p.rules.iter().all(|r| r.syscall != "adjtimex" && r.syscall != "read"));
        assert_eq!(p.default, SeccompAction::Allow);
    }

    #[test]
    fn seccomp_specs() {
        let p = parse_seccomp("mode=remove,errno=ENOSYS,chmod,@swap").unwrap();
        assert!(p.rules.iter().any(|r| r.syscall == "chmod" && r.action == SeccompAction::Errno(38)));
        assert!(p.rules.iter().any(|r| r.syscall == "swapoff" && r.action == SeccompAction::Errno(38)));
        let r = parse_seccomp("mode=retain,@default").unwrap();
        assert_eq!(r.default, SeccompAction::Errno(1));
        assert!(r.rules.iter().any(|x| x.syscall == "read") && r.rules.iter().all(|x| x.syscall != "kexec_load"));
        assert_eq!(
            parse_seccomp("mode=remove,nosuchcall").unwrap_err(),
            SecurityError::UnknownSyscall("nosuchcall".into())
        );
        assert!(parse_seccomp("chmod").is_err());
        assert!(parse_seccomp("mode=retain").is_err());
        assert!(parse_seccomp("mode=remove,errno=EWHAT,chmod").is_err());
    }

    #[test]
    fn limits() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert!(parse_size("12").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_cpu("500m").unwrap(), 500);
        assert_eq!(parse_cpu("1.5").unwrap(), 1500);
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("-1").is_err());
    }
}
