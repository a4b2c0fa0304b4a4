#!/usr/bin/env python3
"""Cluster figures (scripts/bench.sh cluster runs this with the release binary).

Starts, on loopback, a redis-server (AOF, appendfsync always), a docker-registry, one
embedded single node for comparison, and a cluster of one gateway and two workers; then
measures, in the same run:
  - async built-in jobs/s through Redis: accepted by the gateway (wrk), and completed by
    the workers (drain rate of the same jobs),
  - a waiting user-function call, p50 and p99, through the cluster and on the single node,
    and the difference,
  - the time from a worker's death (SIGKILL) to its running jobs running elsewhere.
Every loop is bounded in count and time. Prints one line per figure.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BIN = sys.argv[1]
DURATION = int(os.environ.get("SOPM_BENCH_DURATION", "10"))
THREADS = os.environ.get("SOPM_BENCH_THREADS", "2")
CONNS = os.environ.get("SOPM_BENCH_CONNECTIONS", "64")
CALLS = int(os.environ.get("SOPM_BENCH_CLUSTER_CALLS", "1000"))
LEASE_MS = int(os.environ.get("SOPM_BENCH_LEASE_MS", "2000"))
# Redis AOF fsync policy: always (what docs/cluster.md asks for) or everysec (to see
# what the fsyncs cost).
APPENDFSYNC = os.environ.get("SOPM_BENCH_APPENDFSYNC", "always")

work = tempfile.mkdtemp(prefix="sopm-bench-cluster-")
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(args, name, env=None):
    log = open(os.path.join(work, f"{name}.log"), "wb")
    p = subprocess.Popen(args, stdout=log, stderr=log, env={**os.environ, **(env or {})})
    procs.append(p)
    return p


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(work, ignore_errors=True)


def request(port, method, path, body=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, (json.loads(payload) if payload else None)


def wait_ready(port, limit=90):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            if request(port, "GET", "/readyz", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"node on port {port} was not ready within {limit} s (logs in {work})")


def wait_tcp(port, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {limit} s")


def node(role, node_id, redis_url, registry_url):
    port = free_port()
    args = [BIN, "serve", "--role", role, "--listen", f"127.0.0.1:{port}",
            "--advertise", f"127.0.0.1:{port}", "--node-id", node_id,
            "--redis", redis_url, "--registry", registry_url,
            "--data-dir", os.path.join(work, node_id), "--lease-ms", str(LEASE_MS),
            "--queue-capacity", "1000000"]
    p = start(args, node_id, {"SOPM_LOG": "warn"})
    wait_ready(port)
    return p, port


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def upload_and_wait(port):
    handler = "def handle(event, context):\n    return {'sum': event['a'] + event['b']}\n"
    status, body = request(port, "POST", "/api/user-functions", {
        "name": f"bench{time.monotonic_ns()}", "runtime": "python", "handler": "main.handle",
        "files": {"main.py": handler}})
    assert status == 202, body
    fid = body["id"]
    end = time.monotonic() + 120
    while time.monotonic() < end:
        _, f = request(port, "GET", f"/api/user-functions/{fid}")
        if f["status"] == "ready":
            return fid
        if f["status"] == "failed":
            raise SystemExit(f"build failed: {f}")
        time.sleep(0.05)
    raise SystemExit("build did not finish in 120 s")


def warm_calls(port, fid, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    path = f"/api/user-functions/{fid}/execute"
    body = json.dumps({"input": {"a": 2, "b": 3}}).encode()
    samples = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        dt = time.perf_counter() - t0
        assert resp.status == 200, payload
        if i >= 20:  # the first calls warm the path
            samples.append(dt)
    conn.close()
    return samples


def completed(port):
    _, s = request(port, "GET", "/api/stats")
    cluster = s.get("cluster") or {}
    totals = cluster.get("totals") or s["jobs"]
    return totals["succeeded"] + totals["failed"] + totals.get("timed_out", 0)


def main():
    redis_port = free_port()
    start(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--dir", work,
           "--appendonly", "yes", "--appendfsync", APPENDFSYNC, "--save", ""], "redis")
    wait_tcp(redis_port)
    reg_port = free_port()
    os.makedirs(os.path.join(work, "registry"))
    with open(os.path.join(work, "registry.yml"), "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work}/registry\n"
                f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{reg_port}\n")
    start(["docker-registry", "serve", os.path.join(work, "registry.yml")], "registry")
    wait_tcp(reg_port)
    redis_url = f"redis://127.0.0.1:{redis_port}/"
    registry_url = f"http://127.0.0.1:{reg_port}"

    # The single node, for the same-run comparison.
    single_port = free_port()
    single = start([BIN, "serve", "--listen", f"127.0.0.1:{single_port}",
                    "--data-dir", os.path.join(work, "single")], "single", {"SOPM_LOG": "warn"})
    wait_ready(single_port)
    fid = upload_and_wait(single_port)
    single_samples = warm_calls(single_port, fid, CALLS)
    single.kill()
    single.wait()

    gw, gw_port = node("gateway", "gw", redis_url, registry_url)
    w1, w1_port = node("worker", "w1", redis_url, registry_url)
    w2, w2_port = node("worker", "w2", redis_url, registry_url)

    # 1. Async built-in jobs through Redis.
    lua = os.path.join(work, "async.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                'wrk.body = \'{"function":"math.add","input":{"a":2,"b":3},"async":true}\'\n')
    before = completed(gw_port)
    t0 = time.monotonic()
    out = subprocess.run(["timeout", str(DURATION + 30), "wrk", f"-t{THREADS}", f"-c{CONNS}",
                          f"-d{DURATION}s", "--timeout", "10s", "--latency", "-s", lua,
                          f"http://127.0.0.1:{gw_port}/api/execute"],
                         capture_output=True, text=True, check=True).stdout
    accepted_rps = float(next(l.split()[1] for l in out.splitlines() if "Requests/sec" in l))
    total = int(next(l.split()[0] for l in out.splitlines() if "requests in" in l))
    non2xx = sum(int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l)
    end = time.monotonic() + 300
    done = completed(gw_port) - before
    while done < total - non2xx and time.monotonic() < end:
        time.sleep(0.2)
        done = completed(gw_port) - before
    drain_s = time.monotonic() - t0
    print(f"async built-in jobs, gateway + 2 workers: accepted {accepted_rps:,.0f}/s "
          f"(wrk -t{THREADS} -c{CONNS} -d{DURATION}s, {non2xx} refused); completed {done:,} "
          f"of {total - non2xx:,} in {drain_s:.1f} s = {done / drain_s:,.0f}/s")

    # 2. Waiting user-function call through the cluster.
    fid = upload_and_wait(gw_port)
    cluster_samples = warm_calls(gw_port, fid, CALLS)
    s50, s99 = pct(single_samples, 0.5), pct(single_samples, 0.99)
    c50, c99 = pct(cluster_samples, 0.5), pct(cluster_samples, 0.99)
    print(f"waiting python call, single node: p50 {s50 * 1e3:.3f} ms, p99 {s99 * 1e3:.3f} ms "
          f"({CALLS} calls)")
    print(f"waiting python call, cluster:     p50 {c50 * 1e3:.3f} ms, p99 {c99 * 1e3:.3f} ms; "
          f"cluster minus single: p50 {(c50 - s50) * 1e3:+.3f} ms, p99 {(c99 - s99) * 1e3:+.3f} ms")

    # 3. A worker's death: w2 stops, long jobs run on w1, w2 comes back, w1 is killed.
    w2.kill()
    w2.wait()
    ids = []
    for _ in range(4):
        status, body = request(gw_port, "POST", "/api/execute",
                               {"function": "util.sleep", "input": {"ms": 5000}, "async": True})
        assert status == 202, body
        ids.append(body["id"])
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if all(request(gw_port, "GET", f"/api/jobs/{i}")[1]["status"] == "running" for i in ids):
            break
        time.sleep(0.02)
    w2, w2_port = node("worker", "w2", redis_url, registry_url)
    killed = time.monotonic()
    w1.send_signal(signal.SIGKILL)
    w1.wait()
    moved = {}
    end = time.monotonic() + 120
    while len(moved) < len(ids) and time.monotonic() < end:
        for i in ids:
            if i in moved:
                continue
            job = request(gw_port, "GET", f"/api/jobs/{i}")[1]
            if job.get("attempts", 0) >= 2:
                moved[i] = time.monotonic() - killed
        time.sleep(0.01)
    if len(moved) < len(ids):
        print(f"worker death: only {len(moved)} of {len(ids)} jobs moved within 120 s")
    else:
        print(f"worker death to its jobs running elsewhere (lease {LEASE_MS} ms): "
              f"first {min(moved.values()):.2f} s, last {max(moved.values()):.2f} s "
              f"({len(ids)} running jobs)")


try:
    main()
finally:
    cleanup()
