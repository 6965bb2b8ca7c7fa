"""Train a small Mamba-1 language model on the books corpus, evaluate it, and export it in the
Hugging Face MambaForCausalLM layout.

  byte model:  python3 tools/train/train.py --kind byte  --data DIR --out models/mambabyte-small ...
  drafter:     python3 tools/train/train.py --kind token --tokenizer tokenizer.model --data DIR --out ...

DIR holds books_train_1.txt.xz (and _2), books_valid.txt.xz, books_test.txt.xz (../shared/data).
The learning-rate schedule (linear warm-up, cosine to --min-lr-frac) runs on
progress = max(step / --steps, elapsed / --time-budget), so a run always ends inside its budget.
Checkpoints (--ckpt) hold model, optimiser, step, elapsed time and RNG; --resume continues one.
"""
import argparse
import json
import lzma
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import MambaConfig, MambaLM, hf_config, hf_state_dict, load_hf_state_dict  # noqa: E402
import st_io  # noqa: E402

LN2 = math.log(2.0)
REF_TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. "
            "\"Well,\" said he,  \"I cannot tell.\"\n\nCHAPTER II.\n\tThe end.\n")


def log(*a):
    print(*a, flush=True)


def read_text(path):
    with lzma.open(path, "rb") if path.endswith(".xz") else open(path, "rb") as f:
        return f.read()


def load_train_bytes(data_dir, files):
    parts = [read_text(os.path.join(data_dir, f)) for f in files]
    return b"\f\n".join(parts)


class Tok:
    """SentencePiece encoding, line by line: the text is split on newlines, each line is encoded,
    and the lines are joined with the id of the byte piece <0x0A> (no other piece holds a newline).
    This is exactly what spm_encode does with a file; encoding a whole multi-line string in one call
    can pick a different (equally decodable) segmentation at rare near-ties of the unigram Viterbi."""

    def __init__(self, path):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.n = self.sp.get_piece_size()
        self.bos = self.sp.bos_id()
        self.nl = self.sp.piece_to_id("<0x0A>")

    def encode_stream(self, data: bytes, threads=16):
        lines = data.decode("utf-8").split("\n")
        enc = self.sp.encode(lines, num_threads=threads)
        out = np.empty(sum(len(e) for e in enc) + len(enc) - 1, dtype=np.int32)
        p = 0
        for i, e in enumerate(enc):
            if i:
                out[p] = self.nl
                p += 1
            out[p:p + len(e)] = e
            p += len(e)
        return out


def lr_at(args, progress, step):
    """Cosine from --lr to min_lr_frac of it over progress (steps or time, whichever is further),
    times a linear warm-up over the first --warmup steps. The warm-up counts steps, not progress: a
    run bound by time (--steps far away) would otherwise warm up over a share of its seconds, which
    the first step's compilation can use up."""
    p = min(1.0, max(0.0, progress))
    cos = args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))
    return args.lr * cos * min(1.0, (step + 1) / max(1, args.warmup))


@torch.no_grad()
def quick_val(model, val, windows, L, device, bytes_per_tok):
    """Bits per byte on fixed windows of the valid split (zero start state, bf16 autocast)."""
    n = len(val)
    offs = torch.linspace(0, n - L - 2, windows).long()
    idx = offs[:, None] + torch.arange(L + 1)[None]
    batch = val[idx].to(device).long()
    model.eval()
    tot = 0.0
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
        for i in range(0, windows, 8):
            b = batch[i:i + 8]
            logits = model(b[:, :-1])
            tot += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                   reduction="sum").item()
    model.train()
    return tot / LN2 / (windows * L) / bytes_per_tok


@torch.no_grad()
def stream_bits(model, ids, device, seg=65536, scan="triton"):
    """Total bits of ids[1:] given the prefix, one stream from the zero state, fp32 maths,
    in segments with the state (conv window + SSM state) carried across."""
    model.eval()
    state = model.init_state(1, device)
    total = 0.0
    n = len(ids)
    for a in range(0, n - 1, seg):
        b = min(n - 1, a + seg)
        x = ids[a:b].to(device).long()[None]
        y = ids[a + 1:b + 1].to(device).long()
        logits = model(x, state=state, scan=scan)[0].float()
        total += F.cross_entropy(logits, y, reduction="sum").item()
    return total / LN2


