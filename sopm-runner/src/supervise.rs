//! One invocation: the handler as a child in its own process group, fed its input on
//! stdin, its stdout read up to the output cap, its stderr copied to the log channel,
//! and the whole group killed when it exits or the deadline passes.

use std::fs::File;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{kill_process_group, prlimit, Pid, Resource, Rlimit, Signal};
use serde_json::Value;

use crate::code::Function;
use crate::frames::{error_result, ok_result, py_repr};

/// How much of the end of a child's stderr is kept for its error.
const STDERR_TAIL: usize = 2048;

/// How much a read from a child's pipes takes at once.
const CHUNK: usize = 64 * 1024;

/// What a finished child left.
struct Finished {
    status: std::io::Result<ExitStatus>,
    stdout: Vec<u8>,
    too_large: bool,
    timed_out: bool,
    stderr_tail: Vec<u8>,
}

impl Function {
    /// Runs one invocation and returns its `result` frame.
    pub fn invoke(&self, id: &Value, input: &Value, deadline_ms: u64, log: &File) -> Vec<u8> {
        let started = Instant::now();
        // Far-off deadlines (or none) are no deadline.
        let deadline = started.checked_add(Duration::from_millis(deadline_ms));
        let data = serde_json::to_vec(input).expect("JSON values always serialise");
        let child = match self.spawn(deadline_ms) {
            Ok(child) => child,
            Err(e) => {
                let message = format!("cannot start {}: {e}", self.argv[0].to_string_lossy());
                return error_result(id, "function_error", &message, None);
            }
        };
        let done = self.supervise(child, data, deadline, log);
        self.result(id, deadline_ms, done)
    }

    fn spawn(&self, deadline_ms: u64) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir(&self.code_dir)
            .env_clear()
            .envs(&self.env);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn()?;
        // Set from outside before any input arrives; CPU spent until then still counts.
        let cpu = (deadline_ms / 1000).saturating_add(1).max(1);
        let _ = prlimit(
            Some(Pid::from_child(&child)),
            Resource::Cpu,
            Rlimit {
                current: Some(cpu),
                maximum: Some(cpu),
            },
        );
        Ok(child)
    }

    fn supervise(
        &self,
        mut child: Child,
        data: Vec<u8>,
        deadline: Option<Instant>,
        log: &File,
    ) -> Finished {
        let group = Pid::from_child(&child);
        let kill_group = move || {
            let _ = kill_process_group(group, Signal::KILL);
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let max_output = usize::try_from(self.max_output).unwrap_or(usize::MAX);
        let too_large = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(move || {
                // A handler may exit without reading its input: that is not an error.
                let _ = stdin.write_all(&data);
            });
            let reading = s.spawn(|| {
                let mut out = Vec::new();
                let mut buf = vec![0; CHUNK];
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => return out,
                        Ok(n) => n,
                    };
                    if out.len() + n > max_output {
                        too_large.store(true, Ordering::SeqCst);
                        kill_group();
                        return out;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
            });
            let logging = s.spawn(move || {
                let mut tail = Vec::new();
                let mut buf = vec![0; CHUNK];
                let mut log = log;
                loop {
                    let n = match stderr.read(&mut buf) {
                        Ok(0) | Err(_) => return tail,
                        Ok(n) => n,
                    };
                    let _ = log.write_all(&buf[..n]);
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > STDERR_TAIL {
                        tail.drain(..tail.len() - STDERR_TAIL);
                    }
                }
            });
            let (tx, rx) = mpsc::channel();
            s.spawn(move || {
                let _ = tx.send(child.wait());
            });
            let mut timed_out = false;
            let status = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(status) => status,
                        Err(_) => {
                            timed_out = true;
                            kill_group();
                            rx.recv().expect("the waiter always answers")
                        }
                    }
                }
                None => rx.recv().expect("the waiter always answers"),
            };
            // Whatever the handler started goes with it.
            kill_group();
            Finished {
                status,
                stdout: reading.join().unwrap_or_default(),
                too_large: too_large.load(Ordering::SeqCst),
                timed_out,
                stderr_tail: logging.join().unwrap_or_default(),
            }
        })
    }

    fn result(&self, id: &Value, deadline_ms: u64, done: Finished) -> Vec<u8> {
        if done.too_large {
            let message = format!(
                "the output is more than the limit of {} bytes",
                self.max_output
            );
            return error_result(id, "output_too_large", &message, None);
        }
        if done.timed_out {
            let message =
                format!("the function ran past its deadline of {deadline_ms} ms and was stopped");
            return error_result(id, "timeout", &message, None);
        }
        let status = match done.status {
            Ok(status) => status,
            Err(e) => {
                let message = format!("cannot wait for {}: {e}", self.kind.name());
                return error_result(id, "function_error", &message, None);
            }
        };
        let tail = String::from_utf8_lossy(&done.stderr_tail);
        if !status.success() {
            let how = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "an unknown status".to_owned(),
            };
            let mut message = format!("{} failed with {how}", self.kind.name());
            if let Some(last) = py_lines(tail.trim()).last() {
                message.push_str(": ");
                message.push_str(char_end(last, 300));
            }
            return error_result(id, "function_error", &message, Some(&tail));
        }
        let text = String::from_utf8_lossy(&done.stdout);
        let text = text.trim();
        if text.is_empty() {
            return ok_result(id, b"null");
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(_) => {
                let head: String = text.chars().take(200).collect();
                let message = format!("stdout is not JSON: {}", py_repr(&head));
                return error_result(id, "function_error", &message, None);
            }
        };
        let encoded = serde_json::to_vec(&value).expect("JSON values always serialise");
        if encoded.len() as u64 > self.max_output {
            let message = format!(
                "the output is {} bytes, more than the limit of {}",
                encoded.len(),
                self.max_output
            );
            return error_result(id, "output_too_large", &message, None);
        }
        ok_result(id, &encoded)
    }
}

/// The lines of `text`, split where python's `str.splitlines` splits.
fn py_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    })
    .filter(|line| !line.is_empty())
}

/// The last `n` characters of `text`.
fn char_end(text: &str, n: usize) -> &str {
    match text.char_indices().rev().nth(n.saturating_sub(1)) {
        Some((at, _)) if n > 0 => &text[at..],
        _ => text,
    }
}
