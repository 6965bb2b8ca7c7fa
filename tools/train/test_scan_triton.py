"""The selective scan kernels against the float64 sequential reference (values and gradients of
x, dt, A, B, C, D, z, dt_bias) on small random cases.

Needs torch and triton. On a machine without a GPU run the Triton kernel through its interpreter:
    TRITON_INTERPRET=1 python3 tools/train/test_scan_triton.py
On a GPU:  python3 tools/train/test_scan_triton.py [--impl triton|cuda]   (cuda: scan_cuda.cu, via nvcc)
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan_ref  # noqa: E402

IMPL = sys.argv[sys.argv.index("--impl") + 1] if "--impl" in sys.argv else "triton"
scan_triton = __import__("scan_" + IMPL)  # the kernel under test (both modules share the interface)

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"


def rel(a, b):
    a = np.asarray(a, dtype=np.float64); b = np.asarray(b, dtype=np.float64)
    assert np.all(np.isfinite(a)), "non-finite values"
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(bsz, L, E, N, gate, strided, seed, dtype=torch.float32, tol=2e-5, cfg=None):
    if cfg:
        scan_triton.CFG.update(cfg)
    rng = np.random.default_rng(seed)
    case = scan_ref.random_case(rng, bsz, L, E, N, gate)
    if seed % 3 == 0:  # some steps in the softplus v > 20 branch and some very small steps
        case["dt"][0, : max(1, L // 5), 0] = 25.0
        case["dt"][-1, -1, -1] = -30.0
    dy = rng.standard_normal((bsz, L, E))

    def t(a, grad=True):
        return torch.tensor(a, dtype=torch.float32, device=DEV).requires_grad_(grad)

    if strided:
        # x, z as halves of one (b, L, 2E) tensor and B, C slices of one (b, L, R+2N) tensor,
        # as the model produces them
        xz = torch.tensor(np.concatenate([case["x"], case["z"] if gate else case["x"]], -1),
                          dtype=dtype, device=DEV).requires_grad_(True)
        x, z = xz[..., :E], (xz[..., E:] if gate else None)
        dbc = torch.tensor(np.concatenate([rng.standard_normal((bsz, L, 3)), case["B"], case["C"]], -1),
                           dtype=dtype, device=DEV).requires_grad_(True)
        Bm, Cm = dbc[..., 3:3 + N], dbc[..., 3 + N:]
        leaves = dict(xz=xz, dbc=dbc)
    else:
        x = t(case["x"]).to(dtype).detach().requires_grad_(True)
        z = t(case["z"]).to(dtype).detach().requires_grad_(True) if gate else None
        Bm = t(case["B"]).to(dtype).detach().requires_grad_(True)
        Cm = t(case["C"]).to(dtype).detach().requires_grad_(True)
        leaves = dict(x=x, B=Bm, C=Cm)
        if gate:
            leaves["z"] = z
    dt = t(case["dt"]).to(dtype).detach().requires_grad_(True)
    A = t(case["A"]); D = t(case["D"]); bias = t(case["dt_bias"])
    y = scan_triton.selective_scan(x, dt, A, Bm, Cm, D, z, bias)
    y.backward(torch.tensor(dy, dtype=y.dtype, device=DEV))

    # reference sees the same (possibly rounded) inputs
    def np_(a):
        return a.detach().float().cpu().numpy().astype(np.float64)
    ref_in = dict(x=np_(x), dt=np_(dt), A=np_(A), B=np_(Bm), C=np_(Cm), D=np_(D),
                  z=np_(z) if gate else None, dt_bias=np_(bias))
    yr, _ = scan_ref.scan_fwd(**ref_in)
    gr = scan_ref.scan_bwd(dy, **ref_in)
    errs = {"y": rel(np_(y), yr), "dt": rel(np_(dt.grad), gr["dt"]), "A": rel(np_(A.grad), gr["A"]),
            "D": rel(np_(D.grad), gr["D"]), "dt_bias": rel(np_(bias.grad), gr["dt_bias"])}
    if strided:
        gxz = np_(xz.grad); gdbc = np_(dbc.grad)
        errs["x"] = rel(gxz[..., :E], gr["x"])
        if gate:
            errs["z"] = rel(gxz[..., E:], gr["z"])
        errs["B"] = rel(gdbc[..., 3:3 + N], gr["B"]); errs["C"] = rel(gdbc[..., 3 + N:], gr["C"])
        assert np.all(gdbc[..., :3] == 0)
    else:
        errs["x"] = rel(np_(x.grad), gr["x"]); errs["B"] = rel(np_(Bm.grad), gr["B"])
        errs["C"] = rel(np_(Cm.grad), gr["C"])
        if gate:
            errs["z"] = rel(np_(z.grad), gr["z"])
    worst = max(errs.values())
    name = f"b={bsz} L={L} E={E} N={N} gate={gate} strided={strided} {str(dtype)[6:]} cfg={scan_triton.CFG}"
    print(f"{'ok ' if worst < tol else 'BAD'} {worst:.2e}  {name}  " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    return worst < tol


def check_state_io(seed=7):
    """Forward from a given state and returning the final state (used by chunked evaluation)."""
    rng = np.random.default_rng(seed)
    c = scan_ref.random_case(rng, 2, 37, 9, 16, True)
    tt = {k: torch.tensor(v, dtype=torch.float32, device=DEV) for k, v in c.items()}
    y_full, _ = scan_ref.scan_fwd(**c)
    ya, _, sa = scan_triton.scan_forward(*(tt[k][:, :20] if tt[k].dim() == 3 else tt[k] for k in
                                          ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")), return_state=True)
    yb, _, _ = scan_triton.scan_forward(*(tt[k][:, 20:] if tt[k].dim() == 3 else tt[k] for k in
                                          ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")), s0=sa)
    e = rel(torch.cat([ya, yb], 1).cpu().numpy(), y_full)
    print(f"{'ok ' if e < 2e-5 else 'BAD'} {e:.2e}  state in/out across a split at t=20")
    return e < 2e-5


def main():
    ok = True
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    cases = [(2, 7, 5, 4, True, False, 0), (2, 37, 9, 16, True, True, 1), (1, 16, 16, 16, False, False, 2),
             (3, 50, 20, 8, True, False, 3), (2, 33, 24, 16, False, True, 4)]
    if not interp:
        cases += [(4, 600, 72, 16, True, True, 5), (2, 2049, 40, 16, True, False, 6)]
    if IMPL == "cuda":  # d_state 16 only
        cases = [cs for cs in cases if cs[3] == 16]
    for cs in cases:
        ok &= check(*cs)
    if IMPL == "triton":
        ok &= check(2, 45, 20, 16, True, True, 9, cfg=dict(T_FWD=32, T_BWD=32, BD_FWD=8, BD_BWD=4))
        ok &= check(2, 45, 20, 16, True, True, 10, cfg=dict(T_FWD=8, T_BWD=8, BD_FWD=32, BD_BWD=16))
        scan_triton.CFG.update(T_FWD=16, T_BWD=16, BD_FWD=16, BD_BWD=8)
    else:
        ok &= check(2, 45, 20, 16, True, True, 9, cfg=dict(BD_FWD=16, BD_BWD=16, CH=16))
        ok &= check(2, 77, 70, 16, True, True, 10, cfg=dict(BD_FWD=32, BD_BWD=32, CH=8, BWD_OCC=0))
        ok &= check(2, 77, 70, 16, True, True, 14, cfg=dict(BD_FWD=32, BD_BWD=32, CH=8, BWD_OCC=512, BWD_RED=0))
        ok &= check(3, 40, 24, 16, False, False, 12, cfg=dict(BD_FWD=16, BD_BWD=32, CH=8))
        ok &= check(2, 300, 64, 16, True, True, 13, cfg=dict(BD_FWD=32, BD_BWD=16, CH=8), dtype=torch.bfloat16, tol=2e-2)
        scan_triton.CFG.update(BD_FWD=32, BD_BWD=32, CH=8, BWD_OCC=512, BWD_RED=1)
    ok &= check_state_io()
    if not interp:
        ok &= check(2, 300, 64, 16, True, True, 11, dtype=torch.bfloat16, tol=2e-2)
    print("all ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
