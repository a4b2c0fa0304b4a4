//! `sopm-runner`: the runner for shell and binary functions, as one static executable.
//!
//! A sandbox image for shell scripts and static binaries holds little more than a
//! busybox: no python, no node. This program speaks SOPM's runner protocol there (the
//! frames and log channel described in `sopm-backends/src/sandbox/protocol.rs`) and
//! behaves as the python runner does for the `shell` and `binary` runtimes: it says
//! `hello` (as runner `static`), writes a function's code into its code directory on
//! `init`, and runs the handler as a child process per `invoke`, feeding it the input
//! JSON on stdin and reading its output JSON from stdout.
//!
//! Each child gets its own process group, its working directory in the code directory,
//! the sandbox environment plus the function's, and `RLIMIT_CPU` from the deadline. Its
//! stdout is read up to the function's output cap (past it the group is killed and the
//! call is `output_too_large`); its stderr is copied to the log channel, the last 2 KiB
//! kept for the error message and traceback. When the child exits, or the deadline
//! passes, the whole group is killed, so nothing an invocation started outlives it.
//! (At the deadline the python runner waits for the host to stop the sandbox; this one
//! stops the child itself and answers `timeout`, so a sleeping handler is not left
//! running if the host is late.)
//! After each `init` and `invoke` the log marker goes to the log channel, then the frame.
//!
//! # Starting
//!
//! A backend starts it as `sh -c "$RUNNER_PROLOGUE" sopm-runner /path/to/sopm-runner`:
//! frames in on fd 3, frames out on fd 4, the log channel on fd 5 (and 1, 2). Since
//! code here cannot close or re-flag a descriptor it does not own without `unsafe`,
//! the runner first re-executes itself once through `/bin/sh`, moving the frame
//! streams to its stdin and stdout and the log channel to its stderr and closing fds
//! 3 to 9 (`sopm-runner --stdio --env K=V..`, the environment it was started with
//! passed along so the extra shell changes nothing). Every descriptor it opens after
//! that is close-on-exec and every child gets fresh pipes on 0 to 2, so a function can
//! neither read nor forge frames. `sopm-runner --stdio` can also be started directly
//! with frames on stdin and stdout.
//!
//! # TCP mode
//!
//! In a Kubernetes pod the host reaches the runner over the network instead:
//! `sopm-runner --listen HOST:PORT` listens there and takes two connections, each opened
//! with the line `sopm-runner/1 frames|logs <token>`, the token being the pod's secret
//! (`SOPM_RUNNER_TOKEN`, at least 16 bytes, compared in constant time and kept out of
//! every function's environment). A connection with a wrong or late line is closed (64
//! of them end the runner). Once both are in, the listener closes and the frames
//! connection carries the frames both ways and the logs connection the log channel, as
//! the pipes do in pipe mode. (The static runner runs no user code in its own process,
//! so its own stdout and stderr stay where the pod put them.)
//!
//! # Building
//!
//! `scripts/build-runner.sh` builds it statically (glibc with `crt-static`) and prints
//! the path of the executable, which a backend copies into the sandbox image.

mod code;
mod frames;
mod listen;
mod supervise;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use serde_json::Value;

use crate::code::Function;
use crate::frames::{error_result, read_frame_line, MAX_FRAME_BYTES};

/// The shell step that puts the frame streams on stdin/stdout and the log channel on
/// stderr, closes fds 3 to 9, and starts the runner again (`$0`) with its arguments.
/// (Single-digit descriptors are all every `sh` can name; a sandbox passes no others.)
const MOVE_TO_STDIO: &str =
    "exec 0<&3 1>&4 2>&5 3<&- 4>&- 5>&- 6<&- 7<&- 8<&- 9<&- && exec \"$0\" \"$@\"";

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next();
    match args.next() {
        None => restart_on_stdio(argv0),
        Some(flag) if flag == "--stdio" => match base_env(args) {
            Ok(env) => serve(env),
            Err(message) => usage(&message),
        },
        Some(flag) if flag == "--listen" => match (args.next(), args.next()) {
            (Some(address), None) => serve_tcp(&address.to_string_lossy()),
            _ => usage("--listen takes one HOST:PORT"),
        },
        Some(other) => usage(&format!("unknown argument {other:?}")),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("sopm-runner: {message}");
    eprintln!("usage: sopm-runner            (frames on fds 3/4, logs on fd 5)");
    eprintln!("       sopm-runner --stdio [--env KEY=VALUE..]   (frames on stdin/stdout)");
    eprintln!("       sopm-runner --listen HOST:PORT   (TCP mode, token in SOPM_RUNNER_TOKEN)");
    ExitCode::from(2)
}

