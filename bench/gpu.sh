#!/bin/sh
# GPU benchmark (bench/bench_gpu.cu) on the bundled model and random bf16 models of the issue's
# shapes: 21M (d_model 512 x 12 layers), the paper's 354M (d_model 1024 x 53 layers) and 974M
# (d_model 1792 x 48 layers).
# Usage: bench/gpu.sh   (after make build/rel/bench_gpu; needs python3 with numpy)
set -e
cd "$(dirname "$0")/.."
[ -f build/bench-21m-bf16/model.safetensors ] ||
    python3 tools/random_model.py build/bench-21m-bf16 --d-model 512 --layers 12 --dtype bf16
[ -f build/bench-354m-bf16/model.safetensors ] ||
    python3 tools/random_model.py build/bench-354m-bf16 --d-model 1024 --layers 53 --dtype bf16
[ -f build/bench-974m-bf16/model.safetensors ] ||
    python3 tools/random_model.py build/bench-974m-bf16 --d-model 1792 --layers 48 --dtype bf16
build/rel/bench_gpu models/mambabyte-small build/bench-21m-bf16 build/bench-354m-bf16 \
    build/bench-974m-bf16
echo
echo "== the same with the persistent step kernel for forwards of up to 32 tokens (MB_CUDA_STEP=1)"
MB_CUDA_STEP=1 build/rel/bench_gpu models/mambabyte-small build/bench-21m-bf16 build/bench-354m-bf16 |
    grep -v -e "^batch invariance" -e "^  T="
