#!/bin/sh
# A serving sweep against any OpenAI-compatible completions endpoint: `mambabyte loadgen` at
# concurrency 1, 4, 16, 64 and 256 (closed loop), then at request rates of 25, 50, 75, 100 and
# 125 % of the best request throughput the closed loop reached (Poisson arrivals). Leaves in
# OUT_DIR one JSON file per level, summary.tsv (the table, also printed) and sweep.png
# (throughput against latency, gnuplot).
#
# usage: bench/sweep.sh URL [OUT_DIR] [loadgen options...]
#   e.g. bench/sweep.sh http://127.0.0.1:8080 build/sweep --prompts /tmp/books_test.txt
# Environment: MB_BIN (default build/rel/mambabyte), LEVELS (concurrencies), RATE_SHARES
# (percentages of the best throughput), SECS (at most this long per level, default 60),
# REQUESTS (per level at least, default 32; a level sends 2 x its concurrency when more),
# CLIENT_CPU (pin the client to this core with taskset).
set -e
[ -n "$1" ] || { echo "usage: bench/sweep.sh URL [OUT_DIR] [loadgen options...]" >&2; exit 2; }
URL=$1
OUT=${2:-build/sweep}
[ $# -ge 2 ] && shift 2 || shift 1
BIN=${MB_BIN:-build/rel/mambabyte}
LEVELS=${LEVELS:-1 4 16 64 256}
RATE_SHARES=${RATE_SHARES:-25 50 75 100 125}
SECS=${SECS:-60}
REQUESTS=${REQUESTS:-32}
PIN=""
[ -n "$CLIENT_CPU" ] && PIN="taskset -c $CLIENT_CPU"
mkdir -p "$OUT"
rm -f "$OUT"/c*.json "$OUT"/r*.json

for c in $LEVELS; do
    n=$((2 * c > REQUESTS ? 2 * c : REQUESTS))
    echo "== concurrency $c ($n requests, at most $SECS s)" >&2
    $PIN "$BIN" loadgen --url "$URL" --concurrency "$c" --requests "$n" --duration "$SECS" \
        --warmup "$((c < 4 ? c : 4))" --json "$OUT/c$c.json" "$@" >"$OUT/c$c.txt"
done

# the rate sweep, around the best throughput the closed loop reached
best=$(python3 -c 'import json,sys; print(max(json.load(open(f))["request_throughput"] for f in sys.argv[1:]))' "$OUT"/c*.json)
for share in $RATE_SHARES; do
    rate=$(python3 -c "print(f'{$best * $share / 100:.4g}')")
    n=$(python3 -c "print(max($REQUESTS, int($rate * $SECS / 2)))")
    echo "== rate $rate/s ($share % of $best; $n requests, at most $SECS s)" >&2
    $PIN "$BIN" loadgen --url "$URL" --rate "$rate" --requests "$n" --duration "$SECS" --warmup 1 \
        --json "$OUT/r$share.json" "$@" >"$OUT/r$share.txt"
done

# the table: one row per level, from the JSON files
python3 - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
rows = []
for path in glob.glob(os.path.join(out, "[cr]*.json")):
    j = json.load(open(path))
    s, lat = j["settings"], j["latency_ms"]
    level = f'c={s["concurrency"]}' if s["mode"] == "concurrency" else f'rate={s["rate"]:.4g}'
    key = (0, s["concurrency"]) if s["mode"] == "concurrency" else (1, s["rate"])
    rows.append((key, [level, j["completed"], j["failed"], f'{j["request_throughput"]:.3f}',
                       f'{j["output_bytes_per_s"]:.1f}', f'{lat["ttfb"]["median"]:.2f}', f'{lat["ttfb"]["p99"]:.2f}',
                       f'{lat["tpob"]["median"]:.3f}', f'{lat["tpob"]["p99"]:.3f}', f'{lat["e2e"]["median"]:.1f}',
                       f'{lat["e2e"]["p99"]:.1f}', j["peak_concurrency"]]))
head = ["level", "completed", "failed", "req/s", "out_B/s", "ttfb_p50_ms", "ttfb_p99_ms", "tpob_p50_ms",
        "tpob_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "peak"]
with open(os.path.join(out, "summary.tsv"), "w") as f:
    f.write("\t".join(head) + "\n")
    for _, r in sorted(rows):
        f.write("\t".join(map(str, r)) + "\n")
widths = [max(len(str(x)) for x in col) for col in zip(head, *[r for _, r in rows])]
for r in [head] + [r for _, r in sorted(rows)]:
    print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))
EOF

# the plot: output throughput against the median time per output byte and the p99 time to first byte
if command -v gnuplot >/dev/null; then
    awk -F'\t' 'NR > 1 && $1 ~ /^c=/' "$OUT/summary.tsv" >"$OUT/closed.dat"
    awk -F'\t' 'NR > 1 && $1 ~ /^rate=/' "$OUT/summary.tsv" >"$OUT/open.dat"
    gnuplot <<EOF
set terminal pngcairo size 1200,500
set output "$OUT/sweep.png"
set datafile separator "\t"
set multiplot layout 1,2 title "mambabyte loadgen sweep: $URL"
set xlabel "output bytes/s"
set grid
set key top left
set ylabel "median time per output byte (ms)"
plot "$OUT/closed.dat" using 5:8 with linespoints title "closed loop (concurrency)", \
     "$OUT/closed.dat" using 5:8:1 with labels offset 0,1 notitle, \
     "$OUT/open.dat" using 5:8 with linespoints title "open loop (rate)", \
     "$OUT/open.dat" using 5:8:1 with labels offset 0,-1 notitle
set ylabel "p99 time to first byte (ms)"
set logscale y
plot "$OUT/closed.dat" using 5:7 with linespoints title "closed loop (concurrency)", \
     "$OUT/closed.dat" using 5:7:1 with labels offset 0,1 notitle, \
     "$OUT/open.dat" using 5:7 with linespoints title "open loop (rate)", \
     "$OUT/open.dat" using 5:7:1 with labels offset 0,-1 notitle
unset multiplot
EOF
    echo "plot: $OUT/sweep.png" >&2
else
    echo "no gnuplot: no plot (tools/deps.sh --bench installs it)" >&2
fi
echo "JSON files, reports and summary.tsv in $OUT" >&2
