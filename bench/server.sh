#!/bin/sh
# Server throughput on this machine: starts `mambabyte serve` on a model (default: the bundled
# byte model) on a loopback port, runs bench/loadgen.py at 1, 8 and 32 concurrent streaming
# clients, and stops it. Usage: bench/server.sh [MODEL_DIR] [seconds per level]
set -e
MODEL=${1:-models/mambabyte-small}
SECS=${2:-20}
PORT=${PORT:-18181}
make -s build/rel/mambabyte
build/rel/mambabyte serve -m "$MODEL" --port "$PORT" --log-requests false --slots 64 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 0.2; done
for c in 1 8 32; do
    python3 bench/loadgen.py --url "http://127.0.0.1:$PORT" --clients "$c" --seconds "$SECS" --max-tokens 128
done
