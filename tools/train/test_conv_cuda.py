"""On a GPU: conv_cuda.cu's conv + SiLU, forward and backward, against float64 autograd of the inline
maths (conv_op.pre_activation, then SiLU) on the same inputs: float32 and bf16 x, contiguous and
strided (either half of a wider tensor, as a block's in_proj output: x and z), lengths under d_conv,
across the kernel's tile edges (64 steps) and with channel counts off its block width (128); bf16
u and dx element by element within one bf16 ulp of the exact value (float32 arithmetic, one
rounding); each backward is run twice and must repeat bit for bit. The last case is the trainer's
shape, timed.

usage: python3 tools/train/test_conv_cuda.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_cuda  # noqa: E402
import conv_op  # noqa: E402

# (batch, L, E, layout, dtype); layout 0: contiguous, 1 and 2: the first and second half of (b, L, 2E)
CASES = ((1, 1, 5, 0, torch.float32), (2, 3, 8, 1, torch.float32), (3, 40, 24, 2, torch.float32),
         (2, 257, 130, 1, torch.float32), (2, 300, 768, 2, torch.bfloat16),
         (4, 1000, 200, 0, torch.bfloat16), (16, 4096, 768, 1, torch.bfloat16))


def rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def within_ulp(got, exact):
    """Whether bf16 values are each within one bf16 ulp of the exact ones (8 bits of mantissa), with
    a floor of 1e-6 of the largest for values that cancel to near zero."""
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 7)
    return bool(((got.double() - exact).abs() <= ulp + 1e-6 * exact.abs().max()).all())


def check(bsz, L, E, layout, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    x = r(bsz, L, 2 * E if layout else E).to(dtype)[..., (layout == 2) * E:][..., :E]
    w, b, du = r(E, 4) * 0.5, r(E) * 0.5, r(bsz, L, E).to(dtype)
    u = conv_cuda.conv_forward(x, w, b)
    dx, dw, db = conv_cuda.conv_backward(du, x, w, b)
    again = conv_cuda.conv_backward(du, x, w, b)
    same = all(torch.equal(p, q) for p, q in zip((dx, dw, db), again))
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    u64 = F.silu(conv_op.pre_activation(x64, w64, b64))
    u64.backward(du.double())
    errs = dict(u=rel(u, u64), dx=rel(dx, x64.grad), dw=rel(dw, w64.grad), db=rel(db, b64.grad))
    # bf16: u and dx are rounded to 8 bits of mantissa; dw and db are float32 sums
    tol = dict(u=5e-3, dx=5e-3, dw=1e-4, db=1e-4) if dtype == torch.bfloat16 else dict(u=1e-5, dx=1e-5, dw=1e-5,
                                                                                       db=1e-5)
    ulps = dtype != torch.bfloat16 or (within_ulp(u, u64.detach()) and within_ulp(dx, x64.grad))
    ok = same and ulps and all(errs[k] <= tol[k] for k in errs) and u.dtype == dx.dtype == dtype
    print(f"{'ok' if ok else 'FAIL'} b={bsz} L={L} E={E} layout={layout} {dtype}: "
          + " ".join(f"{k}={v:.1e}" for k, v in errs.items()) + f" repeat={'same' if same else 'DIFFERS'}"
          + ("" if ulps else " (bf16 u or dx beyond one ulp)"), flush=True)
    return ok, x, w, b, du


def timed(fn, n=20):
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    fn()
    ev[0].record()
    for _ in range(n):
        fn()
    ev[1].record()
    torch.cuda.synchronize()
    return ev[0].elapsed_time(ev[1]) / n


def main():
    ok = True
    for i, case in enumerate(CASES):
        good, x, w, b, du = check(*case, seed=i)
        ok &= good
    fwd = timed(lambda: conv_cuda.conv_forward(x, w, b))
    bwd = timed(lambda: conv_cuda.conv_backward(du, x, w, b))
    print(f"{tuple(x.shape)} bf16, strided: forward {fwd:.3f} ms, backward with the sums {bwd:.3f} ms")
    print("all ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
