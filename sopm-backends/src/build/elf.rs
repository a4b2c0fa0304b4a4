//! Reads just enough of an ELF file to tell whether it can run here: an executable
//! for this machine's architecture, statically linked or not.

/// What the header of an ELF executable says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElfExecutable {
    /// `e_machine`.
    pub machine: u16,
    /// The program interpreter (`PT_INTERP`) of a dynamically linked executable.
    pub interpreter: Option<String>,
}

const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

struct Reader<'a> {
    bytes: &'a [u8],
    little: bool,
}

impl Reader<'_> {
    fn take<const N: usize>(&self, at: u64) -> Option<[u8; N]> {
        let at = usize::try_from(at).ok()?;
        self.bytes.get(at..at.checked_add(N)?)?.try_into().ok()
    }
    fn u16(&self, at: u64) -> Option<u16> {
        let b = self.take::<2>(at)?;
        Some(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }
    fn u32(&self, at: u64) -> Option<u32> {
        let b = self.take::<4>(at)?;
        Some(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
    fn u64(&self, at: u64) -> Option<u64> {
        let b = self.take::<8>(at)?;
        Some(if self.little {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
}

/// Reads the header and program headers of an ELF executable. `Err` says why `bytes`
/// is not one (not ELF, truncated, an object file or a core dump).
pub(crate) fn inspect(bytes: &[u8]) -> Result<ElfExecutable, String> {
    if bytes.len() < 16 || &bytes[..4] != b"\x7fELF" {
        return Err("is not an ELF executable".into());
    }
    let wide = match bytes[4] {
        1 => false,
        2 => true,
        _ => return Err("has an unknown ELF class".into()),
    };
    let little = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("has an unknown ELF byte order".into()),
    };
    let r = Reader { bytes, little };
    let truncated = || "is a truncated ELF file".to_string();
    let e_type = r.u16(16).ok_or_else(truncated)?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err("is an ELF file but not an executable (an object file or a core dump)".into());
    }
    let machine = r.u16(18).ok_or_else(truncated)?;
    let (phoff, phentsize, phnum) = if wide {
        (r.u64(32), r.u16(54), r.u16(56))
    } else {
        (r.u32(28).map(u64::from), r.u16(42), r.u16(44))
    };
    let (phoff, phentsize, phnum) = (
        phoff.ok_or_else(truncated)?,
        u64::from(phentsize.ok_or_else(truncated)?),
        phnum.ok_or_else(truncated)?,
    );
    let mut interpreter = None;
    for i in 0..u64::from(phnum) {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        if r.u32(ph).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        let (offset, size) = if wide {
            (r.u64(ph + 8), r.u64(ph + 32))
        } else {
            (r.u32(ph + 4).map(u64::from), r.u32(ph + 16).map(u64::from))
        };
        let (offset, size) = (offset.ok_or_else(truncated)?, size.ok_or_else(truncated)?);
        let start = usize::try_from(offset).map_err(|_| truncated())?;
        let end = usize::try_from(offset.saturating_add(size)).map_err(|_| truncated())?;
        let raw = bytes.get(start..end).ok_or_else(truncated)?;
        let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
        interpreter = Some(String::from_utf8_lossy(raw).into_owned());
    }
    Ok(ElfExecutable {
        machine,
        interpreter,
    })
}

/// The `e_machine` of executables for the architecture this program was built for.
pub(crate) fn host_machine() -> Option<u16> {
    Some(match std::env::consts::ARCH {
        "x86" => 3,
        "x86_64" => 62,
        "arm" => 40,
        "aarch64" => 183,
        "riscv64" => 243,
        "powerpc64" => 21,
        "s390x" => 22,
        "loongarch64" => 258,
        _ => return None,
    })
}

/// A name for an `e_machine` value, for messages.
pub(crate) fn machine_name(machine: u16) -> String {
    match machine {
        3 => "x86".into(),
        62 => "x86_64".into(),
        40 => "arm".into(),
        183 => "aarch64".into(),
        243 => "riscv".into(),
        21 => "powerpc64".into(),
        22 => "s390x".into(),
        258 => "loongarch".into(),
        other => format!("machine {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit little-endian executable header with `interp` as its
    /// `PT_INTERP`, if any.
    fn elf64(machine: u16, interp: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        let mut load = vec![0u8; 56];
        load[..4].copy_from_slice(&1u32.to_le_bytes());
        let mut phdrs = load;
        let mut tail = Vec::new();
        if let Some(i) = interp {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&PT_INTERP.to_le_bytes());
            let off = 64 + 2 * 56;
            ph[8..16].copy_from_slice(&(off as u64).to_le_bytes());
            ph[32..40].copy_from_slice(&(i.len() as u64 + 1).to_le_bytes());
            phdrs.extend(ph);
            tail.extend(i.as_bytes());
            tail.push(0);
        }
        let phnum = (phdrs.len() / 56) as u16;
        b[56..58].copy_from_slice(&phnum.to_le_bytes());
        b.extend(phdrs);
        b.extend(tail);
        b
    }

    #[test]
    fn static_and_dynamic_are_told_apart() {
        let s = inspect(&elf64(62, None)).unwrap();
        assert_eq!(s.interpreter, None);
        assert_eq!(s.machine, 62);
        let d = inspect(&elf64(183, Some("/lib/ld-linux-aarch64.so.1"))).unwrap();
        assert_eq!(d.interpreter.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
        assert_eq!(machine_name(d.machine), "aarch64");
    }

    #[test]
    fn non_executables_are_refused() {
        assert!(inspect(b"#!/bin/sh\necho hi\n").is_err());
        assert!(inspect(b"\x7fELF").is_err());
        let mut obj = elf64(62, None);
        obj[16] = 1; // ET_REL
        assert!(inspect(&obj).unwrap_err().contains("not an executable"));
        let mut cut = elf64(62, Some("/lib64/ld.so"));
        cut.truncate(100);
        assert!(inspect(&cut).unwrap_err().contains("truncated"));
    }

    #[test]
    fn this_test_binary_is_read() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = inspect(&me).unwrap();
        if let Some(m) = host_machine() {
            assert_eq!(info.machine, m);
        }
    }
}
