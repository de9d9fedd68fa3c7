//! Turning a [`SeccompPolicy`] (or an OCI bundle's profile) into BPF.
//!
//! Most filters become one compact program written here ([`compact`]): the architecture check,
//! the x32 guard, then one `JEQ` per syscall into a shared return of its action, and a short
//! block per argument condition. seccompiler (Firecracker's compiler) spends five instructions
//! on every syscall and one program on every action, and the kernel's cost to load a filter
//! grows with its length (converting and JIT-compiling it): husk's default policy was three
//! programs of 331 instructions, about 0.2 ms of every app's start; it is now one of 88.
//!
//! A filter [`compact`] does not take (a syscall with rules of two different actions, an
//! ordering comparison, a program over the kernel's 4096 instructions) is built with
//! seccompiler as before: one program per (match action, default action) pair, stacked; the
//! kernel evaluates all of them and the most restrictive verdict wins, and as every syscall's
//! rules are in exactly one of them, the result is the policy's. The tests run both on a BPF
//! interpreter over every syscall number and the arguments the rules test, and require the
//! same verdicts.

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

/// Compiles a filter into the BPF programs to install, in order: one [`compact`] program when
/// it can say the filter, else seccompiler's stacked programs (`stacked`). Rules whose action
/// is the default change nothing and are dropped.
pub fn compile_filter(f: &Filter) -> Result<Vec<BpfProgram>, Fail> {
    let rules: Vec<&Rule> = f.rules.iter().filter(|r| r.action != f.default).collect();
    if f.default == Action::Allow && rules.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(p) = compact(f.default, &rules) {
        return Ok(vec![p]);
    }
    stacked(f.default, &rules)
}

