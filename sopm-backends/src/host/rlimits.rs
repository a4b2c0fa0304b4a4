//! The rlimits of a sandbox (open files, file size, core dumps, address space or data
//! size, process count), written as `prlimit` options that every host backend reads.

use sopm_core::Limits;

use crate::sandbox::RunnerKind;

/// Room an interpreter needs in its address space beyond the function's memory (its own
/// mappings, thread stacks).
pub const ADDRESS_SPACE_HEADROOM: u64 = 128 << 20;

/// The rlimits of a sandbox, as `prlimit` options.
pub fn rlimit_args(runner: RunnerKind, limits: &Limits, nproc: bool) -> Vec<String> {
    let files = limits.max_open_files.max(16);
    let fsize = limits.tmpfs_mb.max(1) << 20;
    let mut args = vec![
        format!("--nofile={files}:{files}"),
        format!("--fsize={fsize}:{fsize}"),
        "--core=0:0".to_string(),
    ];
    let bytes = (limits.memory_mb << 20).saturating_add(ADDRESS_SPACE_HEADROOM);
    match runner {
        RunnerKind::Python => args.push(format!("--as={bytes}:{bytes}")),
        // V8 reserves gigabytes of address space up front (PROT_NONE), which RLIMIT_AS
        // would count but RLIMIT_DATA does not: node's heap and buffers are bounded by
        // the data limit (and its heap flag) even where no memory cgroup is.
        RunnerKind::Node => args.push(format!("--data={bytes}:{bytes}")),
        RunnerKind::Static => {}
    }
    if nproc {
        let n = limits.max_processes.max(4);
        args.push(format!("--nproc={n}:{n}"));
    }
    args
}
