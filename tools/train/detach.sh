#!/bin/bash
# Training runs that outlive a device call: the machine keeps a process started with setsid while
# it stays warm (30 s after a call, 30 minutes held at most), so one run can span calls without
# pausing. From the repository root of the call's working tree:
#
#   detach.sh start RUN SECONDS CMD...  copies tools/ to RUN/src (the next call replaces the working
#                                       tree), starts CMD there detached (output: RUN/detached.log;
#                                       its exit status: RUN/detached.rc), then waits as below
#   detach.sh wait RUN SECONDS          until CMD has ended or SECONDS have passed, printing the
#                                       log's last line each minute; exit 0 once ended, 3 if not yet
#   detach.sh fetch FILE OUT            FILE into OUT in parts of 15.5 MB (files back from the
#                                       machine are at most 16 MiB each): cat OUT/NAME.part-* here
set -e
cmd=$1
shift
case $cmd in
start)
    run=$1 secs=$2
    shift 2
    mkdir -p "$run/src"
    rm -f "$run/detached.rc"
    cp -r tools "$run/src/"
    (cd "$run/src" && setsid nohup bash -c '"$@"; echo $? > "$0/detached.rc"' "$run" "$@" \
        >"$run/detached.log" 2>&1 </dev/null &)
    exec "$0" wait "$run" "$secs"
    ;;
wait)
    run=$1 secs=$2
    end=$((SECONDS + secs))
    next=$((SECONDS + 60))
    until [ -f "$run/detached.rc" ] || [ $SECONDS -ge $end ]; do
        sleep 5
        if [ $SECONDS -ge $next ]; then
            tail -n 1 "$run/detached.log" 2>/dev/null | cut -c1-200
            next=$((SECONDS + 60))
        fi
    done
    if [ -f "$run/detached.rc" ]; then
        tail -n 20 "$run/detached.log"
        echo "ended with status $(cat "$run/detached.rc")"
        exit 0
    fi
    tail -n 3 "$run/detached.log"
    echo "still running"
    exit 3
    ;;
fetch)
    mkdir -p "$2"
    split -b 15500000 "$1" "$2/$(basename "$1").part-"
    ls -l "$2"
    ;;
*)
    sed -n 2,16p "$0"
    exit 2
    ;;
esac
