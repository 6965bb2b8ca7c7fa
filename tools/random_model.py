#!/usr/bin/env python3
"""Writes a random-weight Mamba byte model in the Hugging Face MambaForCausalLM layout, for
benchmarks: python3 tools/random_model.py OUT_DIR [--d-model 512] [--layers 12] [--dtype f32|bf16]"""
import argparse
import json
import math
import os
import struct

import numpy as np


def to_bf16(a):
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    D, E, N, K = a.d_model, a.expand * a.d_model, a.d_state, 4
    R = math.ceil(D / 16)
    t = {"backbone.embeddings.weight": rng.normal(0, 0.02, (a.vocab, D)),
         "backbone.norm_f.weight": np.ones(D)}
    for i in range(a.layers):
        p = f"backbone.layers.{i}."
        t[p + "norm.weight"] = np.ones(D)
        t[p + "mixer.in_proj.weight"] = rng.normal(0, D ** -0.5, (2 * E, D))
        t[p + "mixer.conv1d.weight"] = rng.normal(0, 0.5, (E, 1, K))
        t[p + "mixer.conv1d.bias"] = np.zeros(E)
        t[p + "mixer.x_proj.weight"] = rng.normal(0, E ** -0.5, (R + 2 * N, E))
        t[p + "mixer.dt_proj.weight"] = rng.normal(0, R ** -0.5, (E, R))
        t[p + "mixer.dt_proj.bias"] = np.log(np.expm1(rng.uniform(0.001, 0.1, E)))
        t[p + "mixer.A_log"] = np.log(np.tile(np.arange(1, N + 1), (E, 1)))
        t[p + "mixer.D"] = np.ones(E)
        t[p + "mixer.out_proj.weight"] = rng.normal(0, E ** -0.5 / math.sqrt(a.layers), (D, E))
    header, blobs, off = {}, [], 0
    for name, v in t.items():
        big = v.ndim == 2 and name.endswith("proj.weight") or name.endswith("embeddings.weight")
        if a.dtype == "bf16" and big:
            b, dt = to_bf16(v).tobytes(), "BF16"
        else:
            b, dt = v.astype(np.float32).tobytes(), "F32"
        header[name] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    cfg = {"model_type": "mamba", "hidden_size": D, "num_hidden_layers": a.layers, "vocab_size": a.vocab,
           "state_size": N, "conv_kernel": K, "expand": a.expand, "intermediate_size": E,
           "time_step_rank": R, "layer_norm_epsilon": 1e-5, "use_bias": False, "use_conv_bias": True,
           "tie_word_embeddings": True, "pad_vocab_size_multiple": 1}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    print(f"{a.out}: {sum(v.size for v in t.values()) / 1e6:.1f}M parameters, {a.dtype}")


if __name__ == "__main__":
    main()
