#!/bin/sh
# Builds the training scan's library (scan_cuda.cu) for sm_90 under the names scan_cuda.py looks
# for in its cache ($MB_SCAN_CACHE: libscan-sm_90-ch{CH}-occ{BWD_OCC}-red{BWD_RED}-{the first 16 hex
# digits of the source's sha256}.so), so that a device call given MB_SCAN_CACHE=DIR compiles
# nothing. Builds the trainer's option set (CH 8, BWD_OCC 512, BWD_RED 1) and, with --tests, the
# four others test_scan_triton.py and bench_trainer.sh use (~15 s each, two at a time).
# usage: tools/train/prebuild_scan.sh DIR [--tests] [SRC]   (SRC: default tools/train/scan_cuda.cu)
set -e
[ $# -ge 1 ] || { sed -n 2,7p "$0"; exit 2; }
dir=$1 sets="8:512:1"
[ "$2" = --tests ] && { sets="$sets 16:512:1 8:0:1 8:512:0 8:0:0"; shift; }
src=${2:-$(dirname "$0")/scan_cuda.cu}
nvcc=$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")
mkdir -p "$dir"
h=$(sha256sum "$src" | cut -c1-16)
n=0
for s in $sets; do
    ch=${s%%:*} r=${s#*:} occ=${r%%:*} red=${r#*:}
    so=$dir/libscan-sm_90-ch$ch-occ$occ-red$red-$h.so
    [ -f "$so" ] && continue
    "$nvcc" -O3 -arch=sm_90 -shared -Xcompiler -fPIC -DCH="$ch" -DBWD_OCC="$occ" -DBWD_RED="$red" \
        -o "$so.tmp" "$src" && mv "$so.tmp" "$so" &
    n=$((n + 1))
    [ $((n % 2)) -eq 0 ] && wait
done
wait
for s in $sets; do
    ch=${s%%:*} r=${s#*:} occ=${r%%:*} red=${r#*:}
    [ -f "$dir/libscan-sm_90-ch$ch-occ$occ-red$red-$h.so" ] || { echo "prebuild_scan.sh: the build $s failed" >&2; exit 1; }
done
ls "$dir"
