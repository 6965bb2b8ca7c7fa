#!/bin/bash
# One GPU call (~4 min, at most ~6) for the faster trainer (issue 12): the CUDA scan's tests (also
# the BWD_Q 8 build: 8 threads per channel in the backward), the fast path against the plain one
# with the BWD_Q 8 build (check_fast.py: PASS/FAIL; the default build's kernel code is unchanged and
# passed before), then the trainer's MB/s (train.py --bench 40, 65,536 bytes a step in windows of
# 4,096, d_model 512 x 24 layers) with the fast path off and the old kernel build (BWD_OCC 0,
# BWD_RED 0), on with the default build (BWD_Q 4, BWD_OCC 512, BWD_RED 1: the previous settings),
# on with BWD_Q 8 (BWD_OCC 1024) and on with the default build again (order effects), and last the
# scan kernel's builds at the trainer's shape (bench_scan.py 16 4096 1024). Full logs go to OUT_DIR.
# usage: tools/train/bench_trainer.sh DATA_DIR OUT_DIR   (DATA_DIR: books_test.txt.xz is enough)
mkdir -p "$2"
D=$(realpath "$1"); O=$(realpath "$2")
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
mkdir -p /tmp/bt_data
# only the rate is wanted: books_test stands in for the training text and for the valid split
ln -sf "$D/books_test.txt.xz" /tmp/bt_data/books_test.txt.xz
ln -sf "$D/books_test.txt.xz" /tmp/bt_data/books_valid.txt.xz
nvidia-smi -L
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
Q8='{"BWD_Q":8,"BWD_OCC":1024}'
timeout 120 python3 tools/train/test_scan_triton.py --impl cuda > "$O/test_scan_cuda.log" 2>&1
echo "test_scan_triton --impl cuda: $(tail -1 "$O/test_scan_cuda.log") ($(grep -c "^ok" "$O/test_scan_cuda.log") ok," \
  "$(grep -c "BWD_Q': 8" "$O/test_scan_cuda.log") with BWD_Q 8)"
grep -E "^BAD|Error|error" "$O/test_scan_cuda.log" | cut -c1-300 | head -5
timeout 90 python3 tools/train/check_fast.py /tmp/bt_data/books_test.txt.xz --scan-cfg "$Q8" 2>&1 \
  | tee "$O/check_fast.log" | grep -v "^W[0-9]"
T="python3 tools/train/train.py --kind byte --data /tmp/bt_data --train-files books_test.txt.xz --out /tmp/bt_out
   --scan-impl cuda --tokens-per-step 65536 --seq-min 4096 --seq-max 4096 --bench 40 --log-every 10 --val-every 0
   --d-model 512"
run() {  # run SECONDS NAME ARGS...: the rate of steps 11-20, 21-30, 31-40 and the wall time
  local s=$1 n=$2; shift 2
  local t0=$SECONDS
  timeout "$s" $T "$@" > "$O/$n.log" 2>&1
  echo "== $n ($*): $(grep -E '^step +(20|30|40) ' "$O/$n.log" | sed -E 's/.*\| ([0-9.]+) MB\/s.*/\1/' | tr '\n' ' ')MB/s" \
    "(steps 20, 30, 40), $((SECONDS - t0)) s"
  grep -E "Error|error" "$O/$n.log" | tail -3
}
OLD='{"BWD_OCC":0,"BWD_RED":0}'
run 40 l24_off --n-layer 24 --fast off --scan-cfg "$OLD"
run 75 l24_on --n-layer 24 --fast compile
run 45 l24_on_q8 --n-layer 24 --fast compile --scan-cfg "$Q8"
run 45 l24_on_again --n-layer 24 --fast compile --scan-cfg '{"BWD_Q":4,"BWD_OCC":512,"BWD_RED":1}'
timeout 60 python3 tools/train/bench_scan.py 16 4096 1024 cuda 2>&1 | tee "$O/bench_scan.log" | grep -E "impl|best"
