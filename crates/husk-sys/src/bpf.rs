//! Loading an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` and attaching it to a cgroup
//! v2 directory: the device cgroup of cgroup v2, which has no `devices.allow` files. The
//! program itself is generated (and tested) in husk-stage1; this is only the two `bpf(2)`
//! calls. Written by hand: the aya and libbpf crates bring a loader for ELF objects and a
//! build-time toolchain, for what is here an array of a few dozen instructions.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// One eBPF instruction, as `struct bpf_insn` lays it out (`regs`: dst in the low nibble, src
/// in the high one).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel takes a shorter
/// struct and treats the rest as zero).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads a device program and attaches it to the cgroup v2 directory `cgroup` (other programs
/// attached there stay: `BPF_F_ALLOW_MULTI`, all must allow). The program stays attached after
/// this returns, for as long as the cgroup exists. A refusal by the verifier carries its log.
pub fn attach_device_program(cgroup: impl AsFd, program: &[Insn]) -> io::Result<()> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 << 10];
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"husk_dev");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: `attr` is a valid, initialised prefix of `union bpf_attr`; the pointers in it
    // name `program`, `license` and `log`, which outlive the call; the kernel writes at most
    // `log_size` bytes into `log`. The returned fd is new and owned by nobody else.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoad, std::mem::size_of::<ProgLoad>())
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let text = String::from_utf8_lossy(&log[..log.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned();
        return Err(io::Error::new(e.kind(), format!("{e}; verifier: {}", text.trim())));
    }
    // SAFETY: `fd` was just returned by bpf(BPF_PROG_LOAD) and is owned by nothing else.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attach = ProgAttach {
        target_fd: cgroup.as_fd().as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attach` is a valid `union bpf_attr` prefix for BPF_PROG_ATTACH naming two open
    // fds; nothing is written to our memory.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, &attach as *const ProgAttach, std::mem::size_of::<ProgAttach>())
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
