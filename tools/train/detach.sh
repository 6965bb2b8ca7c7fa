#!/bin/bash
# Training runs that outlive a device call: the machine keeps a process started with setsid while
# it stays warm (30 s after a call, 30 minutes held at most), so one run can span calls without
# pausing. From the repository root of the call's working tree:
#
#   detach.sh start RUN SECONDS CMD...  copies tools/ to RUN/src (the next call replaces the working
#                                       tree; give CMD absolute paths), starts CMD there detached
#                                       (output RUN/detached.log, process RUN/detached.pid, exit
#                                       status RUN/detached.rc), then waits as below
#   detach.sh wait RUN SECONDS          until CMD has ended or SECONDS have passed, printing the log's
#                                       last line each minute; exits with CMD's status once it has
#                                       ended, 3 while it runs, 4 if it died without a status
#   detach.sh fetch FILE OUT            FILE into OUT in parts of 15.5 MB (files back from the
#                                       machine are at most 16 MiB each): cat OUT/NAME.part-* here
set -e
usage() {
    sed -n 2,14p "$0"
    exit 2
}
[ $# -ge 3 ] || usage
cmd=$1
shift
alive() { [ -f "$1/detached.pid" ] && kill -0 "$(cat "$1/detached.pid")" 2>/dev/null; }
case $cmd in
start)
    [ $# -ge 3 ] || usage
    run=$(mkdir -p "$1" && cd "$1" && pwd) secs=$2
    shift 2
    if alive "$run"; then
        echo "detach.sh: a run is already going in $run (pid $(cat "$run/detached.pid"))" >&2
        exit 1
    fi
    rm -rf "$run/src" "$run/detached.rc" "$run/detached.pid"
    mkdir -p "$run/src"
    cp -r tools "$run/src/"
    # the detached shell writes its own pid: setsid forks when it leads a process group, so $! here
    # would name a process that has already exited
    (cd "$run/src" && setsid nohup bash -c 'echo $$ > "$0/detached.pid"; "$@"; echo $? > "$0/detached.rc"' \
        "$run" "$@" >"$run/detached.log" 2>&1 </dev/null &)
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$run/detached.pid" ] && break; sleep 0.5; done
    exec "$0" wait "$run" "$secs"
    ;;
wait)
    run=$1 secs=$2
    end=$((SECONDS + secs))
    next=$((SECONDS + 60))
    while [ ! -f "$run/detached.rc" ] && alive "$run" && [ $SECONDS -lt $end ]; do
        sleep 5
        if [ $SECONDS -ge $next ]; then
            tail -n 1 "$run/detached.log" 2>/dev/null | cut -c1-200
            next=$((SECONDS + 60))
        fi
    done
    if [ -f "$run/detached.rc" ]; then
        tail -n 20 "$run/detached.log"
        rc=$(cat "$run/detached.rc")
        echo "ended with status $rc"
        exit "$rc"
    fi
    tail -n 3 "$run/detached.log" 2>/dev/null
    if alive "$run"; then
        echo "still running"
        exit 3
    fi
    echo "died without a status"
    exit 4
    ;;
fetch)
    mkdir -p "$2"
    split -b 15500000 "$1" "$2/$(basename "$1").part-"
    ls -l "$2"
    ;;
*)
    usage
    ;;
esac
