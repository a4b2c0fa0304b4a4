#!/usr/bin/env bash
# Instructions per call of the execute path, counted by valgrind's callgrind: the
# figures that do not depend on the machine's load. For each path the bench target
# `instructions` runs twice (SMALL and SMALL + CALLS counted calls, after the same
# warm-up); the difference of the two totals divided by CALLS is the cost of one call,
# start-up and warm-up cancelled out. Paths (see benches/benches/instructions.rs):
#   math_add           Platform::execute(math.add), in-memory stores
#   text_uppercase_1k  Platform::execute(text.uppercase) on 1 KiB of text
#   user_warm          Platform::execute of a ready user function whose executor
#                      answers after one yield (the server-side part of a warm call:
#                      registry, scheduler, Dispatcher, job record, stats; no sandbox)
# Each call also clones its input (the loop's own cost: about 360 instructions for
# math_add's input, about 650 for the 1 KiB text).
# Then the same for HTTP requests to the release server (scripts/bench_http_instructions.py:
# every thread of the server counted, SQLite's writer included, and shown apart from the
# request's own path): GET /healthz, waiting POST /api/execute of math.add and of
# text.uppercase on the same 1 KiB of text.
#
# Usage: scripts/bench-instructions.sh [CALLS]   (default 10000; HTTP: SOPM_BENCH_HTTP_CALLS,
#        default 2000, 0 to skip)
#        SOPM_BENCH_TOP=N also prints the N functions with the most inclusive
#        instructions of their own (not counting callees) in the larger run of each path
#        (callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."

calls="${1:-10000}"
small=1000
top="${SOPM_BENCH_TOP:-0}"
command -v valgrind >/dev/null 2>&1 || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }

echo "==> building the bench target 'instructions'" >&2
bin=$(cargo bench -p benches --bench instructions --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "instructions" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "could not build the bench target" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Total instructions of one run (callgrind's "summary" line).
count() {
  local out="$work/$1.$2.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$1" "$2" >/dev/null 2>&1
  awk '/^summary:/ {print $2}' "$out"
}

printf '%-20s %14s\n' path instr/call
for path in math_add text_uppercase_1k user_warm; do
  a=$(count "$path" "$small")
  b=$(count "$path" "$((small + calls))")
  printf '%-20s %14d\n' "$path" "$(( (b - a) / calls ))"
  if [ "$top" -gt 0 ]; then
    { callgrind_annotate --inclusive=no "$work/$path.$((small + calls)).out" 2>/dev/null || true; } |
      sed -n '/^Ir/,$p' | head -n $((top + 3)) | cut -c1-200 || true
  fi
done

http_calls="${SOPM_BENCH_HTTP_CALLS:-2000}"
if [ "$http_calls" -gt 0 ]; then
  echo "==> building the release server" >&2
  cargo build --release -p sopm-server --quiet
  python3 scripts/bench_http_instructions.py "${CARGO_TARGET_DIR:-target}/release/sopm" "$http_calls"
fi
