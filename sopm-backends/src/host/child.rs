//! The host process a sandbox runs under (`bwrap`, `runsc run`): whether it still runs
//! and how it ended.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;

use crate::sandbox::Death;

/// How a sandbox ended, from the exit status of its outer process (`None`: still running
/// when we gave up waiting). `bwrap` and `runsc run` both pass on the runner's fate as
/// 128 + signal.
pub fn death_of(status: Option<ExitStatus>) -> Death {
    match status {
        None => Death::Killed,
        Some(st) => match st.code() {
            Some(c) if c == 128 + 24 => Death::CpuLimit,
            Some(c) if c > 128 => Death::Exited(format!("runner killed by signal {}", c - 128)),
            Some(c) => Death::Exited(format!("exit status {c}")),
            None => Death::Exited(format!("{st}")),
        },
    }
}

/// Whether a sandbox's outer process is still running.
pub fn is_running(child: &mut Option<Child>) -> bool {
    child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

/// The exit status of a sandbox's outer process if it ends within a moment (after its
/// runner's channel failed); `None` if it is still running.
pub async fn exit_soon(child: &mut Child) -> Option<ExitStatus> {
    tokio::time::timeout(Duration::from_millis(300), child.wait())
        .await
        .ok()
        .and_then(|r| r.ok())
}
