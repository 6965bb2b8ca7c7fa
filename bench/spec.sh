#!/bin/sh
# Speculative vs plain decoding with the bundled models on this machine's CPU: for a few prompts,
# plain decoding, the drafter at a few draft lengths, prompt lookup, and both; the median of 3
# runs of `mambabyte generate -n 400 --stats` (greedy) with the acceptance.
# usage: bench/spec.sh [BIN] [N_BYTES]
BIN=${1:-build/rel/mambabyte}
N=${2:-400}
M=models/mambabyte-small
D=models/drafter-small
median() { sort -n | sed -n 2p; }
for p in "It was a dark and stormy night" "CHAPTER I.

The" "\"I do not know,\" said she, \"what"; do
    echo "prompt: $(printf '%s' "$p" | head -c 40 | tr '\n' ' ')"
    for k in 0 2 3 4 6 lookup both; do
        case $k in
        0) a="" ;;
        lookup) a="--lookup 4" ;;
        both) a="--lookup 4 --draft $D --draft-bytes 4" ;;
        *) a="--draft $D --draft-bytes $k" ;;
        esac
        rates=""
        for r in 1 2 3; do
            # shellcheck disable=SC2086
            $BIN generate -m $M $a -p "$p" -n "$N" --stats 2>/tmp/spec_bench.$$ >/dev/null
            rates="$rates $(grep -o 'generated: [^;]*' /tmp/spec_bench.$$ | grep -o '([0-9.]* bytes/s)' | tr -d '(')"
            acc=$(grep -o '([0-9]* drafted by lookup).*' /tmp/spec_bench.$$)
        done
        med=$(printf '%s\n' $rates | grep -v bytes | median)
        case $k in 0) name=plain ;; lookup) name="lookup 4" ;; both) name="lookup+draft 4" ;; *) name="draft $k" ;; esac
        printf '  %-15s %8s bytes/s  %s\n' "$name" "$med" "$acc"
    done
done
rm -f /tmp/spec_bench.$$
