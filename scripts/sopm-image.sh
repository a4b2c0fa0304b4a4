#!/usr/bin/env bash
# Builds the SOPM server image (the `sopm` binary the Kubernetes manifests run) without
# pulling anything: a release build, then a root filesystem assembled from this host's
# files and handed to `docker import`.
#
#   /usr/local/bin/sopm                  release build, features cluster + kubernetes
#   the shared libraries `ldd` reports   copied with symlinks resolved, at the paths ldd
#                                        names (the dynamic loader at its own path)
#   /etc/ssl/certs/ca-certificates.crt   the host's CA bundle (TLS to Redis, registries, the API server)
#   /etc/passwd, /etc/group              root and sopm (65532:65532); /etc/nsswitch.conf
#   /tmp (1777), /data (65532, 0700)     /data is the default data directory
#
# No shell, no package manager, no bwrap or runsc: a worker in this image offers the
# built-ins and the `kubernetes` / `kubernetes-job` backends (function pods), not the
# `process`, `gvisor` or `docker` backends.
#
# Usage: scripts/sopm-image.sh [--check] [TAG]     build TAG (default sopm:0.1.0)
#        scripts/sopm-image.sh --binary PATH [--check] [TAG]
#                                                  image an already built sopm, no cargo
#        scripts/sopm-image.sh --check-only [TAG]  only run the checks on an existing TAG
#
# --check runs the image afterwards: `--version`; `serve` under the restrictions of the
# manifests' pods (read-only root, uid 65532, all capabilities dropped, no new
# privileges) with /healthz, /readyz and a math.add call; and, with redis-server and
# docker-registry on PATH, a gateway and a worker from the image on loopback
# (--network host) with API keys, an async call run by the worker.
#
# Needs cargo, a Docker daemon, ldd, and root or fakeroot (files are owned by root and
# /data by 65532 in the image). The build goes to target/image-build (CARGO_TARGET_DIR
# overrides it), apart from other builds.
set -euo pipefail

cd "$(dirname "$0")/.."

TAG=sopm:0.1.0
BUILD=1
CHECK=0
BINARY=
while [ $# -gt 0 ]; do
    case $1 in
        --check) CHECK=1 ;;
        --check-only) CHECK=1; BUILD=0 ;;
        --binary) [ $# -ge 2 ] || { echo "sopm-image: --binary needs a path" >&2; exit 2; }
            BINARY=$2; shift ;;
        -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "sopm-image: unknown option $1" >&2; exit 2 ;;
        *) TAG=$1 ;;
    esac
    shift
done

TARGET_DIR=${CARGO_TARGET_DIR:-target/image-build}
FEATURES=cluster,kubernetes
UID_SOPM=65532

say() { echo "sopm-image: $*"; }
die() { echo "sopm-image: $*" >&2; exit 1; }

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "no Docker daemon answers (docker version failed)"

CLEANUP=()
cleanup() {
    local i
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
# Build and assemble.
# ---------------------------------------------------------------------------------------

# Runs its arguments as root: directly, or under fakeroot (ownership is then only
# recorded in the tar stream it produces).
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v fakeroot >/dev/null; then
        fakeroot -- "$@"
    else
        die "run as root or install fakeroot (the image's files must be owned by root, /data by $UID_SOPM)"
    fi
}

# Copies $2 to the same path under root $1, following symlinks (the content of the file
# they point at lands at the requested path).
put() {
    local root=$1 src=$2
    mkdir -p "$root$(dirname "$src")"
    cp -L --preserve=mode "$src" "$root$src"
}

