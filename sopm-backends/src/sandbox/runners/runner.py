"""SOPM runner for python, shell and binary functions (see sandbox/protocol.rs).

Started by the sandbox prologue with frames on fd 3 (in) and fd 4 (out), a private copy
of the log channel on fd 5, and fds 1 and 2 on the log channel. Python functions run in
this process; shell scripts and static binaries run as a child per invocation, this
runner being their supervisor.

TCP mode (`runner.py --listen HOST:PORT`, a Kubernetes pod): the runner listens on the
port and takes two connections from the host, each opened with the line
`sopm-runner/1 frames|logs <token>` where the token is the pod's secret
(`SOPM_RUNNER_TOKEN`, removed from the environment before any user code loads). A
connection with a wrong or late line is closed. Once both channels are in, the frames
connection becomes fds 3 and 4 and the logs connection fds 5, 1 and 2, the listener is
closed, and everything goes on exactly as in pipe mode.
"""

import base64
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import traceback

FRAME_IN, FRAME_OUT, LOG_FD = 3, 4, 5
RUNNER_PID = os.getpid()
TRACEBACK_CAP = 32 * 1024
STDERR_TAIL = 2048
TOKEN = os.environ.pop("SOPM_RUNNER_TOKEN", None)
BASE_ENV = dict(os.environ)
AUTH_LINE_MAX = 512
AUTH_TIMEOUT_S = 10
MAX_REFUSED = 64


def write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[n:]


