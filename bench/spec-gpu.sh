#!/bin/sh
# Speculative decoding in the daemon on a GPU (H200): plain against speculative on the same 50
# books_test prompts (256 bytes each, cut by bench/books_prompts.py), generating 256 bytes each,
# greedy and temperature 0.7 seeded, at concurrency 1, 8 and 64, with the bundled pair
# (models/mambabyte-small verified, models/drafter-small drafting). One daemon serves all three
# ways (speculative.enabled false, true, absent), so they share the run; bench/spec_bench.py
# prints the table (bytes/s, ratios, acceptance, bytes per round, step time split) and fails if
# any speculative output differs from plain decoding.
#
# usage: bench/spec-gpu.sh BOOKS_TEST [extra serve flags...]
#   BOOKS_TEST  books_test.txt or books_test.txt.xz (documents separated by a form-feed line)
# env: MB_BIN (build/rel/mambabyte, built with `make` where nvcc is), DEVICE (cuda), N (50),
#      BYTES (256), CONC (1,8,64), TEMPS (0,0.7), PORT (18191), MODEL (models/mambabyte-small)
#      and DRAFT (models/drafter-small): another pair, e.g. mambabyte-base and its drafter
# Needs nothing else than this tree and the built binary (python3 for the client).
set -e
[ $# -ge 1 ] && [ -f "$1" ] || { sed -n 2,15p "$0"; exit 2; }
BOOKS=$1
shift
BIN=${MB_BIN:-build/rel/mambabyte}
DEVICE=${DEVICE:-cuda}
PORT=${PORT:-18191}
TMP=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$TMP"' EXIT
python3 bench/books_prompts.py "$BOOKS" "${N:-50}" 256 >"$TMP/prompts.json"
"$BIN" serve -m "${MODEL:-models/mambabyte-small}" --draft "${DRAFT:-models/drafter-small}" --device "$DEVICE" \
    --port "$PORT" --log-requests false --session-dir "$TMP/sessions" "$@" 2>"$TMP/serve.log" &
PID=$!
i=0
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 $PID 2>/dev/null && [ $i -lt 600 ] || { cat "$TMP/serve.log"; exit 1; }
    i=$((i + 1))
    sleep 0.2
done
grep -E "device|drafter|ready" "$TMP/serve.log"
echo "command: $0 $BOOKS $*   ($(git describe --always --dirty 2>/dev/null))"
python3 bench/spec_bench.py "http://127.0.0.1:$PORT" "$TMP/prompts.json" --bytes "${BYTES:-256}" \
    --conc "${CONC:-1,8,64}" --temps "${TEMPS:-0,0.7}"