build_image() {
    local bin
    if [ -n "$BINARY" ]; then
        bin=$BINARY
        [ -x "$bin" ] || die "$bin is not an executable"
        say "using $bin as it is (no build)"
    else
        say "building sopm (release, features $FEATURES) into $TARGET_DIR"
        local started=$SECONDS
        CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p sopm-server --features "$FEATURES"
        bin=$TARGET_DIR/release/sopm
        [ -x "$bin" ] || die "no binary at $bin after the build"
        say "built $bin in $((SECONDS - started)) s ($(du -h "$bin" | cut -f1))"
    fi

    local root
    root=$(mktemp -d "${TMPDIR:-/tmp}/sopm-image.XXXXXX")
    CLEANUP+=("rm -rf '$root'")
    # mktemp makes it 0700; the tar's "./" entry is the image's / (uid 65532 must enter it).
    chmod 0755 "$root"
    say "assembling the root filesystem in $root"

    mkdir -p "$root/usr/local/bin"
    cp "$bin" "$root/usr/local/bin/sopm"
    # Debug line tables are most of the binary; symbols stay, so backtraces keep names.
    if [ "${SOPM_IMAGE_STRIP:-1}" = 1 ] && command -v strip >/dev/null; then
        strip --strip-debug "$root/usr/local/bin/sopm"
        say "  /usr/local/bin/sopm (debug info stripped: $(du -h "$root/usr/local/bin/sopm" | cut -f1))"
    else
        say "  /usr/local/bin/sopm"
    fi
    chmod 0755 "$root/usr/local/bin/sopm"

    local ldd_out
    ldd_out=$(ldd "$bin" 2>&1) || die "ldd $bin failed: $ldd_out"
    if grep -q 'not found' <<<"$ldd_out"; then
        die "ldd reports missing libraries: $(grep 'not found' <<<"$ldd_out")"
    fi
    local libs lib
    # "name => /path (addr)" lines give the path; "/path (addr)" is the loader; the vDSO
    # has no path and comes from the kernel.
    libs=$(awk '/=>/ && $3 ~ /^\// {print $3} /^[[:space:]]*\/[^ ]+/ {print $1}' <<<"$ldd_out")
    [ -n "$libs" ] || die "ldd reported no libraries for $bin: $ldd_out"
    for lib in $libs; do
        put "$root" "$lib"
        if [ -L "$lib" ]; then
            say "  $lib (-> $(readlink -f "$lib"))"
        else
            say "  $lib"
        fi
    done
    # The loader the kernel starts must be the one ldd listed.
    local interp
    if command -v readelf >/dev/null; then
        interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
        [ -n "$interp" ] && [ -e "$root$interp" ] || die "the program interpreter ${interp:-?} is not in the image"
    fi

    put "$root" /etc/ssl/certs/ca-certificates.crt
    say "  /etc/ssl/certs/ca-certificates.crt ($(grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt) certificates)"

    printf 'root:x:0:0:root:/root:/sbin/nologin\nsopm:x:%s:%s:sopm:/data:/sbin/nologin\n' \
        "$UID_SOPM" "$UID_SOPM" >"$root/etc/passwd"
    printf 'root:x:0:\nsopm:x:%s:\n' "$UID_SOPM" >"$root/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
    chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
    say "  /etc/passwd, /etc/group (sopm $UID_SOPM:$UID_SOPM), /etc/nsswitch.conf"

    mkdir -p "$root/tmp" "$root/data"
    chmod 1777 "$root/tmp"
    chmod 0700 "$root/data"   # the server makes its data directory 0700 anyway
    say "  /tmp (1777), /data ($UID_SOPM:$UID_SOPM, 0700)"

    say "importing as $TAG"
    local id
    id=$(as_root sh -c '
            chown -R 0:0 "$1" && chown '"$UID_SOPM:$UID_SOPM"' "$1/data" &&
            tar -C "$1" --numeric-owner --sort=name -c .' sh "$root" \
        | docker import \
            --change "USER $UID_SOPM:$UID_SOPM" \
            --change 'ENTRYPOINT ["/usr/local/bin/sopm"]' \
            --change 'CMD ["serve","--listen","0.0.0.0:8080","--data-dir","/data"]' \
            --change 'EXPOSE 8080' \
            --change 'WORKDIR /data' \
            - "$TAG")
    [ -n "$id" ] || die "docker import returned no image id"
    local size
    size=$(docker image inspect --format '{{.Size}}' "$TAG")
    say "image $TAG"
    say "  id   $(docker image inspect --format '{{.Id}}' "$TAG")"
    say "  size $size bytes ($((size / 1048576)) MiB)"
    say "  its one layer, as docker save gives it back:"
    docker save "$TAG" | tar -xO --wildcards '*/layer.tar' | tar -tv --numeric-owner \
        | awk '{print "    " $1, $2, $3, $NF}'
}

# ---------------------------------------------------------------------------------------
# Checks.
# ---------------------------------------------------------------------------------------

# A TCP port nothing on loopback listens on.
free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 100); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free loopback port found"
}

