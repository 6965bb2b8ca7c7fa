"""Bad input and limits over real HTTP: every malformed or out-of-range request gets a JSON error
with the right status and the daemon keeps serving; 401 without the key; 404/405/413/429;
deadlines; a client that hangs up (streaming or not) frees its slot; SIGTERM lets running
streams finish, or cancels them after shutdown_timeout_s."""
import json
import signal
import socket
import threading
import time

from mbserver import Server, parse_sse, run

KEY = "s3cret-key"
SRV = None

BAD = [
    # (path, raw body, expected status, expected code or None)
    ("/v1/completions", b'{"prompt": "x",', 400, "invalid_json"),
    ("/v1/completions", b"", 400, "invalid_json"),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b'"just a string"', 400, None),
    ("/v1/completions", b"{}", 400, None),
    # a NUL would silently cut a cJSON string short: refused, not truncated
    ("/v1/completions", b'{"prompt": "ab\\u0000cd"}', 400, None),
    ("/v1/generate", b'{"prompt": "x", "stop": ["a\\u0000"]}', 400, None),
    ("/v1/completions", b'{"prompt": 5}', 400, None),
    ("/v1/completions", b'{"prompt": ""}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1.5}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "10"}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1000001}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e400}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "temperature": -0.1}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "temperature": 3}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "temperature": "hot"}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "top_p": 0}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "top_p": 1.5}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "top_k": -1}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "top_k": 2.5}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "min_p": 2}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "seed": -1}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "seed": 1152921504606846976}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "stop": 5}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "stop": [1]}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "stop": [""]}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "stop": ["' + b"y" * 65 + b'"]}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "logprobs": 21}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "n": 65}', 400, None),
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"256": 1}}', 400, None),
    ("/v1/completions", b'{"prompt": "' + b"p" * 1001 + b'"}', 400, None),
    ("/v1/generate", b'{"prompt_base64": "!!!!"}', 400, None),
    ("/v1/generate", b'{"prompt_base64": "QUJD="}', 400, None),
    ("/v1/generate", b'{"prompt": "a", "prompt_base64": "QUJD"}', 400, None),
    ("/v1/generate", b'{"prompt": ""}', 400, None),
    ("/v1/generate", b'{"prompt": "x", "session": "../../etc/passwd"}', 400, None),
    ("/v1/generate", b'{"prompt": "x", "session": 12}', 400, None),
    ("/v1/generate", b'{"prompt": "x", "session": "no-such-session"}', 404, "session_not_found"),
    ("/v1/generate", b'{"prompt": "x", "timeout": 0}', 400, None),
    ("/v1/sessions", b'{"prompt": 3}', 400, None),
    ("/v1/sessions/no-such/fork", b"{}", 404, "session_not_found"),
    ("/v1/sessions/no-such/save", b"{}", 404, "session_not_found"),
]


def check_error(status, body, want_status, want_code=None, ctx=""):
    assert status == want_status, f"{ctx}: {status} {body}"
    err = body["error"]
    assert set(err) == {"message", "type", "code"} and err["message"], f"{ctx}: {body}"
    if want_code:
        assert err["code"] == want_code, f"{ctx}: {body}"


def test_bad_inputs():
    for path, raw, status, code in BAD:
        st, body, _ = SRV.request("POST", path, raw=raw)
        check_error(st, body, status, code, f"{path} {raw[:80]!r}")
    assert SRV.post("/v1/completions", {"prompt": "still serving", "max_tokens": 5})["choices"]
    # an escaped backslash before "u0000" is not a NUL escape
    assert SRV.post("/v1/completions", {"prompt": "a\\u0000b", "max_tokens": 1})["choices"]


def test_routes_and_methods():
    st, body, _ = SRV.request("GET", "/nope")
    check_error(st, body, 404, "not_found")
    st, body, _ = SRV.request("GET", "/v1/sessions/bad..id")
    check_error(st, body, 404)
    st, body, h = SRV.request("GET", "/v1/completions")
    check_error(st, body, 405, "method_not_allowed")
    assert h.get("Allow") == "POST", h
    st, body, h = SRV.request("PUT", "/v1/sessions")
    check_error(st, body, 405)
    assert h.get("Allow") == "GET, POST"


def test_auth():
    saved = SRV.key
    try:
        SRV.key = None
        st, body, _ = SRV.request("GET", "/health")
        assert st == 200, "health is public"
        for path in ("/v1/models", "/metrics", "/v1/sessions"):
            st, body, h = SRV.request("GET", path)
            check_error(st, body, 401, "invalid_api_key", path)
            assert h.get("WWW-Authenticate") == "Bearer"
        st, body, _ = SRV.request("POST", "/v1/completions", {"prompt": "x"})
        check_error(st, body, 401)
        for wrong in ("Bearer s3cret-ke", "Bearer s3cret-key2", "s3cret-key", "Bearer ", "Basic czNjcmV0"):
            st, body, _ = SRV.request("GET", "/v1/models", headers={"Authorization": wrong})
            check_error(st, body, 401, None, wrong)
    finally:
        SRV.key = saved
    assert SRV.request("GET", "/v1/models")[0] == 200


def test_body_too_large():
    big = b'{"prompt": "' + b"z" * 5000 + b'"}'
    st, body, _ = SRV.request("POST", "/v1/completions", raw=big)
    check_error(st, body, 413, "body_too_large")
    # without Content-Length (chunked upload) the limit holds while reading
    c = SRV.conn()
    c.putrequest("POST", "/v1/completions")
    for k, v in SRV.headers({"Transfer-Encoding": "chunked"}).items():
        c.putheader(k, v)
    c.endheaders()
    for _ in range(6):
        c.send(b"400\r\n" + b"z" * 1024 + b"\r\n")
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    check_error(r.status, json.loads(r.read()), 413, "body_too_large", "chunked")
    c.close()


