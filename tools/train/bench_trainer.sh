#!/bin/bash
# One GPU call (~6 min, at most ~8) for the faster trainer (issue 12): the CUDA scan's and conv's
# tests, the fast path against the plain one (check_fast.py: PASS/FAIL), then the trainer's MB/s
# with the fast path off (the old kernel build: BWD_OCC 0, BWD_RED 0) and on (the defaults, the
# conv as conv_op.py's op; and with the conv inline) in the same call (train.py --bench 40, 65,536
# bytes a step in windows of 4,096) at d_model DM (default 512; 384 is mambabyte-base's) x 24 and
# x 6 layers, the fast path with the previous kernel build (BWD_RED 0: dB, dC summed by shuffles
# every step), and last the scan kernel's builds at the trainer's shape (bench_scan.py 16 4096
# 2*DM). Full logs go to OUT_DIR.
# QUICK=1: the 24-layer runs and prof_step.py's profile of a step with each conv only (~4 min).
# OLD_SRC=file: the plain runs build that version of scan_cuda.cu (the trainer as it was before a
# kernel change) instead of this one's.
# usage: [DM=384] [QUICK=1] [OLD_SRC=scan_cuda.cu] tools/train/bench_trainer.sh DATA_DIR OUT_DIR
# (DATA_DIR: books_test.txt.xz is enough)
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
timeout 120 python3 tools/train/test_scan_triton.py --impl cuda > "$O/test_scan_cuda.log" 2>&1
echo "test_scan_triton --impl cuda: $(tail -1 "$O/test_scan_cuda.log")"
timeout 60 python3 tools/train/test_conv_cuda.py > "$O/test_conv_cuda.log" 2>&1
echo "test_conv_cuda: $(tail -2 "$O/test_conv_cuda.log" | tr '\n' ' ')"
timeout 150 python3 tools/train/check_fast.py /tmp/bt_data/books_test.txt.xz 2>&1 | tee "$O/check_fast.log" \
  | grep -v "^W[0-9]"
T="python3 tools/train/train.py --kind byte --data /tmp/bt_data --train-files books_test.txt.xz --out /tmp/bt_out
   --scan-impl cuda --tokens-per-step 65536 --seq-min 4096 --seq-max 4096 --bench 40 --log-every 10 --val-every 0
   --d-model ${DM:-512}"
run() {  # run SECONDS NAME ARGS...: the rate of steps 11-20, 21-30, 31-40 and the wall time
  local s=$1 n=$2; shift 2
  local t0=$SECONDS src=
  case " $* " in *" --fast off "*) src=${OLD_SRC:+$(realpath "$OLD_SRC")} ;; esac
  MB_SCAN_SRC=$src timeout "$s" $T "$@" > "$O/$n.log" 2>&1
  echo "== $n ($*): $(grep -E '^step +(20|30|40) ' "$O/$n.log" | sed -E 's/.*\| ([0-9.]+) MB\/s.*/\1/' | tr '\n' ' ')MB/s" \
    "(steps 20, 30, 40), $((SECONDS - t0)) s"
  grep -E "Error|error" "$O/$n.log" | tail -3
}
OLD='{"BWD_OCC":0,"BWD_RED":0}'
run 40 l24_off --n-layer 24 --fast off --scan-cfg "$OLD"
run 75 l24_on --n-layer 24 --fast compile --conv-impl inline
run 75 l24_on_conv --n-layer 24 --fast compile --conv-impl op
for c in inline op; do  # where a step's time goes, by kind of kernel
  timeout 100 python3 tools/train/prof_step.py --d-model "${DM:-512}" --conv-impl $c 2>&1 | grep -v "^W[0-9]" \
    > "$O/prof_step_$c.log"
  head -9 "$O/prof_step_$c.log"
done
[ -n "$QUICK" ] && exit 0
run 45 l24_on_red0 --n-layer 24 --fast compile --scan-cfg '{"BWD_RED":0}'
run 25 l6_off --n-layer 6 --fast off --scan-cfg "$OLD"
run 30 l6_on --n-layer 6 --fast compile
timeout 45 python3 tools/train/bench_scan.py 16 4096 $((2 * ${DM:-512})) cuda 2>&1 | tee "$O/bench_scan.log" | grep -E "impl|best"
