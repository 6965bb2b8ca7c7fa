"""A Mamba block's causal depthwise conv and SiLU (conv_cuda.cu) for training, forward and backward:
u = silu(b + sum_k w[:, k] x[t-K+1+k]) in float32, rounded once to x's type (float32 or bf16), the
maths of model.block_fast's shifted multiply-adds. d_conv (K) must be 4. The library is built and
cached by scan_build.py (as the scan's) and called through ctypes on PyTorch's current stream. x
may be a strided view with unit channel stride (a block's in_proj output); other layouts are
copied first.
"""
import ctypes

import torch

import scan_build

_lib = []


class _Args(ctypes.Structure):
    _fields_ = ([(k, ctypes.c_void_p) for k in "x du w bias u dx dwp dbp".split()] +
                [(k, ctypes.c_longlong) for k in ("sxb", "sxl")] +
                [(k, ctypes.c_int) for k in "bsz L E ntile".split()])


def _load():
    if not _lib:
        major, minor = torch.cuda.get_device_capability()
        lib = ctypes.CDLL(scan_build.library(scan_build.CONV_SRC, f"sm_{major}{minor}"))
        lib.mb_conv.argtypes = [ctypes.POINTER(_Args), ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.mb_conv.restype = ctypes.c_int
        _lib.append(lib)
    return _lib[0]


def _args(x, w, b):
    """x with unit channel stride in float32 or bf16, w (E, K) and b (E) float32, and the call's
    arguments so far."""
    lib = _load()
    if w.shape[1] != lib.mb_conv_k():
        raise ValueError(f"conv_cuda: d_conv {w.shape[1]}, the kernel is built for {lib.mb_conv_k()}")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"conv_cuda: x is {x.dtype}, the kernel takes float32 or bfloat16")
    if x.stride(-1) != 1:
        x = x.contiguous()
    w, b = w.float().contiguous(), b.float().contiguous()
    bsz, L, E = x.shape
    tile = lib.mb_conv_tile()
    a = _Args(x=x.data_ptr(), w=w.data_ptr(), bias=b.data_ptr(), sxb=x.stride(0), sxl=x.stride(1), bsz=bsz, L=L,
              E=E, ntile=(L + tile - 1) // tile)
    return x, w, b, a


def _call(a, bwd, x):
    with torch.cuda.device(x.device):
        rc = _load().mb_conv(ctypes.byref(a), int(bwd), int(x.dtype == torch.bfloat16),
                             ctypes.c_void_p(torch.cuda.current_stream(x.device).cuda_stream))
    if rc:
        raise RuntimeError(f"conv_cuda: CUDA error {rc} in the {'backward' if bwd else 'forward'} kernel")


def conv_forward(x, w, b):
    """u (b, L, E) in x's type, contiguous."""
    x, w, b, a = _args(x, w, b)
    u = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    a.u = u.data_ptr()
    _call(a, False, x)
    return u


def conv_backward(du, x, w, b):
    """(dx in x's type, dw (E, K) float32, db (E) float32) from du, the gradient of u."""
    x, w, b, a = _args(x, w, b)
    du = du.to(x.dtype).contiguous()
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dwp = torch.empty((a.bsz * a.ntile, a.E, w.shape[1]), device=x.device, dtype=torch.float32)
    dbp = torch.empty((a.bsz * a.ntile, a.E), device=x.device, dtype=torch.float32)
    a.du, a.dx, a.dwp, a.dbp = du.data_ptr(), dx.data_ptr(), dwp.data_ptr(), dbp.data_ptr()
    _call(a, True, x)
    return dx, dwp.sum(0), dbp.sum(0)
