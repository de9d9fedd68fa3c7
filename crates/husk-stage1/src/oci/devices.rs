//! The device cgroup of cgroup v2: the rules of `linux.resources.devices` (as the v1 lines
//! [`super::cgroups::device_rules`] makes) compiled into an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE`. Pure: the program is tested here through a small interpreter
//! of the instructions it uses; `husk_sys::bpf` loads and attaches it.
//!
//! Semantics, those of the v1 lists: the last rule that matches a request decides; a request
//! no rule matches is denied. An allow rule matches when every access asked for is in it; a
//! deny rule when any is.

use husk_sys::bpf::Insn;

use super::plan::SpecError;

/// One rule: the type (`None`: all), major and minor (`None`: any), access bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub kind: Option<Kind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block,
    Char,
}

/// `BPF_DEVCG_ACC_*` and `BPF_DEVCG_DEV_*`.
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// Parses a v1 rule line (`c 1:3 rwm`, `a *:* rwm`, `b 8:* r`).
pub fn parse(allow: bool, line: &str) -> Result<Rule, SpecError> {
    let bad = || SpecError { field: "linux.resources.devices".into(), why: format!("{line:?} is not a device rule") };
    let mut parts = line.split_whitespace();
    let (t, nums, acc) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let kind = match t {
        "a" => None,
        "b" => Some(Kind::Block),
        "c" => Some(Kind::Char),
        _ => return Err(bad()),
    };
    let (ma, mi) = nums.split_once(':').ok_or_else(bad)?;
    let num = |s: &str| if s == "*" { Ok(None) } else { s.parse().map(Some).map_err(|_| bad()) };
    let mut access = 0;
    for c in acc.chars() {
        access |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return Err(bad()),
        };
    }
    Ok(Rule { allow, kind, major: num(ma)?, minor: num(mi)?, access })
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: dst | (src << 4), off, imm }
}

