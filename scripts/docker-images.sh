#!/usr/bin/env bash
# Builds the Docker base images of SOPM's docker backend from this host's own files, so
# no registry is needed:
#
#   sopm/base-static:local   busybox-static only: shell scripts and static binaries
#   sopm/base-python:local   busybox + the host's python3, its standard library and the
#                            shared libraries they load
#   sopm/base-node:local     busybox + the host's node and the shared libraries it loads
#
# Each image carries a label with a digest of what went in; an image whose digest has not
# changed is kept, so a second run takes a second. Needs a running Docker daemon,
# `busybox` (Debian's busybox-static: a static binary), python3 and node.
#
# Usage: scripts/docker-images.sh [static|python|node]...   (default: all three)
# Environment: SOPM_IMAGE_PREFIX (default `sopm/base`), PYTHON (default /usr/bin/python3),
# NODE (default: node on PATH), BUSYBOX (default: busybox on PATH).
set -euo pipefail

PREFIX=${SOPM_IMAGE_PREFIX:-sopm/base}
PYTHON=${PYTHON:-/usr/bin/python3}
NODE=${NODE:-$(command -v node || true)}
BUSYBOX=${BUSYBOX:-$(command -v busybox || true)}
export DOCKER_BUILDKIT=0

die() { echo "docker-images: $*" >&2; exit 1; }

[ -n "$BUSYBOX" ] || die "busybox not found (apt-get install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is not static (apt-get install busybox-static)"
fi
docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1 || die "no Docker daemon answers"

# Copies a file to the same path under $1, following symlinks for the content but keeping
# the requested path (so /lib64/ld-linux-x86-64.so.2 exists as such).
put() {
    local root=$1 src=$2
    mkdir -p "$root$(dirname "$src")"
    cp -L "$src" "$root$src"
}

# The shared libraries a binary loads, with the dynamic linker.
libs_of() {
    ldd "$1" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3} /^[[:space:]]*\/[^ ]+/ {print $1}'
}

skeleton() {
    local root=$1
    mkdir -p "$root"/{bin,etc,tmp,fn,opt/sopm,proc,dev,sys}
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    for tool in sh ls cat echo env sleep true false mkdir rm cp mv chmod head tail wc \
        grep sed awk tr cut sort uniq id uname ps kill date printf test expr yes dd; do
        ln -sf busybox "$root/bin/$tool"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# Builds image $1 from directory $2 unless an image with the same content digest exists.
build() {
    local tag=$1 root=$2 digest have
    digest=$( (cd "$root" && find . -type f -o -type l | LC_ALL=C sort | while read -r f; do
        if [ -L "$f" ]; then echo "$f -> $(readlink "$f")"; else echo "$f $(sha256sum <"$f" | cut -c1-64)"; fi
    done) | sha256sum | cut -c1-64)
    have=$(docker image inspect --format '{{index .Config.Labels "sopm.source-digest"}}' "$tag" 2>/dev/null || true)
    if [ "$have" = "$digest" ]; then
        echo "docker-images: $tag is up to date"
        return
    fi
    cat >"$root/../Dockerfile" <<EOF
FROM scratch
COPY . /
ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8
LABEL sopm.source-digest=$digest sopm.base-image=true
WORKDIR /fn
EOF
    echo "docker-images: building $tag ($(du -sh "$root" | cut -f1))"
    local out
    if ! out=$(docker build -q -f "$root/../Dockerfile" -t "$tag" "$root" 2>&1); then
        echo "$out" >&2
        die "building $tag failed"
    fi
    echo "docker-images: built $tag"
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

build_static() {
    local root=$stage/static/root
    skeleton "$root"
    build "$PREFIX-static:local" "$root"
}

build_python() {
    [ -x "$PYTHON" ] || die "python3 not found at $PYTHON"
    local root=$stage/python/root exe stdlib lib
    skeleton "$root"
    exe=$(readlink -f "$PYTHON")
    stdlib=$("$PYTHON" -I -S -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    put "$root" "$exe"
    ln -sf "$exe" "$root/usr/bin/python3" 2>/dev/null || { mkdir -p "$root/usr/bin"; ln -sf "$exe" "$root/usr/bin/python3"; }
    mkdir -p "$root$stdlib"
    (cd "$stdlib" && tar -cf - --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
        --exclude=turtledemo --exclude=ensurepip --exclude=__pycache__ --exclude=site-packages \
        --exclude=dist-packages .) | (cd "$root$stdlib" && tar -xf -)
    for lib in $(
        libs_of "$exe"
        find "$stdlib/lib-dynload" -name '*.so' 2>/dev/null | while read -r so; do libs_of "$so"; done
    ); do
        put "$root" "$lib"
    done
    [ -d /etc/ssl/certs ] && mkdir -p "$root/etc/ssl" && cp -rL /etc/ssl/certs "$root/etc/ssl/" 2>/dev/null || true
    build "$PREFIX-python:local" "$root"
}

build_node() {
    [ -n "$NODE" ] && [ -x "$NODE" ] || die "node not found"
    local root=$stage/node/root exe lib
    skeleton "$root"
    exe=$(readlink -f "$NODE")
    put "$root" "$exe"
    [ "$exe" = /usr/bin/node ] || { mkdir -p "$root/usr/bin"; ln -sf "$exe" "$root/usr/bin/node"; }
    for lib in $(libs_of "$exe"); do
        put "$root" "$lib"
    done
    [ -d /etc/ssl/certs ] && mkdir -p "$root/etc/ssl" && cp -rL /etc/ssl/certs "$root/etc/ssl/" 2>/dev/null || true
    build "$PREFIX-node:local" "$root"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(static python node)
for t in "${targets[@]}"; do
    case $t in
        static) build_static ;;
        python) build_python ;;
        node) build_node ;;
        *) die "unknown image '$t' (static, python, node)" ;;
    esac
done
