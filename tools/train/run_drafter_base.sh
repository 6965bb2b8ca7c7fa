#!/bin/bash
# A drafter for mambabyte-base (issue 12) on one H200: DS seconds of the byte model's greedy
# continuations of train prompts (distill.py), then TD seconds of training drafter-small on them
# mixed with the train split (train.py --init: drafter-small's shape and tokenizer). Measure the
# result with tools/train/accept.py. RUN_FOLDER keeps the distilled text and the checkpoint.
# INIT is the drafter to start from (drafter-small; the drafter of mambabyte-base run 2 started
# from run 1's, see bench/RESULTS.md). NL: the drafter's layers (4; fewer take INIT's first NL:
# issue 12 asks for a forward of at most 1/6 of the byte model's step, drafter-small's is 0.21).
# usage: [DS=s] [TD=s] [LR=x] [WU=steps] [INIT=dir] [NL=n] run_drafter_base.sh BYTE_MODEL DATA OUT RUN
B=$1; D=$2; M=$3; R=$4
set -o pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$R/init"
[ -f "$D/distill.txt" ] || python3 tools/train/distill.py --model "$B" --data "$D" \
  --out "$D/distill.txt" --streams 4096 --prompt-bytes 64-512 --bytes 512 --seconds "${DS:-240}" |
  tee "$R/distill.log"
I=${INIT:-models/drafter-small}
cp "$I/model.safetensors" "$I/config.json" "$R/init/"
python3 tools/train/train.py --kind token --data "$D" \
  --train-files distill.txt,books_train_1.txt.xz,books_train_2.txt.xz \
  --tokenizer "$I/tokenizer.model" --out "$M" --init "$R/init" \
  --d-model 320 --n-layer "${NL:-4}" --steps 100000 --time-budget "${TD:-240}" --warmup "${WU:-100}" \
  --lr "${LR:-1e-3}" --tokens-per-step 65536 --seq-min 1024 --seq-max 2048 --seq-quant 256 \
  --val-every 0 --log-every 200 --scan-impl cuda --ckpt "$R/ck.pt" --resume \
  ${STOP:+--stop-after "$STOP"} --metrics "$R/drafter.json" --ref-json "$R/ref_drafter-base.json" 2>&1 |
  tee -a "$R/drafter.log"
