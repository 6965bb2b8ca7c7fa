#!/bin/bash
# One GPU call: kernel test, kernel timing, short end-to-end runs of both trainers (throughput,
# export, evaluation, transformers check). usage: tools/train/gpu_check.sh DATA_DIR OUT_DIR
D=${1:-.gpu}; O=${2:-$OUT}
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, triton, transformers, sentencepiece, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'spm', sentencepiece.__version__, 'numpy', numpy.__version__)"
timeout 150 python3 tools/train/test_scan_triton.py 2>&1 | tee $O/test_scan_gpu.log | cut -c1-160
timeout 120 python3 tools/train/bench_scan.py 16 8192 1024 2>&1 | tee $O/bench_scan.log
C="--data $D --train-files books_train_1.txt.xz --log-every 10 --val-every 0"
timeout 150 python3 tools/train/train.py --kind byte $C --out /tmp/e2e_byte --d-model 512 --n-layer 4 --steps 80 --warmup 20 \
  --metrics $O/e2e_byte.json --ref-json $O/ref_byte.json --hf-check 2>&1 | tee $O/e2e_byte.log
timeout 60 python3 tools/train/train.py --kind byte $C --out /tmp/b2 --d-model 384 --n-layer 7 --steps 60 --bench 60 2>&1 | tail -4
timeout 150 python3 tools/train/train.py --kind token $C --tokenizer models/drafter-small/tokenizer.model --out /tmp/e2e_tok \
  --d-model 256 --n-layer 4 --steps 80 --warmup 20 --tokens-per-step 65536 --seq-min 1024 --seq-max 2048 --seq-quant 512 \
  --check-ids $D/valid_ids_cli.npy --metrics $O/e2e_tok.json --ref-json $O/ref_tok.json --hf-check 2>&1 | tee $O/e2e_tok.log
echo done
