"""Completions over real HTTP: non-streamed and streamed answers agree byte for byte, match the
CLI's `generate` for the same seed, hold back partial UTF-8, and stop at stop strings."""
import subprocess

from mbserver import BIN, MODEL, Server, b64, run

SRV = None


def cli_generate(prompt, n, seed, temperature):
    out = subprocess.run([BIN, "generate", "-m", MODEL, "-p", prompt, "-n", str(n), "--seed", str(seed),
                          "--temperature", str(temperature)], capture_output=True, check=True)
    return out.stdout


def test_health_models_metrics():
    st, body, _ = SRV.request("GET", "/health")
    assert st == 200 and body == {"status": "ok"}, body
    st, body, _ = SRV.request("GET", "/v1/models")
    assert st == 200 and body["data"][0]["id"] == "tiny-byte-tied" and body["data"][0]["n_vocab"] == 256, body
    m = SRV.metrics()
    assert m["mambabyte_slots_total"] == 8, m


def test_completion_shape_and_cli_parity():
    body = SRV.post("/v1/completions", {"prompt": "Hello, world", "max_tokens": 40, "seed": 11,
                                        "temperature": 0.9, "user": "t"})
    assert body["object"] == "text_completion" and body["model"] == "tiny-byte-tied", body
    ch = body["choices"][0]
    assert ch["index"] == 0 and ch["finish_reason"] == "length", ch
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}, body
    native = SRV.post("/v1/generate", {"prompt": "Hello, world", "max_tokens": 40, "seed": 11,
                                       "temperature": 0.9})
    exact = b64(native["bytes_base64"])
    assert len(exact) == 40
    assert exact == cli_generate("Hello, world", 40, 11, 0.9), "server and CLI disagree"
    # text is the bytes with invalid UTF-8 replaced, exactly as Python does it
    assert ch["text"] == exact.decode("utf-8", "replace") == native["text"]
    assert native["seed"] == 11 and native["finish_reason"] == "length"
    t = native["timings"]
    assert t["total_ms"] >= t["ttfb_ms"] >= 0 and t["bytes_per_second"] > 0, t


def test_stream_equals_non_stream():
    for seed in (1, 2, 3):
        req = {"prompt": "The quick brown fox", "max_tokens": 200, "seed": seed, "temperature": 1.0}
        whole = SRV.post("/v1/completions", req)["choices"][0]["text"]
        events = SRV.stream("/v1/completions", req)
        text = "".join(e["choices"][0]["text"] for e in events[:-1])
        assert text == whole, (seed, text, whole)
        assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
        assert events[-2]["choices"][0]["finish_reason"] == "length"
        # native: the chunks' exact bytes concatenate to the whole answer's bytes
        nat = SRV.post("/v1/generate", req)
        ev = SRV.stream("/v1/generate", req)
        chunks = b"".join(b64(e["bytes_base64"]) for e in ev[:-2])
        assert chunks == b64(nat["bytes_base64"]), seed
        assert "".join(e["text"] for e in ev[:-2]) == nat["text"]
        assert ev[-2]["object"] == "generation.done" and ev[-2]["usage"]["completion_bytes"] == 200


def test_unseeded_reports_a_replayable_seed():
    a = SRV.post("/v1/generate", {"prompt": "abc", "max_tokens": 30})
    b = SRV.post("/v1/generate", {"prompt": "abc", "max_tokens": 30, "seed": a["seed"]})
    assert a["bytes_base64"] == b["bytes_base64"]


def test_utf8_hold_back_in_stream():
    # Every streamed chunk must be whole UTF-8 on its own: split sequences are held back.
    for seed in range(4):
        ev = SRV.stream("/v1/generate", {"prompt": "\u00e9t\u00e9 ", "max_tokens": 120, "seed": seed})
        for e in ev[:-2]:
            raw = b64(e["bytes_base64"])
            assert e["text"] == raw.decode("utf-8", "replace"), (raw, e["text"])
            assert raw, e


def test_stop_strings():
    tried = 0
    for seed in range(50):
        req = {"prompt": "stop me", "max_tokens": 120, "seed": seed}
        full = b64(SRV.post("/v1/generate", req)["bytes_base64"])
        # a stop string made of printable ASCII taken from the middle of the output
        at = next((i for i in range(20, 100) if all(33 <= c < 127 for c in full[i:i + 3])), None)
        if at is None:
            continue
        stop = full[at:at + 3].decode()
        cut = full[: full.index(stop.encode())]
        got = SRV.post("/v1/generate", dict(req, stop=[stop, "\u2603never"]))
        assert b64(got["bytes_base64"]) == cut and got["finish_reason"] == "stop", (got, cut)
        ev = SRV.stream("/v1/generate", dict(req, stop=stop))
        assert b"".join(b64(e["bytes_base64"]) for e in ev[:-2]) == cut
        assert ev[-2]["finish_reason"] == "stop"
        # a stop string that never appears changes nothing
        got = SRV.post("/v1/generate", dict(req, stop="\u2603\u2603\u2603"))
        assert b64(got["bytes_base64"]) == full and got["finish_reason"] == "length"
        tried += 1
        if tried == 3:
            return
    raise AssertionError("no output with a printable stop string found")


def test_greedy_and_prompt_base64():
    a = SRV.post("/v1/generate", {"prompt_base64": "AAEC/w==", "max_tokens": 50, "temperature": 0})
    b = SRV.post("/v1/generate", {"prompt_base64": "AAEC/w==", "max_tokens": 50, "temperature": 0, "seed": 99})
    assert a["bytes_base64"] == b["bytes_base64"], "greedy must not depend on the seed"
    assert a["usage"]["prompt_bytes"] == 4


def main():
    global SRV
    with Server("--slots", "8") as s:
        SRV = s
        run([test_health_models_metrics, test_completion_shape_and_cli_parity, test_stream_equals_non_stream,
             test_unseeded_reports_a_replayable_seed, test_utf8_hold_back_in_stream, test_stop_strings,
             test_greedy_and_prompt_base64])
        s.wait_idle()


if __name__ == "__main__":
    main()
