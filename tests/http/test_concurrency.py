"""Continuous batching must not change a single byte: 32 concurrent seeded requests give what
each gives alone; 512 concurrent streams (more than the slots, so most queue) all complete, and
afterwards no slot is held and nothing waits."""
import threading

from mbserver import Server, b64, run

SRV = None


def parallel(fn, args):
    out = [None] * len(args)
    errors = []

    def work(i):
        try:
            out[i] = fn(args[i])
        except Exception as e:  # reported below, with the request that failed
            errors.append((args[i], repr(e)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    return out


def request(i):
    # prompts of different lengths, so prefill chunks and decode steps mix in the same batches
    return {"prompt": "x" * (1 + 37 * i % 300) + f"request {i}", "max_tokens": 64 + 5 * i,
            "seed": 1000 + i, "temperature": 0.8, "top_k": 40 if i % 2 else 0, "top_p": 0.95 if i % 3 else 1.0}


def test_32_concurrent_equal_alone():
    reqs = [request(i) for i in range(32)]
    alone = [b64(SRV.post("/v1/generate", r)["bytes_base64"]) for r in reqs]
    together = parallel(lambda r: b64(SRV.post("/v1/generate", r)["bytes_base64"]), reqs)
    for i, (a, t) in enumerate(zip(alone, together)):
        assert a == t, f"request {i} differs under load"
    # and streamed concurrently too
    streamed = parallel(lambda r: b"".join(b64(e["bytes_base64"]) for e in SRV.stream("/v1/generate", r)[:-2]), reqs)
    assert streamed == alone
    m = SRV.metrics()
    assert m['mambabyte_batch_sequences_bucket{le="1"}'] < m["mambabyte_batch_sequences_count"], "never batched"


def test_512_concurrent_streams():
    reqs = [{"prompt": f"stream {i}: ", "max_tokens": 48, "seed": i} for i in range(512)]
    before = SRV.metrics()

    def one(r):
        ev = SRV.stream("/v1/completions", r)
        assert ev[-2]["choices"][0]["finish_reason"] == "length", ev[-2]
        return "".join(e["choices"][0]["text"] for e in ev[:-1])

    texts = parallel(one, reqs)
    assert len(texts) == 512
    SRV.wait_idle()
    ok_name = 'mambabyte_requests_total{code="200"}'
    m = SRV.wait_counter(ok_name, before[ok_name] + 512)
    ok = m[ok_name] - before[ok_name]
    assert ok >= 512, ok
    errors = {k: v - before.get(k, 0) for k, v in m.items()
              if k.startswith("mambabyte_requests_total") and '"200"' not in k and v != before.get(k, 0)}
    assert not errors, errors
    assert m["mambabyte_slots_idle"] == 0 and m["mambabyte_slots_free"] == m["mambabyte_slots_total"], m
    # a sample of them, alone, gives the same text
    for i in (0, 255, 511):
        alone = SRV.post("/v1/completions", reqs[i])["choices"][0]["text"]
        assert alone == texts[i], i


def main():
    global SRV
    with Server("--slots", "64", "--max-batch-tokens", "96", "--prefill-chunk", "16", "--queue-limit", "1024") as s:
        SRV = s
        run([test_32_concurrent_equal_alone, test_512_concurrent_streams])


if __name__ == "__main__":
    main()
