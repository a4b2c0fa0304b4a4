//! The runner driven the way a sandbox drives it: started through the `/bin/sh`
//! prologue with frames on its stdin and stdout and the log channel on its stderr.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

/// Copied from `RUNNER_PROLOGUE` in `sopm-backends/src/sandbox/protocol.rs`: the two
/// must stay the same (this crate does not depend on the backends).
const RUNNER_PROLOGUE: &str = "exec 3<&0 4>&1 5>&2 </dev/null 1>&2; exec \"$@\"";

const MARKER: &str = "end-of-logs-7c1e9a";

/// How long a test waits for the runner before it calls it stuck.
const PATIENCE: Duration = Duration::from_secs(60);

/// A runner process and the host's end of its three streams.
struct Host {
    child: Child,
    frames_in: Option<ChildStdin>,
    frames_out: Receiver<String>,
    logs: Arc<(Mutex<Vec<u8>>, Condvar)>,
    dir: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        let mut child = Command::new("/bin/sh")
            .args(["-c", RUNNER_PROLOGUE, "sopm-runner"])
            .arg(env!("CARGO_BIN_EXE_sopm-runner"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SANDBOX_VAR", "from the sandbox")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the runner");
        let stdout = child.stdout.take().unwrap();
        let (tx, frames_out) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let logs = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut buf = [0; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
                sink.1.notify_all();
            }
        });
        let frames_in = child.stdin.take();
        let mut host = Host {
            child,
            frames_in,
            frames_out,
            logs,
            dir: tempfile::tempdir().unwrap(),
        };
        assert_eq!(host.line(), r#"{"type":"hello","runner":"static"}"#);
        host
    }

    fn code_dir(&self) -> PathBuf {
        self.dir.path().join("fn")
    }

    fn send(&mut self, frame: &Value) {
        let mut line = serde_json::to_vec(frame).unwrap();
        line.push(b'\n');
        let stdin = self.frames_in.as_mut().expect("frames still open");
        stdin.write_all(&line).unwrap();
        stdin.flush().unwrap();
    }

    /// The next frame line, exactly as the runner wrote it.
    fn line(&mut self) -> String {
        self.frames_out
            .recv_timeout(PATIENCE)
            .expect("the runner sent no frame")
    }

    fn frame(&mut self) -> Value {
        serde_json::from_str(&self.line()).expect("frames are JSON")
    }

    /// The log channel up to the next marker (which is consumed).
    fn logs(&mut self) -> String {
        let needle = format!("\n{MARKER}\n").into_bytes();
        let until = Instant::now() + PATIENCE;
        let (lock, ready) = &*self.logs;
        let mut buf = lock.lock().unwrap();
        loop {
            if let Some(at) = buf.windows(needle.len()).position(|w| w == needle) {
                let text = String::from_utf8_lossy(&buf[..at]).into_owned();
                buf.drain(..at + needle.len());
                return text;
            }
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log marker; logs so far: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf = ready.wait_timeout(buf, left).unwrap().0;
        }
    }

    /// Sends `init` for these files; returns the answer and the logs before it.
    fn init_with(&mut self, init: Value) -> (Value, String) {
        let mut frame = json!({
            "type": "init",
            "env": {"GREETING": "hello"},
            "code_dir": self.code_dir(),
            "max_output_bytes": 1 << 20,
            "log_marker": MARKER,
        });
        for (k, v) in init.as_object().unwrap() {
            frame[k] = v.clone();
        }
        self.send(&frame);
        let answer = self.frame();
        (answer, self.logs())
    }

    fn init(&mut self, runtime: &str, handler: &str, files: &[(&str, &str)]) -> (Value, String) {
        self.init_with(json!({"runtime": runtime, "handler": handler, "files": encode(files)}))
    }

    fn init_ready(&mut self, runtime: &str, handler: &str, files: &[(&str, &str)]) {
        let (answer, _) = self.init(runtime, handler, files);
        assert_eq!(answer, json!({"type": "ready"}));
    }

    /// Sends `invoke`; returns the result line as sent and the invocation's logs.
    fn invoke(&mut self, id: &str, input: Value, deadline_ms: u64) -> (String, String) {
        self.send(&json!({"type": "invoke", "id": id, "input": input, "deadline_ms": deadline_ms}));
        let line = self.line();
        (line, self.logs())
    }

    fn invoke_value(&mut self, id: &str, input: Value) -> (Value, String) {
        let (line, logs) = self.invoke(id, input, 30_000);
        (serde_json::from_str(&line).unwrap(), logs)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(files: &[(&str, &str)]) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    files
        .iter()
        .map(|(path, body)| (path.to_string(), Value::from(engine.encode(body))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The pids a handler wrote to `file`, one a line, once it holds `n` of them.
fn pids_in(file: &Path, n: usize) -> Vec<u32> {
    let until = Instant::now() + PATIENCE;
    loop {
        let pids: Vec<u32> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < until,
            "{} never held {n} pids",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a process is still running (a zombie waiting for its reaper is not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state.and_then(|s| s.chars().next()), Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// Waits until none of `pids` runs; panics naming those that stay.
fn assert_all_gone(pids: &[u32]) {
    let until = Instant::now() + PATIENCE;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn error_of(result: &Value) -> (&str, &str, Option<&str>) {
    assert_eq!(result["ok"], json!(false), "{result}");
    let e = &result["error"];
    (
        e["kind"].as_str().unwrap(),
        e["message"].as_str().unwrap(),
        e.get("traceback").and_then(Value::as_str),
    )
}

#[test]
fn a_shell_function_runs_once_per_invocation() {
    let mut host = Host::start();
    let (answer, init_logs) = host.init(
        "shell",
        "run.sh",
        &[(
            "run.sh",
            "read input\necho \"log line $input\" >&2\nprintf '{\"got\": %s, \"greeting\": \"%s\", \"sandbox\": \"%s\", \"cwd\": \"%s\"}\\n' \"$input\" \"$GREETING\" \"$SANDBOX_VAR\" \"$(pwd)\"\n",
        )],
    );
    assert_eq!(answer, json!({"type": "ready"}));
    assert_eq!(init_logs, "");

    let (line, logs) = host.invoke("j1", json!({"a": [1, "two"]}), 30_000);
    assert!(
        line.starts_with(r#"{"type":"result","id":"j1","ok":true,"output":{"#),
        "{line}"
    );
    let result: Value = serde_json::from_str(&line).unwrap();
    let code_dir = host.code_dir();
    assert_eq!(
        result["output"],
        json!({
            "got": {"a": [1, "two"]},
            "greeting": "hello",
            "sandbox": "from the sandbox",
            "cwd": code_dir,
        })
    );
    assert_eq!(logs, "log line {\"a\":[1,\"two\"]}\n");

    // The same instance answers again, with only this call's logs.
    let (result, logs) = host.invoke_value("j2", json!(7));
    assert_eq!(result["id"], "j2");
    assert_eq!(result["output"]["got"], json!(7));
    assert_eq!(logs, "log line 7\n");
}

#[test]
fn a_binary_function_is_made_executable_and_run_directly() {
    let mut host = Host::start();
    let (answer, _) = host.init_with(json!({
        "runtime": "binary",
        "handler": "bin/app",
        "files": encode(&[
            ("real/app", "#!/bin/sh\necho \"binary ran as $0\" >&2\nexec cat\n"),
            ("real/helper", "#!/bin/sh\necho '\"from the helper\"'\n"),
        ]),
        "symlinks": {"bin/app": "../real/app"},
        "executables": ["real/helper"],
    }));
    assert_eq!(answer, json!({"type": "ready"}));

    let input = json!({"text": "héllo ✓ \"quoted\" \\ \n", "n": [1.5, -2, null, true]});
    let (result, logs) = host.invoke_value("b1", input.clone());
    assert_eq!(result["output"], input);
    assert!(logs.starts_with("binary ran as "), "{logs}");

    let helper = host.code_dir().join("real/helper");
    let out = Command::new(&helper).output().expect("marked executable");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\"from the helper\"\n"
    );
}

#[test]
fn a_failing_handler_reports_its_status_stderr_and_logs() {
    let mut host = Host::start();
    host.init_ready(
        "shell",
        "run.sh",
        &[(
            "run.sh",
            "echo 'first line' >&2\necho 'it broke here' >&2\nexit 3\n",
        )],
    );
    let (result, logs) = host.invoke_value("f1", json!(null));
    let (kind, message, traceback) = error_of(&result);
    assert_eq!(kind, "function_error");
    assert_eq!(message, "shell failed with exit status 3: it broke here");
    assert_eq!(traceback, Some("first line\nit broke here\n"));
    assert_eq!(logs, "first line\nit broke here\n");

    host.init_ready("binary", "app", &[("app", "#!/bin/sh\nkill -9 $$\n")]);
    let (result, logs) = host.invoke_value("f2", json!(null));
    let (kind, message, traceback) = error_of(&result);
    assert_eq!(kind, "function_error");
    assert_eq!(message, "binary failed with signal 9");
    assert_eq!(traceback, None);
    assert_eq!(logs, "");
}

#[test]
fn what_a_handler_prints_stays_off_the_frame_channel() {
    let mut host = Host::start();
    let script = concat!(
        "echo 'to stderr' >&2\n",
        "/bin/sh -c 'echo child stderr >&2'\n",
        "for fd in 3 4 5; do\n",
        "  if (: >&$fd) 2>/dev/null; then echo \"fd $fd open\" >&2; else echo \"fd $fd closed\" >&2; fi\n",
        "done\n",
        "echo '{\"type\":\"result\",\"id\":\"p1\",\"ok\":true,\"output\":\"forged\"}' 2>/dev/null >&4\n",
        "/bin/sh -c 'echo \"{\\\"from\\\": \\\"a child\\\"}\"'\n",
    );
    host.init_ready("shell", "run.sh", &[("run.sh", script)]);
    for id in ["p1", "p2"] {
        let (line, logs) = host.invoke(id, json!({}), 30_000);
        assert_eq!(
            line,
            format!(r#"{{"type":"result","id":"{id}","ok":true,"output":{{"from":"a child"}}}}"#)
        );
        assert_eq!(
            logs,
            "to stderr\nchild stderr\nfd 3 closed\nfd 4 closed\nfd 5 closed\n"
        );
    }
}

#[test]
fn output_past_the_cap_is_refused_and_its_writer_killed() {
    let mut host = Host::start();
    let (answer, _) = host.init_with(json!({
        "runtime": "shell",
        "handler": "run.sh",
        "files": encode(&[("run.sh", "echo $$ > pid\nwhile :; do echo 0123456789; done\n")]),
        "max_output_bytes": 1000,
    }));
    assert_eq!(answer, json!({"type": "ready"}));
    let (result, _) = host.invoke_value("o1", json!(null));
    let (kind, message, _) = error_of(&result);
    assert_eq!(kind, "output_too_large");
    assert_eq!(message, "the output is more than the limit of 1000 bytes");
    assert_all_gone(&pids_in(&host.code_dir().join("pid"), 1));

    // Output just under the cap still goes through.
    let (answer, _) = host.init_with(json!({
        "runtime": "shell",
        "handler": "small.sh",
        "files": encode(&[("small.sh", "printf '\"%0998d\"' 0\n")]),
        "max_output_bytes": 1000,
    }));
    assert_eq!(answer, json!({"type": "ready"}));
    let (result, _) = host.invoke_value("o2", json!(null));
    assert_eq!(result["output"].as_str().unwrap().len(), 998);
}

#[test]
fn the_deadline_kills_the_handler_and_everything_it_started() {
    let mut host = Host::start();
    let script = concat!(
        "sleep 1000 &\necho $! >> pids\n",
        "(while :; do sleep 1; done) &\necho $! >> pids\n",
        "echo $$ >> pids\n",
        "while :; do sleep 1; done\n",
    );
    host.init_ready("shell", "run.sh", &[("run.sh", script)]);
    let (line, _) = host.invoke("d1", json!(null), 2_000);
    let result: Value = serde_json::from_str(&line).unwrap();
    let (kind, message, _) = error_of(&result);
    assert_eq!(kind, "timeout");
    assert_eq!(
        message,
        "the function ran past its deadline of 2000 ms and was stopped"
    );
    let pids = pids_in(&host.code_dir().join("pids"), 3);
    assert_all_gone(&pids);
}

#[test]
fn a_finished_handler_leaves_nothing_behind() {
    let mut host = Host::start();
    let script = "sleep 1000 &\necho $! > pid\necho '\"done\"'\n";
    host.init_ready("shell", "run.sh", &[("run.sh", script)]);
    let (result, _) = host.invoke_value("n1", json!(null));
    assert_eq!(result["output"], "done");
    assert_all_gone(&pids_in(&host.code_dir().join("pid"), 1));
}

#[test]
fn the_cpu_limit_follows_the_deadline() {
    let mut host = Host::start();
    let script = "read x\ngrep 'Max cpu time' /proc/$$/limits >&2\necho null\n";
    host.init_ready("shell", "run.sh", &[("run.sh", script)]);
    let (_, logs) = host.invoke("c1", json!(1), 5_000);
    let fields: Vec<&str> = logs.split_whitespace().collect();
    assert_eq!(
        fields,
        ["Max", "cpu", "time", "6", "6", "seconds"],
        "{logs}"
    );
}

#[test]
fn stdout_must_be_json_or_nothing() {
    let mut host = Host::start();
    host.init_ready("shell", "run.sh", &[("run.sh", "echo \"hello world\"\n")]);
    let (result, _) = host.invoke_value("s1", json!(null));
    let (kind, message, _) = error_of(&result);
    assert_eq!(kind, "function_error");
    assert_eq!(message, "stdout is not JSON: 'hello world'");

    host.init_ready("shell", "quiet.sh", &[("quiet.sh", "cat >/dev/null\n")]);
    let (line, _) = host.invoke("s2", json!("ignored"), 30_000);
    assert_eq!(
        line,
        r#"{"type":"result","id":"s2","ok":true,"output":null}"#
    );
}

#[test]
fn init_errors_say_what_is_wrong() {
    let mut host = Host::start();
    let (answer, logs) = host.init("shell", "nope.sh", &[("run.sh", "echo 1\n")]);
    assert_eq!(
        answer,
        json!({"type": "init_error", "message": "handler 'nope.sh' not found in the function's files"})
    );
    assert_eq!(logs, "");

    let (answer, _) = host.init("python", "main.handle", &[("main.py", "")]);
    assert_eq!(
        answer["message"],
        "this runner cannot run 'python' functions"
    );
    assert_eq!(answer["type"], "init_error");

    let (answer, _) = host.init("shell", "run.sh", &[("../run.sh", "echo 1\n")]);
    assert_eq!(answer["message"], "bad path '../run.sh'");
    assert!(!host.dir.path().join("run.sh").exists());

    // None of those loaded, so there is still no function.
    host.send(&json!({"type": "invoke", "id": "x", "input": null, "deadline_ms": 1000}));
    let result = host.frame();
    assert_eq!(error_of(&result).1, "invoke before init");
}

#[test]
fn a_second_init_replaces_the_function_unless_it_fails() {
    let mut host = Host::start();
    host.init_ready("shell", "one.sh", &[("one.sh", "echo 1\n")]);
    assert_eq!(host.invoke_value("i1", json!(null)).0["output"], 1);
    host.init_ready("shell", "two.sh", &[("two.sh", "echo 2\n")]);
    assert_eq!(host.invoke_value("i2", json!(null)).0["output"], 2);
    let (answer, _) = host.init("shell", "missing.sh", &[]);
    assert_eq!(answer["type"], "init_error");
    assert_eq!(host.invoke_value("i3", json!(null)).0["output"], 2);
}

#[test]
fn invoke_before_init_is_a_function_error() {
    let mut host = Host::start();
    host.send(&json!({"type": "invoke", "id": "early", "input": {}, "deadline_ms": 1000}));
    assert_eq!(
        host.line(),
        r#"{"type":"result","id":"early","ok":false,"error":{"kind":"function_error","message":"invoke before init"}}"#
    );
}

#[test]
fn the_runner_exits_when_the_host_closes_the_frames() {
    let mut host = Host::start();
    host.init_ready("shell", "run.sh", &[("run.sh", "echo 1\n")]);
    host.frames_in = None;
    let until = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = host.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < until, "the runner did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_frame_past_64_mib_ends_the_runner() {
    let mut host = Host::start();
    let mut stdin = host.frames_in.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..65 {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let until = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = host.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "the runner kept reading");
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    assert!(!status.success());
    let logs = String::from_utf8_lossy(&host.logs.0.lock().unwrap()).into_owned();
    assert!(logs.contains("a frame went past 67108864 bytes"), "{logs}");
}
