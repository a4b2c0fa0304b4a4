//! The runner protocol: newline-delimited JSON frames between the host and the runner
//! inside a sandbox, and the log channel beside them. Independent of how the sandbox is
//! made (bwrap, gVisor, a container): a backend hands over three byte streams and this
//! module does the rest.
//!
//! # Channels
//!
//! A runner is started with three streams: its stdin carries host frames, its stdout
//! carries runner frames, its stderr is the *log channel*. Before any user code loads, a
//! tiny `/bin/sh` prologue inside the sandbox moves the frame streams to fds 3 (in) and 4
//! (out), keeps a private copy of the log channel on fd 5, points fd 0 at `/dev/null` and
//! fds 1 and 2 at the log channel (see [`RUNNER_PROLOGUE`]). So whatever user code prints,
//! with `print`, `console.log`, `os.write(1, ..)` or from a child process, lands on the log
//! channel and can never corrupt a frame. This works for node too, which cannot `dup2`.
//!
//! # Frames
//!
//! ```text
//! runner -> host  {"type":"hello","runner":"python"}                    once booted (stem cell)
//! host -> runner  {"type":"init","runtime":"python","handler":"main.handle","env":{..},
//!                  "files":{"main.py":"<base64>",..},"code_dir":"/fn",
//!                  "max_output_bytes":N,"log_marker":"<token>"}
//! runner -> host  {"type":"ready"} | {"type":"init_error","message":..,"traceback":..}
//! host -> runner  {"type":"invoke","id":"<job id>","input":<json>,"deadline_ms":<ms left>}
//! runner -> host  {"type":"result","id":..,"ok":true,"output":<json>}
//!               | {"type":"result","id":..,"ok":false,"error":{"kind":"function_error",
//!                  "message":..,"traceback":..}}
//! ```
//!
//! Optional init fields: `executables` (paths to mark executable) and `symlinks`
//! (path -> relative target). A result may carry `logs` (text the runner adds itself);
//! the host appends what arrived on the log channel.
//!
//! # Logs per invocation
//!
//! After an invocation (and after init) the runner flushes its own buffers and writes
//! `"\n" + log_marker + "\n"` to fd 5, then sends its frame. The host reads the log
//! channel while it waits for the frame, and after the frame until it sees the marker:
//! everything before the marker is this invocation's log. Logs are kept up to a cap; the
//! rest is counted and dropped (a line says how much), so a function printing 100 MB costs
//! the host a bounded buffer. Frames are read with a bounded line reader for the same
//! reason. Output left in the log channel between invocations is discarded.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sopm_core::{Error, Runtime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The `/bin/sh` prologue a backend runs inside the sandbox before the runner (as
/// `sh -c RUNNER_PROLOGUE sopm-runner <interpreter> <args..>`): frames to fds 3/4, a
/// private log fd 5, user-visible fds 1 and 2 to the log channel, stdin from `/dev/null`.
pub const RUNNER_PROLOGUE: &str = "exec 3<&0 4>&1 5>&2 </dev/null 1>&2; exec \"$@\"";

/// Extra room a result frame may take beyond the function's output cap (error messages,
/// tracebacks and the frame's own fields).
pub const FRAME_OVERHEAD_BYTES: usize = 256 * 1024;

/// How long the host waits for the log marker after a result frame, at most.
pub const LOG_MARKER_GRACE: Duration = Duration::from_secs(1);

/// The code of a function as it travels in an init frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CodeFiles {
    /// File contents by relative path, base64.
    pub files: BTreeMap<String, String>,
    /// Relative paths to mark executable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<String>,
    /// Symbolic links by relative path, to a relative target inside the code directory.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub symlinks: BTreeMap<String, String>,
}

/// The `init` frame: turns a booted runner into an instance of one function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitFrame {
    /// The function's runtime.
    pub runtime: Runtime,
    /// Its entry point (`main.handle`, `index.handle`, `run.sh`, `bin/app`).
    pub handler: String,
    /// Its environment variables, added to the sandbox's minimal environment.
    pub env: BTreeMap<String, String>,
    /// Its code, unless the backend mounted the code at `code_dir` itself.
    #[serde(flatten)]
    pub code: CodeFiles,
    /// Where the code lives inside the sandbox (`/fn`).
    pub code_dir: String,
    /// The function's output cap; the runner reports `output_too_large` past it.
    pub max_output_bytes: u64,
    /// The token that ends each invocation's logs on the log channel.
    pub log_marker: String,
}

/// An error a runner reports in a result frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerError {
    /// A stable error code (`function_error`, `out_of_memory`, `output_too_large`, ...).
    pub kind: String,
    /// A message for people.
    pub message: String,
    /// The user code's traceback, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

