"""Round trip of the drafter's SentencePiece tokenizer (models/drafter-small/tokenizer.model) through
the spm_encode / spm_decode command-line tools (Debian package `sentencepiece`).

spm_encode reads lines, so text is encoded line by line and the lines' ids are joined with the id of
the byte piece <0x0A>; that equals encoding the whole text with the library, since no piece but
<0x0A> contains a newline (checked below).

Known exceptions (asserted, so that a change is noticed):
  * bytes that are not valid UTF-8: SentencePiece's normalizer replaces each malformed byte with
    U+FFFD before segmenting, so they come back as EF BF BD;
  * the character U+2581 (LOWER ONE EIGHTH BLOCK): SentencePiece uses it as its space marker, so it
    comes back as a space.
Speculative decoding never depends on the round trip: the byte model verifies every drafted byte.
"""
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "models", "drafter-small", "tokenizer.model")


def run(args, data):
    return subprocess.run(args, input=data, stdout=subprocess.PIPE, check=True).stdout


def encode(text: bytes):
    lines = text.split(b"\n")
    out = run(["spm_encode", "--model=" + MODEL, "--output_format=id"], b"\n".join(lines) + b"\n")
    rows = out.split(b"\n")[:-1]
    assert len(rows) == len(lines), (len(rows), len(lines))
    ids = []
    for i, r in enumerate(rows):
        if i:
            ids.append(NL)
        ids.extend(int(v) for v in r.split())
    return ids


def decode(ids):
    out = run(["spm_decode", "--model=" + MODEL, "--input_format=id"], (" ".join(map(str, ids)) + "\n").encode())
    assert out.endswith(b"\n")
    return out[:-1]


def piece_ids():
    vocab = subprocess.run(["spm_export_vocab", "--model=" + MODEL], stdout=subprocess.PIPE, check=True).stdout
    return [line.split(b"\t")[0].decode() for line in vocab.split(b"\n") if line]


CASES = [
    "Hello, world.",
    "  two  spaces, then three   and a tab\there\n",
    "\n\n\nleading newlines and trailing ones\n\n",
    " leading space",
    "trailing space ",
    "        indented poem line\n    second line\n",
    "line\r\nwith CR LF\r\n",
    "form feed between documents\n\f\nnext document\n",
    "caf\u00e9 na\u00efve \u00fcber stra\u00dfe \u00c6sir \u0153uvre",
    "NFD: cafe\u0301 (must stay decomposed)",
    "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \U0001F600\U0001F680",
    "\u00a0non-breaking\u2003em space\u200bzero width",
    "digits 1234567890 and 3.14159",
    "\u201cQuotes,\u201d she said\u2014\u2018and dashes\u2019\u2026",
    "",
    " ",
    "\n",
    "x" * 5000,
    "\t\t\t",
]


def main():
    if not all(shutil.which(p) for p in ("spm_encode", "spm_decode", "spm_export_vocab")):
        print("SKIP test_tokenizer: spm_encode/spm_decode/spm_export_vocab not installed (apt-get install sentencepiece)")
        return
    global NL
    pieces = piece_ids()
    assert len(pieces) == 4096, len(pieces)
    NL = pieces.index("<0x0A>")
    assert [p for p in pieces if "\n" in p] == [], "a piece holds a newline"
    for b in range(256):
        assert f"<0x{b:02X}>" in pieces, b
    texts = [c.encode("utf-8") for c in CASES]
    data = os.path.join(ROOT, "..", "shared", "data", "books_test.txt.xz")
    if os.path.exists(data):
        texts.append(lzma.open(data).read()[:300000])
    n_bytes = n_ids = 0
    for t in texts:
        ids = encode(t)
        back = decode(ids)
        assert back == t, (t[:80], back[:80])
        n_bytes += len(t)
        n_ids += len(ids)
    print(f"ok round trip of {len(texts)} texts, {n_bytes} bytes in {n_ids} ids ({n_bytes / max(1, n_ids):.2f} bytes/id)")
    # the known exceptions
    bad = b"a\xffb\xc3(\xe2\x82"
    assert decode(encode(bad)) == b"a\xef\xbf\xbdb\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd", decode(encode(bad))
    assert decode(encode("a\u2581b".encode())) == b"a b"
    print("ok known exceptions: invalid UTF-8 -> U+FFFD per malformed byte, U+2581 -> space")
    print("test_tokenizer: all ok")


if __name__ == "__main__":
    main()