/// Re-executes this program through `/bin/sh` with the frame streams on stdio. Returns
/// only if that fails.
fn restart_on_stdio(argv0: Option<OsString>) -> ExitCode {
    let Some(exe) = std::env::current_exe().ok().map(OsString::from).or(argv0) else {
        eprintln!("sopm-runner: cannot tell where this program is");
        return ExitCode::FAILURE;
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(MOVE_TO_STDIO)
        .arg(exe)
        .arg("--stdio")
        .arg("--env");
    for (key, value) in std::env::vars_os() {
        let mut pair = key;
        pair.push("=");
        pair.push(value);
        cmd.arg(pair);
    }
    let err = cmd.exec();
    eprintln!("sopm-runner: cannot run /bin/sh: {err}");
    ExitCode::FAILURE
}

/// The environment functions start from: the pairs after `--env`, or this process's own.
fn base_env(
    mut args: impl Iterator<Item = OsString>,
) -> Result<BTreeMap<OsString, OsString>, String> {
    match args.next() {
        None => Ok(std::env::vars_os().collect()),
        Some(flag) if flag == "--env" => {
            let mut env = BTreeMap::new();
            for pair in args {
                let bytes = pair.as_bytes();
                let Some(eq) = bytes.iter().position(|&b| b == b'=') else {
                    return Err(format!("not KEY=VALUE: {pair:?}"));
                };
                env.insert(
                    OsStr::from_bytes(&bytes[..eq]).to_owned(),
                    OsStr::from_bytes(&bytes[eq + 1..]).to_owned(),
                );
            }
            Ok(env)
        }
        Some(other) => Err(format!("unknown argument {other:?}")),
    }
}

/// The protocol loop on stdin (frames in), stdout (frames out) and stderr (log channel).
fn serve(base_env: BTreeMap<OsString, OsString>) -> ExitCode {
    let streams = (|| -> io::Result<(File, File, File)> {
        Ok((
            File::from(io::stdin().as_fd().try_clone_to_owned()?),
            File::from(io::stdout().as_fd().try_clone_to_owned()?),
            File::from(io::stderr().as_fd().try_clone_to_owned()?),
        ))
    })();
    let (frames_in, frames_out, log) = match streams {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sopm-runner: cannot take over stdio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut runner = Runner {
        frames_out,
        log,
        base_env,
        function: None,
    };
    match runner.run(BufReader::with_capacity(1 << 16, frames_in)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sopm-runner: {e}");
            ExitCode::FAILURE
        }
    }
}

/// TCP mode: waits for the host's two authenticated connections, then runs the protocol
/// loop over them.
fn serve_tcp(address: &str) -> ExitCode {
    let token = std::env::var_os(listen::TOKEN_VAR).unwrap_or_default();
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    env.remove(OsStr::new(listen::TOKEN_VAR));
    let channels = match listen::accept_host(address, token.as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sopm-runner: {e}");
            return ExitCode::from(if e.kind() == io::ErrorKind::PermissionDenied {
                3
            } else {
                2
            });
        }
    };
    let mut runner = Runner {
        frames_out: channels.frames_out,
        log: channels.log,
        base_env: env,
        function: None,
    };
    match runner.run(BufReader::with_capacity(1 << 16, channels.frames_in)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sopm-runner: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One runner: its channels and the function it became, if any.
struct Runner {
    frames_out: File,
    log: File,
    base_env: BTreeMap<OsString, OsString>,
    function: Option<Function>,
}

impl Runner {
    /// Answers frames until the host closes the frame stream.
    fn run(&mut self, mut frames: BufReader<File>) -> io::Result<()> {
        self.send(br#"{"type":"hello","runner":"static"}"#)?;
        while let Some(line) = read_frame_line(&mut frames, MAX_FRAME_BYTES)? {
            let frame: Value = serde_json::from_slice(&line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}"))
            })?;
            match frame.get("type").and_then(Value::as_str) {
                Some("init") => self.init(&frame)?,
                Some("invoke") => self.invoke(&frame)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn init(&mut self, frame: &Value) -> io::Result<()> {
        let marker = frames::log_marker(frame.get("log_marker").and_then(Value::as_str));
        match Function::load(frame, &self.base_env) {
            Ok(function) => {
                self.function = Some(function);
                self.end_logs(&marker);
                self.send(br#"{"type":"ready"}"#)
            }
            // A failed init keeps the function loaded before, if any.
            Err(message) => {
                self.end_logs(&marker);
                self.send(&frames::init_error(&message))
            }
        }
    }

    fn invoke(&mut self, frame: &Value) -> io::Result<()> {
        let id = frame.get("id").unwrap_or(&Value::Null);
        let Some(function) = &self.function else {
            return self.send(&error_result(
                id,
                "function_error",
                "invoke before init",
                None,
            ));
        };
        let input = frame.get("input").unwrap_or(&Value::Null);
        let deadline_ms = frame
            .get("deadline_ms")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
            .unwrap_or(30_000);
        let result = function.invoke(id, input, deadline_ms, &self.log);
        let marker = function.marker().to_vec();
        self.end_logs(&marker);
        self.send(&result)
    }

    /// Ends this step's logs on the log channel; a broken log channel is the host's
    /// problem (it then sees no marker) and does not stop the frame.
    fn end_logs(&mut self, marker: &[u8]) {
        let _ = self.log.write_all(marker);
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let mut line = Vec::with_capacity(frame.len() + 1);
        line.extend_from_slice(frame);
        line.push(b'\n');
        self.frames_out.write_all(&line)
    }
}
