"""Mamba-1 language model for training (the maths of DESIGN.md, the layout of Hugging Face's
MambaForCausalLM: RMSNorm, residual in float32, tied head)."""
import importlib
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

import conv_op
import scan_op


KERNEL = "scan_triton"  # module of the scan kernel: scan_triton or scan_cuda (train.py --scan-impl)
CONV = "op"  # block_fast's conv: op (conv_op.py's kernels) or inline (shifted multiply-adds); train.py --conv-impl


@dataclass
class MambaConfig:
    vocab_size: int = 256
    d_model: int = 512
    n_layer: int = 4
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int = 0          # 0: ceil(d_model / 16)
    eps: float = 1e-5

    def __post_init__(self):
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.d_model / 16)

    @property
    def d_inner(self):
        return self.expand * self.d_model

    def to_dict(self):
        return asdict(self)


def rmsnorm(h, w, eps):
    h32 = h.float()
    return (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + eps)) * w


def scan_torch(x, dt, A, B, C, D, z, dt_bias, s0=None):
    """Sequential float32 scan in plain torch (slow; for CPU checks). Returns (y, final state)."""
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    delta = F.softplus(dt + dt_bias.float(), threshold=20.0)
    bsz, L, E = x.shape
    s = torch.zeros(bsz, E, A.shape[1], device=x.device) if s0 is None else s0.float()
    ys = []
    for t in range(L):
        s = torch.exp(delta[:, t, :, None] * A) * s + (delta[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((s * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, 1) + D.float() * x
    if z is not None:
        y = y * F.silu(z.float())
    return y, s


def block_fast(h, norm_w, in_w, conv_w, conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w, eps: float, kernel: str,
               p: float = 0.0, conv: str = "op"):
    """MambaBlock.forward from the zero state, written for torch.compile: a function of tensors (one
    compiled graph serves every layer), x kept in (b, L, E) layout, the scan the opaque custom op of
    scan_op.py.
    conv: the causal depthwise conv and its SiLU as conv_op.py's custom op ("op": one CUDA kernel
    each way on a GPU) or as K shifted multiply-adds that inductor fuses ("inline":
    conv_op.pre_activation); the same maths either way. It runs in float32 with float32 weights and
    rounds once (the plain path's cuDNN conv takes weights rounded to the activation dtype): the
    same maths as the plain block up to that rounding.
    p: dropout on the block's output before the residual add (training only; see MambaLM)."""
    E = conv_w.shape[0]
    R, N = dt_w.shape[1], A_log.shape[1]
    x, z = F.linear(rmsnorm(h, norm_w, eps), in_w).split(E, -1)
    if conv == "op":
        x = conv_op.conv_silu(x, conv_w[:, 0], conv_b)
    else:
        x = F.silu(conv_op.pre_activation(x, conv_w[:, 0], conv_b)).to(z.dtype)
    dt_low, Bm, Cm = F.linear(x, x_proj_w).split([R, N, N], -1)
    dt = F.linear(dt_low, dt_w)
    y = scan_op.selective_scan(x, dt, -torch.exp(A_log.float()), Bm, Cm, D, z, dt_b, kernel)
    return h + residual_dropout(F.linear(y, out_w).float(), p)


def compile_block():
    """block_fast under torch.compile, as train.py runs it. Inductor's matmul shape padding is off:
    with it, a projection whose width is not a multiple of 8 (a drafter's x_proj, 20 + 2 x 16 = 52
    wide) could come out padded to stride 56 in the graph compiled for the first window length,
    and the graph recompiled for dynamic lengths then asserted that static stride on the next length
    and stopped the run (an H200, torch 2.11, 2026-12-02; check_fast.py tests a drafter's shape
    across lengths)."""
    return torch.compile(block_fast, fullgraph=True, options={"shape_padding": False})


def residual_dropout(out, p: float):
    """Dropout on a block's output (the residual branch), or the output itself when p is 0."""
    return F.dropout(out, p) if p > 0 else out


class MambaBlock(nn.Module):
    def __init__(self, cfg: MambaConfig, layer_idx: int):
        super().__init__()
        d, E, N, R, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        self.cfg = cfg
        self.norm_w = nn.Parameter(torch.ones(d))
        self.in_proj = nn.Linear(d, 2 * E, bias=False)
        self.conv_w = nn.Parameter(torch.empty(E, 1, K))
        self.conv_b = nn.Parameter(torch.empty(E))
        bound = 1.0 / math.sqrt(K)
        nn.init.uniform_(self.conv_w, -bound, bound)
        nn.init.uniform_(self.conv_b, -bound, bound)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
        dt = torch.exp(torch.rand(E) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d, bias=False)
        with torch.no_grad():  # GPT-2 style rescale of the residual branch
            self.out_proj.weight /= math.sqrt(cfg.n_layer)

    def forward(self, h, state=None, scan="triton", p=0.0):
        """h: (b, L, d) float32 residual. state: None (zeros) or (conv_tail (b, E, K-1), ssm (b, E, N)).
        p: dropout on the output before the residual add. Returns (h_out, new_state or None)."""
        cfg = self.cfg
        E, N, R, K = cfg.d_inner, cfg.d_state, cfg.dt_rank, cfg.d_conv
        L = h.shape[1]
        u = rmsnorm(h, self.norm_w, cfg.eps)
        xz = self.in_proj(u)
        x, z = xz[..., :E], xz[..., E:]
        xt = x.transpose(1, 2)
        if state is None:
            xt = F.pad(xt, (K - 1, 0))
        else:
            xt = torch.cat([state[0].to(xt.dtype), xt], -1)
        new_tail = xt[..., -(K - 1):].float() if state is not None else None
        xc = F.conv1d(xt, self.conv_w.to(xt.dtype), self.conv_b.to(xt.dtype), groups=E)
        x = F.silu(xc).transpose(1, 2).contiguous()
        dbc = self.x_proj(x)
        dt_low, Bm, Cm = dbc[..., :R], dbc[..., R:R + N], dbc[..., R + N:]
        dt = F.linear(dt_low, self.dt_proj.weight.to(dt_low.dtype))
        A = -torch.exp(self.A_log.float())
        if scan == "torch":
            y, sT = scan_torch(x, dt, A, Bm, Cm, self.D, z, self.dt_proj.bias, None if state is None else state[1])
            y = y.to(x.dtype)
        elif state is None:
            k = importlib.import_module(KERNEL)
            y, sT = k.selective_scan(x, dt, A, Bm, Cm, self.D, z, self.dt_proj.bias.float()), None
        else:
            k = importlib.import_module(KERNEL)
            y, _, sT = k.scan_forward(x, dt, A, Bm, Cm, self.D.float(), z, self.dt_proj.bias.float(),
                                    s0=state[1], store_ck=False, return_state=True)
        out = residual_dropout(self.out_proj(y).float(), p)
        return h + out, ((new_tail, sT) if state is not None else None)

    def weights(self):
        """The tensors block_fast takes, in its order."""
        return (self.norm_w, self.in_proj.weight, self.conv_w, self.conv_b, self.x_proj.weight, self.dt_proj.weight,
                self.dt_proj.bias, self.A_log, self.D, self.out_proj.weight)


class MambaLM(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.emb.weight, std=0.02)
        self.layers = nn.ModuleList([MambaBlock(cfg, i) for i in range(cfg.n_layer)])
        self.norm_f = nn.Parameter(torch.ones(cfg.d_model))
        # dropout on every block's output in training mode (train.py --dropout); not part of the
        # exported model: inference and evaluation (eval mode) never drop
        self.dropout = 0.0

    def init_state(self, bsz, device):
        c = self.cfg
        return [(torch.zeros(bsz, c.d_inner, c.d_conv - 1, device=device),
                 torch.zeros(bsz, c.d_inner, c.d_state, device=device)) for _ in range(c.n_layer)]

    def forward(self, ids, state=None, scan="triton", fast=None):
        """ids (b, L) int64 -> logits (b, L, V). With a state list, it is advanced in place.
        fast: None, or block_fast (or a torch.compile of it) to run every layer from the zero state."""
        if fast is not None and state is not None:
            raise ValueError("the fast block starts from the zero state")
        h = self.emb(ids).float()
        p = self.dropout if self.training else 0.0
        for i, layer in enumerate(self.layers):
            if fast is not None:
                h = fast(h, *layer.weights(), eps=self.cfg.eps, kernel=KERNEL, p=p, conv=CONV)
            else:
                h, st = layer(h, None if state is None else state[i], scan=scan, p=p)
                if state is not None:
                    state[i] = st
        h = rmsnorm(h, self.norm_f, self.cfg.eps)
        return F.linear(h, self.emb.weight)

    def param_groups(self, wd):
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            (decay if p.dim() >= 2 and "A_log" not in n and "conv_w" not in n and "emb" not in n else no_decay).append(p)
        return [dict(params=decay, weight_decay=wd), dict(params=no_decay, weight_decay=0.0)]


def hf_state_dict(model: MambaLM):
    """Tensors named as Hugging Face's MambaForCausalLM (tied head: no lm_head.weight)."""
    out = {"backbone.embeddings.weight": model.emb.weight}
    for i, l in enumerate(model.layers):
        p = f"backbone.layers.{i}."
        out[p + "norm.weight"] = l.norm_w
        out[p + "mixer.in_proj.weight"] = l.in_proj.weight
        out[p + "mixer.conv1d.weight"] = l.conv_w
        out[p + "mixer.conv1d.bias"] = l.conv_b
        out[p + "mixer.x_proj.weight"] = l.x_proj.weight
        out[p + "mixer.dt_proj.weight"] = l.dt_proj.weight
        out[p + "mixer.dt_proj.bias"] = l.dt_proj.bias
        out[p + "mixer.A_log"] = l.A_log
        out[p + "mixer.D"] = l.D
        out[p + "mixer.out_proj.weight"] = l.out_proj.weight
    out["backbone.norm_f.weight"] = model.norm_f
    return out


def load_hf_state_dict(model: MambaLM, sd):
    own = hf_state_dict(model)
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(sd[k].to(p.dtype).reshape(p.shape))


def config_from_hf(hc) -> MambaConfig:
    """The MambaConfig of an exported config.json (hf_config's inverse)."""
    return MambaConfig(vocab_size=hc["vocab_size"], d_model=hc["hidden_size"], n_layer=hc["num_hidden_layers"],
                       d_state=hc["state_size"], expand=hc["expand"], d_conv=hc["conv_kernel"],
                       dt_rank=hc["time_step_rank"], eps=hc["layer_norm_epsilon"])


def hf_config(cfg: MambaConfig, bos=0, eos=0, pad=0, dtype="bfloat16"):
    return {
        "architectures": ["MambaForCausalLM"],
        "bos_token_id": bos,
        "conv_kernel": cfg.d_conv,
        "eos_token_id": eos,
        "expand": cfg.expand,
        "hidden_act": "silu",
        "hidden_size": cfg.d_model,
        "initializer_range": 0.1,
        "intermediate_size": cfg.d_inner,
        "layer_norm_epsilon": cfg.eps,
        "model_type": "mamba",
        "num_hidden_layers": cfg.n_layer,
        "pad_token_id": pad,
        "pad_vocab_size_multiple": 1,
        "rescale_prenorm_residual": False,
        "residual_in_fp32": True,
        "state_size": cfg.d_state,
        "tie_word_embeddings": True,
        "time_step_floor": 0.0001,
        "time_step_init_scheme": "random",
        "time_step_max": 0.1,
        "time_step_min": 0.001,
        "time_step_rank": cfg.dt_rank,
        "time_step_scale": 1.0,
        "torch_dtype": dtype,
        "use_bias": False,
        "use_cache": True,
        "use_conv_bias": True,
        "vocab_size": cfg.vocab_size,
    }
