#!/bin/sh
# The serving benchmark on this machine (`make bench-serve`): starts `mambabyte serve` on a model
# (default: the bundled byte model) on a loopback port, runs bench/sweep.sh against it with
# prompts cut from books_test (../shared/data), and stops it. Where there are two cores or more,
# the client runs on the last core and the daemon (one engine thread per other core) on the rest.
# Usage: bench/server.sh [MODEL_DIR] [OUT_DIR]   Environment: as bench/sweep.sh, and PORT, DATA
# (the corpus folder), MAX_TOKENS (default 128), PROMPT_BYTES (default 256).
set -e
MODEL=${1:-models/mambabyte-small}
OUT=${2:-build/bench-serve}
PORT=${PORT:-18181}
DATA=${DATA:-../shared/data}
BIN=${MB_BIN:-build/rel/mambabyte}
mkdir -p "$OUT"
PROMPTS=""
if [ -f "$DATA/books_test.txt.xz" ]; then
    xz -dc "$DATA/books_test.txt.xz" >"$OUT/books_test.txt"
    PROMPTS="--prompts $OUT/books_test.txt"
else
    echo "no $DATA/books_test.txt.xz: synthetic prompts" >&2
fi
NCPU=$(nproc)
DPIN="" THREADS=0
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    DPIN="taskset -c 0-$((NCPU - 2))" THREADS=$((NCPU - 1))
    export CLIENT_CPU=$((NCPU - 1))
fi
$DPIN "$BIN" serve -m "$MODEL" --port "$PORT" --threads "$THREADS" --log-requests false --slots 256 \
    --queue-limit 4096 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 $PID 2>/dev/null || { echo "the daemon did not start" >&2; exit 1; }
    sleep 0.2
done
MB_BIN=$BIN bench/sweep.sh "http://127.0.0.1:$PORT" "$OUT" $PROMPTS \
    --prompt-bytes "${PROMPT_BYTES:-256}" --max-tokens "${MAX_TOKENS:-128}" --temperature 0.8 --seed 1
