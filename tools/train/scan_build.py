"""Builds scan_cuda.cu's library with nvcc into the build cache, named by the GPU architecture, the
build options (CH, BWD_OCC, BWD_RED) and a hash of the source. scan_cuda.py loads its library
through library(); on a machine without a GPU

  python3 tools/train/scan_build.py DIR [--tests] [--src scan_cuda.cu]

builds it ahead for sm_90 (the trainer's option set; --tests: also the four that
test_scan_triton.py and bench_trainer.sh use), so that a device call given MB_SCAN_CACHE=DIR
compiles nothing. Needs nvcc only (no torch).
"""
import argparse
import hashlib
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scan_cuda.cu")
TRAINER = (8, 512, 1)  # (CH, BWD_OCC, BWD_RED) as scan_cuda.CFG has them
TESTS = ((16, 512, 1), (8, 0, 1), (8, 512, 0), (8, 0, 0))


def library(src, arch, ch, occ, red, cache=None):
    """The path of src's library for arch and these options in cache (default $MB_SCAN_CACHE or
    ~/.cache/mambabyte), built first where it is missing."""
    cache = cache or os.environ.get("MB_SCAN_CACHE", os.path.expanduser("~/.cache/mambabyte"))
    digest = hashlib.sha256(open(src, "rb").read()).hexdigest()[:16]
    so = os.path.join(cache, f"libscan-{arch}-ch{ch}-occ{occ}-red{red}-{digest}.so")
    if not os.path.exists(so):
        os.makedirs(cache, exist_ok=True)
        nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
        tmp = f"{so}.{os.getpid()}.tmp"
        subprocess.run([nvcc if os.path.exists(nvcc) else "nvcc", "-O3", f"-arch={arch}", "-shared",
                        "-Xcompiler", "-fPIC", f"-DCH={ch}", f"-DBWD_OCC={occ}", f"-DBWD_RED={red}", "-o", tmp,
                        src], check=True)
        os.replace(tmp, so)
    return so


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--tests", action="store_true")
    ap.add_argument("--src", default=SRC)
    args = ap.parse_args()
    sets = (TRAINER,) + (TESTS if args.tests else ())
    with ThreadPoolExecutor(2) as ex:
        for so in ex.map(lambda o: library(args.src, "sm_90", *o, cache=args.dir), sets):
            print(so)


if __name__ == "__main__":
    main()
