#!/bin/sh
# Writes deploy/nginx/mambabyte.conf.in to stdout with its ports filled in:
#   deploy/nginx/render.sh LISTEN DAEMON...
# LISTEN: what nginx listens on (8080, 127.0.0.1:8080, ...); each DAEMON: host:port of one
# mambabyte daemon. A daemon that fails once (refused, timed out, 502-504) rests for 10 s.
set -e
if [ $# -lt 2 ]; then
    echo "usage: $0 LISTEN DAEMON..." >&2
    exit 2
fi
listen=$1
shift
servers=""
for d in "$@"; do
    case $d in
    *:[0-9]*) ;;
    *)
        echo "$0: $d: want host:port" >&2
        exit 2
        ;;
    esac
    servers="$servers    server $d max_fails=1 fail_timeout=10s;
"
done
awk -v listen="$listen" -v servers="$servers" '
    /^ *@SERVERS@$/ { printf "%s", servers; next }
    { gsub(/@LISTEN@/, listen); print }
' "$(dirname "$0")/mambabyte.conf.in"
