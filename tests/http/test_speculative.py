"""Speculative decoding in the daemon (--lookup: prompt lookup drafts, the model verifies) gives
exactly the bytes of a daemon that does not speculate: greedy and sampled, stop strings, short
limits, streamed, concurrent, and sessions continued over several requests; and it does draft
(the /metrics counters move)."""
import base64
import threading

from mbserver import Server, b64, check_positions, position_deltas, run

PLAIN = SPEC = None
PROMPTS = [b"abcabcabcabcabcabcabc", b"the cat and the dog and the cat and the ", b"\x00\x01\x02\x00\x01\x02\xff",
           b"Once upon a time"]
SETTINGS = [{"temperature": 0}, {"temperature": 1.0, "seed": 5}, {"temperature": 0.8, "top_k": 20, "seed": 9},
            {"temperature": 1.2, "top_p": 0.9, "seed": 2}]


def gen(srv, prompt, n=80, **kw):
    body = dict({"prompt_base64": base64.b64encode(prompt).decode(), "max_tokens": n, "seed": 1}, **kw)
    r = srv.post("/v1/generate", body)
    return b64(r["bytes_base64"]), r["finish_reason"]


def test_same_bytes():
    before = SPEC.metrics()
    pos_before = SPEC.by_position("lookup")
    for p in PROMPTS:
        for st in SETTINGS:
            for n in (1, 2, 80):
                a, b = gen(PLAIN, p, n, **st), gen(SPEC, p, n, **st)
                assert a == b, (p, st, n, a, b)
    after = SPEC.metrics()
    drafted = after["mambabyte_spec_drafted_bytes_total"] - before["mambabyte_spec_drafted_bytes_total"]
    kept = after["mambabyte_spec_accepted_bytes_total"] - before["mambabyte_spec_accepted_bytes_total"]
    assert drafted > 100 and 0 < kept < drafted, (drafted, kept)
    drafted_at, kept_at = position_deltas(pos_before, SPEC.by_position("lookup"))
    check_positions(drafted_at, kept_at, drafted, kept)
    print(f"     {drafted:.0f} bytes drafted, {kept:.0f} kept; kept by draft position: "
          + " ".join(f"{k / d:.2f}" for k, d in zip(kept_at[:8], drafted_at[:8])))


def test_stop_strings():
    checked = 0
    for p in PROMPTS:
        for st in SETTINGS:
            out, _ = gen(PLAIN, p, 80, **st)
            for i in range(5, len(out) - 1):  # a printable byte the output holds, as a stop string
                if 32 <= out[i] < 127 and out[i] != 92:
                    stop = {"stop": [out[i:i + 1].decode() + (out[i + 1:i + 2].decode() if 32 <= out[i + 1] < 127 else "")]}
                    a = gen(PLAIN, p, 80, **st, **stop)
                    assert a == gen(SPEC, p, 80, **st, **stop), (p, st, stop)
                    checked += a[1] == "stop"
                    break
    assert checked >= 4, checked


def test_streamed_and_concurrent():
    want = {i: gen(PLAIN, PROMPTS[i % 4], 60, seed=i, temperature=1.0)[0] for i in range(8)}
    got = {}

    def one(i):
        body = {"prompt_base64": base64.b64encode(PROMPTS[i % 4]).decode(), "max_tokens": 60, "seed": i,
                "temperature": 1.0}
        ev = SPEC.stream("/v1/generate", body)
        got[i] = b"".join(b64(e["bytes_base64"]) for e in ev[:-1] if e.get("bytes_base64"))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert got == want, [(i, got[i], want[i]) for i in range(8) if got[i] != want[i]]


def test_sessions():
    outs = []
    for srv in (PLAIN, SPEC):
        sid = srv.post("/v1/sessions", {})["id"]
        seq = []
        for p in PROMPTS[:3]:
            r = srv.post("/v1/generate", {"prompt_base64": base64.b64encode(p).decode(), "max_tokens": 40,
                                          "session": sid, "seed": 4, "temperature": 1.0})
            seq.append(b64(r["bytes_base64"]))
        seq.append(srv.request("GET", f"/v1/sessions/{sid}")[1]["n_bytes"])
        outs.append(seq)
    assert outs[0] == outs[1], outs
    SPEC.wait_idle()


def main():
    global PLAIN, SPEC
    PLAIN = Server("--slots", "8")
    SPEC = Server("--slots", "8", "--lookup", "1")
    try:
        run([test_same_bytes, test_stop_strings, test_streamed_and_concurrent, test_sessions])
        PLAIN.stop()
        SPEC.stop()
    finally:
        for s in (PLAIN, SPEC):
            if s.proc.poll() is None:
                s.proc.kill()
                print(s.output()[-3000:])


if __name__ == "__main__":
    main()
