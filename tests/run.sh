#!/bin/sh
# Runs every unit test binary in $MB_BUILD/tests, then every real-HTTP test in tests/http,
# against $MB_BIN. Stops at the first failure.
set -e
: "${MB_BUILD:=build/asan}"
: "${MB_BIN:=$MB_BUILD/mambabyte}"
export MB_BIN
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
n=0
for t in "$MB_BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    echo "== $t"
    "$t"
    n=$((n + 1))
done
for t in tests/cli/test_*.py tests/train/test_*.py tests/http/test_*.py; do
    [ -f "$t" ] || continue
    echo "== $t"
    python3 "$t"
    n=$((n + 1))
done
echo "all $n test programs passed"
