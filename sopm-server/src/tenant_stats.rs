//! The platform's figures as one tenant may see them: server-wide totals (load, not
//! who caused it), the built-ins' counts, and only the caller's own user functions
//! and their warm pools.

use std::collections::HashSet;

use sopm_core::{FunctionRecord, PlatformStats};

/// Keeps, of `stats`, what the owner of `own` may see: every built-in's figures and
/// the shared pools (an executor's and its stem cells), and of the user functions and
/// their pools only those in `own`.
pub fn for_tenant(
    mut stats: PlatformStats,
    builtins: &HashSet<&str>,
    own: &[FunctionRecord],
) -> PlatformStats {
    let own: HashSet<&str> = own.iter().map(|r| r.id.as_str()).collect();
    // A user function is counted as `id` or `id@version`.
    let owned = |function: &str| own.contains(function.split('@').next().unwrap_or(function));
    stats
        .jobs
        .functions
        .retain(|f| builtins.contains(f.function.as_str()) || owned(&f.function));
    // A function's pool is `executor/fn/id@version`; the others hold no tenant's code.
    stats.pools.retain(|p| match p.pool.split_once("/fn/") {
        Some((_, function)) => owned(function),
        None => true,
    });
    stats
}
