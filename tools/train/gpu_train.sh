#!/bin/bash
# The device calls that trained the shipped models: the CUDA scan's test, the run (run_byte.sh or
# run_drafter.sh), and the files back (the weights in parts under 16 MB, the run folder as one
# archive). usage: tools/train/gpu_train.sh DATA_DIR OUT_DIR [byte|drafter]
D=${1:-.gpu}; O=${2:-$OUT}; K=${3:-byte}
cd "$(dirname "$0")/../.."
timeout 120 python3 tools/train/test_scan_triton.py --impl cuda > $O/test_scan_cuda.log 2>&1
tail -1 $O/test_scan_cuda.log
grep -q "all ok" $O/test_scan_cuda.log || exit 1
timeout ${TL:-540} tools/train/run_$K.sh $D /tmp/m /tmp/runs | grep -v "^step .*[1-9]00 |"
cp /tmp/m/config.json /tmp/runs/ && tar -C /tmp/runs -czf $O/runs.tgz --exclude='*.pt' .
split -b 15000000 /tmp/m/model.safetensors $O/model.safetensors.part-
ls -la $O
