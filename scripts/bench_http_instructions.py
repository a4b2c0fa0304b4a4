#!/usr/bin/env python3
"""Instructions per HTTP request of the release server, counted by callgrind.

For each request kind, the server runs twice under `valgrind --tool=callgrind` (every
thread counted: the runtime's workers, the SQLite writer, the blocking pool) and gets
SMALL, then SMALL + CALLS requests from one keep-alive client; the difference of the
two totals divided by CALLS is the server's work for one request, start-up, warm-up and
shutdown cancelled out. Loopback only; every run is bounded in requests and time.

Each thread is counted apart (`--separate-threads=yes`) and the total is also split in
two: the SQLite writer and checkpointer threads, whose work per request depends on how
many records each commit gathers (a commit every few requests from one slow client under
valgrind, hundreds under load), so it moves by several hundred instructions from run to
run; and everything else (the runtime's workers, the blocking pool), the request's own
path, which does not.

Usage: bench_http_instructions.py SOPM_BINARY [CALLS]   (run by scripts/bench.sh instructions)
"""

import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SMALL = 300

# Functions only the SQLite store's own threads run: the writer's batch, the
# checkpointer's WAL checkpoint.
SQLITE_THREADS = ("Writer::run_batch", "sqlite3WalCheckpoint", "sqlite3_wal_checkpoint_v2")
TEXT = "h\u00e9llo w\u00f6rld " * 85

KINDS = [
    ("http_healthz", "GET", "/healthz", None),
    ("http_math_add", "POST", "/api/execute",
     json.dumps({"function": "math.add", "input": {"a": 2, "b": 3}}).encode()),
    ("http_uppercase_1k", "POST", "/api/execute",
     json.dumps({"function": "text.uppercase", "input": {"text": TEXT}}, ensure_ascii=False).encode()),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary, kind, calls):
    """Total instructions of a server that answered `calls` requests of `kind`."""
    name, method, path, body = kind
    work = tempfile.mkdtemp(prefix="sopm-http-instr-")
    port = free_port()
    out = os.path.join(work, "callgrind.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--separate-threads=yes", "--compress-strings=no",
         f"--callgrind-out-file={out}",
         binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
         os.path.join(work, "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "SOPM_LOG": "warn"})
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/readyz")
                if conn.getresponse().read() is not None:
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{name}: the server did not start under valgrind")
                time.sleep(0.2)
        headers = {"Content-Type": "application/json"} if body else {}
        for _ in range(calls):
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"{name}: answer {resp.status}")
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    totals = {"request": 0, "sqlite": 0}
    for path in glob.glob(out + "-*"):
        total, sqlite = 0, False
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"^(summary|totals):\s+(\d+)", line)
                if m:
                    total = int(m.group(2))
                elif line.startswith(("fn=", "cfn=")) and any(t in line for t in SQLITE_THREADS):
                    sqlite = True
        totals["sqlite" if sqlite else "request"] += total
    shutil.rmtree(work, ignore_errors=True)
    if totals["request"] == 0:
        raise SystemExit(f"{name}: no callgrind total")
    return totals


def main():
    binary = sys.argv[1]
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    results = {}
    print(f"{'request':<20} {'instr/request':>14} {'request path':>14} {'SQLite threads':>15}")
    for kind in KINDS:
        a = run(binary, kind, SMALL)
        b = run(binary, kind, SMALL + calls)
        path, sqlite = ((b[k] - a[k]) // calls for k in ("request", "sqlite"))
        results[kind[0]] = path + sqlite
        print(f"{kind[0]:<20} {path + sqlite:>14} {path:>14} {sqlite:>15}", flush=True)
    h, m, u = (results[k] for k in ("http_healthz", "http_math_add", "http_uppercase_1k"))
    print(f"instructions, math.add / healthz {m / h:.2f}, uppercase / math.add {u / m:.2f}")


if __name__ == "__main__":
    main()
