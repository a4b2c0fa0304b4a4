#!/usr/bin/env bash
# The test command (README, CI): installs what the suite needs on a Debian machine,
# then checks formatting, runs clippy with warnings as errors, and runs every test.
# Integration tests that need outside programs fail instead of skipping here.
set -euo pipefail
cd "$(dirname "$0")/.."

export SOPM_REQUIRE_INTEGRATION=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A run builds once; incremental caches would only take disk (gigabytes of it).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

# A whole run leaves about 5 GiB under target/ (4.7 GiB measured on a fresh clone:
# test binaries, the release server, the runner, the virtualenvs); say so up front
# when space is short rather than fail mid-link.
free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
echo "disk: $((free_kib / 1024 / 1024)) GiB free here; target/ holds $(du -sh target 2>/dev/null | cut -f1 || echo nothing)"
if [ "$free_kib" -lt $((6 * 1024 * 1024)) ]; then
  echo "warning: less than 6 GiB free; the build may run out of space" >&2
fi

# Debian packages the suite uses, by the command that shows each is present.
declare -A want=(
  [bwrap]=bubblewrap
  [prlimit]=util-linux
  [node]=nodejs
  [npm]=npm
  [curl]=curl
  [runsc]=runsc
  [dockerd]=docker.io
  [openssl]=openssl
  [redis-server]=redis-server
  [docker-registry]=docker-registry
  [ip]=iproute2
  [pkg-config]=pkg-config
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The OCI registry client links the system's OpenSSL (native-tls).
if ! pkg-config --exists openssl 2>/dev/null; then
  step "installing libssl-dev"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends libssl-dev
fi

# Sandboxes see only /usr: the tests run Debian's own python3 inside them.
if [ ! -x /usr/bin/python3 ]; then
  step "installing python3"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3
fi

if ! python3 -m pip --version >/dev/null 2>&1; then
  step "installing pip"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-pip
fi

# busybox-static: the base of the shell/binary Docker image (a dynamic busybox won't do).
if ! command -v busybox >/dev/null 2>&1 || ldd "$(command -v busybox)" >/dev/null 2>&1; then
  step "installing busybox-static"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends busybox-static
fi

# Docker with gVisor registered as the runtime `runsc` (the docker backend's tests run
# containers under runc and under runsc).
docker_up() { docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }
if ! docker_up || ! docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q runsc; then
  step "starting dockerd with the runsc runtime"
  mkdir -p /etc/docker
  if [ ! -f /etc/docker/daemon.json ] || ! grep -q runsc /etc/docker/daemon.json; then
    [ -f /etc/docker/daemon.json ] && cp /etc/docker/daemon.json /etc/docker/daemon.json.before-sopm
    echo '{"runtimes":{"runsc":{"path":"'"$(command -v runsc)"'","runtimeArgs":["--network=none"]}}}' >/etc/docker/daemon.json
  fi
  if docker_up; then
    # A running daemon reloads its runtimes on SIGHUP.
    pkill -HUP -x dockerd || true
  else
    nohup dockerd >/var/log/sopm-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do
    docker_up && docker info --format '{{json .Runtimes}}' | grep -q runsc && break
    sleep 0.5
  done
  if ! docker_up; then
    echo "dockerd did not start:" >&2
    tail -20 /var/log/sopm-dockerd.log >&2 || true
    exit 1
  fi
fi

step "static runner and Docker base images"
SOPM_STATIC_RUNNER=$(scripts/build-runner.sh | tail -1)
export SOPM_STATIC_RUNNER
scripts/docker-images.sh

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  step "installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The default features, and the server with none (in-memory storage, built-ins only),
# must build too.
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p sopm-server --no-default-features --all-targets -- -D warnings

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-features --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# docs/openapi.json against the release server, fuzzed (docs/api.md).
step "API contract (scripts/contract.sh)"
set +e
scripts/contract.sh
contract=$?
set -e
if [ "$status" -eq 0 ] && [ "$contract" -ne 0 ]; then
  status=$contract
fi

# deploy/kubernetes against the pinned Kubernetes and KEDA schemas, and the deployment
# rules (docs/kubernetes.md).
step "Kubernetes manifests (scripts/validate-manifests.sh)"
set +e
scripts/validate-manifests.sh
manifests=$?
set -e
if [ "$status" -eq 0 ] && [ "$manifests" -ne 0 ]; then
  status=$manifests
fi

# One closing line over every test binary.
sum() { grep -E '^test result:' "$log" | grep -Eo "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(sum passed)
failed=$(sum failed)
ignored=$(sum ignored)
# The contract run and the manifest validation count as one test each.
for result in "$contract" "$manifests"; do
  if [ "$result" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo
[ "$contract" -eq 0 ] || echo "API contract: FAILED (exit $contract)"
[ "$manifests" -eq 0 ] || echo "Kubernetes manifests: FAILED (exit $manifests)"
echo "disk: target/ holds $(du -sh target | cut -f1) after the run"
echo "total: ${passed} passed, ${failed} failed, ${ignored} skipped"
exit "$status"
