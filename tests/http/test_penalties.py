"""presence_penalty, frequency_penalty, repetition_penalty and logit_bias over real HTTP: greedy
output equal to a reference that applies them (as README documents) to `mambabyte logits` of the
same text; a seeded draw changed by them; and the same bytes with speculative decoding (prompt
lookup) as without, on both endpoints, with drafts verified."""
import numpy as np

from mbserver import Server, b64, cli_logits, run

SRV = None


def reference_greedy(prompt, out, presence=0.0, frequency=0.0, repetition=1.0, bias=None):
    """The byte greedy decoding picks at each output position, penalties applied in float32
    as the server does: repetition (bytes of prompt or output), then presence and frequency
    (output counts), then bias."""
    rows = np.array(cli_logits(prompt + out), dtype=np.float32)
    f32 = np.float32
    b = np.zeros(256, dtype=np.float32)
    for k, v in (bias or {}).items():
        b[int(k)] = f32(v)
    picks = []
    cnt = np.zeros(256, dtype=np.int64)
    seen = np.zeros(256, dtype=bool)
    seen[list(prompt)] = True
    for i in range(len(out)):
        l = rows[len(prompt) + i - 1].copy()
        for v in range(256):
            x = l[v]
            if f32(repetition) != f32(1) and (cnt[v] or seen[v]):
                x = x / f32(repetition) if x > 0 else x * f32(repetition)
            if cnt[v]:
                x = x - (f32(presence) + f32(frequency) * f32(cnt[v]))
            l[v] = x + b[v]
        picks.append(int(np.argmax(l)))  # lowest index on ties, as the server's argmax
        cnt[out[i]] += 1
        seen[out[i]] = True
    return bytes(picks)


def generate(body, srv=None):
    out = (srv or SRV).post("/v1/generate", body)
    return b64(out["bytes_base64"]), out


CASES = [
    {"presence_penalty": 2.0},
    {"frequency_penalty": 0.7},
    {"repetition_penalty": 1.8},
    {"repetition_penalty": 0.6},
    {"presence_penalty": -0.5, "frequency_penalty": 0.3, "repetition_penalty": 1.2},
    {"logit_bias": {"101": -5.5, "32": -100, "0": 2}},
    {"frequency_penalty": 2, "logit_bias": {"97": 3}},
]


def test_greedy_equals_reference():
    prompt = b"the cat sat on the mat. the cat sat on the"
    plain, _ = generate({"prompt": prompt.decode(), "max_tokens": 48, "temperature": 0})
    changed = 0
    for case in CASES:
        out, _ = generate(dict({"prompt": prompt.decode(), "max_tokens": 48, "temperature": 0}, **case))
        ref = reference_greedy(prompt, out, case.get("presence_penalty", 0), case.get("frequency_penalty", 0),
                               case.get("repetition_penalty", 1), case.get("logit_bias"))
        assert out == ref, (case, out, ref)
        changed += out != plain
        # the OpenAI endpoint applies them the same way
        c = SRV.post("/v1/completions", dict({"prompt": prompt.decode(), "max_tokens": 48, "temperature": 0}, **case))
        assert c["choices"][0]["text"] == out.decode("utf-8", "replace"), case
    assert changed >= len(CASES) - 2, "penalties must change greedy output"
    # a byte banned by its bias never comes
    out, _ = generate({"prompt": "aaaa", "max_tokens": 64, "temperature": 1, "seed": 3, "logit_bias": {"97": -100}})
    assert b"a" not in out
    out, _ = generate({"prompt": "x", "max_tokens": 20, "temperature": 1, "seed": 3, "logit_bias": {"65": 100}})
    assert out == b"A" * 20, out


def test_seeded_draws_change():
    req = {"prompt": "Hello there", "max_tokens": 64, "temperature": 1.0, "seed": 7}
    base, _ = generate(req)
    again, _ = generate(dict(req, presence_penalty=0, frequency_penalty=0, repetition_penalty=1, logit_bias={}))
    assert base == again, "neutral penalties change nothing"
    pen, _ = generate(dict(req, frequency_penalty=2.0))
    assert pen != base
    # penalties discourage repeats: fewer repeated bytes than without
    rep, _ = generate(dict(req, temperature=0, max_tokens=120))
    pen, _ = generate(dict(req, temperature=0, max_tokens=120, frequency_penalty=1.0))
    assert len(set(pen)) > len(set(rep)), (pen, rep)


def test_speculative_equals_plain():
    with Server("--lookup", "2") as s:
        prompt = "abc abc abc abc abc abc abc abc abc abc abd abd abc abc abc "
        drafts = 0
        for case in CASES:
            for seed, temp in ((1, 0.0), (2, 0.8)):
                req = dict({"prompt": prompt, "max_tokens": 96, "seed": seed, "temperature": temp}, **case)
                plain, _ = generate(dict(req, speculative={"enabled": False}), s)
                spec, nat = generate(dict(req, speculative={"lookup": 2}), s)
                assert spec == plain, (case, seed, spec, plain)
                drafts += nat["timings"]["drafts"]
                c = s.post("/v1/completions", dict(req, speculative={"lookup": 3}))
                assert c["choices"][0]["text"] == plain.decode("utf-8", "replace"), case
        assert drafts > 20, f"speculation must have run: {drafts} drafts"
        s.wait_idle()


def main():
    global SRV
    with Server() as SRV:
        run([test_greedy_equals_reference, test_seeded_draws_change])
    run([test_speculative_equals_plain])


if __name__ == "__main__":
    main()
