#!/usr/bin/env bash
# HTTP benchmark: runs the release server on loopback with SQLite in a temporary
# directory (or in memory, SOPM_BENCH_STORAGE=memory) and drives it with wrk. Prints
# requests/s and latency percentiles for /healthz, waiting POST /api/execute
# (math.add, and text.uppercase on 1 KiB) and fire-and-forget submissions (durable
# records), with the ratio of each to the same run's /healthz rate.
#
# Usage: scripts/bench.sh [duration_seconds]   (default 10; every run is bounded)
#        scripts/bench.sh instructions [calls]: instructions per call from callgrind
#        instead (scripts/bench-instructions.sh), the figures machine noise does not move
#        scripts/bench.sh cluster [duration_seconds]: the cluster figures instead (Redis,
#        a registry, a gateway and two workers on loopback, next to one embedded node in
#        the same run; see scripts/bench_cluster.py)
# Env: SOPM_BENCH_THREADS (wrk threads, default 2), SOPM_BENCH_CONNECTIONS (default 64),
#      SOPM_BENCH_PORT (default 18080), SOPM_BENCH_SYNC (sqlite synchronous, default full),
#      SOPM_BENCH_STORAGE (sqlite, the default, or memory: the same requests without the
#      durable job records, to show what the records cost), SOPM_BENCH_USER (0 skips the
#      user-function figures).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = instructions ]; then
  exec scripts/bench-instructions.sh "${2:-10000}"
fi

if [ "${1:-}" = cluster ]; then
  for cmd in wrk redis-server docker-registry; do
    command -v "$cmd" >/dev/null 2>&1 || { echo "cluster figures need $cmd (scripts/test.sh installs it)" >&2; exit 1; }
  done
  echo "==> building the release server with the cluster feature"
  cargo build --release -p sopm-server --features cluster --quiet
  SOPM_BENCH_DURATION="${2:-10}" exec python3 scripts/bench_cluster.py "${CARGO_TARGET_DIR:-target}/release/sopm"
fi

duration="${1:-10}"
threads="${SOPM_BENCH_THREADS:-2}"
conns="${SOPM_BENCH_CONNECTIONS:-64}"
port="${SOPM_BENCH_PORT:-18080}"
sync="${SOPM_BENCH_SYNC:-full}"
url="http://127.0.0.1:${port}"

if ! command -v wrk >/dev/null 2>&1; then
  echo "==> installing wrk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  }
fi

echo "==> building the release server"
cargo build --release -p sopm-server --quiet
bin="${CARGO_TARGET_DIR:-target}/release/sopm"

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

SOPM_LOG=warn "$bin" serve --listen "127.0.0.1:${port}" --data-dir "$work/data" \
  --storage "${SOPM_BENCH_STORAGE:-sqlite}" --sqlite-synchronous "$sync" --queue-capacity 100000 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null

cat > "$work/execute.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"function":"math.add","input":{"a":2,"b":3}}'
LUA
# 1 KiB of text (85 x 12 bytes, accented letters included), as in the library bench.
text=$(python3 -c 'print("h\u00e9llo w\u00f6rld " * 85, end="")')
cat > "$work/upper.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"function":"text.uppercase","input":{"text":"$text"}}'
LUA
cat > "$work/async.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"function":"math.add","input":{"a":2,"b":3},"async":true}'
LUA

# Runs wrk once; prints one summary line and returns the requests/s.
run() {
  local name="$1"; shift
  local out
  out=$(timeout $((duration + 30)) wrk -t"$threads" -c"$conns" -d"${duration}s" --timeout 10s --latency "$@")
  local rps p50 p90 p99 errs
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p90=$(awk '$1=="90%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  printf '%-34s %10s req/s   p50 %-9s p90 %-9s p99 %-9s non-2xx %s\n' "$name" "$rps" "$p50" "$p90" "$p99" "${errs:-0}" >&2
  echo "$rps"
}

echo "==> wrk -t${threads} -c${conns} -d${duration}s on loopback; $(nproc) cores; storage ${SOPM_BENCH_STORAGE:-sqlite}, sqlite synchronous=${sync}"
healthz=$(run "GET /healthz" "$url/healthz")
execute=$(run "POST /api/execute (wait)" -s "$work/execute.lua" "$url/api/execute")
upper=$(run "POST /api/execute uppercase 1 KiB" -s "$work/upper.lua" "$url/api/execute")
async=$(run "POST /api/execute (async, durable)" -s "$work/async.lua" "$url/api/execute")
healthz2=$(run "GET /healthz (again)" "$url/healthz")

awk -v h="$healthz" -v h2="$healthz2" -v e="$execute" -v u="$upper" -v a="$async" 'BEGIN {
  hm = (h + h2) / 2
  printf "\nratio to the mean /healthz rate (%.0f req/s): execute %.2f, async %.2f\n", hm, e / hm, a / hm
  printf "uppercase 1 KiB / execute math.add: %.2f\n", u / e
}'
echo
echo "==> server stats after the run"
curl -fsS "$url/api/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin)["jobs"]; print("jobs: submitted %d, succeeded %d, failed %d, rejected %d; scheduler latency p50 %d us, p99 %d us" % (s["submitted"], s["succeeded"], s["failed"], s["rejected"], s["latency"]["p50_us"], s["latency"]["p99_us"]))'

[ "${SOPM_BENCH_USER:-1}" = 0 ] && exit 0

echo
echo "==> user functions (python, process backend: bubblewrap + warm pool)"
python3 scripts/bench_user.py 127.0.0.1 "$port"
cat > "$work/user.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"input":{"a":2,"b":3}}'
LUA
fid=$(curl -fsS "$url/api/user-functions" | python3 -c 'import json,sys; print(json.load(sys.stdin)["functions"][-1]["id"])')
run "POST user function execute (wait)" -s "$work/user.lua" "$url/api/user-functions/$fid/execute" >/dev/null

if command -v runsc >/dev/null 2>&1; then
  echo
  echo "==> user functions on gVisor (server restarted with --executors python=gvisor)"
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  SOPM_LOG=warn "$bin" serve --listen "127.0.0.1:${port}" --data-dir "$work/data-gvisor" \
    --executors python=gvisor &
  server_pid=$!
  for _ in $(seq 1 100); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  SOPM_BENCH_EXECUTOR=gvisor SOPM_BENCH_FUNCTIONS=15 SOPM_BENCH_WARM_CALLS=500 SOPM_BENCH_COLD_CALLS=5 \
    python3 scripts/bench_user.py 127.0.0.1 "$port"
fi

if docker version >/dev/null 2>&1; then
  SOPM_STATIC_RUNNER=${SOPM_STATIC_RUNNER:-$(scripts/build-runner.sh | tail -1)}
  export SOPM_STATIC_RUNNER
  scripts/docker-images.sh python >/dev/null
  for executor in docker docker-runsc; do
    echo
    echo "==> user functions on $executor (server restarted with --executors python=$executor)"
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    SOPM_LOG=warn "$bin" serve --listen "127.0.0.1:${port}" --data-dir "$work/data-$executor" \
      --executors "python=$executor" &
    server_pid=$!
    for _ in $(seq 1 100); do
      curl -fsS "$url/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    SOPM_BENCH_EXECUTOR=$executor SOPM_BENCH_FUNCTIONS=15 SOPM_BENCH_WARM_CALLS=500 SOPM_BENCH_COLD_CALLS=5 \
      python3 scripts/bench_user.py 127.0.0.1 "$port"
  done
fi
