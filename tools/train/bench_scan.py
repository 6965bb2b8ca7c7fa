"""Time the selective scan kernels (forward, forward+backward) on a GPU for a few tile settings.
usage: python3 tools/train/bench_scan.py [batch L E [triton|cuda|both [BEST_JSON]]]"""
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan_cuda  # noqa: E402
import scan_triton  # noqa: E402


def main():
    bsz, L, E = (int(v) for v in sys.argv[1:4]) if len(sys.argv) > 3 else (16, 8192, 1024)
    N = 16
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)
    xz = r(bsz, L, 2 * E).bfloat16().requires_grad_(True)
    x, z = xz[..., :E], xz[..., E:]
    dt = (r(bsz, L, E) * 0.5 - 1).bfloat16().requires_grad_(True)
    dbc = r(bsz, L, 32 + 2 * N).bfloat16().requires_grad_(True)
    B, C = dbc[..., 32:32 + N], dbc[..., 32 + N:]
    A = (-torch.exp(r(E, N) * 0.5)).requires_grad_(True)
    D = r(E).requires_grad_(True)
    bias = (r(E) * 0.5).requires_grad_(True)
    dy = r(bsz, L, E).bfloat16()
    # bytes: read x dt z (bf16) + B C, write y; backward reads those + dy + checkpoints, writes 3 grads
    io_f = bsz * L * (4 * E * 2 + 2 * N * 2)
    print(f"batch {bsz} L {L} E {E} N {N}: forward moves >= {io_f / 1e9:.2f} GB")
    impl = sys.argv[4] if len(sys.argv) > 4 else "both"
    variants = [] if impl == "cuda" else [dict(T_FWD=16, BD_FWD=16, W_FWD=4, T_BWD=16, BD_BWD=8, W_BWD=4),
                dict(T_FWD=16, BD_FWD=32, W_FWD=4, T_BWD=16, BD_BWD=16, W_BWD=4),
                dict(T_FWD=16, BD_FWD=32, W_FWD=8, T_BWD=16, BD_BWD=16, W_BWD=8),
                dict(T_FWD=32, BD_FWD=16, W_FWD=4, T_BWD=32, BD_BWD=8, W_BWD=4),
                dict(T_FWD=32, BD_FWD=16, W_FWD=8, T_BWD=32, BD_BWD=8, W_BWD=8),
                dict(T_FWD=8, BD_FWD=32, W_FWD=4, T_BWD=8, BD_BWD=16, W_BWD=4),
                dict(T_FWD=16, BD_FWD=16, W_FWD=2, T_BWD=16, BD_BWD=8, W_BWD=2)]
    if impl == "both":  # the Triton kernel as the shipped runs used it
        variants = [dict(T_FWD=16, BD_FWD=16, W_FWD=4, T_BWD=16, BD_BWD=16, W_BWD=4)]
    variants = [(scan_triton, v) for v in variants]
    if impl != "triton":
        variants += [(scan_cuda, dict(BD_FWD=32, BD_BWD=32, CH=8, BWD_OCC=occ, BWD_RED=red))
                     for occ, red in ((0, 0), (512, 0), (512, 1), (0, 1))]
    res = []
    for mod, v in variants:
        mod.CFG.update(v)
        v = dict(impl=mod.__name__, **v)
        try:
            f = lambda: mod.selective_scan(x, dt, A, B, C, D, z, bias)

            def fb():
                y = mod.selective_scan(x, dt, A, B, C, D, z, bias)
                y.backward(dy)
            tf = triton.testing.do_bench(f, warmup=50, rep=300, return_mode="median")
            tfb = triton.testing.do_bench(fb, warmup=50, rep=400, return_mode="median")
        except Exception as e:  # noqa
            print(f"{v}: failed {e!r}"[:300])
            continue
        res.append((tfb, v))
        print(f"{v}: fwd {tf:.3f} ms ({io_f / tf / 1e6:.0f} GB/s), fwd+bwd {tfb:.3f} ms, "
              f"{bsz * L / tfb / 1e3:.1f} M positions/s fwd+bwd", flush=True)
    best = min(res, key=lambda t: t[0])
    print("best", best)
    if len(sys.argv) > 5:  # write the best setting of the CUDA kernel as JSON (train.py --scan-cfg)
        tb, v = min((r for r in res if r[1]["impl"] == "scan_cuda"), key=lambda t: t[0])
        with open(sys.argv[5], "w") as fh:
            json.dump({k: val for k, val in v.items() if k != "impl"}, fh, separators=(",", ":"))


if __name__ == "__main__":
    main()
