#!/bin/bash
# One GPU call: the CUDA scan against the float64 reference, the scan kernels timed, and the
# trainer's throughput on one GPU and on all of them.
# usage: tools/train/gpu_check.sh DATA_DIR OUT_DIR [both|cuda]  (DATA_DIR: the books_*.txt.xz files)
D=${1:-.gpu}; O=${2:-$OUT}; K=${3:-cuda}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
cd "$(dirname "$0")/../.."
nvidia-smi -L
timeout 150 python3 tools/train/test_scan_triton.py --impl cuda 2>&1 | tee $O/test_scan_cuda.log | cut -c1-220
grep -q "all ok" $O/test_scan_cuda.log || exit 1
timeout 150 python3 tools/train/bench_scan.py 16 8192 1024 $K $O/best.json 2>&1 | tee $O/bench_scan.log
timeout 60 python3 tools/train/bench_scan.py 8 8192 1024 cuda 2>&1 | tee -a $O/bench_scan.log
B="--kind byte --data $D --train-files books_train_1.txt.xz --out /tmp/b --log-every 10 --val-every 0 --steps 1000 --bench 40 --scan-impl cuda --scan-cfg $(cat $O/best.json)"
run() { echo "== $*"; timeout 120 "$@" 2>&1 | grep -E "^step +(20|30|40) |trained|Error|error|model:" | cut -c1-200; }
run python3 tools/train/train.py $B --d-model 512 --n-layer 4 --tokens-per-step 131072
run python3 tools/train/train.py $B --d-model 512 --n-layer 6 --tokens-per-step 65536
NG=$(nvidia-smi -L | wc -l)
run torchrun --standalone --nproc_per_node=$NG tools/train/train.py $B --d-model 512 --n-layer 6 --tokens-per-step $((65536 * NG))
