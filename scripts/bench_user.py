#!/usr/bin/env python3
"""User-function figures against a running SOPM server (scripts/bench.sh starts one).

Measures, through the HTTP API on loopback:
  - upload-to-ready of a Python function with no dependencies,
  - the first call of each freshly uploaded function,
  - warm calls of one function (sequential latency),
  - a plain cold start for scale: a new bwrap + python3 per call, same handler.
Every loop is bounded in count. Prints one line per figure.
"""
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HOST, PORT = sys.argv[1], int(sys.argv[2])
FUNCTIONS = int(os.environ.get("SOPM_BENCH_FUNCTIONS", "30"))
WARM_CALLS = int(os.environ.get("SOPM_BENCH_WARM_CALLS", "2000"))
COLD_CALLS = int(os.environ.get("SOPM_BENCH_COLD_CALLS", "20"))
# The executor the server runs Python on (its --executors): process, gvisor, docker or
# docker-runsc.
EXECUTOR = os.environ.get("SOPM_BENCH_EXECUTOR", "process")

HANDLER = "def handle(event, context):\n    return {'sum': event['a'] + event['b']}\n"

conn = http.client.HTTPConnection(HOST, PORT, timeout=60)


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    return resp.status, (json.loads(payload) if payload else None)


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def ms(x):
    return f"{x * 1000:.2f} ms"


def wait_stem_cell(deadline_s=30):
    """The figure is defined with stem cells warm: wait until the python pool has one."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        _, stats = call("GET", "/api/stats")
        pools = {p["pool"]: p for p in stats["pools"]}
        cell = pools.get(f"{EXECUTOR}/stem/python")
        if cell and cell["stem_cells"] > 0:
            return
        time.sleep(0.005)
    sys.exit("no python stem cell became warm")


def upload(name):
    status, body = call("POST", "/api/user-functions", {
        "name": name, "runtime": "python", "handler": "main.handle",
        "files": {"main.py": HANDLER},
    })
    if status != 202:
        sys.exit(f"upload failed: {status} {body}")
    return body["id"]


def wait_ready(fid, deadline_s=60):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        status, body = call("GET", f"/api/user-functions/{fid}")
        state = body["versions"][-1]["status"]
        if state == "ready":
            return
        if state == "failed":
            sys.exit(f"build failed: {body['versions'][-1].get('build_log')}")
        time.sleep(0.001)
    sys.exit("build did not finish")


def execute(fid, a):
    status, body = call("POST", f"/api/user-functions/{fid}/execute", {"input": {"a": a, "b": 1}})
    if status != 200 or body["output"]["sum"] != a + 1:
        sys.exit(f"execute failed: {status} {body}")


prefix = f"bench{int(time.time())}"
ready_times, first_calls = [], []
for i in range(FUNCTIONS):
    wait_stem_cell()
    t0 = time.perf_counter()
    fid = upload(f"{prefix}-{i}")
    wait_ready(fid)
    t1 = time.perf_counter()
    execute(fid, i)
    t2 = time.perf_counter()
    ready_times.append(t1 - t0)
    first_calls.append(t2 - t1)
print(f"upload-to-ready (python, no deps, {FUNCTIONS} functions): p50 {ms(pct(ready_times, .5))}  p90 {ms(pct(ready_times, .9))}")
print(f"first call of a fresh function, stem cell warm ({FUNCTIONS}): p50 {ms(pct(first_calls, .5))}  p90 {ms(pct(first_calls, .9))}  max {ms(max(first_calls))}")

warm = []
t_start = time.perf_counter()
for i in range(WARM_CALLS):
    t0 = time.perf_counter()
    execute(fid, i)
    warm.append(time.perf_counter() - t0)
wall = time.perf_counter() - t_start
print(f"warm calls, one client, sequential ({WARM_CALLS}):        p50 {ms(pct(warm, .5))}  p99 {ms(pct(warm, .99))}  {WARM_CALLS / wall:.0f} calls/s")

python = os.path.realpath(shutil.which("python3") or "python3")
prefix_dir = os.path.dirname(os.path.dirname(python))
code = ("import sys, json; sys.path.insert(0, '/fn'); import main; "
        "print(json.dumps(main.handle(json.load(sys.stdin), None)))")


def cold_command(d):
    """A plain sandbox per call, no pool: bwrap, runsc do for gVisor, docker run for
    the docker executors (same base image, same runtime)."""
    if EXECUTOR.startswith("docker"):
        docker = shutil.which("docker")
        if not docker:
            return None
        runtime = "runsc" if EXECUTOR == "docker-runsc" else "runc"
        image = os.environ.get("SOPM_DOCKER_IMAGE_PYTHON", "sopm/base-python:local")
        return [docker, "run", "--rm", "-i", "--network", "none", "--runtime", runtime,
                "-v", f"{d}:/fn:ro", image, "python3", "-c", code]
    if EXECUTOR == "gvisor":
        runsc = shutil.which("runsc")
        if not runsc:
            return None
        # runsc do shares the host's root read-only; /fn is the same directory there.
        return [runsc, "--network=none", "do", "--cwd", d, python, "-c", code.replace("/fn", d)]
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return None
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--ro-bind", d, "/fn"]
    if not prefix_dir.startswith("/usr"):
        args += ["--ro-bind", prefix_dir, prefix_dir]
    return args + [python, "-c", code]


cold = []
with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "main.py"), "w") as f:
        f.write(HANDLER)
    cmd = cold_command(d)
    if cmd:
        for i in range(COLD_CALLS):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, input=json.dumps({"a": i, "b": 1}),
                                 capture_output=True, text=True, timeout=60)
            cold.append(time.perf_counter() - t0)
            if json.loads(out.stdout)["sum"] != i + 1:
                sys.exit(f"cold start gave {out.stdout!r} {out.stderr!r}")
if cold:
    name = {"gvisor": "runsc do", "docker": "docker run (runc)",
            "docker-runsc": "docker run (runsc)"}.get(EXECUTOR, "bwrap")
    print(f"plain cold start, new {name} + python3 per call ({COLD_CALLS}): p50 {ms(pct(cold, .5))}")
    print(f"first call vs cold start: {pct(cold, .5) / pct(first_calls, .5):.0f}x faster")
else:
    print("plain cold start: skipped (sandbox tool not found)")
