"""Triton selective scan (Mamba-1) with forward and backward, for training.

Layout: x, dt, z (batch, L, E) with any strides; B, C (batch, L, N) with any strides;
A (E, N) float32 (negative), D and dt_bias (E,) float32. See scan_ref.py for the maths.

Forward: one program per (block of BD channels, batch row). The state s[BD, N] stays in registers
for the whole time loop. Time goes in chunks of T steps: a chunk's inputs are loaded as tiles, the
chunk's states come from an associative scan of the affine maps s -> a*s + b along time, started
from the carried state, and the chunk's last state is carried on. The state at the start of each
chunk is written out (the checkpoints, float32).

Backward: the same programs walk the chunks in reverse. Each chunk recomputes its states from its
checkpoint (a scan of the inputs shifted by one step gives s_{t-1}), the adjoint g_t = dL/ds_t comes
from a reverse scan g_t = exp(delta_{t+1} A) g_{t+1} + C_t dy'_t carried across chunks in registers,
and every input gradient is formed from s_{t-1}, s_t and g_t. dB and dC sum over channels across
programs (per-block partials summed by the caller); dA and dD are written per batch row and summed by the caller.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _affine(a1, b1, a2, b2):
    # compose s -> a1 s + b1 (earlier) then s -> a2 s + b2 (later)
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(v):
    return tl.where(v > 20.0, v, tl.where(v < -15.0, tl.exp(v), tl.log(1.0 + tl.exp(v))))


@triton.jit
def _fwd_kernel(x_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, y_ptr, ck_ptr, s0_ptr, sT_ptr,
                L, E, NCH,
                sxb, sxl, sxd, sdb, sdl, sdd, szb, szl, szd,
                sBb, sBl, sBn, sCb, sCl, sCn, syb, syl, syd,
                HAS_Z: tl.constexpr, HAS_S0: tl.constexpr, STORE_CK: tl.constexpr, STORE_ST: tl.constexpr,
                T: tl.constexpr, BD: tl.constexpr, N: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ot = tl.arange(0, T)
    od = pid_d * BD + tl.arange(0, BD)
    on = tl.arange(0, N)
    dm = od < E
    dn = od[:, None] * N + on[None, :]
    A = tl.load(A_ptr + dn, mask=dm[:, None], other=0.0)
    Dv = tl.load(D_ptr + od, mask=dm, other=0.0)
    bias = tl.load(bias_ptr + od, mask=dm, other=0.0)
    if HAS_S0:
        s = tl.load(s0_ptr + b * E * N + dn, mask=dm[:, None], other=0.0)
    else:
        s = tl.zeros([BD, N], dtype=tl.float32)
    last = (ot == T - 1)[:, None, None]
    for c in range(0, NCH):
        if STORE_CK:
            tl.store(ck_ptr + (b * NCH + c) * E * N + dn, s, mask=dm[:, None])
        tt = c * T + ot
        tm = tt < L
        m2 = tm[:, None] & dm[None, :]
        x = tl.load(x_ptr + b * sxb + tt[:, None] * sxl + od[None, :] * sxd, mask=m2, other=0.0).to(tl.float32)
        dr = tl.load(dt_ptr + b * sdb + tt[:, None] * sdl + od[None, :] * sdd, mask=m2, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b * sBb + tt[:, None] * sBl + on[None, :] * sBn, mask=tm[:, None], other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + b * sCb + tt[:, None] * sCl + on[None, :] * sCn, mask=tm[:, None], other=0.0).to(tl.float32)
        dl = tl.where(m2, _softplus(dr + bias[None, :]), 0.0)
        a = tl.exp(dl[:, :, None] * A[None, :, :])
        u = (dl * x)[:, :, None] * Bt[:, None, :]
        ca, cb = tl.associative_scan((a, u), axis=0, combine_fn=_affine)
        st = ca * s[None, :, :] + cb
        y = tl.sum(st * Ct[:, None, :], axis=2) + Dv[None, :] * x
        if HAS_Z:
            z = tl.load(z_ptr + b * szb + tt[:, None] * szl + od[None, :] * szd, mask=m2, other=0.0).to(tl.float32)
            y = y * z * tl.sigmoid(z)
        tl.store(y_ptr + b * syb + tt[:, None] * syl + od[None, :] * syd, y.to(y_ptr.dtype.element_ty), mask=m2)
        s = tl.sum(tl.where(last, st, 0.0), axis=0)
    if STORE_ST:
        tl.store(sT_ptr + b * E * N + dn, s, mask=dm[:, None])


@triton.jit
def _bwd_kernel(x_ptr, dt_ptr, z_ptr, B_ptr, C_ptr, A_ptr, D_ptr, bias_ptr, ck_ptr, dy_ptr,
                dx_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr,
                L, E, NCH, NBLK,
                sxb, sxl, sxd, sdb, sdl, sdd, szb, szl, szd,
                sBb, sBl, sBn, sCb, sCl, sCn, syb, syl, syd,
                HAS_Z: tl.constexpr, T: tl.constexpr, BD: tl.constexpr, N: tl.constexpr):
    # dx, ddt, dz are contiguous (batch, L, E); dB, dC are per-channel-block partials
    # (batch, NBLK, L, N) float32 that the caller sums over the blocks;
    # dA (batch, E, N) and dD (batch, E) float32 partials.
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ot = tl.arange(0, T)
    od = pid_d * BD + tl.arange(0, BD)
    on = tl.arange(0, N)
    dm = od < E
    dn = od[:, None] * N + on[None, :]
    A = tl.load(A_ptr + dn, mask=dm[:, None], other=0.0)
    Dv = tl.load(D_ptr + od, mask=dm, other=0.0)
    bias = tl.load(bias_ptr + od, mask=dm, other=0.0)
    g = tl.zeros([BD, N], dtype=tl.float32)        # adjoint at the first step of the next chunk
    dA_acc = tl.zeros([BD, N], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    first = (ot == 0)[:, None, None]
    for cc in range(0, NCH):
        c = NCH - 1 - cc
        tt = c * T + ot
        tm = tt < L
        m2 = tm[:, None] & dm[None, :]
        xo = b * sxb + od[None, :] * sxd
        do = b * sdb + od[None, :] * sdd
        # inputs at t
        x = tl.load(x_ptr + xo + tt[:, None] * sxl, mask=m2, other=0.0).to(tl.float32)
        dr = tl.load(dt_ptr + do + tt[:, None] * sdl, mask=m2, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b * sBb + tt[:, None] * sBl + on[None, :] * sBn, mask=tm[:, None], other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + b * sCb + tt[:, None] * sCl + on[None, :] * sCn, mask=tm[:, None], other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * syb + tt[:, None] * syl + od[None, :] * syd, mask=m2, other=0.0).to(tl.float32)
        v = dr + bias[None, :]
        dl = tl.where(m2, _softplus(v), 0.0)
        # inputs at t-1 inside this chunk (identity map at the chunk's first step)
        tp = tt - 1
        mp = (ot >= 1) & tm
        mp2 = mp[:, None] & dm[None, :]
        xp = tl.load(x_ptr + xo + tp[:, None] * sxl, mask=mp2, other=0.0).to(tl.float32)
        drp = tl.load(dt_ptr + do + tp[:, None] * sdl, mask=mp2, other=0.0).to(tl.float32)
        Bp = tl.load(B_ptr + b * sBb + tp[:, None] * sBl + on[None, :] * sBn, mask=mp[:, None], other=0.0).to(tl.float32)
        dlp = tl.where(mp2, _softplus(drp + bias[None, :]), 0.0)
        s0 = tl.load(ck_ptr + (b * NCH + c) * E * N + dn, mask=dm[:, None], other=0.0)
        ap = tl.exp(dlp[:, :, None] * A[None, :, :])
        up = (dlp * xp)[:, :, None] * Bp[:, None, :]
        ca, cb = tl.associative_scan((ap, up), axis=0, combine_fn=_affine)
        sprev = ca * s0[None, :, :] + cb                       # s_{t-1}
        a = tl.exp(dl[:, :, None] * A[None, :, :])
        st = a * sprev + (dl * x)[:, :, None] * Bt[:, None, :]  # s_t
        ypre = tl.sum(st * Ct[:, None, :], axis=2) + Dv[None, :] * x
        if HAS_Z:
            z = tl.load(z_ptr + b * szb + tt[:, None] * szl + od[None, :] * szd, mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(z)
            dyp = dy * z * sz
            dz = dy * ypre * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + b * L * E + tt[:, None] * E + od[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
        else:
            dyp = dy
        # adjoint: g_t = a_{t+1} g_{t+1} + C_t dyp_t, reversed scan; a_{t+1} of the chunk's last step
        # belongs to the next chunk (or is irrelevant at the end, where the carried g is 0)
        tn = tt + 1
        mn = tn < L
        mn2 = mn[:, None] & dm[None, :]
        drn = tl.load(dt_ptr + do + tn[:, None] * sdl, mask=mn2, other=0.0).to(tl.float32)
        dln = tl.where(mn2, _softplus(drn + bias[None, :]), 0.0)
        an = tl.exp(dln[:, :, None] * A[None, :, :])
        h = Ct[:, None, :] * dyp[:, :, None]
        # reversed scan: the carry composes the later steps' maps first, then the step's own,
        # so gb_i is the recurrence started from 0 at the chunk end and ga_i the product of a's
        ga, gb = tl.associative_scan((an, h), axis=0, combine_fn=_affine, reverse=True)
        gt = gb + ga * g[None, :, :]
        # gradients
        gsa = gt * sprev * a
        gB = tl.sum(gt * Bt[:, None, :], axis=2)
        ddl = tl.sum(gsa * A[None, :, :], axis=2) + x * gB
        dA_acc += tl.sum(gsa * dl[:, :, None], axis=0)
        dD_acc += tl.sum(dyp * x, axis=0)
        dx = dyp * Dv[None, :] + dl * gB
        dBt = tl.sum(gt * (dl * x)[:, :, None], axis=1)
        dCt = tl.sum(st * dyp[:, :, None], axis=1)
        ddt = ddl * tl.where(v > 20.0, 1.0, tl.sigmoid(v))
        ddt = tl.where(m2, ddt, 0.0)
        tl.store(dx_ptr + b * L * E + tt[:, None] * E + od[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)
        tl.store(ddt_ptr + b * L * E + tt[:, None] * E + od[None, :], ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        nm = tm[:, None] & (on[None, :] < N)
        pofs = (b * NBLK + pid_d) * L * N + tt[:, None] * N + on[None, :]
        tl.store(dB_ptr + pofs, dBt, mask=nm)
        tl.store(dC_ptr + pofs, dCt, mask=nm)
        g = tl.sum(tl.where(first, gt, 0.0), axis=0)
    tl.store(dA_ptr + b * E * N + dn, dA_acc, mask=dm[:, None])
    tl.store(dD_ptr + b * E + od, dD_acc, mask=dm)


CFG = dict(T_FWD=16, BD_FWD=16, W_FWD=4, T_BWD=16, BD_BWD=8, W_BWD=4)


def n_chunks(L):
    """Checkpoints the forward stores for a sequence of L steps (works on torch.compile's SymInts)."""
    return (L + CFG["T_FWD"] - 1) // CFG["T_FWD"]


def scan_forward(x, dt, A, B, C, D, z, dt_bias, s0=None, store_ck=True, return_state=False, out_dtype=None):
    bsz, L, E = x.shape
    N = A.shape[1]
    T, BD, W = CFG["T_FWD"], CFG["BD_FWD"], CFG["W_FWD"]
    nch = triton.cdiv(L, T)
    y = torch.empty((bsz, L, E), device=x.device, dtype=out_dtype or x.dtype)
    ck = torch.empty((bsz, nch, E, N), device=x.device, dtype=torch.float32) if store_ck else y
    sT = torch.empty((bsz, E, N), device=x.device, dtype=torch.float32) if return_state else y
    A = A.float().contiguous(); D = D.float().contiguous(); dt_bias = dt_bias.float().contiguous()
    s0c = s0.float().contiguous() if s0 is not None else y
    zz = z if z is not None else x
    grid = (triton.cdiv(E, BD), bsz)
    _fwd_kernel[grid](x, dt, zz, B, C, A, D, dt_bias, y, ck, s0c, sT, L, E, nch,
                      *x.stride(), *dt.stride(), *zz.stride(), *B.stride(), *C.stride(), *y.stride(),
                      HAS_Z=z is not None, HAS_S0=s0 is not None, STORE_CK=store_ck, STORE_ST=return_state,
                      T=T, BD=BD, N=N, num_warps=W)
    return y, (ck if store_ck else None), (sT if return_state else None)


def scan_backward(dy, x, dt, A, B, C, D, z, dt_bias, ck):
    bsz, L, E = x.shape
    N = A.shape[1]
    T, BD, W = CFG["T_BWD"], CFG["BD_BWD"], CFG["W_BWD"]
    if CFG["T_FWD"] != T:
        raise ValueError("forward and backward chunk lengths must match (checkpoints)")
    nch = triton.cdiv(L, T)
    dx = torch.empty((bsz, L, E), device=x.device, dtype=x.dtype)
    ddt = torch.empty((bsz, L, E), device=x.device, dtype=dt.dtype)
    dz = torch.empty((bsz, L, E), device=x.device, dtype=z.dtype) if z is not None else dx
    nblk = triton.cdiv(E, BD)
    dB = torch.empty((bsz, nblk, L, N), device=x.device, dtype=torch.float32)
    dC = torch.empty((bsz, nblk, L, N), device=x.device, dtype=torch.float32)
    dA = torch.empty((bsz, E, N), device=x.device, dtype=torch.float32)
    dD = torch.empty((bsz, E), device=x.device, dtype=torch.float32)
    A = A.float().contiguous(); Dc = D.float().contiguous(); bias = dt_bias.float().contiguous()
    zz = z if z is not None else x
    grid = (nblk, bsz)
    _bwd_kernel[grid](x, dt, zz, B, C, A, Dc, bias, ck, dy, dx, ddt, dz, dB, dC, dA, dD, L, E, nch, nblk,
                      *x.stride(), *dt.stride(), *zz.stride(), *B.stride(), *C.stride(), *dy.stride(),
                      HAS_Z=z is not None, T=T, BD=BD, N=N, num_warps=W)
    return dx, ddt, dA.sum(0), dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype), dD.sum(0), (dz if z is not None else None), ddt.float().sum((0, 1))


def differentiable(fwd, bwd):
    """selective_scan(x, dt, A, B, C, D, z, dt_bias) differentiable in every input, from a kernel
    module's scan_forward (storing checkpoints) and scan_backward (shared by scan_cuda.py)."""
    class SelectiveScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, dt, A, B, C, D, z, dt_bias):
            y, ck, _ = fwd(x, dt, A, B, C, D, z, dt_bias)
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, ck)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, dt, A, B, C, D, z, dt_bias, ck = ctx.saved_tensors
            dx, ddt, dA, dB, dC, dD, dz, dbias = bwd(dy.contiguous(), x, dt, A, B, C, D, z, dt_bias, ck)
            return dx, ddt, dA.to(A.dtype), dB, dC, dD.to(D.dtype), dz, dbias.to(dt_bias.dtype)

    return lambda x, dt, A, B, C, D, z, dt_bias: SelectiveScan.apply(x, dt, A, B, C, D, z, dt_bias)


selective_scan = differentiable(scan_forward, scan_backward)
selective_scan.__doc__ = "y = selective scan (see module doc). Differentiable in every input."
