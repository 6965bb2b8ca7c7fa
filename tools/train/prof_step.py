"""On a GPU: where one training step's time goes (issue 12's faster trainer). Runs train.py's step
(bf16 autocast, the compiled block with the CUDA scan, cross-entropy, clipping, fused AdamW) on
random bytes at a model shape, then profiles a few steps and prints the GPU time a step by kind of
kernel (the scan's forward and backward, matmuls, inductor's compiled glue, the optimizer, the rest)
and the costliest kernels, against the step's wall time.

usage: python3 tools/train/prof_step.py [--d-model 384] [--n-layer 24] [--bsz 16] [--seq 4096] [--steps 3]
                                       [--conv-impl op|inline]
"""
import argparse
import collections
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model as M  # noqa: E402

KINDS = (("scan forward", ("scan_fwd",)), ("scan backward", ("scan_bwd",)), ("conv op", ("conv_fwd", "conv_bwd")),
         ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "sm90_", "splitk")),
         ("compiled glue (triton)", ("triton_",)), ("optimizer", ("adam", "multi_tensor")))


def kind(name):
    low = name.lower()
    for k, keys in KINDS:
        if any(s in low for s in keys):
            return k
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-layer", type=int, default=24)
    ap.add_argument("--bsz", type=int, default=16)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--conv-impl", choices=["inline", "op"], default="op")
    args = ap.parse_args()
    M.KERNEL, M.CONV = "scan_cuda", args.conv_impl
    torch.backends.cuda.matmul.allow_tf32 = True
    m = M.MambaLM(M.MambaConfig(d_model=args.d_model, n_layer=args.n_layer)).cuda().train()
    fast = M.compile_block()
    opt = torch.optim.AdamW(m.param_groups(0.1), lr=1e-4, betas=(0.9, 0.95), fused=True)
    batch = torch.randint(0, 256, (args.bsz, args.seq + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(batch[:, :-1], fast=fast)
        loss = F.cross_entropy(logits.float().reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.time()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    wall = (time.time() - t0) / args.steps * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    by_kind, by_name = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            us = e.time_range.elapsed_us() / args.steps
            by_kind[kind(e.name)] += us
            by_name[e.name[:90]] += us
    busy = sum(by_kind.values()) / 1e3
    print(f"d_model {args.d_model} x {args.n_layer} layers, {args.bsz} x {args.seq} bytes a step, "
          f"conv {args.conv_impl}: {wall:.1f} ms a step unprofiled ({args.bsz * args.seq / wall / 1e3:.3f} MB/s), "
          f"GPU busy {busy:.1f} ms a step (profiled)")
    for k, us in by_kind.most_common():
        print(f"  {k:24s} {us / 1e3:8.2f} ms  {100 * us / 1e3 / busy:5.1f} %")
    print("costliest kernels (ms a step):")
    for n, us in by_name.most_common(25):
        print(f"  {us / 1e3:7.3f}  {kind(n):24s} {n}")


if __name__ == "__main__":
    main()