impl RunnerError {
    /// The SOPM error this stands for.
    pub fn into_error(self) -> Error {
        match self.kind.as_str() {
            "function_error" => Error::Function {
                message: self.message,
                traceback: self.traceback,
                logs: None,
            },
            "out_of_memory" | "output_too_large" | "timeout" | "invalid_input" => {
                Error::from_code(&self.kind, self.message)
            }
            // A runner must not be able to claim host-side conditions (storage, auth...).
            _ => Error::Function {
                message: self.message,
                traceback: self.traceback,
                logs: None,
            },
        }
    }
}

/// A `result` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultFrame {
    /// The invocation id it answers.
    pub id: String,
    /// Whether the function returned normally.
    pub ok: bool,
    /// The output, when `ok`.
    #[serde(default)]
    pub output: Value,
    /// The error, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunnerError>,
    /// Logs the runner adds itself (the log channel carries the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
}

/// A frame sent by the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostFrame<'a> {
    /// Load a function.
    Init(&'a InitFrame),
    /// Run one invocation.
    Invoke {
        /// The job id.
        id: &'a str,
        /// The input.
        input: &'a Value,
        /// Milliseconds left before the deadline.
        deadline_ms: u64,
    },
}

/// A frame sent by a runner.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunnerFrame {
    /// The runner booted and waits for `init`.
    Hello {
        /// Which runner (`python`, `node`).
        runner: String,
    },
    /// The function loaded.
    Ready,
    /// The function failed to load.
    InitError {
        /// What went wrong.
        message: String,
        /// The traceback, if any.
        #[serde(default)]
        traceback: Option<String>,
    },
    /// The answer to an invocation.
    Result(ResultFrame),
}

/// Encodes a host frame as one line.
pub fn encode_frame(frame: &HostFrame<'_>) -> Vec<u8> {
    let mut line = serde_json::to_vec(frame).expect("frames always serialise");
    line.push(b'\n');
    line
}

/// Why a runner channel stopped working. Every one of these means the sandbox is no
/// longer trustworthy and must be killed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The runner closed its frame stream (it died, or user code closed the fd).
    #[error("the runner closed its frame channel")]
    Closed,
    /// Reading or writing a stream failed.
    #[error("runner channel i/o: {0}")]
    Io(#[from] io::Error),
    /// A frame line went past the limit without a newline.
    #[error("a runner frame exceeded {limit} bytes")]
    FrameTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A line that is not a valid frame, or a frame out of turn.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// What is read of a frame before it is parsed: its type, and its output as raw text.
#[derive(Deserialize)]
struct FrameHead<'a> {
    #[serde(rename = "type", default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    output: Option<&'a serde_json::value::RawValue>,
}

/// Reads newline-terminated frames, never holding more than `max` bytes of one line.
/// Cancel-safe: a partial line stays buffered if the read future is dropped.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    chunk: Vec<u8>,
    scanned: usize,
    max: usize,
    max_output: Option<usize>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream; lines longer than `max` bytes are an error.
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
            chunk: vec![0; 64 * 1024],
            scanned: 0,
            max,
            max_output: None,
        }
    }

    /// Changes the line limit (for the next lines).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Caps the `output` of the next frames at `max` bytes of JSON text (`None`: no cap
    /// beyond the line limit). A frame past it is [`ChannelError::FrameTooLong`], found
    /// before the output is parsed.
    pub fn set_max_output(&mut self, max: Option<usize>) {
        self.max_output = max;
    }

    /// The next line without its newline; `Ok(None)` at end of stream.
    pub async fn next_line(&mut self) -> Result<Option<Vec<u8>>, ChannelError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                if line.len() > self.max {
                    return Err(ChannelError::FrameTooLong { limit: self.max });
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(ChannelError::FrameTooLong { limit: self.max });
            }
            let want = (self.max + 1 - self.buf.len()).clamp(1, self.chunk.len());
            let n = self.inner.read(&mut self.chunk[..want]).await?;
            self.buf.extend_from_slice(&self.chunk[..n]);
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ChannelError::Closed)
                };
            }
        }
    }

    /// The next frame; end of stream is [`ChannelError::Closed`]. A frame's `output` is
    /// measured as raw JSON text against the output cap before anything is parsed into a
    /// value, and a result frame is parsed straight into its type.
    pub async fn next_frame(&mut self) -> Result<RunnerFrame, ChannelError> {
        let line = self.next_line().await?.ok_or(ChannelError::Closed)?;
        let bad = |e: serde_json::Error| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
            ChannelError::Protocol(format!("bad frame ({e}): {shown}"))
        };
        let head: FrameHead<'_> = serde_json::from_slice(&line).map_err(bad)?;
        if let (Some(max), Some(output)) = (self.max_output, head.output) {
            if output.get().len() > max {
                return Err(ChannelError::FrameTooLong { limit: max });
            }
        }
        if head.kind.as_deref() == Some("result") {
            return serde_json::from_slice(&line)
                .map(RunnerFrame::Result)
                .map_err(bad);
        }
        serde_json::from_slice(&line).map_err(bad)
    }
}

