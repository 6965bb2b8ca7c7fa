"""Log-probabilities and echo over real HTTP (OpenAI completions shape, one entry per byte):
against `mambabyte logits` on the same text, echo + max_tokens 0 scoring equal to `mambabyte
eval`, the output's log-probabilities equal to the same text scored afterwards, streamed equal
to whole, exact under concurrent load and under speculative decoding, token strings and
text_offset as documented."""
import math
import os
import subprocess
import tempfile
import threading

from mbserver import BIN, MODEL, Server, cli_logits, run

SRV = None


def completion(body, srv=None):
    st, out, _ = (srv or SRV).request("POST", "/v1/completions", body)
    assert st == 200, f"{body} -> {st} {out}"
    return out


def token_of(b):
    return chr(b) if 0x20 <= b < 0x7F or b in (9, 10, 13) else "bytes:\\x%02x" % b


def log_softmax(row):
    mx = max(row)
    lse = mx + math.log(sum(math.exp(x - mx) for x in row))
    return [x - lse for x in row]


def score(text_bytes, k=0, srv=None):
    """echo + max_tokens 0: the logprobs object of the prompt alone."""
    out = completion({"prompt": list(text_bytes), "max_tokens": 0, "echo": True, "logprobs": k}, srv)
    ch = out["choices"][0]
    assert ch["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 0, out
    return ch["logprobs"]


def test_against_cli_logits():
    data = "Hé, world! \u2603\n\x01".encode()
    lp = score(data, k=5)
    rows = cli_logits(data)
    assert lp["tokens"] == [token_of(b) for b in data], lp["tokens"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for i in range(1, len(data)):
        ref = log_softmax(rows[i - 1])
        got = lp["token_logprobs"][i]
        assert abs(got - ref[data[i]]) < 1e-9, (i, got, ref[data[i]])
        best = sorted(range(256), key=lambda b: (-rows[i - 1][b], b))[:5]
        top = lp["top_logprobs"][i]
        want = {token_of(b): ref[b] for b in best}
        want.setdefault(token_of(data[i]), ref[data[i]])
        assert set(top) == set(want), (i, top, want)
        assert all(abs(top[t] - want[t]) < 1e-9 for t in want), (i, top, want)
        assert list(top)[:5] == [token_of(b) for b in best], "likeliest first"
    # text_offset counts characters of the text as Python indexes it
    text = data.decode()
    assert completion({"prompt": list(data), "max_tokens": 0, "echo": True})["choices"][0]["text"] == text
    want = [i for i, ch in enumerate(text) for _ in ch.encode()]
    assert lp["text_offset"] == want, (lp["text_offset"], want)


def test_echo_scoring_equals_eval():
    text = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_completions.py"), "rb").read()[:3000]
    text = text.replace(b"\f", b" ")
    lp = score(text)
    total = sum(lp["token_logprobs"][1:])
    with tempfile.NamedTemporaryFile(suffix=".txt") as f:
        f.write(text)
        f.flush()
        out = subprocess.run([BIN, "eval", "-m", MODEL, "--text", f.name, "--threads", "1"],
                             check=True, capture_output=True, text=True).stdout
    vals = dict(line.split(" ", 1) for line in out.splitlines())
    bpb, scored = float(vals["bits_per_byte"]), int(vals["scored_bytes"])
    assert scored == len(text) - 1, (scored, len(text))
    want = -bpb * scored * math.log(2)
    # eval prints bits per byte to 6 decimals
    assert abs(total - want) <= 1e-6 * scored * math.log(2) + 1e-9, (total, want)


def test_output_logprobs_equal_scoring_afterwards():
    for seed, temp in ((1, 1.0), (2, 0.7), (3, 0.0)):
        req = {"prompt": "Once upon a time", "max_tokens": 60, "seed": seed, "temperature": temp, "logprobs": 3}
        out = completion(req)["choices"][0]
        gen = completion(dict(req, logprobs=None, echo=False))["choices"][0]["text"]
        assert out["text"] == gen, "logprobs change nothing of the output"
        lp = out["logprobs"]
        assert len(lp["tokens"]) == 60 and lp["text_offset"][0] == 0
        # the same text scored as a prompt: bit-for-bit the same numbers (batch invariance)
        echo = completion(dict(req, echo=True))["choices"][0]
        whole = echo["logprobs"]
        assert echo["text"] == "Once upon a time" + out["text"]
        assert whole["token_logprobs"][16:] == lp["token_logprobs"], seed
        assert whole["top_logprobs"][16:] == lp["top_logprobs"]
        assert whole["tokens"][16:] == lp["tokens"]
        prompt = bytes(req["prompt"], "utf-8")
        scored = score(prompt + bytes(_bytes_of(lp["tokens"])), k=3)
        assert scored["token_logprobs"][16:] == lp["token_logprobs"], seed
        assert scored["top_logprobs"][16:] == lp["top_logprobs"], seed
        if temp == 0.0:  # greedy: every byte is the likeliest
            assert all(next(iter(t)) == tok for t, tok in zip(lp["top_logprobs"], lp["tokens"]))


def _bytes_of(tokens):
    for t in tokens:
        yield int(t[8:], 16) if t.startswith("bytes:\\x") else ord(t)


def test_stream_equals_whole():
    for echo in (False, True):
        req = {"prompt": "\u00e9t\u00e9 ", "max_tokens": 50, "seed": 4, "logprobs": 2, "echo": echo}
        whole = completion(req)["choices"][0]
        ev = SRV.stream("/v1/completions", req)
        chunks = [e["choices"][0] for e in ev[:-2]]
        assert "".join(c["text"] for c in chunks) == whole["text"]
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            got = [x for c in chunks for x in c["logprobs"][key]]
            assert got == whole["logprobs"][key], (echo, key)
        assert ev[-2]["choices"][0]["finish_reason"] == "length"


def test_exact_under_load():
    reqs = [{"prompt": f"Request {i}: the", "max_tokens": 40, "seed": i, "logprobs": 4, "echo": i % 2 == 0}
            for i in range(12)]
    alone = [completion(r) for r in reqs]
    got = [None] * len(reqs)

    def one(i):
        got[i] = completion(reqs[i])

    th = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    for a, b in zip(alone, got):
        assert a["choices"][0]["logprobs"] == b["choices"][0]["logprobs"]
        assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_speculative_same_logprobs():
    # prompt lookup drafts on a repetitive prompt: the log-probabilities (and bytes) are those of plain decoding
    with Server("--lookup", "2") as s:
        prompt = "abc abc abc abc abc abc abc abc abc abc "
        for seed, temp in ((1, 0.0), (2, 0.5)):
            req = {"prompt": prompt, "max_tokens": 80, "seed": seed, "temperature": temp, "logprobs": 2}
            plain = completion(dict(req, speculative={"enabled": False}), s)["choices"][0]
            spec = completion(dict(req, speculative={"lookup": 2}), s)["choices"][0]
            assert plain == spec, seed
        nat = s.post("/v1/generate", {"prompt": prompt, "max_tokens": 80, "temperature": 0, "speculative": {"lookup": 2}})
        assert nat["timings"]["drafts"] > 0, nat["timings"]


def test_logprobs_without_echo_and_limits():
    out = completion({"prompt": "x", "max_tokens": 5, "logprobs": 0, "seed": 1})["choices"][0]
    lp = out["logprobs"]
    assert len(lp["tokens"]) == 5 and all(len(t) == 1 for t in lp["top_logprobs"]), lp
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"])
    out = completion({"prompt": "x", "max_tokens": 5, "logprobs": 20, "seed": 1})["choices"][0]
    assert all(20 <= len(t) <= 21 for t in out["logprobs"]["top_logprobs"])
    # a one-byte prompt scored: only the null entry
    lp = score(b"Z")
    assert lp == {"tokens": ["Z"], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [0]}, lp
    # echo alone: the prompt comes back before the output, no logprobs
    out = completion({"prompt": "Hi", "max_tokens": 3, "echo": True, "seed": 2})["choices"][0]
    plain = completion({"prompt": "Hi", "max_tokens": 3, "seed": 2})["choices"][0]
    assert out["text"] == "Hi" + plain["text"] and out["logprobs"] is None
    # stop strings: the log-probabilities cover exactly the bytes shown
    for seed in range(20):
        o = completion({"prompt": "The", "max_tokens": 60, "seed": seed, "logprobs": 1, "stop": ["e"]})["choices"][0]
        if o["finish_reason"] == "stop":
            shown = bytes(_bytes_of(o["logprobs"]["tokens"]))
            assert shown.decode("utf-8", "replace") == o["text"] and b"e" not in shown, o
            break
    else:
        raise AssertionError("no stop in 20 seeds")


def main():
    global SRV
    with Server() as SRV:
        run([test_against_cli_logits, test_echo_scoring_equals_eval, test_output_logprobs_equal_scoring_afterwards,
             test_stream_equals_whole, test_exact_under_load, test_logprobs_without_echo_and_limits])
        SRV.wait_idle()
    run([test_speculative_same_logprobs])


if __name__ == "__main__":
    main()
