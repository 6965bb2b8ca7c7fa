#!/usr/bin/env python3
"""--device on every subcommand: auto says on stderr which device it chose and why; cuda without a
usable GPU is one clear error and a non-zero exit (with one, it runs there); a bad value is a
usage error; the server's device setting likewise. Runs $MB_BIN (default build/rel/mambabyte)."""
import os
import re
import subprocess
import sys

BIN = os.environ.get("MB_BIN", "build/rel/mambabyte")
MODEL = "tests/fixtures/tiny-byte-tied"
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, timeout=300)


def main():
    gen = ["generate", "-m", MODEL, "-p", "abc", "-n", "4"]
    r = run(*gen, "--device", "auto")
    err = r.stderr.decode()
    m = re.search(r"mambabyte generate: device (\S+) .*: (auto: .*)", err)
    check(r.returncode == 0 and m, f"auto says which device and why: {err!r}")
    on_gpu = bool(m) and m.group(1).startswith("cuda")
    r = run(*gen, "--device", "cpu")
    check(r.returncode == 0 and b"device" not in r.stderr, "cpu by name runs quietly")
    for cmd in [gen, ["eval", "-m", MODEL, "--text", "README.md"],
                ["logits", "-m", MODEL, "--input", "README.md", "--out", "/dev/null"]]:
        r = run(*cmd, "--device", "cuda")
        err = r.stderr.decode()
        if on_gpu:
            check(r.returncode == 0, f"{cmd[0]} --device cuda on a GPU: {err!r}")
        else:
            why = m.group(2).split(": ", 2)[-1] if m else ""
            check(r.returncode != 0 and err.count("\n") == 1 and "device cuda:0" in err and why in err,
                  f"{cmd[0]} --device cuda without a GPU: one clear error, got {r.returncode} {err!r}")
        r = run(*cmd, "--device", "tpu")
        check(r.returncode == 2 and b"--device takes auto, cpu, cuda or cuda:N" in r.stderr,
              f"{cmd[0]} --device tpu: {r.returncode} {r.stderr!r}")
    r = run("eval", "-m", MODEL, "--text", "README.md", "--device", "cpu")
    check(r.returncode == 0 and b"\ndevice cpu\n" in r.stdout, f"eval reports its device: {r.stdout!r}")
    r = run("serve", "-m", MODEL, "--port", "0", "--device", "tpu")
    check(r.returncode != 0 and b"device: 'tpu' is not auto, cpu, cuda or cuda:N" in r.stderr,
          f"serve --device tpu: {r.returncode} {r.stderr!r}")
    if not on_gpu:
        r = run("serve", "-m", MODEL, "--port", "0", "--device", "cuda")
        check(r.returncode != 0 and b"device cuda:0:" in r.stderr, f"serve --device cuda: {r.stderr!r}")
    if failures:
        sys.exit(f"{len(failures)} failures")
    print("ok   test_device")


if __name__ == "__main__":
    main()
