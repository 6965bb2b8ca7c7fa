"""The CUDA selective scan (scan_cuda.cu) for training: same maths, layout and interface as
scan_triton.py (selective_scan, scan_forward); forward and backward together about 3.5x faster on
an H200 (14.4 against 49.8 ms at batch 16, L 8192, E 1024: bench/RESULTS.md). d_state must be 16.

The library is built on first use by scan_build.py (nvcc from CUDA_HOME/bin or PATH) for the GPU's
architecture and cached under $MB_SCAN_CACHE (default ~/.cache/mambabyte) by a hash of the source
and the build options (CH, BWD_OCC, BWD_RED); scan_build.py also builds it ahead on a machine
without a GPU. $MB_SCAN_SRC names another source (an older kernel to compare).
It is called through ctypes on PyTorch's current stream; inputs with another stride than 1 along
the channel dimension (x, dt, z) or the state dimension (B, C) are copied first; other strides are
free. The kernel indexes within a row in 32 bits, so a row (L x its stride) must stay under 2^31.
"""
import ctypes
import os

import torch

import scan_build
from scan_triton import differentiable

# MB_SCAN_SRC builds another version of the kernel (bench_trainer.sh's baseline)
SRC = os.environ.get("MB_SCAN_SRC") or scan_build.SRC
# channels per block; steps per chunk, threads per SM the backward must fit and how it sums dB, dC
# over channels (build options, see scan_cuda.cu)
CFG = dict(BD_FWD=32, BD_BWD=32, CH=8, BWD_OCC=512, BWD_RED=1)
_libs = {}


class _Args(ctypes.Structure):
    _fields_ = ([(k, ctypes.c_void_p) for k in
                 "x dt z B C dy A D bias s0 y dx ddt dz ck sT dBp dCp dA dD dbias".split()] +
                [(k, ctypes.c_longlong) for k in "sxb sxl sdb sdl szb szl sBb sBl sCb sCl".split()] +
                [(k, ctypes.c_int) for k in "bsz L E nck nblk".split()])


def _load(ch, occ, red):
    if (ch, occ, red) in _libs:
        return _libs[ch, occ, red]
    major, minor = torch.cuda.get_device_capability()
    so = scan_build.library(SRC, f"sm_{major}{minor}", ch, occ, red)
    lib = ctypes.CDLL(so)
    lib.mb_scan.argtypes = [ctypes.POINTER(_Args), ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.mb_scan.restype = ctypes.c_int
    if lib.mb_scan_chunk() != ch:
        raise RuntimeError(f"{so}: built for another chunk length")
    _libs[ch, occ, red] = lib
    return lib


def _unit(t):
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _call(args, bwd, dtype, bd, device):
    lib = _load(CFG["CH"], CFG["BWD_OCC"], CFG["BWD_RED"])
    rc = lib.mb_scan(ctypes.byref(args), int(bwd), 0 if dtype == torch.float32 else 1, bd,
                     ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream))
    if rc:
        raise RuntimeError(f"scan_cuda: CUDA error {rc} in the {'backward' if bwd else 'forward'} kernel")


def _prep(x, dt, B, C, z):
    dtype = x.dtype if x.dtype in (torch.float32, torch.bfloat16) else torch.float32
    cv = lambda t: None if t is None else _unit(t if t.dtype == dtype else t.to(dtype))
    return dtype, cv(x), cv(dt), cv(B), cv(C), cv(z)


def _fill(a, x, dt, z, B, C):
    # the kernel's largest offsets into a row: L x an input's step stride, and the row's checkpoints
    # (n_chunks(L) x E x 16, more than the L x E of y, dy and the gradients)
    L, E = x.shape[1], x.shape[2]
    step = max(t.stride(1) for t in (x, dt, B, C) + ((z,) if z is not None else ()))
    if max(L * step, n_chunks(L) * E * 16) >= 2 ** 31:
        raise ValueError(f"scan_cuda: a row of {L} steps (stride {step}) x {E} channels is too long "
                         "for the kernel's 32-bit offsets")
    a.sxb, a.sxl = x.stride(0), x.stride(1)
    a.sdb, a.sdl = dt.stride(0), dt.stride(1)
    zz = z if z is not None else x
    a.szb, a.szl = zz.stride(0), zz.stride(1)
    a.sBb, a.sBl = B.stride(0), B.stride(1)
    a.sCb, a.sCl = C.stride(0), C.stride(1)


