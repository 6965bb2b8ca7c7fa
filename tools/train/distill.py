"""distill.py: the byte model's own greedy continuations of train-split text, to train a drafter
that agrees with it (issue 12: the drafter is measured by the bytes its byte model keeps).

  python3 tools/train/distill.py --model models/mambabyte-base --data DIR --out distill.txt.xz
         [--streams 2048] [--prompt-bytes 64-512] [--bytes 512] [--seconds 300] [--seed 1]

Each sample is a prompt cut from the train split (books_train_1 and _2 in DIR: a random place, from
the next line start, --prompt-bytes long, drawn per batch) followed by the byte model's greedy
continuation of --bytes bytes from the zero state, as serving decodes after a prompt. Samples are
written as documents separated by a line holding only a form feed (the corpus's own layout), so
train.py reads the file like a train split (--train-files). Bytes that are not UTF-8 in a
continuation are replaced by U+FFFD (the drafter's tokenizer reads UTF-8). The continuations are
computed with bf16 projections and the trainer's CUDA scan on a GPU (float32 and a plain torch
scan on a CPU): where the byte model's two best bytes are within rounding, a byte can differ from
the engine's float32 choice. Runs until --seconds."""
import argparse
import json
import lzma
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import config_from_hf, rmsnorm  # noqa: E402
from train import load_export, load_train_bytes  # noqa: E402


def load_model(folder, device):
    with open(os.path.join(folder, "config.json")) as f:
        return load_export(folder, config_from_hf(json.load(f)), device)


def prompts(text, n, length, rng):
    """n prompts of `length` bytes, each from the first line start after a random offset."""
    out = np.empty((n, length), dtype=np.uint8)
    buf = np.frombuffer(text, dtype=np.uint8)
    for i in range(n):
        while True:
            at = text.find(b"\n", int(rng.integers(0, len(text) - 2 * length))) + 1
            if 0 < at < len(text) - length and b"\f" not in text[at:at + length]:
                break
        out[i] = buf[at:at + length]
    return out


@torch.no_grad()
def continue_greedy(model, prompt, n_bytes, device):
    """prompt: (B, P) uint8 -> (B, n_bytes) uint8, greedy, from the zero state."""
    state = model.init_state(prompt.shape[0], device)
    scan = "torch" if device == "cpu" else "kernel"  # the kernel: model.KERNEL, set in main()

    def last_logits(ids):  # the layers with bf16 projections on a GPU, the head in float32
        h = model.emb(ids).float()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            for i, layer in enumerate(model.layers):
                h, state[i] = layer(h, state[i], scan=scan)
        return F.linear(rmsnorm(h[:, -1].float(), model.norm_f, model.cfg.eps), model.emb.weight)

    logits = last_logits(torch.from_numpy(prompt).to(device).long())
    out = torch.empty(prompt.shape[0], n_bytes, dtype=torch.uint8, device=device)
    for t in range(n_bytes):
        nxt = logits.argmax(-1)
        out[:, t] = nxt.to(torch.uint8)
        if t + 1 < n_bytes:
            logits = last_logits(nxt[:, None])
    return out.cpu().numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--train-files", default="books_train_1.txt.xz,books_train_2.txt.xz")
    ap.add_argument("--out", required=True, help="text file (.xz: compressed)")
    ap.add_argument("--streams", type=int, default=2048)
    ap.add_argument("--prompt-bytes", default="64-512", help="a length, or MIN-MAX drawn per batch")
    ap.add_argument("--bytes", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-batches", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # the trainer's CUDA scan, from the carried state (plain torch on a CPU)
        import model as model_mod
        model_mod.KERNEL = "scan_cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.time()
    text = load_train_bytes(args.data, args.train_files.split(","))
    model = load_model(args.model, device)
    lo, _, hi = args.prompt_bytes.partition("-")
    lo, hi = int(lo), int(hi or lo)
    rng = np.random.default_rng(args.seed)
    opener = lzma.open if args.out.endswith(".xz") else open
    n_batches = n_samples = n_out = 0
    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()):,} parameters) on {device}; "
          f"train text {len(text):,} bytes; load {time.time() - t0:.1f}s", flush=True)
    t1 = time.time()
    with opener(args.out, "wb") as f:
        while time.time() - t0 < args.seconds and (not args.max_batches or n_batches < args.max_batches):
            P = int(rng.integers(lo, hi + 1))
            pr = prompts(text, args.streams, P, rng)
            cont = continue_greedy(model, pr, args.bytes, device)
            for i in range(args.streams):
                sample = pr[i].tobytes() + cont[i].tobytes()
                f.write(sample.decode("utf-8", "replace").encode() + b"\n\f\n")
                n_samples += 1
            n_batches += 1
            n_out += args.streams * args.bytes
            el = time.time() - t1
            print(f"batch {n_batches}: prompts of {P} bytes; {n_samples:,} samples, {n_out / 1e6:.1f} MB "
                  f"generated, {n_out / el / 1e6:.3f} MB/s", flush=True)


if __name__ == "__main__":
    main()
