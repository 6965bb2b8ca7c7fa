"""The shipped models (models/mambabyte-small, drafter-small, mambabyte-base, drafter-base) are in
the Hugging Face MambaForCausalLM layout the engine loads: config keys, tensor names, shapes and
dtypes, tied head; and a float32 numpy forward of the exported weights gives the trainer's
log-probabilities on a short text (tests/train/ref_<model>.json, written by tools/train/train.py
--ref-json)."""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import st_io  # noqa: E402

KEYS = ["architectures", "bos_token_id", "conv_kernel", "eos_token_id", "expand", "hidden_act", "hidden_size",
        "intermediate_size", "layer_norm_epsilon", "model_type", "num_hidden_layers", "pad_token_id",
        "residual_in_fp32", "state_size", "tie_word_embeddings", "time_step_rank", "use_bias", "use_conv_bias",
        "vocab_size"]


def expected_shapes(c):
    d, E, N, R, K, V = (c["hidden_size"], c["intermediate_size"], c["state_size"], c["time_step_rank"],
                        c["conv_kernel"], c["vocab_size"])
    out = {"backbone.embeddings.weight": [V, d], "backbone.norm_f.weight": [d]}
    for i in range(c["num_hidden_layers"]):
        p = f"backbone.layers.{i}."
        out.update({p + "norm.weight": [d], p + "mixer.in_proj.weight": [2 * E, d],
                    p + "mixer.conv1d.weight": [E, 1, K], p + "mixer.conv1d.bias": [E],
                    p + "mixer.x_proj.weight": [R + 2 * N, E], p + "mixer.dt_proj.weight": [E, R],
                    p + "mixer.dt_proj.bias": [E], p + "mixer.A_log": [E, N], p + "mixer.D": [E],
                    p + "mixer.out_proj.weight": [d, E]})
    return out


def softplus(v):
    return np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20))))


def forward(c, w, ids):
    """float32 numpy forward of MambaForCausalLM (one sequence) -> log-probs (L, V)."""
    eps = c["layer_norm_epsilon"]
    E, N, R, K = c["intermediate_size"], c["state_size"], c["time_step_rank"], c["conv_kernel"]

    def rms(h, g):
        return h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * g

    h = w["backbone.embeddings.weight"][ids].astype(np.float32)
    L = len(ids)
    for i in range(c["num_hidden_layers"]):
        p = f"backbone.layers.{i}.mixer."
        u = rms(h, w[f"backbone.layers.{i}.norm.weight"])
        xz = u @ w[p + "in_proj.weight"].T
        x, z = xz[:, :E], xz[:, E:]
        xp = np.concatenate([np.zeros((K - 1, E), np.float32), x], 0)
        cw = w[p + "conv1d.weight"][:, 0, :]
        xc = w[p + "conv1d.bias"] + sum(xp[k:k + L] * cw[:, k] for k in range(K))
        x = xc / (1 + np.exp(-xc))
        dbc = x @ w[p + "x_proj.weight"].T
        dt = softplus(dbc[:, :R] @ w[p + "dt_proj.weight"].T + w[p + "dt_proj.bias"])
        B, C = dbc[:, R:R + N], dbc[:, R + N:]
        A = -np.exp(w[p + "A_log"])
        s = np.zeros((E, N), np.float32)
        y = np.zeros((L, E), np.float32)
        for t in range(L):
            s = np.exp(dt[t, :, None] * A) * s + (dt[t] * x[t])[:, None] * B[t][None, :]
            y[t] = s @ C[t]
        y = (y + w[p + "D"] * x) * (z / (1 + np.exp(-z)))
        h = h + y @ w[p + "out_proj.weight"].T
    h = rms(h, w["backbone.norm_f.weight"])
    logits = h @ w["backbone.embeddings.weight"].T
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def check(name, vocab):
    d = os.path.join(ROOT, "models", name)
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        print(f"SKIP {name}: no model.safetensors")
        return
    c = json.load(open(os.path.join(d, "config.json")))
    missing = [k for k in KEYS if k not in c]
    assert not missing, missing
    assert c["model_type"] == "mamba" and c["architectures"] == ["MambaForCausalLM"]
    assert c["vocab_size"] == vocab and c["tie_word_embeddings"] and not c["use_bias"] and c["use_conv_bias"]
    assert c["intermediate_size"] == c["expand"] * c["hidden_size"]
    header, _ = st_io.read_header(os.path.join(d, "model.safetensors"))
    header.pop("__metadata__", None)
    exp = expected_shapes(c)
    assert set(header) == set(exp), sorted(set(header) ^ set(exp))
    for k, v in header.items():
        assert v["shape"] == exp[k], (k, v["shape"], exp[k])
        assert v["dtype"] in ("BF16", "F16"), (k, v["dtype"])
    n = sum(int(np.prod(s)) for s in exp.values())
    print(f"ok {name}: {len(exp)} tensors, {n:,} parameters, layout and config keys")
    if name.startswith("drafter-"):
        assert os.path.exists(os.path.join(d, "tokenizer.model"))
    ref_path = os.path.join(HERE, f"ref_{name}.json")
    if not os.path.exists(ref_path):
        print(f"SKIP {name}: no {ref_path}")
        return
    ref = json.load(open(ref_path))
    w = st_io.read(os.path.join(d, "model.safetensors"))
    lp = forward(c, w, np.asarray(ref["ids"]))
    t = ref["ids"]
    got = np.array([lp[i, t[i + 1]] for i in range(len(t) - 1)])
    err = np.abs(got - np.array(ref["target_logprob"])).max()
    rows = max(np.abs(lp[int(i)] - np.array(r)).max() for i, r in ref["rows"].items())
    bits = -got.sum() / np.log(2) / (len(t) - 1)
    assert err < 2e-3 and rows < 2e-3, (err, rows)
    print(f"ok {name}: numpy forward == trainer log-probs on {len(t)} ids (max diff {max(err, rows):.1e}; "
          f"{bits:.3f} bits/id on the reference text)")


if __name__ == "__main__":
    check("mambabyte-small", 256)
    check("drafter-small", 4096)
    check("mambabyte-base", 256)
    check("drafter-base", 4096)
    print("test_export: all ok")