def send(frame):
    if isinstance(frame, bytes):
        data = frame
    else:
        line = json.dumps(frame, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = line.encode("utf-8", "replace")
    write_all(FRAME_OUT, data + b"\n")


def error_result(id_, kind, message, tb=None, logs=None):
    err = {"kind": kind, "message": message}
    if tb:
        err["traceback"] = tb[-TRACEBACK_CAP:]
    out = {"type": "result", "id": id_, "ok": False, "error": err}
    if logs:
        out["logs"] = logs
    return out


class Context:
    """What a handler gets besides its input."""

    def __init__(self, function_name, job_id, deadline):
        self.function_name = function_name
        self.job_id = job_id
        self._deadline = deadline

    def remaining_time_ms(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Function:
    def __init__(self, frame):
        self.runtime = frame["runtime"]
        self.handler_name = frame["handler"]
        self.code_dir = frame.get("code_dir", "/fn")
        self.max_output = int(frame.get("max_output_bytes", 1 << 20))
        self.marker = ("\n" + frame.get("log_marker", "") + "\n").encode()
        self.env = dict(BASE_ENV)
        self.env.update(frame.get("env") or {})
        self.write_code(frame)
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.code_dir)
        if self.runtime == "python":
            sys.path[:0] = [self.code_dir, os.path.join(self.code_dir, "deps")]
            import importlib

            module_name, _, attr = self.handler_name.rpartition(".")
            if not module_name or not attr:
                raise ValueError("python handler must be 'module.function', got %r" % self.handler_name)
            module = importlib.import_module(module_name)
            fn = getattr(module, attr, None)
            if not callable(fn):
                raise ValueError("%s has no function %r" % (module_name, attr))
            self.fn = fn
        elif self.runtime in ("shell", "binary"):
            path = self.safe_path(self.handler_name)
            if not os.path.isfile(path):
                raise FileNotFoundError("handler %r not found in the function's files" % self.handler_name)
            if self.runtime == "binary":
                os.chmod(path, 0o755)
                self.argv = [path]
            else:
                self.argv = ["/bin/sh", path]
        else:
            raise ValueError("this runner cannot run %r functions" % self.runtime)

    def safe_path(self, rel):
        norm = os.path.normpath(rel)
        if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
            raise ValueError("bad path %r" % rel)
        return os.path.join(self.code_dir, norm)

    def write_code(self, frame):
        for rel, b64 in (frame.get("files") or {}).items():
            path = self.safe_path(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(base64.b64decode(b64))
        for rel, target in (frame.get("symlinks") or {}).items():
            path = self.safe_path(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(target, path)
        for rel in frame.get("executables") or []:
            os.chmod(self.safe_path(rel), 0o755)

    def end_logs(self):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            write_all(LOG_FD, self.marker)
        except OSError:
            pass

    def invoke(self, frame):
        id_ = frame["id"]
        deadline = time.monotonic() + frame.get("deadline_ms", 30000) / 1000.0
        try:
            if self.runtime == "python":
                result = self.invoke_python(id_, frame.get("input"), deadline)
            else:
                result = self.invoke_command(id_, frame.get("input"), deadline)
        except MemoryError:
            exit_if_forked()
            result = error_result(id_, "out_of_memory", "the function ran out of memory (MemoryError)")
        except BaseException as e:  # noqa: BLE001 - user code may raise anything
            exit_if_forked()
            result = error_result(id_, "function_error", describe(e), traceback.format_exc())
        exit_if_forked()
        self.end_logs()
        return result

    def invoke_python(self, id_, event, deadline):
        set_cpu_limit(deadline)
        ctx = Context(self.handler_name, id_, deadline)
        out = self.fn(event, ctx)
        exit_if_forked()
        if hasattr(out, "__await__"):
            import asyncio

            out = asyncio.run(_await(out))
        return self.ok_result(id_, out)

    def ok_result(self, id_, out):
        try:
            encoded = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
        except UnicodeEncodeError:
            return error_result(id_, "function_error", "the output holds invalid Unicode (lone surrogates)")
        except (TypeError, ValueError, RecursionError) as e:
            return error_result(id_, "function_error", "the output is not JSON: %s" % e)
        if len(encoded) > self.max_output:
            return error_result(
                id_,
                "output_too_large",
                "the output is %d bytes, more than the limit of %d" % (len(encoded), self.max_output),
            )
        head = json.dumps({"type": "result", "id": id_, "ok": True}, separators=(",", ":")).encode("utf-8")
        return head[:-1] + b',"output":' + encoded + b"}"

    def invoke_command(self, id_, event, deadline):
        data = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        cpu = max(1, int(deadline - time.monotonic()) + 1)

        def limit_child():
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

        proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.code_dir,
            env=self.env,
            start_new_session=True,
            preexec_fn=limit_child,
        )
        out = bytearray()
        too_large = []
        tail = bytearray()

        def feed_stdin():
            try:
                proc.stdin.write(data)
            except OSError:
                pass
            try:
                proc.stdin.close()
            except OSError:
                pass

        def read_stdout():
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    return
                if len(out) + len(chunk) > self.max_output:
                    too_large.append(True)
                    kill_group(proc.pid)
                    return
                out.extend(chunk)

        def read_stderr():
            while True:
                chunk = proc.stderr.read1(65536)
                if not chunk:
                    return
                try:
                    write_all(LOG_FD, chunk)
                except OSError:
                    pass
                tail.extend(chunk)
                del tail[:-STDERR_TAIL]

        threads = [threading.Thread(target=t, daemon=True) for t in (feed_stdin, read_stdout, read_stderr)]
        for t in threads:
            t.start()
        code = proc.wait()
        kill_group(proc.pid)
        for t in threads:
            t.join()
        if too_large:
            return error_result(
                id_, "output_too_large", "the output is more than the limit of %d bytes" % self.max_output
            )
        stderr_tail = tail.decode("utf-8", "replace")
        if code != 0:
            how = "exit status %d" % code if code > 0 else "signal %d" % -code
            msg = "%s failed with %s" % (self.runtime, how)
            if stderr_tail.strip():
                msg += ": " + stderr_tail.strip().splitlines()[-1][-300:]
            return error_result(id_, "function_error", msg, stderr_tail or None)
        text = out.decode("utf-8", "replace").strip()
        if not text:
            return self.ok_result(id_, None)
        try:
            value = json.loads(text)
        except ValueError:
            return error_result(id_, "function_error", "stdout is not JSON: %r" % text[:200])
        return self.ok_result(id_, value)


async def _await(awaitable):
    return await awaitable


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def set_cpu_limit(deadline):
    # CPU seconds for this invocation on top of what the runner used so far. The host's
    # wall-clock timeout is the real bound; this catches many threads burning CPU.
    try:
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = used.ru_utime + used.ru_stime
        soft = int(spent + max(0.0, deadline - time.monotonic())) + 2
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        pass


def exit_if_forked():
    # A fork of user code returning into the runner must never speak the protocol.
    if os.getpid() != RUNNER_PID:
        os._exit(0)


def describe(e):
    text = str(e)
    name = type(e).__name__
    return "%s: %s" % (name, text) if text else name


def read_auth_line(conn):
    line = bytearray()
    while len(line) <= AUTH_LINE_MAX:
        b = conn.recv(1)
        if not b:
            return None
        if b == b"\n":
            return bytes(line)
        line += b
    return None


def listen_for_host(address, token):
    """TCP mode: waits for the host's authenticated frames and logs connections and puts
    them where the pipe-mode prologue would have put the pipes."""
    import hmac
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, int(port)))
    server.listen(8)
    expected = token.encode()
    channels = {}
    refused = 0
    while len(channels) < 2:
        conn, _ = server.accept()
        try:
            conn.settimeout(AUTH_TIMEOUT_S)
            line = read_auth_line(conn)
        except OSError:
            line = None
        parts = line.split(b" ") if line else []
        if (
            len(parts) == 3
            and parts[0] == b"sopm-runner/1"
            and parts[1] in (b"frames", b"logs")
            and parts[1] not in channels
            and hmac.compare_digest(parts[2], expected)
        ):
            conn.settimeout(None)
            channels[parts[1]] = conn
            continue
        conn.close()
        refused += 1
        if refused >= MAX_REFUSED:
            sys.exit(3)
    server.close()
    import fcntl

    # Moved above the descriptors they are going to, so none is overwritten before use.
    accepted = [channels[b"frames"].detach(), channels[b"logs"].detach()]
    frames, logs = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in accepted)
    for fd in accepted:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd in (FRAME_IN, FRAME_OUT):
        os.dup2(frames, fd)
    for fd in (LOG_FD, 1, 2):
        os.dup2(logs, fd)
    os.close(frames)
    os.close(logs)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--listen":
        if not TOKEN or len(TOKEN) < 16:
            sys.stderr.write("sopm runner: --listen needs SOPM_RUNNER_TOKEN (16 characters or more)\n")
            sys.exit(2)
        listen_for_host(sys.argv[2], TOKEN)
    for fd in (FRAME_IN, FRAME_OUT, LOG_FD):
        os.set_inheritable(fd, False)
    frames = os.fdopen(FRAME_IN, "rb", buffering=1 << 16)
    send({"type": "hello", "runner": "python"})
    function = None
    while True:
        line = frames.readline()
        if not line:
            return
        frame = json.loads(line)
        kind = frame.get("type")
        if kind == "init":
            marker = ("\n" + frame.get("log_marker", "") + "\n").encode()
            try:
                function = Function(frame)
                exit_if_forked()
                function.end_logs()
                send({"type": "ready"})
            except BaseException as e:  # noqa: BLE001
                exit_if_forked()
                try:
                    write_all(LOG_FD, marker)
                except OSError:
                    pass
                send({"type": "init_error", "message": describe(e), "traceback": traceback.format_exc()[-TRACEBACK_CAP:]})
        elif kind == "invoke":
            if function is None:
                send(error_result(frame.get("id"), "function_error", "invoke before init"))
                continue
            send(function.invoke(frame))
            del frame, line


if __name__ == "__main__":
    main()
