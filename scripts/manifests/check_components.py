"""Runs the manifests' Redis and registry settings against the real programs, on loopback.

Redis: the StatefulSet's command and args (password expanded, `--dir` a temp dir, a free
loopback port appended) start Debian's redis-server; the script checks AOF with
`appendfsync always`, `noeviction`, that the password is required, that the readiness
probe's command answers, and that a consumer group on a `sopm:q:<backend>` stream reports
the `lag` and pending count KEDA's redis-streams triggers read. Registry: the Deployment's
environment (address and storage moved to loopback and a temp dir) starts Debian's
docker-registry; `/v2/` (the probes' path) must answer 200 and a manifest DELETE must
reach the storage (404 for an unknown digest) rather than be refused as unsupported
(405), which is what it answers without REGISTRY_STORAGE_DELETE_ENABLED, checked too.
These are the Debian programs, not the pinned images, and no Kubernetes runs them.

A missing program skips with the reason; with SOPM_REQUIRE_INTEGRATION=1 it fails.
Usage: check_components.py BASE_DIR
"""

import http.client
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import kustomize_lite


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find(docs, kind, name):
    for doc in docs:
        if doc.get("kind") == kind and doc["metadata"]["name"] == name:
            return doc
    raise SystemExit(f"the manifests have no {kind}/{name}")


def expand(value, env):
    """Kubernetes' $(VAR) expansion in command, args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


class Checks:
    def __init__(self):
        self.failures = 0

    def expect(self, ok, what, detail=""):
        self.failures += 0 if ok else 1
        print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")


def wait_until(predicate, process, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.05)
    return False


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_redis(docs, checks, work):
    statefulset = find(docs, "StatefulSet", "sopm-redis")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    password = secrets.token_hex(16)
    env = {e["name"]: password for e in container.get("env") or [] if (e.get("valueFrom") or {}).get("secretKeyRef")}
    argv = [expand(a, env) for a in container["command"] + container.get("args", [])]
    data = os.path.join(work, "redis")
    os.makedirs(data)
    argv = [data if a == "/data" else a for a in argv]
    port = free_port()
    argv[0] = shutil.which(argv[0]) or argv[0]
    argv += ["--port", str(port), "--bind", "127.0.0.1"]
    log = open(os.path.join(work, "redis.log"), "w")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def cli(*args, auth=True):
        extra = {"REDISCLI_AUTH": password} if auth else {}
        result = subprocess.run(
            ["redis-cli", "-p", str(port), "--no-auth-warning", *args],
            capture_output=True, text=True, env={**os.environ, **extra}, timeout=10,
        )
        return result.stdout.strip()

    try:
        up = wait_until(lambda: cli("ping") == "PONG", process)
        checks.expect(up, "redis: the manifest's command line starts redis-server", " ".join(a if a != password else "***" for a in argv[1:]))
        if not up:
            return
        version = cli("info", "server").split("redis_version:")[1].split()[0]
        for key, want in (("appendonly", "yes"), ("appendfsync", "always"), ("maxmemory-policy", "noeviction")):
            got = cli("config", "get", key).splitlines()[-1]
            checks.expect(got == want, f"redis {version}: {key} is {want}", f"got {got!r}")
        unauthenticated = cli("ping", auth=False)
        checks.expect("NOAUTH" in unauthenticated, "redis: a client without the password is refused", unauthenticated)
        probe = container["readinessProbe"]["exec"]["command"]
        probe = [p.replace("redis-cli", f"redis-cli -p {port}") for p in probe]
        ran = subprocess.run(probe, env={**os.environ, "REDISCLI_AUTH": password}, timeout=10)
        checks.expect(ran.returncode == 0, "redis: the readiness probe's command succeeds (port added)")
        stream = "sopm:q:kubernetes"
        cli("xgroup", "create", stream, "workers", "$", "mkstream")
        for i in range(3):
            cli("xadd", stream, "*", "job", str(i))
        cli("xreadgroup", "group", "workers", "worker-1", "count", "1", "streams", stream, ">")
        info = cli("xinfo", "groups", stream).splitlines()
        fields = dict(zip(info[0::2], info[1::2]))
        checks.expect(
            fields.get("lag") == "2" and fields.get("pending") == "1",
            f"redis {version}: XINFO GROUPS on {stream} reports lag 2 and pending 1 after 3 adds and 1 read "
            "(what the ScaledObject's lagCount and pendingEntriesCount triggers read)",
            f"got lag={fields.get('lag')} pending={fields.get('pending')}",
        )
    finally:
        stop(process)
        log.close()


def registry_answers(env_overrides, work, name):
    """Starts docker-registry with the given environment; returns (GET /v2/ status, DELETE status)."""
    root = os.path.join(work, name)
    os.makedirs(root)
    config = os.path.join(work, f"{name}.yml")
    with open(config, "w") as f:
        f.write("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:0\n" % root)
    port = free_port()
    env = {**os.environ, **env_overrides, "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}"}
    log = open(os.path.join(work, f"{name}.log"), "w")
    process = subprocess.Popen(["docker-registry", "serve", config], env=env, stdout=log, stderr=subprocess.STDOUT)

    def status(method, path):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path)
            code = conn.getresponse().status
            conn.close()
            return code
        except OSError:
            return None

    try:
        if not wait_until(lambda: status("GET", "/v2/") is not None, process):
            return None, None
        return status("GET", "/v2/"), status("DELETE", "/v2/sopm/probe/manifests/sha256:" + "0" * 64)
    finally:
        stop(process)
        log.close()


def check_registry(docs, checks, work):
    deployment = find(docs, "Deployment", "sopm-registry")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    env.pop("REGISTRY_HTTP_ADDR", None)
    probe_path = container["readinessProbe"]["httpGet"]["path"]
    get, delete = registry_answers(env, work, "registry")
    checks.expect(get == 200, f"registry: GET {probe_path} (the probes' path) answers 200", f"got {get}")
    checks.expect(delete == 404, "registry: with the manifest's environment a manifest DELETE reaches storage (404 unknown)", f"got {delete}")
    env.pop("REGISTRY_STORAGE_DELETE_ENABLED", None)
    _, control = registry_answers(env, work, "registry-control")
    checks.expect(control == 405, "registry: control, without REGISTRY_STORAGE_DELETE_ENABLED the same DELETE is refused (405)", f"got {control}")


def main(argv):
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    docs = [doc for _, doc in kustomize_lite.render(argv[0])]
    checks = Checks()
    required = os.environ.get("SOPM_REQUIRE_INTEGRATION") == "1"
    with tempfile.TemporaryDirectory(prefix="sopm-manifests-") as work:
        for program, check in (("redis-server", check_redis), ("docker-registry", check_registry)):
            needed = [program] + (["redis-cli"] if program == "redis-server" else [])
            missing = [p for p in needed if shutil.which(p) is None]
            if missing:
                print(f"{'FAIL' if required else 'skip'} {program}: {', '.join(missing)} not installed")
                checks.failures += 1 if required else 0
                continue
            check(docs, checks, work)
    print(f"components: {checks.failures} failed")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
