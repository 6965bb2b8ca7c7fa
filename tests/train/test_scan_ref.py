"""The float64 selective-scan reference (tools/train/scan_ref.py), which the Triton kernel is tested
against, checked here with numpy alone: the recurrence against the closed (quadratic) form, the
adjoint backward against central finite differences, and a state carried across a split."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "train"))
import scan_ref  # noqa: E402


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-300))


def test_forward_vs_quadratic():
    rng = np.random.default_rng(0)
    for gate in (True, False):
        c = scan_ref.random_case(rng, 2, 9, 5, 4, gate)
        c["dt"][0, 2, 1] = 30.0          # softplus branch v > 20
        y, _ = scan_ref.scan_fwd(**c)
        yq = scan_ref.scan_quadratic(**c)
        e = rel(y, yq)
        assert e < 1e-12, e
    print("ok forward == closed form")


def test_state_split():
    rng = np.random.default_rng(1)
    c = scan_ref.random_case(rng, 2, 11, 3, 4, True)
    y, sT = scan_ref.scan_fwd(**c)
    a = {k: (v[:, :6] if isinstance(v, np.ndarray) and v.ndim == 3 else v) for k, v in c.items()}
    b = {k: (v[:, 6:] if isinstance(v, np.ndarray) and v.ndim == 3 else v) for k, v in c.items()}
    ya, sa = scan_ref.scan_fwd(**a)
    yb, sb = scan_ref.scan_fwd(**b, s0=sa)
    assert rel(np.concatenate([ya, yb], 1), y) < 1e-13 and rel(sb, sT) < 1e-13
    print("ok state carried across a split")


def test_backward_vs_finite_differences():
    rng = np.random.default_rng(2)
    for gate in (True, False):
        c = scan_ref.random_case(rng, 2, 6, 3, 4, gate)
        c["dt"][1, 3, 2] = 21.0
        dy = rng.standard_normal(c["x"].shape)
        g = scan_ref.scan_bwd(dy, **c)
        f = lambda cc: float((scan_ref.scan_fwd(**cc)[0] * dy).sum())
        for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"):
            if c[k] is None:
                assert g[k] is None
                continue
            num = np.zeros_like(c[k])
            it = np.nditer(c[k], flags=["multi_index"])
            for _ in it:
                i = it.multi_index
                cp = {kk: (vv.copy() if isinstance(vv, np.ndarray) else vv) for kk, vv in c.items()}
                cm = {kk: (vv.copy() if isinstance(vv, np.ndarray) else vv) for kk, vv in c.items()}
                h = 1e-6 * max(1.0, abs(c[k][i]))
                cp[k][i] += h
                cm[k][i] -= h
                num[i] = (f(cp) - f(cm)) / (2 * h)
            e = rel(g[k], num)
            assert e < 1e-7, (k, gate, e)
    print("ok backward == finite differences for x dt A B C D z dt_bias")


if __name__ == "__main__":
    test_forward_vs_quadratic()
    test_state_split()
    test_backward_vs_finite_differences()
    print("test_scan_ref: all ok")
