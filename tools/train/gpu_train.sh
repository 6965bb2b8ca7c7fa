#!/bin/bash
# The training run of the shipped models, in one GPU call (10-minute limit): checks the scan kernel,
# then trains the byte model (GPU 0) and the drafter (GPU 1, or GPU 0 beside it when there is one GPU).
# usage: tools/train/gpu_train.sh DATA_DIR OUT_DIR   (DATA_DIR: the books_*.txt.xz files)
D=${1:-.gpu}; O=${2:-/tmp/out}
mkdir -p $O/m $O/runs
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
NG=$(nvidia-smi -L | wc -l); G2=$((NG > 1 ? 1 : 0))
nvidia-smi -L
TB=${TB:-450}; TD=${TD:-450}
CFG='{"T_FWD":16,"BD_FWD":16,"W_FWD":4,"T_BWD":16,"BD_BWD":16,"W_BWD":4}'
CUDA_VISIBLE_DEVICES=$G2 timeout 580 python3 tools/train/train.py --kind token --data $D \
  --tokenizer models/drafter-small/tokenizer.model --out $O/m/drafter-small \
  --d-model 320 --n-layer 4 --steps 8000 --time-budget $TD --warmup 300 --lr 2.5e-3 \
  --tokens-per-step 65536 --seq-min 1024 --seq-max 2048 --seq-quant 256 --val-every 500 --log-every 100 \
  --scan-cfg "$CFG" --ckpt /tmp/ck_drafter.pt --check-ids $D/valid_ids_cli.npy \
  --metrics $O/runs/drafter-small.json --ref-json $O/runs/ref_drafter-small.json --hf-check > $O/runs/drafter-small.log 2>&1 &
PD=$!
CUDA_VISIBLE_DEVICES=0 timeout 100 python3 tools/train/test_scan_triton.py > $O/runs/test_scan_gpu.log 2>&1
tail -2 $O/runs/test_scan_gpu.log
if ! grep -q "all ok" $O/runs/test_scan_gpu.log; then kill $PD; cat $O/runs/test_scan_gpu.log; exit 1; fi
CUDA_VISIBLE_DEVICES=0 timeout 540 python3 tools/train/train.py --kind byte --data $D --out $O/m/mambabyte-small \
  --d-model 512 --n-layer 4 --steps 6000 --time-budget $TB --warmup 300 --lr 2e-3 \
  --tokens-per-step 131072 --seq-min 2048 --seq-max 8192 --seq-quant 1024 --val-every 500 --log-every 100 \
  --scan-cfg "$CFG" --ckpt /tmp/ck_byte.pt \
  --metrics $O/runs/mambabyte-small.json --ref-json $O/runs/ref_mambabyte-small.json --hf-check > $O/runs/mambabyte-small.log 2>&1
wait $PD
cp $O/m/*/config.json $O/runs/ 2>/dev/null
for k in mambabyte-small drafter-small; do cp $O/m/$k/config.json $O/runs/config_$k.json; mv $O/m/$k/model.safetensors $O/$k.safetensors; done
rm -rf $O/m
tar -C $O -czf $O/runs.tgz runs && rm -rf $O/runs/*.pt
grep -v "^step .*[1-9]00 |" $O/runs/mambabyte-small.log | tail -25
grep -v "^step .*[1-9]00 |" $O/runs/drafter-small.log | tail -25
rm -rf $O/runs
ls -la $O