/// One invocation's logs, collected from the log channel up to a cap, ended by a marker.
#[derive(Debug)]
pub struct LogCapture {
    marker: Vec<u8>,
    cap: usize,
    kept: Vec<u8>,
    held: Vec<u8>,
    dropped: u64,
    done: bool,
}

impl LogCapture {
    /// Starts collecting: `marker` is the runner's token (without the newlines it writes
    /// around it), `cap` the most bytes kept.
    pub fn new(marker: &str, cap: usize) -> Self {
        let mut m = Vec::with_capacity(marker.len() + 2);
        m.push(b'\n');
        m.extend_from_slice(marker.as_bytes());
        m.push(b'\n');
        LogCapture {
            marker: m,
            cap,
            kept: Vec::new(),
            held: Vec::new(),
            dropped: 0,
            done: false,
        }
    }

    /// Whether the end marker has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feeds a chunk read from the log channel. Bytes after the marker are discarded.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.done {
            return;
        }
        let mut joined = std::mem::take(&mut self.held);
        joined.extend_from_slice(chunk);
        if let Some(pos) = find(&joined, &self.marker) {
            self.keep(&joined[..pos]);
            self.done = true;
            return;
        }
        let hold = (self.marker.len() - 1).min(joined.len());
        let cut = joined.len() - hold;
        self.keep(&joined[..cut]);
        self.held = joined[cut..].to_vec();
    }

    fn keep(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.kept.len());
        let take = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..take]);
        self.dropped += (bytes.len() - take) as u64;
    }

    /// The logs as text (invalid UTF-8 replaced), with a line saying how much was dropped.
    pub fn finish(mut self) -> String {
        let held = std::mem::take(&mut self.held);
        self.keep(&held);
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.dropped > 0 {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!(
                "[sopm: logs truncated at {} bytes, {} more bytes dropped]\n",
                self.cap, self.dropped
            ));
        }
        text
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A boxed byte stream from a sandbox.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed byte sink into a sandbox.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// What `init` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum InitReply {
    /// The function loaded; the logs printed while loading.
    Ready {
        /// Logs printed at load time.
        logs: String,
    },
    /// The function failed to load.
    Failed {
        /// What went wrong.
        message: String,
        /// The traceback, if any.
        traceback: Option<String>,
        /// Logs printed at load time.
        logs: String,
    },
}

/// What an invocation answered.
#[derive(Debug, Clone, PartialEq)]
pub struct InvokeReply {
    /// The result frame.
    pub result: ResultFrame,
    /// This invocation's logs (runner-added logs first).
    pub logs: String,
    /// Whether the end marker arrived; if not, the log channel is out of step and the
    /// instance should not be reused.
    pub logs_complete: bool,
}

/// The host's end of one runner: frames in both directions plus the log channel.
pub struct RunnerChannel {
    writer: BoxWrite,
    frames: FrameReader<BoxRead>,
    logs: Option<BoxRead>,
    log_buf: Vec<u8>,
    marker: String,
}

impl std::fmt::Debug for RunnerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerChannel").finish_non_exhaustive()
    }
}

impl RunnerChannel {
    /// Wraps a runner's streams. `marker` is the log marker this host will put in the init
    /// frame (unique per sandbox, unguessable).
    pub fn new(writer: BoxWrite, frames: BoxRead, logs: BoxRead, marker: String) -> Self {
        RunnerChannel {
            writer,
            frames: FrameReader::new(frames, 64 * 1024),
            logs: Some(logs),
            log_buf: vec![0; 64 * 1024],
            marker,
        }
    }

    /// Wraps the piped stdin, stdout and stderr of a runner's outer process, with a fresh
    /// log marker. Panics if they are not piped or already taken.
    pub fn of_child(child: &mut tokio::process::Child) -> Self {
        let stdin: BoxWrite = Box::new(child.stdin.take().expect("piped stdin"));
        let stdout: BoxRead = Box::new(child.stdout.take().expect("piped stdout"));
        let stderr: BoxRead = Box::new(child.stderr.take().expect("piped stderr"));
        RunnerChannel::new(stdin, stdout, stderr, Self::fresh_marker())
    }

