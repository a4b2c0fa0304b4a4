//! The seccomp profile of every sandbox: a default-deny allow-list of system calls in the
//! spirit of Docker's default profile, rendered as a classic BPF program (for `bwrap
//! --seccomp`) and as an OCI `linux.seccomp` object (for gVisor and Docker).
//!
//! What it refuses with `EPERM`: every system call not in [`ALLOWED`] (namespaces,
//! mounts, `ptrace`, `bpf`, keys, kernel modules, clocks, `io_uring`, `userfaultfd`,
//! ...; [`REFUSED`] names the ones that matter), `clone` with any namespace flag, and any
//! system call of another architecture's ABI (the process is killed) or of x86's x32 ABI.
//! `clone3` answers `ENOSYS`: its flags live in memory a filter cannot read, and libc
//! then falls back to `clone`.

mod lists;
mod numbers;

pub use lists::{ALLOWED, REFUSED};

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The namespace flags of `clone` (`CLONE_NEWNS`, `NEWCGROUP`, `NEWUTS`, `NEWIPC`,
/// `NEWUSER`, `NEWPID`, `NEWNET`, `NEWTIME`).
pub const CLONE_NAMESPACE_FLAGS: u32 = 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000
    | 0x0000_0080;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

// Offsets in `struct seccomp_data`: nr, arch, then the arguments (u64 each) at 16.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;

/// A CPU architecture the profile knows the system call numbers of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64 (`AUDIT_ARCH_X86_64`).
    X86_64,
    /// aarch64 (`AUDIT_ARCH_AARCH64`).
    Aarch64,
}

impl Arch {
    /// The architecture this program was built for, if the profile knows it.
    pub fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    fn audit(self) -> u32 {
        match self {
            Arch::X86_64 => 0xC000_003E,
            Arch::Aarch64 => 0xC000_00B7,
        }
    }

    fn oci(self) -> &'static str {
        match self {
            Arch::X86_64 => "SCMP_ARCH_X86_64",
            Arch::Aarch64 => "SCMP_ARCH_AARCH64",
        }
    }

    /// The number of system call `name` here, if it has one.
    pub fn number(self, name: &str) -> Option<u32> {
        let (_, x86_64, aarch64) = numbers::NUMBERS.iter().find(|(n, ..)| *n == name)?;
        match self {
            Arch::X86_64 => *x86_64,
            Arch::Aarch64 => *aarch64,
        }
    }
}

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    /// The opcode.
    pub code: u16,
    /// Instructions to skip when a jump's condition holds.
    pub jt: u8,
    /// Instructions to skip when it does not.
    pub jf: u8,
    /// The constant operand.
    pub k: u32,
}

