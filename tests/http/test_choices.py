"""Several completions in one request over real HTTP: n (forks of the prompt's state: the prompt
is read once), best_of (the n of highest mean log-probability per byte), a list of prompts
(choices in order, index counting across them). Completion i of a seeded request equals the same
prompt alone with seed + i. Slots are never leaked: limits, hang-ups, no room."""
import json
import socket
import threading
import time

from mbserver import Server, run

SRV = None


def completion(body, srv=None):
    st, out, _ = (srv or SRV).request("POST", "/v1/completions", body)
    assert st == 200, f"{body} -> {st} {out}"
    return out


def alone(prompt, seed, srv=None, **kw):
    return completion(dict({"prompt": prompt, "seed": seed}, **kw), srv)["choices"][0]


def test_n_equals_derived_seeds():
    for extra in ({}, {"logprobs": 2}, {"logprobs": 1, "echo": True}, {"temperature": 0.6, "top_k": 20},
                  {"frequency_penalty": 0.5, "stop": ["\n"]}):
        req = dict({"prompt": "Once upon a time", "max_tokens": 40, "n": 4, "seed": 100}, **extra)
        out = completion(req)
        assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3], out
        texts, used = set(), 0
        for i, c in enumerate(out["choices"]):
            a = completion(dict(req, n=1, seed=100 + i))
            assert c == dict(a["choices"][0], index=i), (extra, i, c, a)
            texts.add(c["text"])
            used += a["usage"]["completion_tokens"]
        assert len(texts) > 1, "each completion draws its own bytes"
        assert out["usage"] == {"prompt_tokens": 16, "completion_tokens": used, "total_tokens": 16 + used}


def test_prompt_read_once():
    prompt = "x" * 300
    before = SRV.metrics()["mambabyte_prompt_bytes_total"]
    out = completion({"prompt": prompt, "max_tokens": 5, "n": 8, "seed": 1})
    after = SRV.metrics()["mambabyte_prompt_bytes_total"]
    assert len(out["choices"]) == 8
    assert after - before == 300, f"the prompt is fed once for 8 completions: {after - before} bytes"
    for i, c in enumerate(out["choices"]):
        assert c["text"] == alone(prompt, 1 + i, max_tokens=5)["text"], i


def test_list_of_prompts():
    prompts = ["The cat", [72, 105], "Z", "\u00e9t\u00e9"]
    out = completion({"prompt": prompts, "max_tokens": 12, "seed": 7, "n": 2, "logprobs": 1})
    assert [c["index"] for c in out["choices"]] == list(range(8))
    for i, c in enumerate(out["choices"]):
        a = alone(prompts[i // 2], 7 + i, max_tokens=12, logprobs=1)
        assert c == dict(a, index=i), (i, c, a)
    assert out["usage"]["prompt_tokens"] == 7 + 2 + 1 + 5, out["usage"]
    # lm-evaluation-harness style: a batch of texts scored at once
    texts = ["Hello world", "Goodbye moon", "a"]
    out = completion({"prompt": texts, "max_tokens": 0, "echo": True, "logprobs": 0})
    for i, c in enumerate(out["choices"]):
        a = alone(texts[i], 0, max_tokens=0, echo=True, logprobs=0)
        assert c["text"] == texts[i] and c["logprobs"] == a["logprobs"], i


def test_best_of():
    req = {"prompt": "It was", "max_tokens": 24, "seed": 50, "n": 2, "best_of": 6}
    out = completion(req)
    cands = []
    for i in range(6):
        a = alone("It was", 50 + i, max_tokens=24, logprobs=0)
        lp = a["logprobs"]["token_logprobs"]
        cands.append((-sum(lp) / len(lp), i, a["text"]))
    best = sorted(cands)[:2]
    assert [c["text"] for c in out["choices"]] == [t for _, _, t in best], (out, cands)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    # best_of == n: the completions themselves, in order
    out = completion(dict(req, best_of=2))
    assert [c["text"] for c in out["choices"]] == [alone("It was", 50 + i, max_tokens=24)["text"] for i in range(2)]
    for bad in ({"n": 3, "best_of": 2}, {"best_of": 3, "stream": True}, {"n": 0}, {"n": 65}, {"best_of": 1.5},
                {"prompt": ["a"] * 9, "n": 8}, {"prompt": ["a"] * 65}, {"prompt": ["a", ""]}, {"prompt": ["a", 5]}):
        st, body, _ = SRV.request("POST", "/v1/completions", dict({"prompt": "x", "max_tokens": 2}, **bad))
        assert st == 400 and body["error"]["code"] == "invalid_value", (bad, st, body)


def test_slots_limits_and_hang_up():
    with Server("--slots", "3") as s:
        st, body, _ = s.request("POST", "/v1/completions", {"prompt": "x", "n": 4, "max_tokens": 2})
        assert st == 400 and "slots" in body["error"]["message"], body
        # more completions than free slots at once: they wait for room, none is lost
        outs = [None] * 6

        def one(i):
            outs[i] = completion({"prompt": f"p{i}", "n": 3 if i % 2 else 2, "max_tokens": 30, "seed": i}, s)

        th = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        for i, o in enumerate(outs):
            assert len(o["choices"]) == (3 if i % 2 else 2)
            for k, c in enumerate(o["choices"]):
                assert c["text"] == alone(f"p{i}", i + k, s, max_tokens=30)["text"], (i, k)
        # a client that leaves: every completion is cancelled, every slot comes back
        sock = socket.create_connection(("127.0.0.1", s.port))
        body = json.dumps({"prompt": "long", "n": 3, "max_tokens": 100000 // 100, "seed": 1}).encode()
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.3)
        sock.close()
        s.wait_idle()


def main():
    global SRV
    with Server() as SRV:
        run([test_n_equals_derived_seeds, test_prompt_read_once, test_list_of_prompts, test_best_of])
        SRV.wait_idle()
    run([test_slots_limits_and_hang_up])


if __name__ == "__main__":
    main()
