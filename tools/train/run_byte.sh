#!/bin/bash
# Trains models/mambabyte-small (the shipped run: 4 H200 GPUs, data parallel, 300 s of training,
# the CUDA scan kernel). usage: tools/train/run_byte.sh DATA_DIR OUT_FOLDER RUN_FOLDER [NGPU]
D=$1; M=$2; R=$3; NG=${4:-$(nvidia-smi -L | wc -l)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$R"
torchrun --standalone --nproc_per_node=$NG tools/train/train.py --kind byte --data "$D" --out "$M" \
  --d-model 512 --n-layer 6 --steps 6000 --time-budget ${TB:-300} --warmup 200 --lr 3e-3 \
  --tokens-per-step $((65536 * NG)) --seq-min 2048 --seq-max 8192 --seq-quant 1024 --val-every 1000 --log-every 100 \
  --scan-impl cuda --ckpt /tmp/ck_byte.pt \
  --metrics "$R/mambabyte-small.json" --ref-json "$R/ref_mambabyte-small.json" --hf-check 2>&1 | tee "$R/mambabyte-small.log"