impl Instruction {
    fn stmt(code: u16, k: u32) -> Self {
        Instruction {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Self {
        Instruction { code, jt, jf, k }
    }
}

/// The profile's filter for `arch`, as BPF instructions.
pub fn program(arch: Arch) -> Vec<Instruction> {
    use Instruction as I;
    let nr = |name: &str| {
        arch.number(name)
            .expect("clone and clone3 exist everywhere")
    };
    let mut p = vec![
        I::stmt(LD_W_ABS, OFFSET_ARCH),
        I::jump(JMP_JEQ_K, arch.audit(), 1, 0),
        I::stmt(RET_K, RET_KILL_PROCESS),
        I::stmt(LD_W_ABS, OFFSET_NR),
    ];
    if arch == Arch::X86_64 {
        p.push(I::jump(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        p.push(I::stmt(RET_K, RET_ERRNO | EPERM));
    }
    // clone3: ENOSYS, so libc uses clone, whose flags the filter can see.
    p.push(I::jump(JMP_JEQ_K, nr("clone3"), 0, 1));
    p.push(I::stmt(RET_K, RET_ERRNO | ENOSYS));
    // clone: allowed without namespace flags (the low half of its first argument).
    p.push(I::jump(JMP_JEQ_K, nr("clone"), 0, 4));
    p.push(I::stmt(LD_W_ABS, OFFSET_ARG0_LOW));
    p.push(I::jump(JMP_JSET_K, CLONE_NAMESPACE_FLAGS, 0, 1));
    p.push(I::stmt(RET_K, RET_ERRNO | EPERM));
    p.push(I::stmt(RET_K, RET_ALLOW));
    let mut allowed: Vec<u32> = ALLOWED.iter().filter_map(|n| arch.number(n)).collect();
    allowed.sort_unstable();
    allowed.dedup();
    for n in allowed {
        p.push(I::jump(JMP_JEQ_K, n, 0, 1));
        p.push(I::stmt(RET_K, RET_ALLOW));
    }
    p.push(I::stmt(RET_K, RET_ERRNO | EPERM));
    p
}

/// The profile's filter for `arch` as the bytes `bwrap --seccomp` reads: each
/// instruction as `u16 code, u8 jt, u8 jf, u32 k`, in native byte order.
pub fn program_bytes(arch: Arch) -> Vec<u8> {
    program(arch)
        .iter()
        .flat_map(|i| {
            let mut b = Vec::with_capacity(8);
            b.extend_from_slice(&i.code.to_ne_bytes());
            b.push(i.jt);
            b.push(i.jf);
            b.extend_from_slice(&i.k.to_ne_bytes());
            b
        })
        .collect()
}

/// Writes this machine's seccomp program (see [`program_bytes`]) under `scratch` as a
/// read-only file (mode 0444) named after its content, once, and returns its path. An
/// architecture the profile does not know is an error: sandboxes never run unfiltered.
pub fn write_program(scratch: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let arch = Arch::native().ok_or_else(|| {
        std::io::Error::other(format!(
            "no seccomp profile for {}: only x86_64 and aarch64",
            std::env::consts::ARCH
        ))
    })?;
    let bytes = program_bytes(arch);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    std::fs::create_dir_all(scratch)?;
    let path = scratch.join(format!("seccomp-{h:016x}.bpf"));
    if std::fs::read(&path).ok().as_deref() == Some(&bytes[..]) {
        return Ok(path);
    }
    let tmp = scratch.join(format!(".seccomp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The profile as an OCI runtime-spec `linux.seccomp` object (which Docker's
/// `seccomp=` security option also reads), for `arch`.
pub fn oci(arch: Arch) -> Value {
    oci_with(
        arch,
        json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}),
    )
}

/// [`oci`] for gVisor's own kernel: the gVisor releases packaged for Debian 12 answer a
/// rule's `errnoRet` with `EPERM`, which would stop libc's fallback to `clone`, and do not
/// implement `clone3` themselves (`ENOSYS`), so `clone3` is passed through to them. The
/// conformance suite tries `clone3(CLONE_NEWUSER)` in every sandbox.
pub fn oci_for_gvisor(arch: Arch) -> Value {
    oci_with(
        arch,
        json!({"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}),
    )
}

fn oci_with(arch: Arch, clone3: Value) -> Value {
    let allowed: Vec<&str> = ALLOWED
        .iter()
        .copied()
        .filter(|n| arch.number(n).is_some())
        .collect();
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": [arch.oci()],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{
                    "index": 0,
                    "value": CLONE_NAMESPACE_FLAGS,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }],
            },
            clone3,
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter on one system call the way the kernel does; returns its action.
    fn run(p: &[Instruction], arch: u32, nr: u32, arg0: u64) -> u32 {
        let data = |off: u32| match off {
            OFFSET_NR => nr,
            OFFSET_ARCH => arch,
            OFFSET_ARG0_LOW => arg0 as u32,
            other => panic!("the filter reads offset {other}"),
        };
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = data(i.k),
                RET_K => return i.k,
                JMP_JEQ_K | JMP_JGE_K | JMP_JSET_K => {
                    let holds = match i.code {
                        JMP_JEQ_K => acc == i.k,
                        JMP_JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += usize::from(if holds { i.jt } else { i.jf });
                }
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    fn verdict(arch: Arch, name: &str, arg0: u64) -> u32 {
        let nr = arch
            .number(name)
            .unwrap_or_else(|| panic!("{name} on {arch:?}"));
        run(&program(arch), arch.audit(), nr, arg0)
    }

    #[test]
    fn allowed_calls_pass_and_escapes_are_eperm_on_both_arches() {
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for name in [
                "read",
                "write",
                "openat",
                "execve",
                "mmap",
                "futex",
                "exit_group",
            ] {
                assert_eq!(verdict(arch, name, 0), RET_ALLOW, "{name} on {arch:?}");
            }
            for name in REFUSED {
                if arch.number(name).is_some() {
                    assert_eq!(verdict(arch, name, 0), RET_ERRNO | EPERM, "{name}");
                }
            }
            assert_eq!(verdict(arch, "clone3", 0), RET_ERRNO | ENOSYS);
        }
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        const THREAD: u64 = 0x003d_0f00; // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|...
        for arch in [Arch::X86_64, Arch::Aarch64] {
            assert_eq!(verdict(arch, "clone", THREAD), RET_ALLOW);
            assert_eq!(verdict(arch, "clone", 17), RET_ALLOW); // fork: SIGCHLD
            for flag in [0x1000_0000u64, 0x2000_0000, 0x4000_0000, 0x0002_0000, 0x80] {
                assert_eq!(
                    verdict(arch, "clone", 17 | flag),
                    RET_ERRNO | EPERM,
                    "{flag:#x}"
                );
            }
        }
    }

    #[test]
    fn another_arch_is_killed_and_x32_refused() {
        let p = program(Arch::X86_64);
        assert_eq!(run(&p, 0x4000_0003, 3, 0), RET_KILL_PROCESS); // i386
        assert_eq!(
            run(&p, Arch::X86_64.audit(), X32_SYSCALL_BIT | 1, 0),
            RET_ERRNO | EPERM
        );
        let unknown = 999;
        assert_eq!(run(&p, Arch::X86_64.audit(), unknown, 0), RET_ERRNO | EPERM);
    }

    #[test]
    fn no_call_is_both_allowed_and_refused_and_every_name_has_a_number() {
        for name in REFUSED {
            assert!(!ALLOWED.contains(name), "{name}");
        }
        for name in ALLOWED.iter().chain(REFUSED) {
            assert!(
                Arch::X86_64.number(name).is_some() || Arch::Aarch64.number(name).is_some(),
                "{name} has no number"
            );
        }
    }

    #[test]
    fn the_bytes_are_sock_filters_in_native_order() {
        let p = program(Arch::X86_64);
        let b = program_bytes(Arch::X86_64);
        assert_eq!(b.len(), p.len() * 8);
        assert!(
            p.len() < 4096,
            "BPF programs hold at most 4096 instructions"
        );
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), LD_W_ABS);
        assert_eq!(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]), OFFSET_ARCH);
        assert_eq!(
            u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            0xC000_003E
        );
    }

    #[test]
    fn the_oci_profile_names_the_same_calls() {
        let o = oci(Arch::Aarch64);
        assert_eq!(o["defaultAction"], json!("SCMP_ACT_ERRNO"));
        let allowed = o["syscalls"][0]["names"].as_array().unwrap();
        assert!(allowed.contains(&json!("read")));
        assert!(!allowed.contains(&json!("arch_prctl")), "x86 only");
        assert!(!allowed
            .iter()
            .any(|n| REFUSED.contains(&n.as_str().unwrap())));
    }
}
