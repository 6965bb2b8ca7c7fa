#!/bin/bash
# Trains models/drafter-small (the shipped run: 1 H200 GPU, 440 s of training).
# usage: tools/train/run_drafter.sh DATA_DIR OUT_FOLDER RUN_FOLDER
D=$1; M=$2; R=$3
export PYTHONUNBUFFERED=1
mkdir -p "$R"
python3 tools/train/train.py --kind token --data "$D" \
  --tokenizer models/drafter-small/tokenizer.model --out "$M" \
  --d-model 320 --n-layer 4 --steps 8000 --time-budget ${TD:-440} --warmup 300 --lr 2.5e-3 \
  --tokens-per-step 65536 --seq-min 1024 --seq-max 2048 --seq-quant 256 --val-every 500 --log-every 100 \
  --scan-cfg '{"T_FWD":16,"BD_FWD":16,"W_FWD":4,"T_BWD":16,"BD_BWD":16,"W_BWD":4}' --ckpt /tmp/ck_drafter.pt \
  --metrics "$R/drafter-small.json" --ref-json "$R/ref_drafter-small.json" --hf-check
