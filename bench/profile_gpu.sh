#!/bin/sh
# Per-kernel times of one forward on the GPU (issue 10's timeline): Nsight Compute times each
# kernel of one step of B sequences x k tokens (graphs off, so each launch is its own), summed by
# kernel. Usage: bench/profile_gpu.sh MODEL_DIR [B] [k]   (needs ncu; build/rel/bench_gpu)
# The persistent step kernel (MB_CUDA_STEP=1) is one kernel to ncu; its phases are timed by
# MB_CUDA_STEP=1 MB_CUDA_STEP_TRACE=1 build/rel/bench_gpu --profile MODEL_DIR B k (stderr).
set -e
cd "$(dirname "$0")/.."
model=$1 B=${2:-1} k=${3:-1}
csv=$(mktemp)
MB_CUDA_GRAPHS=0 ncu --profile-from-start off --clock-control none --cache-control none --metrics gpu__time_duration.sum \
    --csv --print-units base build/rel/bench_gpu --profile "$model" "$B" "$k" >"$csv" 2>/dev/null || true
grep "one step" "$csv" || true
python3 - "$csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head = rows[0]
ki, vi = head.index("Kernel Name"), head.index("Metric Value")
tot, cnt = collections.Counter(), collections.Counter()
for r in rows[1:]:
    name = r[ki].split("(")[0].split("<")[0].replace("void ", "")
    tot[name] += float(r[vi].replace(",", "")) / 1e3  # ns -> us
    cnt[name] += 1
all_us = sum(tot.values())
print(f"| kernel | launches | us in all | share |\n| --- | ---: | ---: | ---: |")
for name, us in tot.most_common():
    print(f"| {name} | {cnt[name]} | {us:.1f} | {100 * us / all_us:.0f}% |")
print(f"| all kernels | {sum(cnt.values())} | {all_us:.1f} | |")
PY
rm -f "$csv"
