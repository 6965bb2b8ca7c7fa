"""Several completions streamed over real HTTP (n, a list of prompts), as OpenAI and vLLM send
them: each event carries one choice with its index, the choices' events interleave as they come,
each choice ends with an event of its own that has its finish_reason, then (with
stream_options.include_usage) one usage chunk with no choices that sums every completion, then
[DONE]. Each choice's events put together equal the same request not streamed. A client that
hangs up frees every slot; best_of above n cannot stream."""
import json
import re
import socket
import threading
import time

from mbserver import Server, parse_sse, run
from test_connections import dechunk, post_raw, read_all

SRV = None
LP_KEYS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


def completion(body, srv=None):
    st, out, _ = (srv or SRV).request("POST", "/v1/completions", body)
    assert st == 200, f"{body} -> {st} {out}"
    return out


def gather(events):
    """The choices the events spell, by index ({text, index, logprobs, finish_reason} as a whole
    answer writes them), and the usage chunk (None: none). Checks each event's shape."""
    assert events[-1] == "[DONE]", events[-3:]
    choices, usage = {}, None
    for k, e in enumerate(events[:-1]):
        assert e["object"] == "text_completion" and e["id"] == events[0]["id"], e
        if not e["choices"]:
            assert k == len(events) - 2 and "usage" in e, ("the usage chunk comes last", k, e)
            usage = e["usage"]
            continue
        assert len(e["choices"]) == 1, e
        c = e["choices"][0]
        d = choices.setdefault(c["index"], {"text": "", "index": c["index"], "logprobs": None,
                                            "finish_reason": None})
        assert d["finish_reason"] is None, ("an event after the choice's last", c)
        d["text"] += c["text"]
        d["finish_reason"] = c["finish_reason"]
        if c["finish_reason"] is not None:
            assert c["text"] == "" and c["logprobs"] is None, c
        if c["logprobs"] is not None:
            if d["logprobs"] is None:
                d["logprobs"] = {k: [] for k in LP_KEYS}
            for key in LP_KEYS:
                d["logprobs"][key] += c["logprobs"][key]
    return choices, usage


def test_n_streamed_equals_whole():
    for extra in ({}, {"logprobs": 2}, {"logprobs": 1, "echo": True}, {"temperature": 0.6, "top_k": 20},
                  {"frequency_penalty": 0.5, "stop": ["\n", "e "]}, {"prompt": "\u00e9t\u00e9 \u2603"}):
        req = dict({"prompt": "Once upon a time", "max_tokens": 60, "n": 3, "seed": 100}, **extra)
        whole = completion(req)
        events = SRV.stream("/v1/completions", req)
        choices, usage = gather(events)
        assert usage is None and not any("usage" in e for e in events[:-1]), "usage only when asked"
        assert sorted(choices) == [0, 1, 2], choices.keys()
        for i, c in enumerate(whole["choices"]):
            assert choices[i] == c, (extra, i, choices[i], c)
        # the last events are the finish reasons, each choice's once
        finals = [e for e in events[:-1] if e["choices"][0]["finish_reason"]]
        assert len(finals) == 3, finals


