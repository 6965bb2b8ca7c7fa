#!/bin/sh
# Installs the Debian packages that building, serving and testing need, if any is missing; with
# --test those only the tests use (nginx, YAML) and the Python packages (numpy, PyYAML,
# schemathesis, openai); with --bench gnuplot for the plots of `make bench-serve`. Shared by `make run`,
# `make test`, `make bench-serve` and CI; does nothing when everything is there. libcurl is the
# load client's (`mambabyte loadgen`).
set -e
PKGS="build-essential clang libclang-rt-14-dev python3-pip libmicrohttpd-dev libcjson-dev libsentencepiece-dev sentencepiece libcurl4-openssl-dev python3 xz-utils"
# make test-deploy: nginx in front of two daemons, YAML for the Kubernetes manifests
[ "$1" = --test ] && PKGS="$PKGS nginx python3-yaml"
[ "$1" = --bench ] && PKGS="$PKGS gnuplot-nox"
missing=""
for p in $PKGS; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
if [ "$1" = --test ] && ! python3 -c 'import numpy' 2>/dev/null; then
    echo "installing: numpy (pip)"
    python3 -m pip install -q numpy || python3 -m pip install -q --break-system-packages numpy
fi
# python3 may not be Debian's (a virtual environment): then PyYAML comes from pip too
if [ "$1" = --test ] && ! python3 -c 'import yaml' 2>/dev/null; then
    echo "installing: pyyaml (pip)"
    python3 -m pip install -q pyyaml || python3 -m pip install -q --break-system-packages pyyaml
fi
# tests/http/test_openapi.py: the property-based API fuzzer run against the live daemon
if [ "$1" = --test ] && ! command -v schemathesis >/dev/null 2>&1; then
    echo "installing: schemathesis (pip)"
    python3 -m pip install -q schemathesis || python3 -m pip install -q --break-system-packages schemathesis \
        || echo "schemathesis could not be installed: tests/http/test_openapi.py will skip its run"
fi
# tests/http/test_openai_client.py: the official OpenAI Python client against the live daemon
if [ "$1" = --test ] && ! python3 -c 'import openai' 2>/dev/null; then
    echo "installing: openai (pip)"
    python3 -m pip install -q openai || python3 -m pip install -q --break-system-packages openai \
        || echo "openai could not be installed: tests/http/test_openai_client.py will skip"
fi
