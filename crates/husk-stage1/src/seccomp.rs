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

fn action(a: Act) -> SeccompAction {
    match a {
        Act::Allow => SeccompAction::Allow,
        Act::Errno(e) => SeccompAction::Errno(e as u32),
    }
}

/// Compiles a policy into the BPF programs to install, in order.
pub fn compile(p: &SeccompPolicy) -> Result<Vec<BpfProgram>, Fail> {
    let mut by_action: BTreeMap<String, (Act, BTreeMap<i64, Vec<SeccompRule>>)> = BTreeMap::new();
    for r in &p.rules {
        let entry = by_action.entry(format!("{:?}", r.action)).or_insert_with(|| (r.action, BTreeMap::new()));
        let rules = entry.1.entry(r.nr).or_default();
        if let Some((arg, mask, value)) = r.arg_masked_eq {
            let c = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(mask), value)
                .map_err(|e| Fail::Invalid(format!("seccomp rule for {}: {e}", r.syscall)))?;
            rules.push(
                SeccompRule::new(vec![c]).map_err(|e| Fail::Invalid(format!("seccomp rule for {}: {e}", r.syscall)))?,
            );
        }
    }
    let mut out = Vec::new();
    for (_, (act, rules)) in by_action {
        if act == p.default {
            continue;
        }
        let f = SeccompFilter::new(rules, action(p.default), action(act), TargetArch::x86_64)
            .map_err(|e| Fail::Invalid(format!("cannot build the seccomp filter: {e}")))?;
        out.push(f.try_into().map_err(|e: seccompiler::BackendError| {
            Fail::Invalid(format!("cannot compile the seccomp filter: {e}"))
        })?);
    }
    if out.is_empty() && p.default != Act::Allow {
        // Everything denied: a filter whose only rule can never match.
        let f = SeccompFilter::new(BTreeMap::new(), action(p.default), SeccompAction::Allow, TargetArch::x86_64)
            .map_err(|e| Fail::Invalid(format!("cannot build the seccomp filter: {e}")))?;
        out.push(f.try_into().map_err(|e: seccompiler::BackendError| {
            Fail::Invalid(format!("cannot compile the seccomp filter: {e}"))
        })?);
    }
    Ok(out)
}

/// Installs compiled filters on the calling thread (no_new_privs must be set).
pub fn install(programs: &[BpfProgram]) -> Result<(), Fail> {
    for p in programs {
        seccompiler::apply_filter(p).map_err(|e| Fail::Invalid(format!("cannot install the seccomp filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_compiles_into_one_filter_per_errno() {
        let progs = compile(&husk_types::security::default_policy()).unwrap();
        assert_eq!(progs.len(), 2, "EPERM rules and the ENOSYS clone3 rule");
        let retain =
            compile(&husk_types::security::parse_seccomp("mode=retain,read,write,execve,exit_group").unwrap()).unwrap();
        assert_eq!(retain.len(), 1);
    }
}
