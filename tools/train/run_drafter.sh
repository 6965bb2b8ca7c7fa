#!/bin/bash
# Trains models/drafter-small (the shipped run: 4 H200 GPUs, data parallel, 300 s of training,
# the CUDA scan kernel). usage: tools/train/run_drafter.sh DATA_DIR OUT_FOLDER RUN_FOLDER [NGPU]
D=$1; M=$2; R=$3; NG=${4:-$(nvidia-smi -L | wc -l)}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
mkdir -p "$R"
CHECK=; [ -f "$D/valid_ids_cli.npy" ] && CHECK="--check-ids $D/valid_ids_cli.npy"
torchrun --standalone --nproc_per_node=$NG tools/train/train.py --kind token --data "$D" \
  --tokenizer models/drafter-small/tokenizer.model --out "$M" \
  --d-model 320 --n-layer 4 --steps 20000 --time-budget ${TD:-300} --warmup 300 --lr 2.5e-3 \
  --tokens-per-step $((32768 * NG)) --seq-min 1024 --seq-max 2048 --seq-quant 256 --val-every 1000 --log-every 100 \
  --scan-impl cuda --ckpt /tmp/ck_drafter.pt $CHECK \
  --metrics "$R/drafter-small.json" --ref-json "$R/ref_drafter-small.json" --hf-check 2>&1 | tee "$R/drafter-small.log"
