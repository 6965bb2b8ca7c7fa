"""A Mamba block's causal depthwise conv and SiLU as a PyTorch custom operator (torch.library), the
fused alternative to model.block_fast's shifted multiply-adds (train.py --conv-impl op):

  mambabyte::conv_silu(x, w, b) -> u = silu(b + sum_k w[:, k] x[t-K+1+k]), x (b, L, E), w (E, K)
  mambabyte::conv_silu_bwd(du, x, w, b) -> (dx, dw, db)

u and dx in x's type, dw and db float32, the arithmetic float32. On CUDA tensors the op calls
conv_cuda.py's kernels (which recompute c = the pre-activation in the backward instead of keeping
it); on CPU tensors it runs the same maths in torch, the backward in closed form: what test_fast.py
checks against autograd of the plain path, and what test_conv_cuda.py checks the kernels against.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


def pre_activation(x, w, b):
    """c = b + sum_k w[:, k] x[t-K+1+k] (zeros before the row's start), in float32 where w and b are
    (a bf16 x is promoted): model.block_fast's inline conv, and the order the kernels sum in."""
    K, L = w.shape[1], x.shape[1]
    xp = F.pad(x, (0, 0, K - 1, 0))
    c = b + xp[:, :L] * w[:, 0]
    for k in range(1, K):
        c = c + xp[:, k:k + L] * w[:, k]
    return c


def conv_silu_bwd_torch(du, x, w, b):
    """The backward in closed form: g = du silu'(c), dx[t] = sum_k w[:, k] g[t+K-1-k],
    dw[:, k] = sum g[t] x[t-K+1+k], db = sum g."""
    K, L = w.shape[1], x.shape[1]
    w = w.float()
    c = pre_activation(x, w, b.float())
    s = torch.sigmoid(c)
    g = du.float() * s * (1 + c * (1 - s))
    gp = F.pad(g, (0, 0, 0, K - 1))
    dx = sum(gp[:, K - 1 - k:K - 1 - k + L] * w[:, k] for k in range(K))
    xp = F.pad(x.float(), (0, 0, K - 1, 0))
    dw = torch.stack([(g * xp[:, k:k + L]).sum((0, 1)) for k in range(K)], -1)
    return dx.to(x.dtype), dw, g.sum((0, 1))


@torch.library.custom_op("mambabyte::conv_silu", mutates_args=())
def conv_silu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    if x.is_cuda:
        import conv_cuda
        return conv_cuda.conv_forward(x, w, b)
    return F.silu(pre_activation(x, w.float(), b.float())).to(x.dtype)


@conv_silu.register_fake
def _(x, w, b):
    return x.new_empty(x.shape)


@torch.library.custom_op("mambabyte::conv_silu_bwd", mutates_args=())
def conv_silu_bwd(du: Tensor, x: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if x.is_cuda:
        import conv_cuda
        return conv_cuda.conv_backward(du, x, w, b)
    return conv_silu_bwd_torch(du, x, w, b)


@conv_silu_bwd.register_fake
def _(du, x, w, b):
    return x.new_empty(x.shape), w.new_empty(w.shape, dtype=torch.float32), b.new_empty(b.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, du):
    x, w, b = ctx.saved_tensors
    dx, dw, db = conv_silu_bwd(du, x, w, b)
    return dx, dw.to(w.dtype), db.to(b.dtype)


conv_silu.register_autograd(_backward, setup_context=_setup_context)
