#!/bin/sh
# make test-gpu: the CUDA backend's tests on this machine's GPU, or one "skipped" line where
# there is none. 1) tests/gpu/test_gpu (GPU == CPU on every fixture and the bundled models,
# batch invariance bit for bit, rollback, copy, spill, state files across backends, seeded
# sampling, errors), once more with knobs that force the cluster in_proj and the four-thread
# scan at every size; 2) `eval` of the bundled model on the GPU and the CPU, equal to 4 decimals;
# 3) every real-HTTP test against `serve --device cuda`; 4) compute-sanitizer memcheck and
# racecheck on the GPU test binary (smaller sizes), when compute-sanitizer is installed.
set -e
cd "$(dirname "$0")/../.."
BIN=build/rel/mambabyte
export MB_CUDA_LIB="${MB_CUDA_LIB:-$PWD/build/rel/libmambabyte_cuda.so}" # test_gpu is not beside it
log=$(mktemp)
trap 'rm -f "$log" "$log.cpu" "$log.gpu" "$log.txt"' EXIT
echo "== build/rel/tests/gpu/test_gpu"
rc=0
build/rel/tests/gpu/test_gpu >"$log" 2>&1 || rc=$?
cat "$log"
if grep -q '^skipped:' "$log"; then exit 0; fi
[ "$rc" = 0 ] || { echo "test_gpu failed"; exit 1; }
echo "== test_gpu with the cluster in_proj at every decode size and four-thread scans always (quick)"
MB_GPU_TEST_QUICK=1 MB_CUDA_KC_MAX_T=256 MB_CUDA_SCAN_QUAD=2 build/rel/tests/gpu/test_gpu

echo "== eval on the GPU and the CPU"
cat README.md models/*/MODEL_CARD.md >"$log.txt"
$BIN eval -m models/mambabyte-small --text "$log.txt" --device cuda >"$log.gpu"
$BIN eval -m models/mambabyte-small --text "$log.txt" --device cpu >"$log.cpu"
g=$(awk '/^bits_per_byte/ {printf "%.4f", $2}' "$log.gpu")
c=$(awk '/^bits_per_byte/ {printf "%.4f", $2}' "$log.cpu")
echo "bits per byte: GPU $g, CPU $c ($(awk '/^bytes_per_second/ {print $2}' "$log.gpu") bytes/s on the GPU)"
[ -n "$g" ] && [ "$g" = "$c" ] || { echo "eval differs between the GPU and the CPU"; exit 1; }

n=0
for t in tests/http/test_*.py; do
    echo "== $t (serve --device cuda)"
    MB_BIN=$BIN MB_DEVICE=cuda python3 "$t"
    n=$((n + 1))
done

if command -v compute-sanitizer >/dev/null 2>&1; then
    # racecheck stops with "Internal Sanitizer Error: The Sanitizer failed to handle a hardware
    # exception" on the first launch of the cluster in_proj kernel (k_in_proj_kc; CUDA 13.0's
    # compute-sanitizer on an H200, with PDL on or off), where memcheck and synccheck find no
    # error and a minimal cluster kernel with the same features (distributed and dynamic shared
    # memory, an L2 bulk prefetch, PDL) passes racecheck; not explained yet (bench/RESULTS.md).
    # Its racecheck pass runs with that kernel off (MB_CUDA_KC_MAX_T=0), every other one checked.
    for tool in memcheck racecheck; do
        kc=32
        [ "$tool" = racecheck ] && kc=0
        echo "== compute-sanitizer --tool $tool build/rel/tests/gpu/test_gpu (MB_GPU_TEST_QUICK=1, MB_CUDA_KC_MAX_T=$kc)"
        MB_GPU_TEST_QUICK=1 MB_CUDA_KC_MAX_T=$kc compute-sanitizer --tool $tool --error-exitcode 1 \
            build/rel/tests/gpu/test_gpu >"$log" 2>&1 || { cat "$log"; exit 1; }
        tail -2 "$log"
    done
else
    echo "compute-sanitizer not found: memcheck and racecheck not run"
fi
echo "test-gpu: all passed (test_gpu, eval parity, $n HTTP test programs on the GPU)"
