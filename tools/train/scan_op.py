"""The selective scan as a PyTorch custom operator (torch.library), so that torch.compile sees one
opaque node with known output shapes instead of graph-breaking on the kernel's ctypes call.

  mambabyte::scan_fwd(x, dt, A, B, C, D, z, dt_bias, kernel) -> (y, checkpoints)
  mambabyte::scan_bwd(dy, x, dt, A, B, C, D, z, dt_bias, checkpoints, kernel) -> 8 gradients

kernel names the kernel module (scan_cuda or scan_triton: same interface). On CUDA tensors the op
calls its scan_forward / scan_backward; on CPU tensors it runs the float64 reference (scan_ref.py),
which keeps no checkpoints (an empty tensor) and recomputes in the backward: that is what the CPU
test of the fast block (test_fast.py) runs. The layout and maths are those of scan_ref.py.
"""
import importlib

import torch
from torch import Tensor

import scan_ref


def _n_chunks(x, kernel):
    return importlib.import_module(kernel).n_chunks(x.shape[1]) if x.is_cuda else 0


@torch.library.custom_op("mambabyte::scan_fwd", mutates_args=())
def scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor, dt_bias: Tensor,
             kernel: str) -> tuple[Tensor, Tensor]:
    if x.is_cuda:
        y, ck, _ = importlib.import_module(kernel).scan_forward(x, dt, A, B, C, D, z, dt_bias)
        return y, ck
    cpu = lambda t: t.detach().double().numpy()
    y, _ = scan_ref.scan_fwd(*(cpu(t) for t in (x, dt, A, B, C, D, z, dt_bias)))
    bsz, L, E = x.shape
    return torch.from_numpy(y).to(x.dtype), x.new_empty((bsz, 0, E, A.shape[1]), dtype=torch.float32)


@scan_fwd.register_fake
def _(x, dt, A, B, C, D, z, dt_bias, kernel):
    bsz, L, E = x.shape
    return x.new_empty((bsz, L, E)), x.new_empty((bsz, _n_chunks(x, kernel), E, A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("mambabyte::scan_bwd", mutates_args=())
def scan_bwd(dy: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, z: Tensor,
             dt_bias: Tensor, ck: Tensor, kernel: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                 Tensor, Tensor]:
    """(dx, ddt, dA, dB, dC, dD, dz, ddt_bias): dA, dD, ddt_bias float32, the others in their input's dtype."""
    if x.is_cuda:
        return tuple(importlib.import_module(kernel).scan_backward(dy.contiguous(), x, dt, A, B, C, D, z, dt_bias, ck))
    cpu = lambda t: t.detach().double().numpy()
    g = scan_ref.scan_bwd(*(cpu(t) for t in (dy, x, dt, A, B, C, D, z, dt_bias)))
    like = dict(x=x, dt=dt, A=A.float(), B=B, C=C, D=D.float(), z=z, dt_bias=dt_bias.float())
    return tuple(torch.from_numpy(g[k]).to(t.dtype) for k, t in like.items())


@scan_bwd.register_fake
def _(dy, x, dt, A, B, C, D, z, dt_bias, ck, kernel):
    f32 = torch.float32
    return (x.new_empty(x.shape), dt.new_empty(dt.shape), A.new_empty(A.shape, dtype=f32), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(D.shape, dtype=f32), z.new_empty(z.shape),
            dt_bias.new_empty(dt_bias.shape, dtype=f32))


def _setup_context(ctx, inputs, output):
    *tensors, kernel = inputs
    ctx.save_for_backward(*tensors, output[1])
    ctx.kernel = kernel
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _dck):
    x, dt, A, B, C, D, z, dt_bias, ck = ctx.saved_tensors
    dx, ddt, dA, dB, dC, dD, dz, dbias = scan_bwd(dy, x, dt, A, B, C, D, z, dt_bias, ck, ctx.kernel)
    return dx, ddt, dA.to(A.dtype), dB, dC, dD.to(D.dtype), dz, dbias.to(dt_bias.dtype), None


scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan(x, dt, A, B, C, D, z, dt_bias, kernel="scan_cuda"):
    """y = selective scan (scan_ref.py's maths) through the custom op; differentiable in every input."""
    return scan_fwd(x, dt, A, B, C, D, z, dt_bias, kernel)[0]