    /// A new unguessable log marker for a sandbox's channel.
    pub fn fresh_marker() -> String {
        format!("sopm-log-end-{}", uuid::Uuid::new_v4().simple())
    }

    /// The log marker of this sandbox.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Waits for the runner's `hello`.
    pub async fn hello(&mut self) -> Result<String, ChannelError> {
        self.frames.set_max(64 * 1024);
        loop {
            tokio::select! {
                frame = self.frames.next_frame() => {
                    return match frame? {
                        RunnerFrame::Hello { runner } => Ok(runner),
                        other => Err(ChannelError::Protocol(format!("expected hello, got {other:?}"))),
                    };
                }
                r = read_log_chunk(&mut self.logs, &mut self.log_buf) => {
                    // Nothing of the user's runs yet: this is the runtime's own noise.
                    if let Some(n) = r {
                        tracing::debug!(bytes = n, "runner output before hello");
                    }
                }
            }
        }
    }

    /// Sends `init` and waits for `ready` or `init_error`.
    pub async fn init(
        &mut self,
        init: &InitFrame,
        log_cap: usize,
    ) -> Result<InitReply, ChannelError> {
        self.drain_stale_logs();
        self.send(&HostFrame::Init(init)).await?;
        self.frames.set_max(FRAME_OVERHEAD_BYTES);
        let mut capture = LogCapture::new(&self.marker, log_cap);
        let frame = self.await_frame(&mut capture).await?;
        let (logs, _) = self.finish_logs(capture).await;
        match frame {
            RunnerFrame::Ready => Ok(InitReply::Ready { logs }),
            RunnerFrame::InitError { message, traceback } => Ok(InitReply::Failed {
                message,
                traceback,
                logs,
            }),
            other => Err(ChannelError::Protocol(format!(
                "expected ready or init_error, got {}",
                frame_name(&other)
            ))),
        }
    }

    /// Sends `invoke` and waits for its `result`. The caller bounds the whole call with the
    /// deadline; this returns once the result and the end of its logs are in.
    pub async fn invoke(
        &mut self,
        id: &str,
        input: &Value,
        deadline: Instant,
        max_output_bytes: usize,
    ) -> Result<InvokeReply, ChannelError> {
        self.drain_stale_logs();
        let deadline_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(u64::MAX as u128) as u64;
        self.send(&HostFrame::Invoke {
            id,
            input,
            deadline_ms,
        })
        .await?;
        self.frames
            .set_max(max_output_bytes.saturating_add(FRAME_OVERHEAD_BYTES));
        self.frames.set_max_output(Some(max_output_bytes));
        let mut capture = LogCapture::new(&self.marker, max_output_bytes);
        let frame = self.await_frame(&mut capture).await?;
        let result = match frame {
            RunnerFrame::Result(r) if r.id == id => r,
            RunnerFrame::Result(r) => {
                return Err(ChannelError::Protocol(format!(
                    "result for '{}' while waiting for '{id}'",
                    r.id
                )))
            }
            other => {
                return Err(ChannelError::Protocol(format!(
                    "expected result, got {}",
                    frame_name(&other)
                )))
            }
        };
        let (channel_logs, logs_complete) = self.finish_logs(capture).await;
        let logs = match &result.logs {
            Some(own) if !own.is_empty() => format!("{own}{channel_logs}"),
            _ => channel_logs,
        };
        Ok(InvokeReply {
            result,
            logs,
            logs_complete,
        })
    }

    async fn send(&mut self, frame: &HostFrame<'_>) -> Result<(), ChannelError> {
        let line = encode_frame(frame);
        let mut written = 0;
        // Keep draining logs while writing: a runner blocked on a full log pipe must not
        // stall a large input frame.
        while written < line.len() {
            tokio::select! {
                r = self.writer.write(&line[written..]) => {
                    match r {
                        Ok(0) => return Err(ChannelError::Closed),
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(ChannelError::Closed),
                        Err(e) => return Err(e.into()),
                    }
                }
                _ = read_log_chunk(&mut self.logs, &mut self.log_buf) => {}
            }
        }
        match self.writer.flush().await {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(ChannelError::Closed),
            other => other.map_err(Into::into),
        }
    }

    async fn await_frame(&mut self, capture: &mut LogCapture) -> Result<RunnerFrame, ChannelError> {
        loop {
            tokio::select! {
                r = read_log_chunk(&mut self.logs, &mut self.log_buf) => {
                    if let Some(n) = r {
                        capture.feed(&self.log_buf[..n]);
                    }
                }
                frame = self.frames.next_frame() => return frame,
            }
        }
    }

