//! Turning a [`SeccompPolicy`] into BPF with `seccompiler` (Firecracker's compiler).
//!
//! seccompiler builds one filter per (match action, default action) pair, so a policy becomes
//! one filter per distinct action of its rules. Stacked filters are all evaluated and the most
//! restrictive verdict wins; as every syscall appears in exactly one of them, the result is the
//! policy's.

use std::collections::BTreeMap;

use husk_types::security::{SeccompAction as Act, SeccompPolicy};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use crate::common::Fail;

/// A filter's action, as the kernel knows them (the subset seccompiler can emit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Log,
    Trace(u32),
}

/// An argument comparison (`arg` is 0..6; the 64-bit value is compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub arg: u8,
    pub op: CmpOp,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(u64),
}

/// One rule: the syscall, its action, and the conditions that must all hold (none: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub nr: i64,
    pub action: Action,
    pub conds: Vec<Cond>,
}

/// A whole filter: what a syscall gets when no rule matches, and the rules. Both husk's own
/// [`SeccompPolicy`] and an OCI bundle's `linux.seccomp` become one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub default: Action,
    pub rules: Vec<Rule>,
}

impl From<&SeccompPolicy> for Filter {
    fn from(p: &SeccompPolicy) -> Filter {
        let act = |a: Act| match a {
            Act::Allow => Action::Allow,
            Act::Errno(e) => Action::Errno(e as u32),
        };
        let rules = p
            .rules
            .iter()
            .map(|r| Rule {
                nr: r.nr,
                action: act(r.action),
                conds: r
                    .arg_masked_eq
                    .map(|(arg, mask, value)| vec![Cond { arg, op: CmpOp::MaskedEq(mask), value }])
                    .unwrap_or_default(),
            })
            .collect();
        Filter { default: act(p.default), rules }
    }
}

fn action(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Errno(e) => SeccompAction::Errno(e),
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
        Action::Trap => SeccompAction::Trap,
        Action::Log => SeccompAction::Log,
        Action::Trace(v) => SeccompAction::Trace(v),
    }
}

/// Compiles a policy into the BPF programs to install, in order.
pub fn compile(p: &SeccompPolicy) -> Result<Vec<BpfProgram>, Fail> {
    compile_filter(&Filter::from(p))
}

