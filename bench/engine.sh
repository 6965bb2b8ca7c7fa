#!/bin/sh
# Engine benchmark on this machine's CPU: a random MambaByte of the shape (d_model 512,
# 12 layers, d_state 16, expand 2, about 20M parameters) in float32 and bf16 weights.
# Usage: bench/engine.sh [threads]   (needs python3 with numpy for the random model)
set -e
make -s build/rel/bench_engine
for dt in f32 bf16; do
    [ -f build/bench-model-$dt/model.safetensors ] ||
        python3 tools/random_model.py build/bench-model-$dt --dtype $dt
    build/rel/bench_engine build/bench-model-$dt "$@"
done
