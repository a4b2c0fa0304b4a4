//! The rlimits of a sandbox (open files, file size, core dumps, address space, process
//! count), written as `prlimit` options that every host backend reads.

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
    // V8 reserves gigabytes of address space up front, so node is bounded by its heap
    // flag and the memory cgroup instead.
    if runner == RunnerKind::Python {
        let bytes = (limits.memory_mb << 20).saturating_add(ADDRESS_SPACE_HEADROOM);
        args.push(format!("--as={bytes}:{bytes}"));
    }
    if nproc {
        let n = limits.max_processes.max(4);
        args.push(format!("--nproc={n}:{n}"));
    }
    args
}
