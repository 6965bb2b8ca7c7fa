"""Float64 sequential reference for the Mamba-1 selective scan (numpy only).

Layout (the one the trainer and the Triton kernel use):
    x, dt, z : (batch, L, E)      dt is the raw projection, before dt_bias and softplus
    B, C     : (batch, L, N)
    A        : (E, N)             A = -exp(A_log), negative
    D, dt_bias : (E,)
Maths (DESIGN.md "The maths"):
    delta = softplus(dt + dt_bias)            (softplus(v) = v when v > 20)
    s_t   = exp(delta_t A) * s_{t-1} + delta_t B_t x_t
    y_t   = (sum_n s_t[., n] C_t[n] + D x_t) * silu(z_t)
scan_fwd returns y and the final state; scan_bwd returns the gradient of sum(y * dy) with respect
to every input, computed by the reverse-time adjoint recurrence.
"""
import numpy as np


def softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _states(x, dt, A, B, C, D, dt_bias, s0=None):
    bsz, L, E = x.shape
    N = A.shape[1]
    delta = softplus(dt + dt_bias)
    s = np.zeros((bsz, E, N)) if s0 is None else np.array(s0, dtype=np.float64)
    S = np.zeros((bsz, L, E, N))
    ypre = np.zeros((bsz, L, E))
    for t in range(L):
        dA = np.exp(delta[:, t, :, None] * A[None])
        s = dA * s + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        S[:, t] = s
        ypre[:, t] = (s * C[:, t, None, :]).sum(-1) + D * x[:, t]
    return delta, S, ypre


def scan_fwd(x, dt, A, B, C, D, z, dt_bias, s0=None):
    """Returns (y, final_state). z may be None (no gate)."""
    args = [np.asarray(a, dtype=np.float64) for a in (x, dt, A, B, C, D, dt_bias)]
    x, dt, A, B, C, D, dt_bias = args
    _, S, ypre = _states(x, dt, A, B, C, D, dt_bias, s0)
    if z is None:
        return ypre, S[:, -1]
    z = np.asarray(z, dtype=np.float64)
    return ypre * z * sigmoid(z), S[:, -1]


def scan_bwd(dy, x, dt, A, B, C, D, z, dt_bias):
    """Gradients of sum(y * dy) (s0 = 0). Returns a dict with keys x dt A B C D z dt_bias."""
    f = lambda a: np.asarray(a, dtype=np.float64)
    dy, x, dt, A, B, C, D, dt_bias = map(f, (dy, x, dt, A, B, C, D, dt_bias))
    bsz, L, E = x.shape
    delta, S, ypre = _states(x, dt, A, B, C, D, dt_bias)
    if z is not None:
        z = f(z)
        sz = sigmoid(z)
        dyp = dy * z * sz                       # d/d ypre
        dz = dy * ypre * sz * (1.0 + z * (1.0 - sz))
    else:
        dyp, dz = dy, None
    g = np.zeros_like(S[:, 0])                  # dL/ds_t flowing back from t+1
    dx = np.zeros_like(x); ddelta = np.zeros_like(x)
    dB = np.zeros_like(B); dC = np.zeros_like(C)
    dA = np.zeros_like(A); dD = np.zeros_like(D)
    for t in range(L - 1, -1, -1):
        g = g + C[:, t, None, :] * dyp[:, t, :, None]
        dC[:, t] = (S[:, t] * dyp[:, t, :, None]).sum(1)
        dD += (dyp[:, t] * x[:, t]).sum(0)
        s_prev = S[:, t - 1] if t > 0 else np.zeros_like(g)
        eA = np.exp(delta[:, t, :, None] * A[None])
        gsa = g * s_prev * eA
        gB = (g * B[:, t, None, :]).sum(-1)
        ddelta[:, t] = (gsa * A[None]).sum(-1) + x[:, t] * gB
        dA += (gsa * delta[:, t, :, None]).sum(0)
        dx[:, t] = dyp[:, t] * D + delta[:, t] * gB
        dB[:, t] = (g * (delta[:, t] * x[:, t])[:, :, None]).sum(1)
        g = g * eA
    v = dt + dt_bias
    ddt = ddelta * np.where(v > 20.0, 1.0, sigmoid(v))
    return dict(x=dx, dt=ddt, A=dA, B=dB, C=dC, D=dD, z=dz, dt_bias=ddt.sum((0, 1)))


def scan_quadratic(x, dt, A, B, C, D, z, dt_bias):
    """The same function written without a recurrence (O(L^2)), as an independent check:
    y_t = sum_{u<=t} (sum_n C_t[n] exp(A[.,n] * sum_{u<v<=t} delta_v) B_u[n]) delta_u x_u + D x_t."""
    f = lambda a: np.asarray(a, dtype=np.float64)
    x, dt, A, B, C, D, dt_bias = map(f, (x, dt, A, B, C, D, dt_bias))
    delta = softplus(dt + dt_bias)
    cum = np.cumsum(delta, axis=1)              # (b, L, E)
    bsz, L, E = x.shape
    y = np.zeros((bsz, L, E))
    for t in range(L):
        for u in range(t + 1):
            decay = np.exp((cum[:, t] - cum[:, u])[:, :, None] * A[None])   # (b, E, N)
            y[:, t] += (decay * B[:, u, None, :] * C[:, t, None, :]).sum(-1) * delta[:, u] * x[:, u]
        y[:, t] += D * x[:, t]
    if z is not None:
        z = f(z)
        y = y * z * sigmoid(z)
    return y


def random_case(rng, bsz=2, L=7, E=5, N=4, gate=True):
    """Random inputs in the ranges a trained model sees."""
    return dict(
        x=rng.standard_normal((bsz, L, E)),
        dt=rng.standard_normal((bsz, L, E)) * 0.5 - 1.0,
        A=-np.exp(rng.standard_normal((E, N)) * 0.5),
        B=rng.standard_normal((bsz, L, N)),
        C=rng.standard_normal((bsz, L, N)),
        D=rng.standard_normal(E),
        z=rng.standard_normal((bsz, L, E)) if gate else None,
        dt_bias=rng.standard_normal(E) * 0.5,
    )
