#!/usr/bin/env python3
"""Writes sopm-backends/src/host/seccomp/numbers.rs: the x86_64 and aarch64 numbers of
every system call named in sopm-backends/src/host/seccomp/lists.rs (plus clone and
clone3), read from the kernel's uapi headers (Debian: linux-libc-dev).

Run from the repository root: python3 scripts/seccomp-table.py
"""
import re

X86 = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
GENERIC = "/usr/include/asm-generic/unistd.h"
LISTS = "sopm-backends/src/host/seccomp/lists.rs"
OUT = "sopm-backends/src/host/seccomp/numbers.rs"


def x86_64():
    nrs = {}
    for line in open(X86):
        m = re.match(r"#define __NR_(\w+)\s+(\d+)", line)
        if m:
            nrs[m.group(1)] = int(m.group(2))
    return nrs


def aarch64():
    nrs, n3264, in64 = {}, {}, False
    for line in open(GENERIC):
        m = re.match(r"#define __NR(3264)?_(\w+)\s+(\d+)", line)
        if m:
            (n3264 if m.group(1) else nrs)[m.group(2)] = int(m.group(3))
            continue
        if "__BITS_PER_LONG == 64" in line:
            in64 = True
        elif line.startswith("#else"):
            in64 = False
        m = re.match(r"#define __NR_(\w+)\s+__NR3264_(\w+)", line)
        if m and in64 and m.group(2) in n3264:
            nrs[m.group(1)] = n3264[m.group(2)]
    nrs.pop("syscalls", None)
    return nrs


def main():
    text = open(LISTS).read()
    names = sorted(set(re.findall(r'"(\w+)"', text)) | {"clone", "clone3"})
    x, a = x86_64(), aarch64()
    opt = lambda v: "None" if v is None else "Some(%d)" % v
    with open(OUT, "w") as f:
        f.write("//! System call numbers on x86_64 and aarch64, by name (written by\n")
        f.write("//! `scripts/seccomp-table.py` from the kernel's uapi headers; do not edit).\n\n")
        f.write("/// `(name, x86_64 number, aarch64 number)` of every system call the profile names.\n")
        f.write("pub const NUMBERS: &[(&str, Option<u32>, Option<u32>)] = &[\n")
        for n in names:
            f.write('    ("%s", %s, %s),\n' % (n, opt(x.get(n)), opt(a.get(n))))
        f.write("];\n")


main()