def n_chunks(L):
    """Checkpoints the forward stores for a sequence of L steps (works on torch.compile's SymInts)."""
    return (L + CFG["CH"] - 1) // CFG["CH"]


def scan_forward(x, dt, A, B, C, D, z, dt_bias, s0=None, store_ck=True, return_state=False, out_dtype=None):
    """y (b, L, E) in x's dtype; checkpoints (b, n_chunks(L), E, N) float32 when store_ck; final state."""
    bsz, L, E = x.shape
    N = A.shape[1]
    if N != 16:
        raise ValueError("scan_cuda needs d_state 16")
    dtype, x, dt, B, C, z = _prep(x, dt, B, C, z)
    nck = n_chunks(L)
    y = torch.empty((bsz, L, E), device=x.device, dtype=dtype)
    ck = torch.empty((bsz, nck, E, N), device=x.device, dtype=torch.float32) if store_ck else None
    sT = torch.empty((bsz, E, N), device=x.device, dtype=torch.float32) if return_state else None
    A, D, dt_bias = (t.float().contiguous() for t in (A, D, dt_bias))
    s0 = s0.float().contiguous() if s0 is not None else None
    a = _Args(x=_ptr(x), dt=_ptr(dt), z=_ptr(z), B=_ptr(B), C=_ptr(C), A=_ptr(A), D=_ptr(D), bias=_ptr(dt_bias),
              s0=_ptr(s0), y=_ptr(y), ck=_ptr(ck), sT=_ptr(sT), bsz=bsz, L=L, E=E, nck=nck, nblk=0)
    _fill(a, x, dt, z, B, C)
    _call(a, False, dtype, CFG["BD_FWD"], x.device)
    return (y if out_dtype is None else y.to(out_dtype)), ck, sT


def scan_backward(dy, x, dt, A, B, C, D, z, dt_bias, ck):
    bsz, L, E = x.shape
    N = A.shape[1]
    in_dtypes = (x.dtype, dt.dtype, B.dtype, C.dtype, z.dtype if z is not None else None)
    dtype, x, dt, B, C, z = _prep(x, dt, B, C, z)
    dy = dy.to(dtype).contiguous()
    bd = CFG["BD_BWD"]
    if ck.shape[1] != n_chunks(L):
        raise ValueError("checkpoints of another chunk length")
    nblk = (E + bd - 1) // bd
    dev = x.device
    dx = torch.empty((bsz, L, E), device=dev, dtype=dtype)
    ddt = torch.empty((bsz, L, E), device=dev, dtype=dtype)
    dz = torch.empty((bsz, L, E), device=dev, dtype=dtype) if z is not None else None
    dBp = torch.empty((bsz, nblk, L, N), device=dev, dtype=torch.float32)
    dCp = torch.empty((bsz, nblk, L, N), device=dev, dtype=torch.float32)
    dA = torch.empty((bsz, E, N), device=dev, dtype=torch.float32)
    dD = torch.empty((bsz, E), device=dev, dtype=torch.float32)
    dbias = torch.empty((bsz, E), device=dev, dtype=torch.float32)
    A, Dc, bias = (t.float().contiguous() for t in (A, D, dt_bias))
    a = _Args(x=_ptr(x), dt=_ptr(dt), z=_ptr(z), B=_ptr(B), C=_ptr(C), dy=_ptr(dy), A=_ptr(A), D=_ptr(Dc),
              bias=_ptr(bias), dx=_ptr(dx), ddt=_ptr(ddt), dz=_ptr(dz), ck=_ptr(ck), dBp=_ptr(dBp),
              dCp=_ptr(dCp), dA=_ptr(dA), dD=_ptr(dD), dbias=_ptr(dbias), bsz=bsz, L=L, E=E,
              nck=ck.shape[1], nblk=nblk)
    _fill(a, x, dt, z, B, C)
    _call(a, True, dtype, bd, dev)
    return (dx.to(in_dtypes[0]), ddt.to(in_dtypes[1]), dA.sum(0), dBp.sum(1).to(in_dtypes[2]),
            dCp.sum(1).to(in_dtypes[3]), dD.sum(0), dz.to(in_dtypes[4]) if dz is not None else None, dbias.sum(0))


selective_scan = differentiable(scan_forward, scan_backward)
selective_scan.__doc__ = "y = selective scan (see scan_ref.py for the maths). Differentiable in every input."