    async fn finish_logs(&mut self, mut capture: LogCapture) -> (String, bool) {
        let grace = Instant::now() + LOG_MARKER_GRACE;
        while !capture.is_done() && self.logs.is_some() {
            match tokio::time::timeout_at(grace, read_log_chunk(&mut self.logs, &mut self.log_buf))
                .await
            {
                Ok(Some(n)) => capture.feed(&self.log_buf[..n]),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let complete = capture.is_done();
        (capture.finish(), complete)
    }

    fn drain_stale_logs(&mut self) {
        let buf = &mut self.log_buf;
        for _ in 0..64 {
            let Some(logs) = self.logs.as_mut() else {
                return;
            };
            match logs.read(buf).now_or_never() {
                Some(Ok(0)) => {
                    self.logs = None;
                    return;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) => {
                    self.logs = None;
                    return;
                }
                None => return,
            }
        }
    }
}

/// Reads one chunk from the log channel; `None` once it has ended (then it stays pending
/// forever so a `select!` falls through to its other branches).
async fn read_log_chunk(logs: &mut Option<BoxRead>, buf: &mut [u8]) -> Option<usize> {
    let Some(stream) = logs.as_mut() else {
        return futures::future::pending().await;
    };
    match stream.read(buf).await {
        Ok(0) | Err(_) => {
            *logs = None;
            None
        }
        Ok(n) => Some(n),
    }
}

fn frame_name(frame: &RunnerFrame) -> &'static str {
    match frame {
        RunnerFrame::Hello { .. } => "hello",
        RunnerFrame::Ready => "ready",
        RunnerFrame::InitError { .. } => "init_error",
        RunnerFrame::Result(_) => "result",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_capture_splits_at_the_marker_across_chunks() {
        let mut c = LogCapture::new("END", 1000);
        c.feed(b"hello\nwor");
        c.feed(b"ld\n");
        c.feed(b"\nE");
        assert!(!c.is_done());
        c.feed(b"ND\nstale");
        assert!(c.is_done());
        assert_eq!(c.finish(), "hello\nworld\n");
    }

    #[test]
    fn log_capture_caps_and_says_so() {
        let mut c = LogCapture::new("END", 10);
        c.feed(&[b'x'; 100]);
        c.feed(b"\nEND\n");
        let text = c.finish();
        assert!(text.starts_with("xxxxxxxxxx\n[sopm: logs truncated"));
        assert!(text.contains("90 more bytes"));
    }

    #[test]
    fn frames_encode_with_their_type() {
        let input = serde_json::json!({"a": 1});
        let line = encode_frame(&HostFrame::Invoke {
            id: "j1",
            input: &input,
            deadline_ms: 5,
        });
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"type\":\"invoke\",\"id\":\"j1\",\"input\":{\"a\":1},\"deadline_ms\":5}\n"
        );
        let r: RunnerFrame = serde_json::from_str(
            r#"{"type":"result","id":"j1","ok":false,"error":{"kind":"function_error","message":"m"}}"#,
        )
        .unwrap();
        assert!(matches!(
            r,
            RunnerFrame::Result(ResultFrame { ok: false, .. })
        ));
    }

    #[test]
    fn runners_cannot_claim_host_errors() {
        let e = RunnerError {
            kind: "storage_error".into(),
            message: "x".into(),
            traceback: None,
        };
        assert_eq!(e.into_error().code(), "function_error");
    }

    #[tokio::test]
    async fn frame_reader_is_bounded() {
        let data: &[u8] = b"{\"type\":\"ready\"}\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let mut r = FrameReader::new(data, 20);
        assert_eq!(r.next_frame().await.unwrap(), RunnerFrame::Ready);
        assert!(matches!(
            r.next_frame().await,
            Err(ChannelError::FrameTooLong { limit: 20 })
        ));
    }

    #[tokio::test]
    async fn an_output_past_its_cap_is_refused_before_it_is_parsed() {
        let data: &[u8] =
            b"{\"type\":\"result\",\"id\":\"a\",\"ok\":true,\"output\":\"xxxxxxxxxx\"}\n\
            {\"ok\":true,\"id\":\"b\",\"output\":[1,2],\"type\":\"result\"}\n";
        let mut r = FrameReader::new(data, 1000);
        r.set_max_output(Some(8));
        assert!(matches!(
            r.next_frame().await,
            Err(ChannelError::FrameTooLong { limit: 8 })
        ));
        let RunnerFrame::Result(b) = r.next_frame().await.unwrap() else {
            panic!("not a result")
        };
        assert_eq!((b.id.as_str(), b.output), ("b", serde_json::json!([1, 2])));
    }
}