/// [`compile_filter`] with seccompiler: the x32 guard, then stacked programs.
///
/// seccompiler builds one program per (match action, mismatch action) pair, and the kernel
/// runs every stacked program and keeps the most restrictive verdict (ALLOW is the least
/// restrictive of all). So: one base program returns ALLOW for every syscall any rule matches
/// and the default otherwise; one more program per other action returns that action where its
/// rules match and ALLOW elsewhere. A syscall matching no rule gets the default (the others
/// allow it), one matching an ALLOW rule is allowed by all, one matching an ERRNO rule gets
/// ERRNO from its program.
fn stacked(default: Action, rules: &[&Rule]) -> Result<Vec<BpfProgram>, Fail> {
    let mut out = vec![no_x32()];
    if default != Action::Allow {
        let mut all = Chains::new();
        for r in rules {
            add_rule(&mut all, r)?;
        }
        out.push(build(all, default, Action::Allow)?);
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

/// The kernel's return value for an action.
fn ret_value(a: Action) -> u32 {
    match a {
        Action::Allow => libc::SECCOMP_RET_ALLOW,
        Action::Errno(e) => libc::SECCOMP_RET_ERRNO | (e & libc::SECCOMP_RET_DATA),
        Action::KillThread => libc::SECCOMP_RET_KILL_THREAD,
        Action::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        Action::Trap => libc::SECCOMP_RET_TRAP,
        Action::Log => libc::SECCOMP_RET_LOG,
        Action::Trace(v) => libc::SECCOMP_RET_TRACE | (v & libc::SECCOMP_RET_DATA),
    }
}

/// The kernel's order of precedence between two filters' verdicts (`seccomp_run_filters`): the
/// lower action, as a signed number, is the more restrictive.
fn precedence(ret: u32) -> i32 {
    (ret & libc::SECCOMP_RET_ACTION_FULL) as i32
}

/// BPF opcodes (linux/bpf_common.h, linux/filter.h) and seccomp_data offsets (linux/seccomp.h).
mod op {
    pub const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    pub const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    pub const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    pub const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    pub const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    pub const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    pub const NR: u32 = 0;
    pub const ARCH: u32 = 4;
    /// Argument `i`'s low half is at `ARGS + 8 * i`, its high half 4 bytes on (little endian).
    pub const ARGS: u32 = 16;
    pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    /// The kernel's limit on a classic BPF program (BPF_MAXINSNS).
    pub const MAX_INSNS: usize = 4096;
}

/// One syscall's rules in [`compact`]: their action, and their alternatives (`None`: an
/// unconditional rule, which absorbs them).
type Syscall<'a> = (Action, Option<Vec<&'a [Cond]>>);

/// How many `JEQ`s share one return (a jump's offset is 8 bits).
const BLOCK: usize = 200;

/// One program for `rules` (those whose action is not `default`) in a single pass, first match
/// wins, or `None` when a first match would not give the stacked programs' verdict:
/// a syscall with rules of two actions (stacking lets the more restrictive win whatever the
/// order), or a condition other than `Eq`/`MaskedEq` (left to seccompiler's comparisons).
///
/// Layout: a call of another architecture is killed, as seccompiler does; an x32 call gets
/// what the stacked programs give it (ENOSYS, or the default where that takes precedence); then
/// with the syscall number in the accumulator, per action, the syscalls it takes without
/// condition as blocks of `JEQ nr → return` and, per conditional alternative, `JEQ nr`, the
/// argument tests (a 64-bit argument is two 32-bit words), the return and a reload of the
/// number; last, the default.
pub fn compact(default: Action, rules: &[&Rule]) -> Option<BpfProgram> {
    use seccompiler::sock_filter;
    let i = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let mut by_nr: BTreeMap<i64, Syscall> = BTreeMap::new();
    for r in rules {
        if r.conds.iter().any(|c| !matches!(c.op, CmpOp::Eq | CmpOp::MaskedEq(_)) || c.arg > 5) {
            return None;
        }
        let nr = u32::try_from(r.nr).ok()?;
        if nr & op::X32_SYSCALL_BIT != 0 {
            return None;
        }
        let e = by_nr.entry(r.nr).or_insert((r.action, Some(Vec::new())));
        if e.0 != r.action {
            return None;
        }
        match (&mut e.1, r.conds.is_empty()) {
            (alts, true) => *alts = None,
            (Some(alts), false) => alts.push(&r.conds),
            (None, false) => {}
        }
    }
    let mut actions: Vec<Action> = by_nr.values().map(|(a, _)| *a).collect();
    actions.sort();
    actions.dedup();
    let default_ret = ret_value(default);
    let enosys = ret_value(Action::Errno(libc::ENOSYS as u32));
    // Stacked, the guard's ENOSYS meets the base program's default, which was installed later
    // and so wins a tie of precedence.
    let x32 = if precedence(default_ret) <= precedence(enosys) { default_ret } else { enosys };
    let mut p = vec![
        i(op::LD_W_ABS, 0, 0, op::ARCH),
        i(op::JEQ_K, 1, 0, op::AUDIT_ARCH_X86_64),
        i(op::RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        i(op::LD_W_ABS, 0, 0, op::NR),
        i(op::JSET_K, 0, 1, op::X32_SYSCALL_BIT),
        i(op::RET_K, 0, 0, x32),
    ];
    for act in actions {
        let ret = ret_value(act);
        let plain: Vec<u32> =
            by_nr.iter().filter(|(_, (a, alts))| *a == act && alts.is_none()).map(|(nr, _)| *nr as u32).collect();
        for block in plain.chunks(BLOCK) {
            // JEQ k jumps over the JEQs after it and the JA to the return; no match falls on.
            for (k, nr) in block.iter().enumerate() {
                p.push(i(op::JEQ_K, (block.len() - k) as u8, 0, *nr));
            }
            p.push(i(op::JA, 0, 0, 1));
            p.push(i(op::RET_K, 0, 0, ret));
        }
        for (nr, (_, alts)) in by_nr.iter().filter(|(_, (a, _))| *a == act) {
            for conds in alts.iter().flatten() {
                let mut tests = Vec::new();
                for c in conds.iter() {
                    let mask = match c.op {
                        CmpOp::MaskedEq(m) => m,
                        _ => u64::MAX,
                    };
                    let value = c.value & mask;
                    for (half, shift) in [(0, 0), (4, 32)] {
                        let (m, v) = ((mask >> shift) as u32, (value >> shift) as u32);
                        tests.push(i(op::LD_W_ABS, 0, 0, op::ARGS + 8 * u32::from(c.arg) + half));
                        if m != u32::MAX {
                            tests.push(i(op::AND_K, 0, 0, m));
                        }
                        // jf is patched below to the reload of the number.
                        tests.push(i(op::JEQ_K, 0, u8::MAX, v));
                    }
                }
                let len = tests.len();
                // No match of the number skips the tests, the return and the reload.
                p.push(i(op::JEQ_K, 0, u8::try_from(len + 2).ok()?, *nr as u32));
                for (k, mut t) in tests.into_iter().enumerate() {
                    if t.code == op::JEQ_K {
                        // To the reload: over the tests after this one and the return.
                        t.jf = u8::try_from(len - k).ok()?;
                    }
                    p.push(t);
                }
                p.push(i(op::RET_K, 0, 0, ret));
                p.push(i(op::LD_W_ABS, 0, 0, op::NR));
            }
        }
    }
    p.push(i(op::RET_K, 0, 0, default_ret));
    (p.len() <= op::MAX_INSNS).then_some(p)
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
    fn the_default_policy_is_one_compact_program() {
        let progs = compile(&husk_types::security::default_policy()).unwrap();
        assert_eq!(progs.len(), 1);
        assert!(progs[0].len() < 100, "{} instructions", progs[0].len());
        let retain =
            compile(&husk_types::security::parse_seccomp("mode=retain,read,write,execve,exit_group").unwrap()).unwrap();
        assert_eq!(retain.len(), 1);
    }

    /// A seccomp_data: the syscall, the architecture, the six arguments.
    #[derive(Clone, Copy)]
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn word(&self, off: u32) -> u32 {
            match off {
                0 => self.nr,
                4 => self.arch,
                o if (16..64).contains(&o) => {
                    let a = self.args[((o - 16) / 8) as usize];
                    if o % 8 == 0 {
                        a as u32
                    } else {
                        (a >> 32) as u32
                    }
                }
                o => panic!("load at {o}"),
            }
        }
    }

    /// Runs a classic BPF program as the kernel would (the subset seccompiler and [`compact`]
    /// emit); a program that falls off its end or jumps out of it fails the test.
    fn run(p: &BpfProgram, d: &Data) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p.get(pc).unwrap_or_else(|| panic!("pc {pc} out of a {}-instruction program", p.len()));
            pc += 1;
            let jump = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
            match i.code {
                0x20 => acc = d.word(i.k),
                0x54 => acc &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += jump(acc == i.k),
                0x25 => pc += jump(acc > i.k),
                0x35 => pc += jump(acc >= i.k),
                0x45 => pc += jump(acc & i.k != 0),
                0x06 => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    /// The kernel's verdict of stacked programs (`seccomp_run_filters`): from the last installed
    /// to the first, a verdict replaces the one so far only if strictly more restrictive.
    fn run_stacked(ps: &[BpfProgram], d: &Data) -> u32 {
        let mut ret = libc::SECCOMP_RET_ALLOW;
        for p in ps.iter().rev() {
            let cur = run(p, d);
            if precedence(cur) < precedence(ret) {
                ret = cur;
            }
        }
        ret
    }

    /// Every syscall number (and its x32 twin, and a call of another architecture) with the
    /// argument values the rules test, and their neighbours: the compact program must give the
    /// stacked programs' verdict on each.
    fn assert_same_verdicts(f: &Filter) {
        let rules: Vec<&Rule> = f.rules.iter().filter(|r| r.action != f.default).collect();
        let one = compact(f.default, &rules).expect("compact takes this filter");
        let stack = stacked(f.default, &rules).unwrap();
        let mut values = vec![0u64, 1, u64::MAX, 0x1_0000_0000, 0xffff_ffff];
        for r in &f.rules {
            for c in &r.conds {
                let m = match c.op {
                    CmpOp::MaskedEq(m) => m,
                    _ => u64::MAX,
                };
                values.extend([c.value, c.value & m, c.value ^ 1, c.value | !m, c.value ^ (1 << 40), !c.value]);
            }
        }
        let mut n = 0;
        for nr in (0..470u32).chain([0x4000_0000 | 165, 0x4000_0000, 0xffff_ffff]) {
            for arch in [op::AUDIT_ARCH_X86_64, 0x4000_0003] {
                for (k, v) in values.iter().enumerate() {
                    let mut args = [0u64; 6];
                    args[k % 6] = *v;
                    args[(k + 1) % 6] = values[(k * 7) % values.len()];
                    let d = Data { nr, arch, args };
                    assert_eq!(run(&one, &d), run_stacked(&stack, &d), "nr {nr:#x} arch {arch:#x} args {args:x?}");
                    n += 1;
                }
            }
        }
        assert!(n > 4000);
    }

    #[test]
    fn the_compact_program_gives_the_stacked_programs_verdicts() {
        use husk_types::security::{default_policy, parse_seccomp};
        assert_same_verdicts(&Filter::from(&default_policy()));
        for spec in [
            "mode=retain,read,write,execve,exit_group",
            "mode=retain,errno=EACCES,@default",
            "mode=remove,errno=ENOSYS,mount,umount2,keyctl",
            "mode=remove,@mount,@privileged",
        ] {
            let p = parse_seccomp(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_same_verdicts(&Filter::from(&p));
        }
        let eq = |arg, value| Cond { arg, op: CmpOp::Eq, value };
        let masked = |arg, m, value| Cond { arg, op: CmpOp::MaskedEq(m), value };
        // An OCI profile's shape: deny by default, an allow list, alternatives on arguments,
        // several conditions at once, and a rule of the default's action (dropped).
        assert_same_verdicts(&Filter {
            default: Action::Errno(1),
            rules: vec![
                rule(0, Action::Allow, vec![]),
                rule(1, Action::Allow, vec![]),
                rule(135, Action::Allow, vec![eq(0, 0)]),
                rule(135, Action::Allow, vec![eq(0, 8)]),
                rule(135, Action::Allow, vec![eq(0, 0xffff_ffff)]),
                rule(56, Action::Allow, vec![masked(0, 0x7e02_0000, 0)]),
                rule(41, Action::Allow, vec![eq(0, 1), masked(1, 0xf, 2)]),
                rule(165, Action::Errno(38), vec![]),
                rule(2, Action::KillProcess, vec![]),
                rule(3, Action::Errno(1), vec![]),
                rule(4, Action::Allow, vec![eq(2, 1 << 33)]),
                rule(4, Action::Allow, vec![]),
            ],
        });
        // Kill by default: x32 calls get the default, which takes precedence over ENOSYS.
        assert_same_verdicts(&Filter {
            default: Action::KillProcess,
            rules: vec![rule(0, Action::Allow, vec![]), rule(60, Action::Allow, vec![])],
        });
        // A long allow list: the returns are shared by blocks of JEQs.
        assert_same_verdicts(&Filter {
            default: Action::Errno(1),
            rules: (0..450).filter(|n| n % 3 != 0).map(|n| rule(n, Action::Allow, vec![])).collect(),
        });
    }

    #[test]
    fn what_the_compact_program_cannot_say_is_left_to_seccompiler() {
        let lt = Cond { arg: 0, op: CmpOp::Lt, value: 4 };
        let two_actions = [
            rule(1, Action::Errno(1), vec![Cond { arg: 0, op: CmpOp::Eq, value: 1 }]),
            rule(1, Action::KillProcess, vec![]),
        ];
        assert!(compact(Action::Allow, &two_actions.iter().collect::<Vec<_>>()).is_none());
        let ordered = [rule(1, Action::Errno(1), vec![lt])];
        assert!(compact(Action::Allow, &ordered.iter().collect::<Vec<_>>()).is_none());
        let f = Filter { default: Action::Allow, rules: two_actions.to_vec() };
        assert_eq!(compile_filter(&f).unwrap().len(), 3, "the x32 guard, ERRNO(1), KILL_PROCESS");
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
        let rules: Vec<&Rule> = f.rules.iter().filter(|r| r.action != f.default).collect();
        assert_eq!(stacked(f.default, &rules).unwrap().len(), 4, "the x32 guard, base, ERRNO(1), KILL_PROCESS");
        let allow_only = Filter { default: Action::Errno(1), rules: vec![rule(0, Action::Allow, vec![])] };
        assert_eq!(stacked(allow_only.default, &allow_only.rules.iter().collect::<Vec<_>>()).unwrap().len(), 2);
        let nothing = Filter { default: Action::Allow, rules: vec![rule(0, Action::Allow, vec![])] };
        assert!(compile_filter(&nothing).unwrap().is_empty());
        let bad_arg = Filter { default: Action::Errno(1), rules: vec![rule(0, Action::Allow, vec![eq(6, 0)])] };
        assert!(compile_filter(&bad_arg).is_err(), "syscalls have six arguments");
    }
}
