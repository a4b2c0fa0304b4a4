//! [`BuildLimits`]: what one dependency install may use (memory, processes, CPU time,
//! bytes written, wall time), how each is enforced while the install runs, and which
//! one stopped an install that failed.

use std::time::Duration;

/// The bounds of one dependency install.
///
/// - memory (swap included where the host accounts it) and processes: a cgroup the
///   whole sandbox runs in; the install is stopped as soon as either is hit;
/// - CPU time: `RLIMIT_CPU` of every process (each gets this many CPU seconds);
/// - bytes written: the install writes into a tmpfs of this size (its working
///   directory, `TMPDIR` and home), copied out only when the install succeeds, and
///   `RLIMIT_FSIZE` caps each file; nothing is written to the host's disk meanwhile;
/// - wall time: the build's deadline; past it the whole sandbox is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BuildLimits {
    /// Memory of the whole sandbox, tmpfs pages included.
    pub memory_bytes: u64,
    /// Processes and threads in the sandbox at once.
    pub max_processes: u64,
    /// CPU time of each process.
    pub cpu_time: Duration,
    /// Size of the install's writable space.
    pub disk_bytes: u64,
}

/// Exit status the install wrapper uses when its writable space is full after a
/// failed install.
pub(crate) const DISK_FULL_STATUS: i32 = 121;

/// Exit status the install wrapper uses when copying files in or out fails.
pub(crate) const COPY_FAILED_STATUS: i32 = 122;

/// Where the staging directory is bound inside the sandbox, so the install itself
/// runs in a tmpfs at [`SANDBOX_WORKDIR`].
pub(crate) const SANDBOX_OUTDIR: &str = "/out";

/// Size of the sandbox's `/tmp` (tools that ignore `TMPDIR`); `TMPDIR` and home are in
/// the install's writable space.
pub(crate) const SMALL_TMP_BYTES: u64 = 16 << 20;

/// `TMPDIR` and home inside the writable space; not copied out.
pub(crate) const SANDBOX_TMPDIR: &str = "/build/.sopm-tmp";
/// See [`SANDBOX_TMPDIR`].
pub(crate) const SANDBOX_HOME: &str = "/build/.sopm-home";

/// The wrapper the install runs under, inside the sandbox:
/// `sh -c INSTALL_WRAPPER sopm-install PROGRAM ARGS...`. It copies the uploaded files
/// into the tmpfs, runs the install, and copies the result out only on success; after a
/// failure it reports a full writable space with [`DISK_FULL_STATUS`].
pub(crate) const INSTALL_WRAPPER: &str = r#"
cp -a /out/. /build/ || exit 122
mkdir -p /build/.sopm-tmp /build/.sopm-home || exit 122
"$@"
rc=$?
if [ "$rc" -ne 0 ]; then
  for d in /build /tmp; do
    set -- $(stat -f -c '%a %S' "$d" 2>/dev/null)
    if [ -n "$2" ] && [ $(( $1 * $2 )) -lt 1048576 ]; then exit 121; fi
  done
  exit "$rc"
fi
rm -rf /build/.sopm-tmp /build/.sopm-home
cp -a /build/. /out/ || exit 122
"#;

impl BuildLimits {
    /// The line the build log shows before the install.
    pub(crate) fn describe(&self, cgroups: bool, tmpfs_size: bool) -> String {
        let mut parts = Vec::new();
        if cgroups {
            parts.push(format!("memory {}", mib(self.memory_bytes)));
            parts.push(format!("{} processes", self.max_processes));
        }
        parts.push(format!(
            "CPU time {} s per process",
            self.cpu_time.as_secs()
        ));
        if tmpfs_size {
            parts.push(format!("disk {}", mib(self.disk_bytes)));
        } else {
            parts.push(format!("files of at most {}", mib(self.disk_bytes)));
        }
        let mut line = format!("==> limits: {}", parts.join(", "));
        if !cgroups {
            line.push_str(
                " (no writable cgroup here: memory and processes are bounded only by the \
                 build's time limit)",
            );
        }
        line.push('\n');
        line
    }

    /// `prlimit` options for every process of the install.
    pub(crate) fn rlimit_args(&self) -> Vec<String> {
        let cpu = self.cpu_time.as_secs().max(1);
        // SIGXCPU at the soft limit, SIGKILL a second later for a process that ignores it.
        vec![
            format!("--cpu={cpu}:{}", cpu + 1),
            format!("--fsize={0}:{0}", self.disk_bytes),
            "--core=0:0".to_string(),
        ]
    }

    /// Why a failed install stopped, when a limit stopped it.
    pub(crate) fn stopped_by(&self, hit: LimitHit) -> String {
        match hit {
            LimitHit::Memory => format!(
                "build stopped: memory limit of {} reached",
                mib(self.memory_bytes)
            ),
            LimitHit::Processes => format!(
                "build stopped: process limit of {} reached",
                self.max_processes
            ),
            LimitHit::CpuTime => format!(
                "build stopped: CPU time limit of {} s reached",
                self.cpu_time.as_secs()
            ),
            LimitHit::Disk => format!(
                "build stopped: disk limit of {} reached",
                mib(self.disk_bytes)
            ),
        }
    }
}

/// A limit that stopped an install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    /// The memory cgroup's OOM killer fired.
    Memory,
    /// The pids cgroup refused a fork.
    Processes,
    /// A process used up its CPU time.
    CpuTime,
    /// The writable space filled up.
    Disk,
}

/// `512 MiB`, `1.5 GiB`.
fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BuildLimits {
        BuildLimits {
            memory_bytes: 512 << 20,
            max_processes: 256,
            cpu_time: Duration::from_secs(300),
            disk_bytes: 1 << 30,
        }
    }

    #[test]
    fn the_wrapper_uses_the_sandbox_paths() {
        use super::super::sandbox::SANDBOX_WORKDIR;
        assert!(INSTALL_WRAPPER.contains(&format!("{SANDBOX_OUTDIR}/. {SANDBOX_WORKDIR}/")));
        assert!(INSTALL_WRAPPER.contains(SANDBOX_TMPDIR) && INSTALL_WRAPPER.contains(SANDBOX_HOME));
        assert!(INSTALL_WRAPPER.contains(&format!("exit {DISK_FULL_STATUS}")));
        assert!(INSTALL_WRAPPER.contains(&format!("exit {COPY_FAILED_STATUS}")));
    }

    #[test]
    fn messages_name_the_limit() {
        let l = limits();
        assert_eq!(
            l.stopped_by(LimitHit::Memory),
            "build stopped: memory limit of 512 MiB reached"
        );
        assert_eq!(
            l.stopped_by(LimitHit::Processes),
            "build stopped: process limit of 256 reached"
        );
        assert_eq!(
            l.stopped_by(LimitHit::CpuTime),
            "build stopped: CPU time limit of 300 s reached"
        );
        assert_eq!(
            l.stopped_by(LimitHit::Disk),
            "build stopped: disk limit of 1 GiB reached"
        );
    }

    #[test]
    fn the_log_line_lists_the_limits() {
        assert_eq!(
            limits().describe(true, true),
            "==> limits: memory 512 MiB, 256 processes, CPU time 300 s per process, disk 1 GiB\n"
        );
        assert!(limits()
            .describe(false, true)
            .contains("no writable cgroup"));
        assert_eq!(
            limits().rlimit_args(),
            vec![
                "--cpu=300:301",
                "--fsize=1073741824:1073741824",
                "--core=0:0"
            ]
        );
    }
}
