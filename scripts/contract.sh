#!/usr/bin/env bash
# The API contract check: runs schemathesis (every check) on docs/openapi.json against
# the real release server, with API keys on, and fails on any disagreement or 5xx.
# Bounded: a few examples per operation and a time budget. Usage: scripts/contract.sh
# (env: SOPM_CONTRACT_EXAMPLES, SOPM_CONTRACT_MAX_TIME seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

SCHEMATHESIS_VERSION=4.32.5
examples=${SOPM_CONTRACT_EXAMPLES:-25}
max_time=${SOPM_CONTRACT_MAX_TIME:-120}

step() { printf '\n==> %s\n' "$*"; }

# schemathesis from PyPI, pinned, in a venv of its own under the target directory.
target_dir=${CARGO_TARGET_DIR:-$root/target}
venv=$target_dir/contract-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q " $SCHEMATHESIS_VERSION\$"; then
  step "installing schemathesis $SCHEMATHESIS_VERSION"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv
  fi
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

step "building the release server"
cargo build --release -p sopm-server
sopm=$target_dir/release/sopm

work=$(mktemp -d)
server_pid=
stop() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop EXIT INT TERM

data=$work/data
SOPM_CONTRACT_KEY=$("$sopm" keys create --tenant contract --label contract --data-dir "$data" 2>/dev/null)
SOPM_CONTRACT_METRICS_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export SOPM_CONTRACT_KEY SOPM_CONTRACT_METRICS_TOKEN
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

step "starting the server on $url (auth api_key, data in $data)"
# What the fuzzer uploads builds in the background, two at a time, in the build
# sandbox; the Docker backends point at a daemon that is not there, so their builds
# fail at once and leave no images behind. The data dir is thrown away at the end.
SOPM_DOCKER_HOST=unix://$work/no-docker.sock SOPM_METRICS_TOKEN=$SOPM_CONTRACT_METRICS_TOKEN \
  "$sopm" serve --listen "127.0.0.1:$port" --data-dir "$data" --auth api_key \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.1
done
if ! curl -fsS "$url/readyz" >/dev/null 2>&1; then
  echo "the server did not become ready:" >&2
  tail -30 "$work/server.log" >&2 || true
  exit 1
fi

# The API key and the metrics token go by the document's security schemes
# (scripts/contract.toml), so the fuzzer also tries each operation without them.
step "schemathesis $SCHEMATHESIS_VERSION: every check, $examples examples per operation, at most ${max_time}s"
# One worker: schemathesis's own case generation is not thread-safe in every release
# (a run with two workers once died inside Python's ast module). A run that ends on
# schemathesis's own error ("Runtime Error") with no failure found is its crash, not the
# server's disagreement: it is run once more, and a second crash fails.
fuzz() {
  timeout --kill-after=10 $((max_time + 60)) \
    "$venv/bin/schemathesis" --no-color --config-file scripts/contract.toml run docs/openapi.json \
    --url "$url" \
    --checks all \
    --max-examples "$examples" \
    --max-time "$max_time" \
    --seed "${SOPM_CONTRACT_SEED:-6733}" \
    --workers 1 \
    --request-timeout 60 2>&1 | tee "$work/fuzz.log"
  return "${PIPESTATUS[0]}"
}
set +e
fuzz
status=$?
if [ "$status" -ne 0 ] && grep -q 'Runtime Error' "$work/fuzz.log" \
  && ! grep -qE '^Failures:|[0-9]+ failed' "$work/fuzz.log"; then
  echo "contract: schemathesis itself failed (no disagreement found); running it once more" >&2
  fuzz
  status=$?
fi
set -e
if [ "$status" -ne 0 ]; then
  echo "contract: schemathesis found disagreements or failed (exit $status); the server's log ends:" >&2
  tail -20 "$work/server.log" >&2 || true
fi
if grep -q 'panicked' "$work/server.log"; then
  echo "contract: the server panicked:" >&2
  grep -A3 'panicked' "$work/server.log" >&2
  status=1
fi
exit "$status"