/// The rule chains of one seccompiler filter: per syscall, the alternatives (an empty list is
/// "always", which absorbs any conditional alternative).
type Chains = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add_rule(chains: &mut Chains, r: &Rule) -> Result<(), Fail> {
    let bad = |e: seccompiler::BackendError| Fail::Invalid(format!("seccomp rule for syscall {}: {e}", r.nr));
    let entry = chains.entry(r.nr).or_insert_with(|| Some(Vec::new()));
    if r.conds.is_empty() {
        *entry = None;
        return Ok(());
    }
    if let Some(alts) = entry {
        let conds = r
            .conds
            .iter()
            .map(|c| {
                let op = match c.op {
                    CmpOp::Eq => SeccompCmpOp::Eq,
                    CmpOp::Ne => SeccompCmpOp::Ne,
                    CmpOp::Lt => SeccompCmpOp::Lt,
                    CmpOp::Le => SeccompCmpOp::Le,
                    CmpOp::Gt => SeccompCmpOp::Gt,
                    CmpOp::Ge => SeccompCmpOp::Ge,
                    CmpOp::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
                };
                SeccompCondition::new(c.arg, SeccompCmpArgLen::Qword, op, c.value).map_err(bad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        alts.push(SeccompRule::new(conds).map_err(bad)?);
    }
    Ok(())
}

fn build(chains: Chains, mismatch: Action, on_match: Action) -> Result<BpfProgram, Fail> {
    let rules = chains.into_iter().map(|(nr, alts)| (nr, alts.unwrap_or_default())).collect();
    let f = SeccompFilter::new(rules, action(mismatch), action(on_match), TargetArch::x86_64)
        .map_err(|e| Fail::Invalid(format!("cannot build the seccomp filter: {e}")))?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| Fail::Invalid(format!("cannot compile the seccomp filter: {e}")))
}

/// Compiles a filter into stacked BPF programs, in order.
///
/// seccompiler builds one program per (match action, mismatch action) pair, and the kernel
/// runs every stacked program and keeps the most restrictive verdict (ALLOW is the least
/// restrictive of all). So: one base program returns ALLOW for every syscall any rule matches
/// and the default otherwise; one more program per other action returns that action where its
/// rules match and ALLOW elsewhere. A syscall matching no rule gets the default (the others
/// allow it), one matching an ALLOW rule is allowed by all, one matching an ERRNO rule gets
/// ERRNO from its program. Rules whose action is the default change nothing and are dropped.
pub fn compile_filter(f: &Filter) -> Result<Vec<BpfProgram>, Fail> {
    let rules: Vec<&Rule> = f.rules.iter().filter(|r| r.action != f.default).collect();
    if f.default == Action::Allow && rules.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![no_x32()];
    if f.default != Action::Allow {
        let mut all = Chains::new();
        for r in &rules {
            add_rule(&mut all, r)?;
        }
        out.push(build(all, f.default, Action::Allow)?);
    }
    let mut by_action: BTreeMap<Action, Chains> = BTreeMap::new();
    for r in rules.iter().filter(|r| r.action != Action::Allow) {
        add_rule(by_action.entry(r.action).or_default(), r)?;
    }
    for (act, chains) in by_action {
        out.push(build(chains, Action::Allow, act)?);
    }
    Ok(out)
}

/// x32 system calls are x86_64's with bit 30 set in the number (`__X32_SYSCALL_BIT`) and the
/// same audit arch, so a rule for `mount` (165) does not match x32's `mount` (0x400000a5): on a
/// kernel with the x32 ABI enabled, a deny rule would be bypassed. This program refuses every
/// x32 call with ENOSYS, stacked before the others (as docker's profile refuses x32 unless it
/// is listed). Written by hand: seccompiler matches syscall numbers exactly, not a bit of them.
fn no_x32() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let i = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        i(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        i(JSET_K, 0, 1, 0x4000_0000),
        i(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        i(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Installs compiled filters on the calling thread (no_new_privs must be set).
pub fn install(programs: &[BpfProgram]) -> Result<(), Fail> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| Fail::Invalid(format!("cannot install the seccomp filter: {e}")))?;
    }
    Ok(())
}

/// Installs compiled filters without setting no_new_privs (the caller holds CAP_SYS_ADMIN or
/// has set it itself), with `SECCOMP_FILTER_FLAG_*` `flags` on each.
pub fn install_with_flags(programs: &[BpfProgram], flags: u32) -> Result<(), Fail> {
    for p in programs {
        let insns: Vec<libc::sock_filter> =
            p.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
        husk_sys::proc::install_seccomp(&insns, flags)
            .map_err(|e| Fail::Invalid(format!("cannot install the seccomp filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_compiles_into_one_filter_per_errno() {
        let progs = compile(&husk_types::security::default_policy()).unwrap();
        assert_eq!(progs.len(), 3, "the x32 guard, EPERM rules and the ENOSYS clone3 rule");
        let retain =
            compile(&husk_types::security::parse_seccomp("mode=retain,read,write,execve,exit_group").unwrap()).unwrap();
        assert_eq!(retain.len(), 2);
    }

    /// Run on a seccomp_data whose nr is `nr`: the x32 guard's verdict.
    fn guard(nr: u32) -> u32 {
        let p = no_x32();
        let mut pc = 0;
        let mut acc = 0u32;
        loop {
            let i = &p[pc];
            pc += 1;
            match i.code {
                0x20 => acc = nr,
                0x45 => pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf }),
                0x06 => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn x32_calls_are_refused_and_x86_64_ones_pass_the_guard() {
        let mount_x32 = 0x4000_0000 | 165;
        assert_eq!(guard(mount_x32), libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(guard(165), libc::SECCOMP_RET_ALLOW);
        assert_eq!(guard(0), libc::SECCOMP_RET_ALLOW);
    }

    fn rule(nr: i64, action: Action, conds: Vec<Cond>) -> Rule {
        Rule { nr, action, conds }
    }

    /// A deny-by-default filter with ALLOW and ERRNO rules (an OCI profile's shape) must not
    /// stack a program whose default denies what another allows: one base program plus one per
    /// other action.
    #[test]
    fn a_deny_by_default_filter_is_one_base_program_plus_one_per_other_action() {
        let eq = |arg, value| Cond { arg, op: CmpOp::Eq, value };
        let f = Filter {
            default: Action::Errno(38),
            rules: vec![
                rule(0, Action::Allow, vec![]),
                rule(1, Action::Allow, vec![]),
                rule(135, Action::Allow, vec![eq(0, 0)]),
                rule(135, Action::Allow, vec![eq(0, 8)]),
                rule(165, Action::Errno(1), vec![]),
                rule(2, Action::KillProcess, vec![]),
                rule(3, Action::Errno(38), vec![]),
            ],
        };
        assert_eq!(compile_filter(&f).unwrap().len(), 4, "the x32 guard, base, ERRNO(1), KILL_PROCESS");
        let allow_only = Filter { default: Action::Errno(1), rules: vec![rule(0, Action::Allow, vec![])] };
        assert_eq!(compile_filter(&allow_only).unwrap().len(), 2);
        let nothing = Filter { default: Action::Allow, rules: vec![rule(0, Action::Allow, vec![])] };
        assert!(compile_filter(&nothing).unwrap().is_empty());
        let bad_arg = Filter { default: Action::Errno(1), rules: vec![rule(0, Action::Allow, vec![eq(6, 0)])] };
        assert!(compile_filter(&bad_arg).is_err(), "syscalls have six arguments");
    }
}