# Waits until $1 answers 200 (at most $2 seconds).
wait_200() {
    local url=$1 limit=${2:-30} i
    for ((i = 0; i < limit * 5; i++)); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# The server's log without its colours.
plain() { sed 's/\x1b\[[0-9;]*m//g'; }

# What every container of the checks runs under: the manifests' pod restrictions.
RESTRICTED=(--read-only --tmpfs /tmp --user "$UID_SOPM:$UID_SOPM" --cap-drop ALL
    --security-opt no-new-privileges)

check_version() {
    say "check: docker run --rm $TAG --version"
    local out
    out=$(docker run --rm "$TAG" --version) || die "--version failed"
    say "  $out"
}

check_serve() {
    say "check: serve as the restricted pod runs it (${RESTRICTED[*]}, /data a fresh volume)"
    local cid port
    cid=$(docker run -d "${RESTRICTED[@]}" -v /data -p 127.0.0.1::8080 "$TAG" \
        serve --listen 0.0.0.0:8080 --data-dir /data --allow-unauthenticated)
    CLEANUP+=("docker rm -f -v $cid")
    port=$(docker port "$cid" 8080/tcp | head -n1 | sed 's/.*://')
    local base=http://127.0.0.1:$port
    if ! wait_200 "$base/healthz" 30; then
        docker logs "$cid" 2>&1 | tail -20 >&2
        die "/healthz did not answer 200 on $base"
    fi
    say "  container ${cid:0:12} on $base, process (pid uid gid args): $(docker top "$cid" -eo pid,uid,gid,args | tail -n +2 | tr -s ' ')"
    say "  GET /healthz -> $(curl -s "$base/healthz")"
    wait_200 "$base/readyz" 30 || die "/readyz did not answer 200"
    say "  GET /readyz  -> $(curl -s "$base/readyz")"
    local out
    out=$(curl -s -X POST "$base/api/execute" -H 'content-type: application/json' \
        -d '{"function": "math.add", "input": {"a": 2, "b": 3}}')
    say "  POST /api/execute math.add {a:2,b:3} -> $out"
    grep -q '"output":5' <<<"$out" || die "math.add did not answer 5"
    local started=$SECONDS
    docker stop -t 20 "$cid" >/dev/null
    say "  stopped (SIGTERM) in $((SECONDS - started)) s, exit code $(docker inspect --format '{{.State.ExitCode}}' "$cid")"
    say "  its log:"
    docker logs "$cid" 2>&1 | plain | tail -n 8 | sed 's/^/    /'
}

check_cluster() {
    local tool
    for tool in redis-server redis-cli docker-registry; do
        if ! command -v "$tool" >/dev/null; then
            say "check: cluster roles SKIPPED: $tool not on PATH"
            return 0
        fi
    done
    say "check: a gateway and a worker from the image against redis-server and docker-registry on loopback (--network host)"
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/sopm-image-check.XXXXXX")
    CLEANUP+=("rm -rf '$work'")

    local rport gport wport regport
    rport=$(free_port)
    redis-server --bind 127.0.0.1 --port "$rport" --save '' --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    local redis_pid=$!
    CLEANUP+=("kill $redis_pid")
    regport=$(free_port)
    printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$work/registry" "$regport" >"$work/registry.yml"
    docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
    local registry_pid=$!
    CLEANUP+=("kill $registry_pid")
    local i
    for ((i = 0; i < 50; i++)); do
        redis-cli -p "$rport" ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    wait_200 "http://127.0.0.1:$regport/v2/" 10 || die "docker-registry did not start (see $work/registry.log)"
    say "  redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$rport, docker-registry on 127.0.0.1:$regport"

    local redis=redis://127.0.0.1:$rport/0 registry=http://127.0.0.1:$regport/sopm/functions
    # An API key in Redis, made by the image's own CLI, as an operator would.
    # It prints the secret alone on stdout, what it made on stderr.
    local secret
    secret=$(docker run --rm --network host "${RESTRICTED[@]}" "$TAG" \
        keys create --tenant acme --redis "$redis" 2>"$work/keys.err" | tail -n1)
    [ -n "$secret" ] || die "keys create printed no secret: $(cat "$work/keys.err")"
    say "  keys create --tenant acme --redis ... (in the image): $(head -c 200 "$work/keys.err" | tr -d '\n')"

    gport=$(free_port)
    wport=$(free_port)
    local role port gw wk
    for role in gateway worker; do
        [ "$role" = gateway ] && port=$gport || port=$wport
        local cid
        cid=$(docker run -d --network host "${RESTRICTED[@]}" -v /data \
            -e SOPM_ROLE=$role -e SOPM_NODE_ID=$role-1 -e SOPM_LISTEN=127.0.0.1:$port \
            -e SOPM_AUTH=api_key -e SOPM_REDIS_URL="$redis" -e SOPM_REGISTRY_URL="$registry" \
            -e SOPM_DATA_DIR=/data "$TAG" serve)
        CLEANUP+=("docker rm -f -v $cid")
        [ "$role" = gateway ] && gw=$cid || wk=$cid
    done
    for role in gateway worker; do
        [ "$role" = gateway ] && port=$gport || port=$wport
        if ! wait_200 "http://127.0.0.1:$port/readyz" 40; then
            docker logs "$([ "$role" = gateway ] && echo "$gw" || echo "$wk")" 2>&1 | tail -20 >&2
            die "the $role did not become ready"
        fi
        say "  $role on 127.0.0.1:$port: /healthz $(curl -s "http://127.0.0.1:$port/healthz"), /readyz $(curl -s "http://127.0.0.1:$port/readyz")"
    done
    local gbase=http://127.0.0.1:$gport auth="authorization: Bearer $secret"
    say "  without a key: POST /api/execute -> HTTP $(curl -s -o /dev/null -w '%{http_code}' -X POST "$gbase/api/execute" \
        -H 'content-type: application/json' -d '{"function": "math.add", "input": {"a": 2, "b": 3}}')"
    local out id status
    out=$(curl -s -X POST "$gbase/api/execute" -H "$auth" -H 'content-type: application/json' \
        -d '{"function": "math.add", "input": {"a": 20, "b": 22}, "async": true}')
    say "  POST /api/execute math.add async (with the key) -> $out"
    id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$out")
    [ -n "$id" ] || die "no job id in the answer"
    for ((i = 0; i < 100; i++)); do
        status=$(curl -s -H "$auth" "$gbase/api/status/$id")
        grep -q '"status":"succeeded"' <<<"$status" && break
        grep -q '"status":"\(failed\|dead_lettered\|cancelled\)"' <<<"$status" && break
        sleep 0.2
    done
    say "  GET /api/status/$id -> $status"
    grep -q '"output":42' <<<"$status" || die "the async job did not succeed with 42"
    # Nodes report their figures with their heartbeat, once a second.
    sleep 1.5
    local stats
    stats=$(curl -s -H "$auth" "$gbase/api/stats")
    if command -v jq >/dev/null; then
        say "  cluster nodes (GET /api/stats on the gateway):"
        jq -c '.cluster.nodes[] | {node_id, role, backends, succeeded: .stats.succeeded}' <<<"$stats" | sed 's/^/    /'
    else
        say "  GET /api/stats -> ${stats:0:600}"
    fi
    say "  the worker's log on its backends:"
    docker logs "$wk" 2>&1 | plain | grep -iE 'backend|executor|bwrap|runsc|kubernetes|unavailable|stem cell' \
        | sed 's/^[^ ]* *//' | sort | uniq -c | sort -rn | head -n 8 | sed 's/^/    /' || true
    docker stop -t 20 "$gw" "$wk" >/dev/null
    say "  gateway and worker stopped, exit codes $(docker inspect --format '{{.State.ExitCode}}' "$gw") and $(docker inspect --format '{{.State.ExitCode}}' "$wk")"
}

if [ "$BUILD" = 1 ]; then
    build_image
else
    docker image inspect "$TAG" >/dev/null 2>&1 || die "no image $TAG (build it first)"
fi
if [ "$CHECK" = 1 ]; then
    check_version
    check_serve
    check_cluster
    say "checks passed for $TAG"
fi