def export(model, cfg, out_dir, kind, tok_path=None):
    os.makedirs(out_dir, exist_ok=True)
    sd = hf_state_dict(model)
    tensors = {k: ("BF16", st_io.f32_to_bf16_bits(v.detach().float().cpu().numpy())) for k, v in sd.items()}
    st_io.write(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
    if kind == "byte":
        hc = hf_config(cfg, bos=0, eos=0, pad=0)
    else:
        hc = hf_config(cfg, bos=1, eos=2, pad=0)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hc, f, indent=2, sort_keys=True)
        f.write("\n")
    if tok_path:
        import shutil
        shutil.copy(tok_path, os.path.join(out_dir, "tokenizer.model"))


def load_export(out_dir, cfg, device):
    m = MambaLM(cfg).to(device)
    sd = {k: torch.from_numpy(v) for k, v in st_io.read(os.path.join(out_dir, "model.safetensors")).items()}
    load_hf_state_dict(m, sd)
    return m.float().eval()


def hf_check(out_dir, model, ids, device):
    """transformers' MambaForCausalLM.from_pretrained(export) gives the trainer model's logits."""
    from transformers import MambaForCausalLM
    hf = MambaForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32).to(device).eval()
    x = ids[None].to(device).long()
    with torch.no_grad():
        a = hf(x).logits.float()
        b = model(x, scan="torch").float()
        c = model(x).float()
    d1 = (a - b).abs().max().item()
    d2 = (a - c).abs().max().item()
    scale = a.abs().max().item()
    return dict(max_abs_diff_hf_vs_trainer_torchscan=d1, max_abs_diff_hf_vs_trainer_kernel=d2,
                max_abs_logit=scale, n_positions=int(x.shape[1]))


def reference_ids(tok=None):
    """REF_TEXT as the model reads it: its bytes, or with a tokenizer BOS and then its ids."""
    if tok is None:
        return torch.from_numpy(np.frombuffer(REF_TEXT.encode(), dtype=np.uint8).copy())
    return torch.cat([torch.tensor([tok.bos], dtype=torch.int32),
                      torch.from_numpy(tok.encode_stream(REF_TEXT.encode()))])


