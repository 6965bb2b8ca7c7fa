#!/bin/sh
# Engine benchmark on this machine's CPU: a random MambaByte of the shape (d_model 512,
# 12 layers, d_state 16, expand 2, about 20M parameters) in float32 and bf16 weights, then the
# paper's 354M shape (d_model 1024, 53 layers) in bf16 and in q8 (MB_WEIGHTS=q8). Each figure is
# given for every CPU variant the machine runs (avx2, avx512, avx512bf16, avx512vnni), alternating
# rep by rep. Then bf16 against q8 weights in one process (the best variant), and the cost of a
# span of k = 1..16 bytes against a decode step for the bundled model and the 354M shape.
# Usage: bench/engine.sh [threads [variant,variant,...]]   (needs python3 with numpy for the
# random models; BENCH_354M=0 leaves out the 354M shape, a few minutes on 2 cores)
set -e
make -s build/rel/bench_engine
for dt in f32 bf16; do
    [ -f build/bench-model-$dt/model.safetensors ] ||
        python3 tools/random_model.py build/bench-model-$dt --dtype $dt
    build/rel/bench_engine build/bench-model-$dt "$@"
done
[ "${BENCH_354M:-1}" = 0 ] && exit 0
[ -f build/bench-354m-bf16/model.safetensors ] ||
    python3 tools/random_model.py build/bench-354m-bf16 --d-model 1024 --layers 53 --dtype bf16
build/rel/bench_engine build/bench-354m-bf16 "$@"
MB_WEIGHTS=q8 build/rel/bench_engine build/bench-354m-bf16 "$@"
build/rel/bench_engine build/bench-354m-bf16 "${1:-0}" "${2:-}" q8
for m in models/mambabyte-small build/bench-354m-bf16; do
    build/rel/bench_engine $m "${1:-0}" "${2:-}" spans
    MB_WEIGHTS=q8 build/rel/bench_engine $m "${1:-0}" "${2:-}" spans
done
