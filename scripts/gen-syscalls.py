#!/usr/bin/env python3
"""Regenerates crates/husk-types/src/syscalls.rs from the kernel UAPI header."""
import re, pathlib
src = pathlib.Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").read_text()
pairs = sorted(re.findall(r"#define __NR_(\w+) (\d+)", src), key=lambda p: int(p[1]))
head = pathlib.Path(__file__).resolve().parent.parent / "crates/husk-types/src/syscalls.rs"
lines = head.read_text().split("pub const SYSCALLS")[0].rstrip("\n").split("\n")
lines += ["", "pub const SYSCALLS: &[(&str, i64)] = &["] + [f'    ("{n}", {v}),' for n, v in pairs] + ["];", "",
          "/// The number of a syscall by name.", "pub fn number(name: &str) -> Option<i64> {",
          "    SYSCALLS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)", "}"]
head.write_text("\n".join(lines) + "\n")
