#!/bin/bash
# Second stage of models/mambabyte-small: continues the first stage's export (run_byte.sh) for 200 s
# on books_train_1 with a fresh optimizer, lr re-warmed to 1e-3 and cosine-decayed to 1e-4
# (2 H200 GPUs, data parallel).
# usage: tools/train/run_byte_finetune.sh DATA_DIR STAGE1_FOLDER OUT_FOLDER RUN_FOLDER [NGPU]
D=$1; I=$2; M=$3; R=$4; NG=${5:-$(nvidia-smi -L | wc -l)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$R"
torchrun --standalone --nproc_per_node=$NG tools/train/train.py --kind byte --data "$D" \
  --train-files books_train_1.txt.xz --init "$I" --out "$M" \
  --d-model 512 --n-layer 4 --steps 4000 --time-budget ${TB:-200} --warmup 50 --lr 1e-3 \
  --tokens-per-step 131072 --seq-min 2048 --seq-max 8192 --seq-quant 1024 --val-every 500 --log-every 100 \
  --scan-cfg '{"T_FWD":16,"BD_FWD":16,"W_FWD":4,"T_BWD":16,"BD_BWD":16,"W_BWD":4}' \
  --metrics "$R/mambabyte-small.json" --ref-json "$R/ref_mambabyte-small.json" --hf-check