def raw_request(path, body, read_bytes):
    """Sends a request on a bare socket, reads a little of the answer, then hangs up."""
    s = socket.create_connection(("127.0.0.1", SRV.port))
    data = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    got = b""
    while len(got) < read_bytes:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    return got


def test_hang_up_frees_slot():
    before = SRV.metrics().get('mambabyte_requests_total{code="499"}', 0)
    long = {"prompt": "never ending", "max_tokens": 1000000, "seed": 1}
    got = raw_request("/v1/completions", dict(long, stream=True), 2000)
    assert b"data: {" in got, got[:300]
    t0 = time.time()
    SRV.wait_idle(10)
    # not streamed: the client leaves while the handler waits for the whole answer
    s = socket.create_connection(("127.0.0.1", SRV.port))
    data = json.dumps(long).encode()
    s.sendall(f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    deadline = time.time() + 10
    while SRV.metrics()["mambabyte_slots_active"] == 0 and time.time() < deadline:
        time.sleep(0.02)
    s.close()
    SRV.wait_idle(10)
    assert time.time() - t0 < 20
    after = SRV.wait_counter('mambabyte_requests_total{code="499"}', before + 2)
    assert after['mambabyte_requests_total{code="499"}'] == before + 2, after
    assert after["mambabyte_generated_bytes_total"] < 1000000


def test_deadline_and_busy_session():
    out = SRV.post("/v1/generate", {"prompt": "slow", "max_tokens": 1000000, "timeout": 0.3})
    assert out["finish_reason"] == "timeout" and out["usage"]["completion_bytes"] > 0, out["finish_reason"]
    sid = SRV.post("/v1/sessions", {"prompt": "busy"})["id"]
    results = {}

    def long_stream():
        results["events"] = SRV.stream("/v1/generate", {"prompt": "!", "session": sid, "max_tokens": 1000000,
                                                        "timeout": 1.5})

    t = threading.Thread(target=long_stream)
    t.start()
    deadline = time.time() + 10
    while not SRV.request("GET", f"/v1/sessions/{sid}")[1]["busy"] and time.time() < deadline:
        time.sleep(0.01)
    st, body, _ = SRV.request("POST", "/v1/generate", {"prompt": "x", "session": sid})
    check_error(st, body, 409, "session_busy")
    for op in ("DELETE", "fork", "save"):
        st, body, _ = (SRV.request("DELETE", f"/v1/sessions/{sid}") if op == "DELETE"
                       else SRV.request("POST", f"/v1/sessions/{sid}/{op}", {}))
        check_error(st, body, 409, "session_busy", op)
    t.join()
    assert results["events"][-2]["finish_reason"] == "timeout"
    assert SRV.request("DELETE", f"/v1/sessions/{sid}")[0] == 200
    SRV.wait_idle()


def test_queue_limit_429():
    with Server("--slots", "1", "--queue-limit", "1", "--max-tokens-limit", "1000000") as s:
        statuses = []

        def one():
            st, body, _ = s.request("POST", "/v1/completions", {"prompt": "q", "max_tokens": 4000})
            statuses.append((st, body))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(st for st, _ in statuses)
        assert codes.count(429) >= 1 and codes.count(200) >= 2 and set(codes) == {200, 429}, codes
        for st, body in statuses:
            if st == 429:
                check_error(st, body, 429, "queue_full")
        s.wait_idle()


def stream_in_thread(server, body, results):
    def go():
        c = server.conn()
        c.request("POST", "/v1/generate", body=json.dumps(dict(body, stream=True)), headers=server.headers())
        r = c.getresponse()
        results.append(parse_sse(r.read().decode()))
    t = threading.Thread(target=go)
    t.start()
    return t


def test_sigterm_graceful():
    # A stream that can finish within shutdown_timeout_s does; the daemon then exits 0.
    s = Server("--shutdown-timeout-s", "30")
    res = []
    t = stream_in_thread(s, {"prompt": "bye", "max_tokens": 3000}, res)
    while s.metrics()["mambabyte_slots_active"] == 0:
        time.sleep(0.01)
    s.stop(signal.SIGTERM)
    t.join()
    assert res[0][-2]["finish_reason"] == "length" and res[0][-2]["usage"]["completion_bytes"] == 3000
    # One that cannot is cancelled at the deadline, still with a well-formed end.
    s = Server("--shutdown-timeout-s", "0.3", "--max-tokens-limit", "10000000")
    res = []
    t = stream_in_thread(s, {"prompt": "bye", "max_tokens": 10000000}, res)
    while s.metrics()["mambabyte_slots_active"] == 0:
        time.sleep(0.01)
    t0 = time.time()
    s.stop(signal.SIGINT)
    t.join()
    assert time.time() - t0 < 15
    assert res[0][-2]["finish_reason"] == "cancelled", res[0][-2]


def main():
    global SRV
    with Server("--api-key", KEY, "--max-body-bytes", "4096", "--max-prompt-bytes", "1000",
                "--max-tokens-limit", "1000000", "--default-max-tokens", "16") as s:
        s.key = KEY
        SRV = s
        run([test_bad_inputs, test_routes_and_methods, test_auth, test_body_too_large, test_hang_up_frees_slot,
             test_deadline_and_busy_session])
    run([test_queue_limit_429, test_sigterm_graceful])


if __name__ == "__main__":
    main()
