#!/usr/bin/env python3
"""The `mambabyte` CLI end to end (generate, logits, eval, --help, errors), against the reference
fixtures. Runs $MB_BIN (default build/rel/mambabyte); Python standard library only."""
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

BIN = os.environ.get("MB_BIN", "build/rel/mambabyte")
FIX = "tests/fixtures"
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def run(*args, input=None):
    return subprocess.run([BIN, *args], input=input, capture_output=True, timeout=300)


def floats(path):
    data = open(path, "rb").read()
    return struct.unpack("<%df" % (len(data) // 4), data)


def test_help_and_errors():
    for cmd in ["generate", "logits", "eval", "serve"]:
        r = run(cmd, "--help")
        check(r.returncode == 0 and b"usage" in r.stdout.lower(), f"{cmd} --help")
    r = run("nonsense")
    check(r.returncode != 0 and b"unknown command" in r.stderr, "unknown command")
    r = run("generate", "-m", "/nonexistent", "-p", "x")
    check(r.returncode != 0 and b"/nonexistent" in r.stderr, "missing model names the path")
    r = run("generate", "-m", f"{FIX}/tiny-byte-tied", "-p", "")
    check(r.returncode != 0 and b"prompt" in r.stderr, "empty prompt is an error")
    r = run("generate", "-m", f"{FIX}/tiny-byte-tied", "-p", "x", "--top-p", "2")
    check(r.returncode != 0, "top-p out of range")
    r = run("eval", "-m", f"{FIX}/tiny-subword-1000", "--text", f"{FIX}/tiny-byte-tied/config.json")
    check(r.returncode != 0 and b"byte-level" in r.stderr, "eval refuses a subword model")


def test_numeric_options():
    """Every numeric option of generate, eval and logits is checked when it is parsed: a value
    that is not a number, or out of the option's range, stops the command with a message naming
    the option (it used to become 0, or a draft longer than the pool's span of 512)."""
    M = f"{FIX}/tiny-byte-tied"
    bad = {"generate": [("-n", "-1"), ("--max-bytes", "12x"), ("--max-bytes", "9999999999"),
                        ("--temperature", "-0.1"), ("--temperature", "nan"), ("--temperature", "hot"),
                        ("--top-k", "-1"), ("--top-k", "4.5"), ("--top-p", "0"), ("--top-p", "1.5"),
                        ("--min-p", "-0.5"), ("--min-p", "2"), ("--seed", "-1"), ("--seed", "1e3"),
                        ("--seed", "18446744073709551616"), ("--threads", "-2"), ("--threads", "two"),
                        ("--draft-tokens", "0"), ("--draft-tokens", "257"), ("--draft-bytes", "512"),
                        ("--draft-bytes", "4096"), ("--draft-bytes", ""),
                        ("--draft-conf", "-0.1"), ("--draft-conf", "1.5"), ("--draft-conf", "x"),
                        ("--lookup", "-1"), ("--lookup", "257")],
           "eval": [("--batch", "0"), ("--batch", "257"), ("--chunk", "0"), ("--chunk", "4097"),
                    ("--chunk", "8k"), ("--threads", "-1")],
           "logits": [("--threads", "x"), ("--threads", "100000")]}
    base = {"generate": ["-m", M, "-p", "x", "-n", "4"], "eval": ["-m", M, "--text", f"{M}/config.json"],
            "logits": ["-m", M, "--input", f"{M}/config.json", "--out", os.devnull]}
    for cmd, cases in bad.items():
        for opt, v in cases:
            r = run(cmd, *base[cmd], opt, v)
            name = opt.lstrip("-") if opt != "-n" else "max-bytes"
            check(r.returncode != 0 and f"--{name}".encode() in r.stderr and not r.stdout,
                  f"{cmd} {opt} {v!r}: rc {r.returncode}, {r.stderr[-200:]!r}")
    r = run("generate", *base["generate"], "--draft-bytes", "4096")
    check(b"out of range" in r.stderr and b"511" in r.stderr, f"the range is named: {r.stderr!r}")
    for cmd, extra in [("generate", ["--temperature", "0.5", "--top-p", "1", "--min-p", "0", "--seed",
                                     "18446744073709551615", "--draft-bytes", "511", "--threads", "1"]),
                       ("eval", ["--batch", "256", "--chunk", "1"]), ("logits", ["--threads", "0"])]:
        r = run(cmd, *base[cmd], *extra)
        check(r.returncode == 0, f"{cmd} {extra}: {r.stderr[-200:]!r}")
    print("ok   test_numeric_options")


def test_logits_match_reference(tmp):
    for name, inp_kind in [("tiny-byte-tied", "bytes"), ("tiny-subword-1000", "ids")]:
        exp = json.load(open(f"{FIX}/{name}/expected.json"))
        ids = exp["prompt_bytes"]
        inp = os.path.join(tmp, name + ".in")
        with open(inp, "wb") as f:
            f.write(bytes(ids) if inp_kind == "bytes" else struct.pack("<%di" % len(ids), *ids))
        out = os.path.join(tmp, name + ".out")
        r = run("logits", "-m", f"{FIX}/{name}", "--input", inp, "--out", out)
        check(r.returncode == 0, f"logits {name}: {r.stderr.decode()}")
        got, ref = floats(out), floats(f"{FIX}/{name}/logits.f32.f32")
        check(len(got) == len(ref), f"logits {name}: {len(got)} values, reference {len(ref)}")
        err = max(abs(a - b) for a, b in zip(got, ref)) / max(abs(b) for b in ref)
        check(err < 1e-4, f"logits {name}: relative error {err}")


def test_generate_greedy_matches_hf(tmp):
    exp = json.load(open(f"{FIX}/tiny-byte-tied/expected.json"))
    pf = os.path.join(tmp, "prompt.bin")
    open(pf, "wb").write(bytes(exp["prompt_bytes"]))
    n = len(exp["greedy_continuation"])
    r = run("generate", "-m", f"{FIX}/tiny-byte-tied", "--prompt-file", pf, "-n", str(n))
    check(r.returncode == 0 and r.stdout == bytes(exp["greedy_continuation"]), "greedy continuation != HF")


def test_generate_seeded_and_stop():
    args = ["generate", "-m", f"{FIX}/tiny-byte-tied/model.bf16.safetensors", "-p", "The story",
            "-n", "64", "--temperature", "1.0", "--top-k", "40", "--seed", "7"]
    a, b = run(*args, "--threads", "1"), run(*args, "--threads", "2")
    check(a.returncode == 0 and len(a.stdout) == 64, "seeded generate runs")
    check(a.stdout == b.stdout, "seeded output depends on the thread count")
    c = run(*args[:-2], "--seed", "8")
    check(c.stdout != a.stdout, "a different seed gives different bytes")
    stop = a.stdout[20:23]
    d = run(*args, "--stop", stop)  # raw bytes: a stop need not be UTF-8
    cut = a.stdout.find(stop)
    check(d.returncode == 0 and d.stdout == a.stdout[:cut], "stop string cuts the output before it")


def test_eval_matches_logits(tmp):
    text = b"The quick brown fox.\nJumps over\n\f\nA second document\twith a tab.\n\f\nx\n"
    tf = os.path.join(tmp, "t.txt")
    open(tf, "wb").write(text)
    # independent computation: per document, logits of every position, bits of the next byte
    bits, n = 0.0, 0
    for doc in text.split(b"\f\n"):
        if not doc:
            continue
        inp, out = os.path.join(tmp, "d.in"), os.path.join(tmp, "d.out")
        open(inp, "wb").write(doc)
        run("logits", "-m", f"{FIX}/tiny-byte-tied", "--input", inp, "--out", out)
        lg = floats(out)
        for i in range(len(doc) - 1):
            row = lg[256 * i: 256 * (i + 1)]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            bits += (lse - row[doc[i + 1]]) / math.log(2)
            n += 1
    want = bits / n
    outs = []
    for extra in [[], ["--batch", "1", "--chunk", "5"], ["--batch", "3", "--chunk", "2", "--threads", "1"]]:
        r = run("eval", "-m", f"{FIX}/tiny-byte-tied", "--text", tf, *extra)
        check(r.returncode == 0, f"eval {extra}: {r.stderr.decode()}")
        kv = dict(line.split() for line in r.stdout.decode().splitlines())
        outs.append(kv["bits_per_byte"])
        check(int(kv["scored_bytes"]) == n and int(kv["documents"]) == 3, f"eval counts {kv}")
        check(abs(float(kv["bits_per_byte"]) - want) < 1e-4, f"eval {kv['bits_per_byte']} vs {want}")
    check(len(set(outs)) == 1, f"eval depends on batching: {outs}")


def test_bundled_models_match_trainer(tmp):
    """The C engine loads the shipped exports and gives the trainer's log-probabilities
    (tests/train/ref_<model>.json, written by tools/train/train.py --ref-json)."""
    for name, vocab in [("mambabyte-small", 256), ("drafter-small", 4096)]:
        ref = json.load(open(f"tests/train/ref_{name}.json"))
        ids = ref["ids"]
        inp, out = os.path.join(tmp, name + ".in"), os.path.join(tmp, name + ".out")
        with open(inp, "wb") as f:
            f.write(bytes(ids) if vocab == 256 else struct.pack("<%di" % len(ids), *ids))
        r = run("logits", "-m", f"models/{name}", "--input", inp, "--out", out)
        check(r.returncode == 0, f"logits {name}: {r.stderr.decode()}")
        lg = floats(out)
        check(len(lg) == vocab * len(ids), f"{name}: logits shape")
        worst = 0.0
        for i in range(len(ids) - 1):
            row = lg[vocab * i: vocab * (i + 1)]
            m = max(row)
            lse = m + math.log(sum(math.exp(v - m) for v in row))
            worst = max(worst, abs(row[ids[i + 1]] - lse - ref["target_logprob"][i]))
        check(worst < 2e-3, f"{name}: engine vs trainer log-prob differ by {worst}")


def test_speculative_equals_plain():
    """generate --draft (the bundled drafter proposes, the byte model verifies) and --lookup
    (prompt lookup, alone or with the drafter) write exactly what plain decoding writes: greedy
    and sampled, any draft length, prompts that end inside a token or a UTF-8 character, byte
    limits down to 0 and 1, stop strings."""
    M, DR = "models/mambabyte-small", "models/drafter-small"
    cases = [("It was a dark and stormy night", [], ["--draft-bytes", "32", "--draft-tokens", "12"], "80", []),
             ("It was a dark and stormy night", [], ["--draft-bytes", "32", "--draft-conf", "0"], "80", []),
             ("She said, \"I", ["--temperature", "0.9", "--seed", "4"], ["--draft-bytes", "24", "--draft-conf", "0.5"],
              "60", []),
             ("The old man said: \"", ["--temperature", "0.8", "--seed", "5", "--top-k", "40"],
              ["--draft-bytes", "5"], "60", ["--stop", "\n\n"]),
             ("caf\u00e9 na\u00efve \u2014 ", ["--temperature", "1.0", "--top-p", "0.9", "--seed", "2"],
              ["--draft-bytes", "3"], "40", []),
             ("Chapter I.\n\nThe", [], ["--draft-bytes", "1"], "40", ["--stop", "the"]),
             ("ends with a space ", ["--temperature", "0.7", "--min-p", "0.1"], [], "60", []),
             ("x", [], ["--draft-bytes", "8"], "2", []),
             ("x", [], [], "1", []),
             ("It was", [], [], "0", []),
             ("CHAPTER I.\n\nThe", [], ["--lookup", "4"], "80", []),
             ("It was a dark and stormy night", ["--temperature", "0.8", "--seed", "3"],
              ["--lookup", "3", "--draft-bytes", "16"], "60", []),
             ("CHAPTER I.\n\nThe", [], ["--lookup", "4", "--draft-bytes", "4"], "80", ["--stop", "story of the s"])]
    for prompt, sm, dr, n, extra in cases:
        plain = run("generate", "-m", M, "-p", prompt, "-n", n, *sm, *extra)
        check(plain.returncode == 0, f"plain generate: {plain.stderr.decode()}")
        r = run("generate", "-m", M, *([] if "--lookup" in dr and len(dr) == 2 else ["--draft", DR]), *dr,
                "-p", prompt, "-n", n, *sm, *extra, "--stats")
        check(r.returncode == 0, f"speculative generate: {r.stderr.decode()}")
        check(r.stdout == plain.stdout,
              f"speculative != plain for {prompt!r} {sm} {dr} n={n}: {r.stdout[:80]!r} vs {plain.stdout[:80]!r}")
        check(b"speculative:" in r.stderr, "--stats reports the speculation")
        if "--lookup" not in dr and n not in ("0", "1"):  # the drafter's every round: by position
            err = r.stderr.decode()
            acc = int(re.search(r"bytes drafted, (\d+) accepted", err).group(1))
            pos = re.search(r"kept by position \(kept/drafted\):(.*)", err)
            kept = [tuple(int(v) for v in kd.split("/")) for kd in pos.group(1).split()] if pos else []
            check(sum(k for k, _ in kept) == acc and all(k <= d for k, d in kept) and
                  all(a[1] >= b[1] for a, b in zip(kept, kept[1:])),
                  f"--stats: kept by position {kept} does not add up to {acc} accepted")
    r = run("generate", "-m", M, "--draft", FIX + "/tiny-subword-1000", "-p", "x")
    check(r.returncode != 0 and b"tokenizer.model" in r.stderr, "a drafter folder without tokenizer.model is refused")
    r = run("generate", "-m", M, "--draft", M, "-p", "x")
    check(r.returncode != 0, "a drafter whose vocabulary is not its tokenizer's is refused")
    r = run("generate", "-m", M, "--draft", DR, "--draft-bytes", "0", "-p", "x")
    check(r.returncode != 0 and b"out of range" in r.stderr, "--draft-bytes 0 is refused")
    r = run("generate", "-m", M, "--lookup", "-1", "-p", "x")
    check(r.returncode != 0 and b"out of range" in r.stderr, "--lookup -1 is refused")
    print(f"ok   test_speculative_equals_plain ({len(cases)} cases)")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        test_help_and_errors()
        test_numeric_options()
        test_logits_match_reference(tmp)
        test_generate_greedy_matches_hf(tmp)
        test_generate_seeded_and_stop()
        test_eval_matches_logits(tmp)
        test_bundled_models_match_trainer(tmp)
        test_speculative_equals_plain()
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("ok   test_cli")


if __name__ == "__main__":
    main()