def reference_dump(model, ids, path, device):
    """Log-probabilities of a short text under the exported weights (fp32 maths), for the
    repository's numpy check of the export (tests/train)."""
    with torch.no_grad():
        logits = model(ids[None].to(device).long(), scan="torch")[0].float()
        lp = torch.log_softmax(logits, -1).cpu().numpy()
    t = ids.cpu().numpy()
    ref = {"ids": t.tolist(),
           "target_logprob": [float(lp[i, t[i + 1]]) for i in range(len(t) - 1)],
           "argmax": [int(v) for v in lp.argmax(-1)],
           "rows": {str(i): [float(v) for v in lp[i]] for i in (0, len(t) // 2, len(t) - 1)}}
    with open(path, "w") as f:
        json.dump(ref, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["byte", "token"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--train-files", default="books_train_1.txt.xz,books_train_2.txt.xz")
    ap.add_argument("--tokenizer")
    ap.add_argument("--out", required=True, help="export folder")
    ap.add_argument("--metrics", help="write the run's numbers here (JSON)")
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--expand", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--time-budget", type=float, default=1e9, help="seconds of training")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="dropout on every block's output before the residual add, in training only (against many passes over the data)")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--tokens-per-step", type=int, default=131072)
    ap.add_argument("--seq-min", type=int, default=2048)
    ap.add_argument("--seq-max", type=int, default=8192)
    ap.add_argument("--seq-quant", type=int, default=1024)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--val-windows", type=int, default=32)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--ckpt", help="checkpoint file (written every --ckpt-every steps and at the end)")
    ap.add_argument("--ckpt-every", type=int, default=1000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-after", type=float, default=0,
                    help="wall-clock seconds of this process after which the run pauses: checkpoint and "
                         "export, no evaluation; --resume continues it on the same schedule")
    ap.add_argument("--init", help="start from the weights of an exported folder (fine-tuning)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-seg", type=int, default=65536)
    ap.add_argument("--no-final-eval", action="store_true")
    ap.add_argument("--hf-check", action="store_true")
    ap.add_argument("--ref-json", help="write reference log-probs of a short text (tests/train)")
    ap.add_argument("--check-ids", help=".npy of the valid split's ids from spm_encode, to compare with")
    ap.add_argument("--scan-impl", choices=["triton", "cuda"], default="triton",
                    help="scan kernel: scan_triton.py or scan_cuda.cu (built with nvcc on first use)")
    ap.add_argument("--scan-cfg", help='JSON tile settings for the kernel module\'s CFG, e.g. {"BD_FWD": 32}')
    ap.add_argument("--conv-impl", choices=["inline", "op"], default="op",
                    help="the fast path's conv + SiLU: op (conv_op.py: conv_cuda.cu's kernels on a GPU; default) or "
                         "inline (compiled by inductor)")
    ap.add_argument("--fast", choices=["compile", "eager", "off"], default="compile",
                    help="training forward through model.block_fast (the scan as a custom op), compiled "
                         "with torch.compile, or eager; off: the plain MambaBlock path")
    ap.add_argument("--bench", type=int, default=0, help="only time this many steps and exit")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = 0
    if world > 1:  # data parallel, started by torchrun; rank 0 logs, evaluates and exports
        import torch.distributed as dist
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rank = dist.get_rank()
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if rank:
        globals()["log"] = lambda *a: None
    import model as model_mod
    model_mod.KERNEL = "scan_" + args.scan_impl
    model_mod.CONV = args.conv_impl
    if args.scan_cfg:
        __import__(model_mod.KERNEL).CFG.update(json.loads(args.scan_cfg))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    t_load = time.time()

    train_raw = load_train_bytes(args.data, args.train_files.split(","))
    valid_raw = read_text(os.path.join(args.data, "books_valid.txt.xz"))
    test_raw = read_text(os.path.join(args.data, "books_test.txt.xz"))
    if args.kind == "byte":
        V = 256
        to_ids = lambda b: torch.from_numpy(np.frombuffer(b, dtype=np.uint8).copy())
        train, valid, test = to_ids(train_raw), to_ids(valid_raw), to_ids(test_raw)
        bpt_train = 1.0
    else:
        tok = Tok(args.tokenizer)
        V = tok.n
        bos = torch.tensor([tok.bos], dtype=torch.int32)
        train = torch.from_numpy(tok.encode_stream(train_raw))
        valid = torch.cat([bos, torch.from_numpy(tok.encode_stream(valid_raw))])
        test = torch.cat([bos, torch.from_numpy(tok.encode_stream(test_raw))])
        bpt_train = len(train_raw) / len(train)
        if args.check_ids:
            ref = np.load(args.check_ids)
            v = valid[1:].numpy()
            same = len(ref) == len(v) and bool((ref == v).all())
            diff = np.nonzero(ref != v)[0] if len(ref) == len(v) else []
            log(f"tokenizer check: python sentencepiece {__import__('sentencepiece').__version__} ids of valid "
                f"{'==' if same else '!='} spm_encode ids ({len(v)} vs {len(ref)}; {len(diff)} differ; "
                f"first at {diff[:3].tolist() if len(diff) else None}: {v[diff[:3]].tolist() if len(diff) else ''} "
                f"vs {ref[diff[:3]].tolist() if len(diff) else ''}, dtypes {v.dtype} {ref.dtype})")
    log(f"data: train {len(train_raw):,} bytes -> {len(train):,} ids, valid {len(valid):,} ids, "
        f"test {len(test):,} ids, {bpt_train:.3f} bytes/id; load {time.time() - t_load:.1f}s")
    bpt_valid = len(valid_raw) / (len(valid) - (1 if args.kind == "token" else 0))
    train_dev = train.to(device)
    n_train = len(train_dev)

    cfg = MambaConfig(vocab_size=V, d_model=args.d_model, n_layer=args.n_layer, d_state=args.d_state,
                      expand=args.expand)
    model = MambaLM(cfg).to(device)
    if args.init:
        sd = {k: torch.from_numpy(v) for k, v in st_io.read(os.path.join(args.init, "model.safetensors")).items()}
        load_hf_state_dict(model, sd)
        model.to(device)
        log(f"initialised from {args.init}")
    fwd_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        fwd_model = DistributedDataParallel(model)
    fast = None
    if args.fast == "compile":
        fast = model_mod.compile_block()
    elif args.fast == "eager":
        fast = model_mod.block_fast
    model.dropout = args.dropout
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.to_dict()} params {n_params:,}; fast path {args.fast}; dropout {args.dropout}")
    opt = torch.optim.AdamW(model.param_groups(args.wd), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=device == "cuda")
    step, elapsed, ids_seen = 0, 0.0, 0
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed + 1000 * rank)
    rng = np.random.default_rng(args.seed)
    if args.resume and args.ckpt and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed, ids_seen = ck["step"], ck["elapsed"], ck["ids_seen"]
        gen.set_state(ck["gen"].cpu())
        rng = ck["rng"]
        log(f"resumed from {args.ckpt} at step {step}, {elapsed:.0f}s, {ids_seen:,} ids seen")

    def save_ckpt():
        if not args.ckpt or rank:
            return
        tmp = args.ckpt + ".tmp"
        torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, elapsed=elapsed,
                        ids_seen=ids_seen, gen=gen.get_state(), rng=rng, cfg=cfg.to_dict(), args=vars(args)), tmp)
        os.replace(tmp, args.ckpt)

    lens = list(range(args.seq_min, args.seq_max + 1, args.seq_quant))
    history = []
    model.train()
    t0 = time.time() - elapsed
    last_log_t, last_log_ids = time.time(), ids_seen
    loss_acc, loss_n = 0.0, 0
    paused = False
    while True:
        elapsed = time.time() - t0
        tfrac = elapsed / args.time_budget
        stop = float(bool(args.stop_after) and time.time() - t_load >= args.stop_after)
        if world > 1:  # every rank stops at the same step
            tt = torch.tensor([tfrac, stop], device=device, dtype=torch.float64)
            dist.broadcast(tt, 0)
            tfrac, stop = tt.tolist()
        if stop:
            paused = True
            break
        progress = max(step / args.steps, tfrac)
        if progress >= 1.0 or (args.bench and step >= args.bench):
            break
        L = int(rng.choice(lens))
        bsz = max(1, args.tokens_per_step // (L * world))
        offs = torch.randint(0, n_train - L - 1, (bsz,), device=device, generator=gen)
        idx = offs[:, None] + torch.arange(L + 1, device=device)[None]
        batch = train_dev[idx].long()
        lr = lr_at(args, max((step + 1) / args.steps, tfrac), step)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = fwd_model(batch[:, :-1], fast=fast)
        loss = F.cross_entropy(logits.float().reshape(-1, V), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        ids_seen += bsz * L * world
        loss_acc += loss.detach()
        loss_n += 1
        if step % args.log_every == 0 or step == 1:
            lv = (loss_acc / loss_n).item()
            loss_acc, loss_n = 0.0, 0
            now = time.time()
            rate = (ids_seen - last_log_ids) / max(1e-9, now - last_log_t) * bpt_train
            last_log_t, last_log_ids = now, ids_seen
            el = now - t0
            prog = max(step / args.steps, el / args.time_budget)
            eta = el / max(prog, 1e-9) - el
            log(f"step {step:6d} | loss {lv:.4f} | {lv / LN2 / bpt_train:.4f} bits/byte | lr {lr:.2e} | "
                f"gnorm {gn.item():.2f} | {rate / 1e6:.3f} MB/s | seen {ids_seen * bpt_train / 1e6:.0f} MB | "
                f"elapsed {el:.0f}s | ETA {eta:.0f}s")
        if args.val_every and step % args.val_every == 0 and rank == 0:
            vb = quick_val(model, valid, args.val_windows, min(8192, args.seq_max), device, bpt_valid)
            history.append(dict(step=step, valid_bpb_quick=vb, elapsed=time.time() - t0))
            log(f"step {step:6d} | valid (quick, {args.val_windows} windows) {vb:.4f} bits/byte")
        if args.ckpt and step % args.ckpt_every == 0:
            save_ckpt()
    elapsed = time.time() - t0
    save_ckpt()
    log(f"trained {step} steps, {ids_seen:,} ids ({ids_seen * bpt_train / 1e6:.0f} MB) in {elapsed:.0f}s")
    if world > 1:
        dist.destroy_process_group()
    if args.bench or rank:
        return
    if paused:  # the weights so far, in case the checkpoint is lost before the run resumes
        export(model, cfg, args.out, args.kind, args.tokenizer)
        log(f"paused after {time.time() - t_load:.0f}s of this process: {args.ckpt} continues the run")
        return

    # evaluation in true float32, as the engine computes (no TF32 in the matmuls)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    export(model, cfg, args.out, args.kind, args.tokenizer)
    metrics = dict(kind=args.kind, params=n_params, config=cfg.to_dict(), steps=step, ids_seen=ids_seen,
                   bytes_seen=int(ids_seen * bpt_train), train_seconds=elapsed, history=history, args=vars(args),
                   device=torch.cuda.get_device_name() if device == "cuda" else "cpu", world_size=world)
    em = load_export(args.out, cfg, device)
    if not args.no_final_eval:
        t1 = time.time()
        for name, ids, raw in (("valid", valid, valid_raw), ("test", test, test_raw)):
            bits = stream_bits(em, ids, device, args.eval_seg)
            if args.kind == "byte":
                metrics[f"{name}_bits_per_byte"] = bits / (len(ids) - 1)
            else:
                metrics[f"{name}_bits_per_byte"] = bits / len(raw)
                metrics[f"{name}_bits_per_token"] = bits / (len(ids) - 1)
                metrics[f"{name}_tokens"] = len(ids) - 1
            metrics[f"{name}_bytes"] = len(raw)
            if args.kind == "byte":  # as `mambabyte eval` scores: each document from a fresh state
                dbits, dn = 0.0, 0
                for doc in raw.split(b"\f\n"):
                    dids = torch.from_numpy(np.frombuffer(doc, dtype=np.uint8).copy())
                    dbits += stream_bits(em, dids, device, args.eval_seg)
                    dn += len(doc) - 1
                metrics[f"{name}_bits_per_byte_per_doc"] = dbits / dn
                log(f"{name}: {dbits / dn:.4f} bits/byte, each document from a fresh state")
            log(f"{name}: {metrics[f'{name}_bits_per_byte']:.4f} bits/byte (exported bf16 weights, fp32 maths, one stream)")
        metrics["eval_seconds"] = time.time() - t1
    ref_ids = reference_ids(None if args.kind == "byte" else tok)
    if args.ref_json:
        reference_dump(em, ref_ids, args.ref_json, device)
    if args.hf_check:
        try:
            metrics["hf_check"] = hf_check(args.out, em, ref_ids, device)
            log(f"hf check: {metrics['hf_check']}")
        except Exception as e:  # reported, not fatal: the weights are still worth having
            metrics["hf_check"] = {"error": repr(e)}
            log(f"hf check FAILED: {e!r}")
    if args.metrics:
        with open(args.metrics, "w") as f:
            json.dump(metrics, f, indent=1)
    log(json.dumps({k: v for k, v in metrics.items() if k not in ("history", "args", "config")}))


if __name__ == "__main__":
    main()
