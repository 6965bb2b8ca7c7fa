#!/usr/bin/env python3
"""books_prompts.py BOOKS N LEN [--vary]: N prompts cut from a books file (books_test.txt or
.txt.xz: documents separated by a line holding only a form feed), as a JSON list of strings.

Prompt i comes from document i mod D, at the start of the first line after fraction
(i div D + 1) / (N div D + 2) of the document, LEN bytes long (with --vary: 24 + (i * 37) mod
(LEN - 23) bytes), cut back to whole UTF-8 characters. Deterministic: the same file gives the
same prompts, so the benchmark (bench/spec-gpu.sh) and the tests use prompts anyone can cut
again."""
import json
import lzma
import sys


def prompts(path, n, length, vary=False):
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8", newline="\n") as f:
        docs = f.read().split("\f\n")
    per_doc = n // len(docs) + 2
    out = []
    for i in range(n):
        doc = docs[i % len(docs)].encode()
        at = doc.find(b"\n", len(doc) * (i // len(docs) + 1) // per_doc) + 1
        size = 24 + (i * 37) % (length - 23) if vary else length
        cut = doc[at:at + size]
        out.append(cut.decode("utf-8", "ignore"))
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--vary"]
    if len(args) != 3:
        sys.exit(__doc__)
    json.dump(prompts(args[0], int(args[1]), int(args[2]), "--vary" in sys.argv), sys.stdout, indent=0,
              ensure_ascii=False)
    sys.stdout.write("\n")
