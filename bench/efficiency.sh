#!/bin/sh
# Server efficiency: one workload through the engine alone (`mambabyte loadgen --engine`: the
# daemon's batching in one process, no HTTP) and through the daemon (`mambabyte loadgen --url` on
# loopback), at each concurrency, the two alternated ROUNDS times so that both see the same
# machine; prints the output bytes/s of each and the daemon's share (per round and the median),
# and the output bytes per CPU second of each (the engine's process; the daemon's from its
# /metrics, all threads): the wall-clock ratio shows what other load on the machine does to
# both, the CPU ratio what the daemon spends beyond the engine.
# Where there are two cores or more, the engine and the daemon get the same cores (all but the
# last, one engine thread each) and the HTTP client the last one.
# Usage: bench/efficiency.sh [MODEL_DIR] [OUT_DIR]
# Environment: LEVELS (default "1 4 16 64"), ROUNDS (3), MAX_TOKENS (128), PROMPT_BYTES (256),
# DATA (the corpus folder, for books_test prompts), PORT, MB_BIN.
set -e
MODEL=${1:-models/mambabyte-small}
OUT=${2:-build/efficiency}
PORT=${PORT:-18182}
DATA=${DATA:-../shared/data}
BIN=${MB_BIN:-build/rel/mambabyte}
LEVELS=${LEVELS:-1 4 16 64}
ROUNDS=${ROUNDS:-3}
mkdir -p "$OUT"
rm -f "$OUT"/[ed]-*.json
PROMPTS=""
if [ -f "$DATA/books_test.txt.xz" ]; then
    xz -dc "$DATA/books_test.txt.xz" >"$OUT/books_test.txt"
    PROMPTS="--prompts $OUT/books_test.txt"
fi
NCPU=$(nproc)
EPIN="" CPIN="" THREADS=0
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
    EPIN="taskset -c 0-$((NCPU - 2))" CPIN="taskset -c $((NCPU - 1))" THREADS=$((NCPU - 1))
fi
$EPIN "$BIN" serve -m "$MODEL" --port "$PORT" --threads "$THREADS" --log-requests false --slots 256 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 $PID 2>/dev/null || { echo "the daemon did not start" >&2; exit 1; }
    sleep 0.2
done
COMMON="$PROMPTS --prompt-bytes ${PROMPT_BYTES:-256} --max-tokens ${MAX_TOKENS:-128} --temperature 0.8 --seed 1 --warmup 2 --quiet"
for k in $(seq "$ROUNDS"); do
    for c in $LEVELS; do
        n=$((2 * c > 16 ? 2 * c : 16))
        echo "== round $k, concurrency $c, $n requests: engine alone, then the daemon" >&2
        $EPIN "$BIN" loadgen --engine "$MODEL" --threads "$THREADS" --concurrency "$c" --requests "$n" \
            $COMMON --json "$OUT/e-c$c-$k.json" >/dev/null
        $CPIN "$BIN" loadgen --url "http://127.0.0.1:$PORT" --concurrency "$c" --requests "$n" \
            $COMMON --json "$OUT/d-c$c-$k.json" >/dev/null
    done
done
python3 - "$OUT" <<'PY' | tee "$OUT/efficiency.md"
import glob, json, os, statistics, sys
out = sys.argv[1]


def load(kind, c):
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, f"{kind}-c{c}-*.json")))]


levels = sorted({int(p.split("-c")[1].split("-")[0]) for p in glob.glob(os.path.join(out, "e-c*.json"))})
print("| concurrency | engine alone, output B/s | daemon, output B/s | daemon / engine (wall), per round | median | engine / daemon, output B per CPU s | daemon / engine (CPU), median | TTFB p50 engine / daemon (ms) | TPOB p50 engine / daemon (ms) |")
print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
med = statistics.median
for c in levels:
    e, d = load("e", c), load("d", c)
    assert all(x["failed"] == 0 for x in e + d), "failed requests"
    eb = [x["output_bytes_per_s"] for x in e]
    db = [x["output_bytes_per_s"] for x in d]
    # output bytes per CPU second: the engine's process, the daemon's (all its threads, /metrics)
    ec = [x["output_bytes"] / x["loadgen_cpu_seconds"] for x in e]
    dc = [x["output_bytes"] / x["server"]["cpu_seconds"] for x in d]
    ratios = [b / a for a, b in zip(eb, db)]
    cpu_ratios = [b / a for a, b in zip(ec, dc)]
    lat = lambda runs, k: med([x["latency_ms"][k]["median"] for x in runs])
    print(f"| {c} | {med(eb):,.0f} | {med(db):,.0f} | {', '.join(f'{r:.2f}' for r in ratios)} | {med(ratios):.2f} | "
          f"{med(ec):,.0f} / {med(dc):,.0f} | {med(cpu_ratios):.2f} | "
          f"{lat(e, 'ttfb'):.1f} / {lat(d, 'ttfb'):.1f} | {lat(e, 'tpob'):.2f} / {lat(d, 'tpob'):.2f} |")
PY
