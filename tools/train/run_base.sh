#!/bin/bash
# Trains mambabyte-base (issue 12) on one H200: d_model 384 x 24 layers, the CUDA scan. A device
# call lasts at most 10 minutes, so a run goes in calls: STOP=seconds makes a call pause (checkpoint
# in RUN_FOLDER, the weights so far exported to OUT_FOLDER) and the next call resumes it on the same
# schedule; TB is the whole run's seconds of training. INIT_FOLDER starts from an exported model
# with a fresh optimizer (how a run continues in a later session). TF names the train files (default
# both halves), WU the warm-up steps, LR the peak learning rate, DO the dropout on every block's
# output (train.py --dropout; default none), DM and NL another width and depth (default 384 x 24),
# SEED the seed of the windows drawn and of the dropout masks (default 1: a continuation with the
# default draws the windows of the run it continues, in the same order), CONV the fast path's conv
# (train.py --conv-impl: op, the default, or inline, as runs A-E had it).
# usage: [STOP=s] [TB=s] [LR=x] [WU=n] [DO=p] [SEED=n] [CONV=c] [DM=d NL=n] [TF=a.xz,b.xz] run_base.sh DATA OUT_FOLDER RUN_FOLDER [INIT]
D=$1; M=$2; R=$3; I=$4
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$R"
python3 tools/train/train.py --kind byte --data "$D" ${TF:+--train-files "$TF"} --out "$M" \
  --d-model "${DM:-384}" --n-layer "${NL:-24}" --steps 100000 --time-budget "${TB:-1400}" --warmup "${WU:-300}" \
  --lr "${LR:-2e-3}" --tokens-per-step 131072 --seq-min 2048 --seq-max 8192 --seq-quant 1024 \
  --val-every 1000 --log-every 100 --scan-impl cuda --ckpt "$R/ck.pt" --resume \
  ${STOP:+--stop-after "$STOP"} ${I:+--init "$I"} ${DO:+--dropout "$DO"} ${SEED:+--seed "$SEED"} \
  ${CONV:+--conv-impl "$CONV"} --metrics "$R/mambabyte-base.json" \
  --ref-json "$R/ref_mambabyte-base.json" --hf-check 2>&1 | tee -a "$R/mambabyte-base.log"
