#!/bin/sh
# Installs the Debian packages that building, serving and testing need, if any is missing.
# Shared by `make run`, `make test` and CI; does nothing when everything is there.
set -e
PKGS="build-essential clang libclang-rt-14-dev libmicrohttpd-dev libcjson-dev libsentencepiece-dev sentencepiece libcurl4-openssl-dev python3 xz-utils"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