const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
const AND32_K: u8 = 0x54;
const RSH32_K: u8 = 0x74;
const MOV32_X: u8 = 0xbc;
const MOV64_K: u8 = 0xb7;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;
const EXIT: u8 = 0x95;

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor from `struct
/// bpf_cgroup_dev_ctx`; then one block per rule, last rule first, each returning its verdict
/// when all its conditions hold; then deny.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Conditions jump past the block's end when they fail; their offsets are set once the
        // block's length is known.
        let mut block: Vec<(Insn, bool)> = Vec::new();
        if let Some(k) = r.kind {
            block.push((insn(JNE_K, 2, 0, 0, if k == Kind::Block { DEV_BLOCK } else { DEV_CHAR }), true));
        }
        let all = ACC_READ | ACC_WRITE | ACC_MKNOD;
        if r.allow && r.access & all != all {
            block.push((insn(MOV32_X, 1, 3, 0, 0), false));
            block.push((insn(AND32_K, 1, 0, 0, (!r.access & all) as i32), false));
            block.push((insn(JNE_K, 1, 0, 0, 0), true));
        } else if !r.allow && r.access & all != all {
            block.push((insn(MOV32_X, 1, 3, 0, 0), false));
            block.push((insn(AND32_K, 1, 0, 0, r.access as i32), false));
            block.push((insn(JEQ_K, 1, 0, 0, 0), true));
        }
        if let Some(m) = r.major {
            block.push((insn(JNE_K, 4, 0, 0, m as i32), true));
        }
        if let Some(m) = r.minor {
            block.push((insn(JNE_K, 5, 0, 0, m as i32), true));
        }
        block.push((insn(MOV64_K, 0, 0, 0, i32::from(r.allow)), false));
        block.push((insn(EXIT, 0, 0, 0, 0), false));
        let len = block.len();
        let unconditional = !block.iter().any(|(_, jumps)| *jumps);
        for (i, (mut ins, jumps)) in block.into_iter().enumerate() {
            if jumps {
                ins.off = (len - i - 1) as i16;
            }
            p.push(ins);
        }
        // A rule that matches everything decides everything left: the verifier refuses code
        // after it as unreachable.
        if unconditional {
            return p;
        }
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on one request, as the kernel would (only the instructions
    /// [`program`] emits).
    fn run(p: &[Insn], kind: i32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                AND32_K => r[dst] = u64::from(r[dst] as u32 & i.imm as u32),
                RSH32_K => r[dst] = u64::from((r[dst] as u32) >> i.imm),
                MOV32_X => r[dst] = u64::from(r[src] as u32),
                MOV64_K => r[dst] = i.imm as i64 as u64,
                JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                JEQ_K => {
                    if r[dst] == i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    /// The v1 semantics, directly.
    fn decide(rules: &[Rule], kind: Kind, access: u32, major: u32, minor: u32) -> bool {
        for r in rules.iter().rev() {
            let k = r.kind.is_none_or(|k| k == kind);
            let n = r.major.is_none_or(|m| m == major) && r.minor.is_none_or(|m| m == minor);
            let a = if r.allow { access & !r.access == 0 } else { access & r.access != 0 };
            if k && n && a {
                return r.allow;
            }
        }
        false
    }

    fn rules(lines: &[(bool, &str)]) -> Vec<Rule> {
        lines.iter().map(|(a, l)| parse(*a, l).unwrap()).collect()
    }

    #[test]
    fn the_program_decides_as_the_v1_lists_do_for_every_request() {
        let sets = [
            rules(&[
                (false, "a *:* rwm"),
                (true, "c 1:3 rwm"),
                (true, "c 1:5 r"),
                (true, "c 136:* rw"),
                (true, "b 8:0 m"),
            ]),
            rules(&[(true, "a *:* rwm"), (false, "c 1:3 w"), (false, "b *:* m")]),
            rules(&[(true, "c *:* r"), (false, "c 10:* rw"), (true, "c 10:229 rwm")]),
            vec![],
        ];
        for rs in &sets {
            let p = program(rs);
            for kind in [Kind::Block, Kind::Char] {
                let k = if kind == Kind::Block { DEV_BLOCK } else { DEV_CHAR };
                for access in 1..8 {
                    for (major, minor) in [(1, 3), (1, 5), (1, 9), (8, 0), (8, 1), (10, 229), (10, 200), (136, 4)] {
                        let want = decide(rs, kind, access, major, minor);
                        let got = run(&p, k, access, major, minor) == 1;
                        assert_eq!(got, want, "{rs:?}: {kind:?} {major}:{minor} access {access}");
                    }
                }
            }
        }
    }

    #[test]
    fn rules_parse_from_the_v1_lines() {
        assert_eq!(
            parse(true, "c 1:3 rwm").unwrap(),
            Rule { allow: true, kind: Some(Kind::Char), major: Some(1), minor: Some(3), access: 7 }
        );
        assert_eq!(
            parse(false, "a *:* m").unwrap(),
            Rule { allow: false, kind: None, major: None, minor: None, access: 1 }
        );
        for bad in ["", "c", "x 1:3 r", "c 1-3 r", "c 1:3 rx", "c a:3 r"] {
            assert!(parse(true, bad).is_err(), "{bad}");
        }
    }

    /// The kernel's verifier refuses unreachable instructions: nothing follows a rule that
    /// matches everything.
    #[test]
    fn nothing_follows_a_rule_that_matches_everything() {
        let p = program(&rules(&[(false, "a *:* rwm"), (true, "c 1:3 rwm")]));
        assert_eq!(p.last().unwrap().code, EXIT);
        assert_eq!(p.iter().filter(|i| i.code == EXIT).count(), 2, "the allow block and the deny-all block");
    }

    #[test]
    fn an_empty_list_denies_everything() {
        let p = program(&[]);
        assert_eq!(run(&p, DEV_CHAR, ACC_READ, 1, 3), 0);
        assert_eq!(p.len(), 8);
    }
}
