#!/usr/bin/env bash
# Builds sopm-runner, the runner for shell and binary functions, as one static
# executable for this machine's architecture, copies it to
# <target dir>/sopm-runner/sopm-runner and prints that path on stdout (cargo's
# output goes to stderr). Checks that the result needs no program interpreter and no
# shared library, and that it starts with an empty environment. Re-running it when
# nothing changed costs a cargo no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

arch="$(uname -m)"
case "$arch" in
  x86_64 | aarch64) triple="$arch-unknown-linux-gnu" ;;
  *)
    echo "build-runner: no static build set up for $arch" >&2
    exit 1
    ;;
esac

target_dir="$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
if [ -z "$target_dir" ]; then
  echo "build-runner: cargo metadata named no target directory" >&2
  exit 1
fi

# With an explicit --target these flags apply to the runner only, not to build
# scripts, and its artifacts live apart from the ordinary builds'.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release -p sopm-runner --target "$triple" >&2

built="$target_dir/$triple/release/sopm-runner"
out_dir="$target_dir/sopm-runner"
out="$out_dir/sopm-runner"
mkdir -p "$out_dir"
if ! cmp -s "$built" "$out"; then
  cp "$built" "$out.tmp"
  mv -f "$out.tmp" "$out"
fi

if command -v readelf >/dev/null 2>&1; then
  if readelf -lW "$out" | grep -q 'Requesting program interpreter'; then
    echo "build-runner: $out asks for a program interpreter: not static" >&2
    exit 1
  fi
  if readelf -dW "$out" | grep -q '(NEEDED)'; then
    echo "build-runner: $out needs shared libraries: not static" >&2
    readelf -dW "$out" | grep '(NEEDED)' >&2
    exit 1
  fi
else
  echo "build-runner: no readelf here; not checking that $out is static" >&2
fi

# It must start with nothing around it: no environment, frames on stdio, the host
# gone at once (it says hello and exits).
hello="$(env -i "$out" --stdio </dev/null 2>&1)"
if [ "$hello" != '{"type":"hello","runner":"static"}' ]; then
  echo "build-runner: $out did not start: $hello" >&2
  exit 1
fi

echo "$out"
