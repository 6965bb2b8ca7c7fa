#!/usr/bin/env python3
"""accept.py: how many bytes a drafter gets its byte model to keep, on held-out book prompts.

  tools/train/accept.py --model M --draft D [--books books_valid.txt.xz] [--n 20] [--bytes 256]
                        [--k 4,8,16] [--conf 0,0.1] [--device cpu|cuda] [--bin build/rel/mambabyte]

For each draft length k (--draft-bytes), `mambabyte generate` decodes --bytes bytes greedily after
each of --n prompts (256 bytes each, cut by bench/books_prompts.py from --books: held-out text),
with D drafting and M verifying, for each draft confidence floor in --conf (--draft-conf: a draft
ends before the drafter's probability that all its bytes are right falls below it). Prints one
Markdown row per k and floor: bytes per verification round (the kept drafted bytes plus the byte
model's own), drafted bytes and drafter ids (its forwards) per round, the share of drafted bytes
kept, and the share kept at each draft position (of the drafts that held a byte there). Greedy speculative output equals
plain decoding (tests/cli), so these are the byte model's own continuations."""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from books_prompts import prompts  # noqa: E402


def run(args, prompt, k, conf):
    cmd = [args.bin, "generate", "-m", args.model, "--draft", args.draft, "--draft-bytes", str(k),
           "--draft-conf", str(conf),
           "-n", str(args.bytes), "--temperature", "0", "--stats", "--device", args.device, "-p", prompt]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd[:-1])} ...: {r.stderr.decode(errors='replace')}")
    err = r.stderr.decode()
    m = re.search(r"speculative: (\d+) rounds \((\d+) drafted by lookup\), (\d+) bytes drafted, (\d+) accepted", err)
    g = re.search(r"generated: (\d+) bytes", err)
    pos = re.search(r"kept by position \(kept/drafted\):(.*)", err)
    ids = re.search(r"drafter: (\d+) ids drafted", err)
    if not (m and g):
        sys.exit(f"no statistics in the output of {cmd[:-1]}: {err}")
    # no drafter lines: no draft held a byte (a high --conf can cut every one)
    kept = [tuple(int(v) for v in kd.split("/")) for kd in pos.group(1).split()] if pos else []
    return (int(m.group(1)), int(g.group(1)), int(m.group(3)), int(m.group(4)),
            int(ids.group(1)) if ids else 0, kept)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    ap.add_argument("--model", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--books", default=os.path.join(root, "..", "shared", "data", "books_valid.txt.xz"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--bytes", type=int, default=256)
    ap.add_argument("--k", default="4,8,16")
    ap.add_argument("--conf", default="0")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bin", default=os.path.join(root, "build", "rel", "mambabyte"))
    args = ap.parse_args()
    ps = prompts(args.books, args.n, 256)
    print(f"{args.draft} drafting for {args.model}, greedy, {args.bytes} bytes after each of {args.n} "
          f"prompts of {os.path.basename(args.books)}, device {args.device}")
    print("| draft bytes | confidence floor | bytes per round | drafted bytes per round | drafter ids per round "
          "| drafted bytes kept | kept by draft position (1, 2, ...) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for k in (int(v) for v in args.k.split(",")):
        for conf in (float(v) for v in args.conf.split(",")):
            rounds = out = drafted = acc = ids = 0
            pk, pd = [0] * k, [0] * k
            for p in ps:
                r, n, dr, ac, di, kept = run(args, p, k, conf)
                rounds, out, drafted, acc, ids = rounds + r, out + n, drafted + dr, acc + ac, ids + di
                for i, (a, b) in enumerate(kept):
                    pk[i] += a
                    pd[i] += b
            by_pos = " ".join(f"{100 * a / b:.0f}%" for a, b in zip(pk, pd) if b)
            print(f"| {k} | {conf:g} | {out / rounds:.2f} | {drafted / rounds:.2f} | {ids / rounds:.2f} "
                  f"| {100 * acc / max(1, drafted):.1f}% | {by_pos} |", flush=True)


if __name__ == "__main__":
    main()
