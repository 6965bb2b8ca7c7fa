"""Builds the trainer's CUDA libraries with nvcc into the build cache: scan_cuda.cu's, named by the
GPU architecture, the build options (CH, BWD_OCC, BWD_RED) and a hash of the source, and
conv_cuda.cu's (no options). scan_cuda.py and conv_cuda.py load theirs through library(); on a
machine without a GPU

  python3 tools/train/scan_build.py DIR [--tests] [--src scan_cuda.cu]

builds them ahead for sm_90 (the scan for the trainer's option set; --tests: also the four that
test_scan_triton.py and bench_trainer.sh use), so that a device call given MB_SCAN_CACHE=DIR
compiles nothing. Needs nvcc only (no torch).
"""
import argparse
import hashlib
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scan_cuda.cu")
CONV_SRC = os.path.join(os.path.dirname(SRC), "conv_cuda.cu")
TRAINER = (8, 512, 1)  # (CH, BWD_OCC, BWD_RED) as scan_cuda.CFG has them
TESTS = ((16, 512, 1), (8, 0, 1), (8, 512, 0), (8, 0, 0))


def library(src, arch, ch=None, occ=None, red=None, cache=None):
    """The path of src's library for arch and these options (a scan's; none for the conv) in cache
    (default $MB_SCAN_CACHE or ~/.cache/mambabyte), built first where it is missing."""
    cache = cache or os.environ.get("MB_SCAN_CACHE", os.path.expanduser("~/.cache/mambabyte"))
    digest = hashlib.sha256(open(src, "rb").read()).hexdigest()[:16]
    opts = [] if ch is None else [f"-DCH={ch}", f"-DBWD_OCC={occ}", f"-DBWD_RED={red}"]
    name = f"conv-{arch}" if ch is None else f"scan-{arch}-ch{ch}-occ{occ}-red{red}"
    so = os.path.join(cache, f"lib{name}-{digest}.so")
    if not os.path.exists(so):
        os.makedirs(cache, exist_ok=True)
        nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
        tmp = f"{so}.{os.getpid()}.tmp"
        subprocess.run([nvcc if os.path.exists(nvcc) else "nvcc", "-O3", f"-arch={arch}", "-shared",
                        "-Xcompiler", "-fPIC", *opts, "-o", tmp, src], check=True)
        os.replace(tmp, so)
    return so


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--tests", action="store_true")
    ap.add_argument("--src", default=SRC)
    args = ap.parse_args()
    builds = [(args.src, o) for o in (TRAINER,) + (TESTS if args.tests else ())] + [(CONV_SRC, ())]
    with ThreadPoolExecutor(2) as ex:
        for so in ex.map(lambda b: library(b[0], "sm_90", *b[1], cache=args.dir), builds):
            print(so)


if __name__ == "__main__":
    main()
