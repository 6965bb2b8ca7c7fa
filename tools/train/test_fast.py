"""The fast block (model.block_fast: shifted-add conv, the scan as the custom op of scan_op.py)
against the plain MambaBlock path on the CPU in float32: loss and every parameter's gradient,
eager and through torch.compile, with and without dropout, with the conv inline and as conv_op.py's
custom op (its closed-form backward), plus torch.library.opcheck of both ops (fake shapes, autograd).
The op runs the float64 reference on the CPU, the plain path the float32 torch scan.

  python3 tools/train/test_fast.py            (CPU; ~1-3 min, most of it compiling)
"""
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conv_op  # noqa: E402
import model as M  # noqa: E402
import scan_op  # noqa: E402

TOL = 2e-5


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def loss_and_grads(m, ids, **kw):
    m.zero_grad(set_to_none=True)
    logits = m(ids[:, :-1], **kw)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    return loss.item(), logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def worst_difference(ref, got):
    """The largest relative difference over the loss, the logits and every parameter's gradient."""
    (l0, y0, g0), (l1, y1, g1) = ref, got
    errs = {"loss": abs(l1 - l0) / abs(l0), "logits": rel(y1, y0)}
    errs.update({f"grad {n}": rel(g1[n], g0[n]) for n in g0})
    worst = max(errs, key=errs.get)
    return errs[worst], f"{errs[worst]:.2e} ({worst}) over {len(errs)} quantities"


def compare(name, ref, got):
    err, what = worst_difference(ref, got)
    print(f"{'ok' if err < TOL else 'FAIL'} {name}: loss {got[0]:.6f} vs {ref[0]:.6f}, worst relative difference "
          f"{what}", flush=True)
    return err < TOL


def check_op():
    g = torch.Generator().manual_seed(3)
    bsz, L, E, N = 2, 9, 6, 4
    r = lambda *s: torch.randn(*s, generator=g)
    args = (r(bsz, L, E).requires_grad_(), (r(bsz, L, E) * 0.5 - 1).requires_grad_(),
            (-torch.exp(r(E, N) * 0.5)).requires_grad_(), r(bsz, L, N).requires_grad_(),
            r(bsz, L, N).requires_grad_(), r(E).requires_grad_(), r(bsz, L, E).requires_grad_(),
            (r(E) * 0.5).requires_grad_(), "scan_cuda")
    ok = True
    for op, a in ((scan_op.scan_fwd, args), (conv_op.conv_silu, (r(bsz, L, E)[:, :, :5].requires_grad_(),
                                                               r(5, 4).requires_grad_(), r(5).requires_grad_()))):
        res = torch.library.opcheck(op, a)
        good = all(v == "SUCCESS" for v in res.values())
        ok &= good
        print(f"{'ok' if good else 'FAIL'} opcheck {op}: {res}", flush=True)
    return ok


def check_dropout(m, ids, ref):
    """--dropout: both paths draw the same masks from the same seed (eager), the masks change the
    result in training mode, and eval mode (evaluation, export) never drops."""
    def seeded(seed, **kw):
        torch.manual_seed(seed)
        return loss_and_grads(m, ids, **kw)

    m.dropout = 0.3
    ref_d = seeded(5, scan="torch")
    ok = compare("block_fast with dropout 0.3, eager", ref_d, seeded(5, fast=M.block_fast))
    err, what = worst_difference(ref, ref_d)
    ok &= err > 100 * TOL
    print(f"{'ok' if err > 100 * TOL else 'FAIL'} control: dropout 0.3 in training mode differs by {what}")
    # compiled, the masks come from another generator: the graph must hold the dropout
    # (fullgraph, as train.py compiles it) and still drop
    got = seeded(5, fast=M.compile_block())
    err, what = worst_difference(ref, got)
    drops = math.isfinite(got[0]) and err > 100 * TOL
    ok &= drops
    print(f"{'ok' if drops else 'FAIL'} block_fast with dropout 0.3, torch.compile(fullgraph): loss {got[0]:.6f} "
          f"(eager's masks {ref_d[0]:.6f}), differs from no dropout by {what}")
    m.eval()
    err, what = worst_difference(ref, seeded(6, scan="torch"))
    ok &= err == 0
    print(f"{'ok' if err == 0 else 'FAIL'} dropout 0.3 in eval mode: worst relative difference {what}")
    m.train()
    m.dropout = 0.0
    return ok


def main():
    torch.manual_seed(0)
    cfg = M.MambaConfig(vocab_size=64, d_model=32, n_layer=2, d_state=4, expand=2)
    m = M.MambaLM(cfg).float()
    with torch.no_grad():  # away from the init's ones and zeros, so every term is exercised
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, cfg.vocab_size, (2, 21))
    ref = loss_and_grads(m, ids, scan="torch")
    ok = check_op()
    M.CONV = "inline"
    ok &= compare("block_fast, eager", ref, loss_and_grads(m, ids, fast=M.block_fast))
    ok &= compare("block_fast, torch.compile", ref, loss_and_grads(m, ids, fast=M.compile_block()))
    M.CONV = "op"
    ok &= compare("block_fast, the conv op, eager", ref, loss_and_grads(m, ids, fast=M.block_fast))
    ok &= compare("block_fast, the conv op, torch.compile", ref, loss_and_grads(m, ids, fast=M.compile_block()))
    # the comparison must catch a block that is off by one step in time
    shifted = lambda h, *w, **kw: M.block_fast(F.pad(h, (0, 0, 1, 0))[:, :-1], *w, **kw)
    err, what = worst_difference(ref, loss_and_grads(m, ids, fast=shifted))
    ok &= err > 100 * TOL
    print(f"{'ok' if err > 100 * TOL else 'FAIL'} control: block_fast one step late differs by {what}")
    ok &= check_dropout(m, ids, ref)
    print("test_fast: all ok" if ok else "test_fast: FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