def test_list_of_prompts_streamed():
    prompts = ["The cat", "\u00e9t\u00e9"]
    req = {"prompt": prompts, "n": 2, "max_tokens": 30, "seed": 7, "logprobs": 1}
    whole = completion(req)
    choices, _ = gather(SRV.stream("/v1/completions", req))
    assert sorted(choices) == [0, 1, 2, 3], choices.keys()
    for i in range(4):
        assert choices[i] == whole["choices"][i], i
        alone = completion({"prompt": prompts[i // 2], "seed": 7 + i, "max_tokens": 30, "logprobs": 1})
        assert choices[i] == dict(alone["choices"][0], index=i), i
    # best_of == n streams: the completions themselves
    choices, _ = gather(SRV.stream("/v1/completions", dict(req, best_of=2)))
    assert [choices[i]["text"] for i in range(4)] == [c["text"] for c in whole["choices"]]


def test_include_usage_sums():
    req = {"prompt": ["ab", "cde"], "n": 3, "max_tokens": 25, "seed": 3, "stop": "q",
           "stream_options": {"include_usage": True}}
    whole = completion(req)
    events = SRV.stream("/v1/completions", req)
    choices, usage = gather(events)
    assert usage == whole["usage"], (usage, whole["usage"])
    assert usage["prompt_tokens"] == 5, usage
    assert usage["completion_tokens"] == sum(len(c["text"].encode()) for c in choices.values()) or \
        any("\ufffd" in c["text"] for c in choices.values()), (usage, choices)
    assert events[-2]["choices"] == [] and all("usage" not in e for e in events[:-2])
    # one completion keeps its usage chunk too
    one = dict(req, prompt="ab", n=1, stop=None)
    choices, usage = gather(SRV.stream("/v1/completions", one))
    assert usage == completion(one)["usage"] == {"prompt_tokens": 2, "completion_tokens": 25,
                                                 "total_tokens": 27}, usage


def test_best_of_above_n_cannot_stream():
    for bad in ({"best_of": 3, "stream": True}, {"n": 2, "best_of": 3, "stream": True},
                {"prompt": ["a", "b"], "n": 2, "best_of": 4, "stream": True}):
        st, body, _ = SRV.request("POST", "/v1/completions", dict({"prompt": "x", "max_tokens": 2}, **bad))
        assert st == 400 and body["error"]["code"] == "invalid_value" and "best_of" in body["error"]["message"], \
            (bad, st, body)


def test_hang_up_frees_every_slot():
    with Server("--slots", "6", "--max-tokens-limit", "1000000") as s:
        body = json.dumps({"prompt": ["long", "longer"], "n": 3, "max_tokens": 1000000, "seed": 1,
                           "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        # the six completions advance together: each has events long before any ends
        got, seen = b"", set()
        sock.settimeout(30)
        while len(seen) < 6:
            chunk = sock.recv(65536)
            assert chunk, got[-300:]
            got += chunk
            seen = {int(i) for i in re.findall(rb'"index":(\d+)', got)}
        assert got.startswith(b"HTTP/1.1 200") and b"finish_reason\":\"" not in got, got[:300]
        assert s.metrics()["mambabyte_slots_active"] == 6
        sock.close()
        m = s.wait_idle()
        assert m["mambabyte_slots_active"] == 0, m
        # the slots serve again
        choices, _ = gather(s.stream("/v1/completions", {"prompt": "x", "n": 6, "max_tokens": 5}))
        assert sorted(choices) == list(range(6))


def test_queued_streams_get_keepalives():
    # both slots taken for 2 s: a stream of two completions waiting in the queue starts with
    # keep-alives, then gets its events
    with Server("--slots", "2", "--keepalive-s", "0.2", "--max-tokens-limit", "1000000") as s:
        busy = [threading.Thread(target=s.request, args=("POST", "/v1/generate", {
            "prompt": "a", "max_tokens": 1000000, "timeout": 2})) for _ in range(2)]
        for b in busy:
            b.start()
        while s.metrics()["mambabyte_slots_active"] < 2:
            time.sleep(0.01)
        sock = post_raw(s.port, "/v1/completions", {"prompt": "q", "n": 2, "max_tokens": 5, "stream": True,
                                                    "seed": 9})
        raw, _ = read_all(sock, 30)
        sock.close()
        assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
        text = dechunk(raw.partition(b"\r\n\r\n")[2]).decode()
        assert text.startswith(": keep-alive\n\n") and text[:text.index("data: ")].count(": keep-alive") >= 3, text[:300]
        choices, _ = gather(parse_sse(text.replace(": keep-alive\n\n", "")))
        whole = completion({"prompt": "q", "n": 2, "max_tokens": 5, "seed": 9}, s)
        assert [choices[0], choices[1]] == whole["choices"]
        for b in busy:
            b.join()


def main():
    global SRV
    with Server() as SRV:
        run([test_n_streamed_equals_whole, test_list_of_prompts_streamed, test_include_usage_sums,
             test_best_of_above_n_cannot_stream])
        SRV.wait_idle()
    run([test_hang_up_frees_every_slot, test_queued_streams_get_keepalives])


if __name__ == "__main__":
    main()
