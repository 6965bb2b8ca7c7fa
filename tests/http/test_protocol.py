"""HTTP protocol edges and what operators expect, over real sockets: a body with text after the
JSON or a key given twice is refused; broken framing (Content-Length -1 or 10^20, a chunk size
of 2^64-1) gets one JSON error at once; HEAD /health; CORS; Retry-After on 429 and 503;
X-Request-Id on every answer; "bearer" in any case; histograms up to the configured limits,
build and process metrics; no server paths in error messages; an escaped log line; and stream
events that carry everything a step produced, not one byte each."""
import re
import base64
import json
import os
import socket
import threading
import time

from mbserver import Server, b64, parse_sse, run

KEY = "k3y"
SRV = None


def raw(port, data, timeout=5):
    """Sends bytes on a new socket; returns (everything answered, seconds until the close)."""
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.time()
    s.sendall(data)
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out, time.time() - t0


def one_json_answer(out):
    """The status and JSON body of an answer that must hold exactly one status line."""
    assert out.count(b"HTTP/1.1 ") == 1, out
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, head
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "code"}, err
    return int(head.split()[1]), err


def test_json_trailing_text_and_duplicate_keys():
    for body, code in [(b'{"prompt": "x"} xyz', "invalid_json"), (b'{"prompt": "x"}{"prompt": "y"}', "invalid_json"),
                       (b'{"prompt": "x", "max_tokens": 1, "max_tokens": 900}', "duplicate_key"),
                       (b'{"prompt": "x", "stop": null, "logit_bias": {"a": 1, "a": 2}}', "duplicate_key")]:
        st, out, _ = SRV.request("POST", "/v1/completions", raw=body)
        assert st == 400 and out["error"]["code"] == code, (body, st, out)
    # whitespace after the object is fine
    st, out, _ = SRV.request("POST", "/v1/completions", raw=b'{"prompt": "x", "max_tokens": 2} \r\n\t ')
    assert st == 200, out


def test_framing_errors_answered_in_json():
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n"
    for extra, status in [(b"Content-Length: -1\r\n\r\n", 400), (b"Content-Length: 100000000000000000000\r\n\r\n", 413),
                          (b"Content-Length: 1x\r\n\r\n", 400), (b"Content-Length: 5000\r\n\r\n", 413),
                          (b"Content-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
                          (b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\nabc", 400),
                          (b"Transfer-Encoding: chunked\r\n\r\n10000\r\nabc", 413)]:
        out, secs = raw(SRV.port, head + extra)
        st, err = one_json_answer(out)
        assert st == status and secs < 2, (extra, st, err, secs)
    # the chunk size line after a pause: still answered at once, not at the read deadline
    s = socket.create_connection(("127.0.0.1", SRV.port))
    s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
    time.sleep(0.3)
    t0 = time.time()
    s.sendall(b"FFFFFFFFFFFFFFFF\r\nabc")
    s.settimeout(5)
    out = s.recv(65536)
    s.close()
    assert one_json_answer(out)[0] == 400 and time.time() - t0 < 1, out
    # a head that never ends
    out, _ = raw(SRV.port, b"GET /health HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 20000 + b"\r\n")
    assert one_json_answer(out)[0] == 431
    assert SRV.request("GET", "/health")[0] == 200


def test_head_health_and_cors():
    out, _ = raw(SRV.port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b"", out
    # preflight: no key needed, the route's methods
    for origin, allowed in [("https://app.example", True), ("https://evil.example", False)]:
        st, _, h = SRV.request("OPTIONS", "/v1/completions", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST", "Authorization": ""})
        assert st == 204, st
        assert (h.get("Access-Control-Allow-Origin") == origin) == allowed, h
        if allowed:
            assert "POST" in h["Access-Control-Allow-Methods"] and "Authorization" in h["Access-Control-Allow-Headers"]
        st, _, h = SRV.request("GET", "/v1/models", headers={"Origin": origin})
        assert st == 200 and (h.get("Access-Control-Allow-Origin") == origin) == allowed, h
    st, _, h = SRV.request("GET", "/v1/models")
    assert "Access-Control-Allow-Origin" not in h


def test_request_id():
    st, _, h = SRV.request("GET", "/v1/models", headers={"X-Request-Id": "trace-abc_123"})
    assert h["X-Request-Id"] == "trace-abc_123"
    ids = set()
    for path in ("/v1/models", "/nope", "/health"):
        st, _, h = SRV.request("GET", path)
        ids.add(h["X-Request-Id"])
    st, _, h = SRV.request("GET", "/v1/models", headers={"X-Request-Id": "bad id\x7f" + "x" * 80})
    assert h["X-Request-Id"].startswith("cmpl-"), h
    assert len(ids) == 3 and all(i.startswith("cmpl-") for i in ids), ids
    st, _, h = SRV.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "n": 65},
                           headers={"X-Request-Id": "req-7"})
    assert st == 400 and h["X-Request-Id"] == "req-7"
    out, _ = raw(SRV.port, b"POST /v1/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n")
    assert b"\r\nX-Request-Id: req-" in out, out
    out, _ = raw(SRV.port, b"POST /v1/completions HTTP/1.1\r\nX-Request-Id: mine-1\r\nContent-Length: -5\r\n\r\n")
    assert b"\r\nX-Request-Id: mine-1\r\n" in out, out


def test_bearer_any_case():
    for a in ("bearer k3y", "BEARER k3y", "Bearer  k3y"):
        assert SRV.request("GET", "/v1/models", headers={"Authorization": a})[0] == 200, a
    assert SRV.request("GET", "/v1/models", headers={"Authorization": "bearer k3y2"})[0] == 401


def test_retry_after_on_429_and_503():
    with Server("--slots", "1", "--queue-limit", "1", "--max-tokens-limit", "1000000") as s:
        busy = threading.Thread(target=s.request, args=("POST", "/v1/generate", {
            "prompt": "a", "max_tokens": 1000000, "timeout": 2}))
        busy.start()
        while s.metrics()["mambabyte_slots_active"] == 0:
            time.sleep(0.01)
        answers = []
        waiter = threading.Thread(target=lambda: answers.append(
            s.request("POST", "/v1/generate", {"prompt": "b", "max_tokens": 5, "timeout": 0.5})))
        waiter.start()
        while s.metrics()["mambabyte_queue_depth"] == 0:
            time.sleep(0.01)
        st, out, h = s.request("POST", "/v1/generate", {"prompt": "c", "max_tokens": 5})
        assert st == 429 and h.get("Retry-After") == "1", (st, out, h)
        waiter.join()
        st, out, h = answers[0]
        assert st == 503 and h.get("Retry-After") == "1", (st, out, h)
        busy.join()


def test_metrics_limits_build_and_process():
    m = SRV.metrics()
    for name in ("mambabyte_time_to_first_byte_seconds", "mambabyte_request_duration_seconds"):
        assert f'{name}_bucket{{le="600"}}' in m, [k for k in m if k.startswith(name)]
        assert f'{name}_bucket{{le="300"}}' in m
    assert any(k.startswith("mambabyte_build_info{") and v == 1 for k, v in m.items()), m
    assert any(re.match(r'mambabyte_build_info\{.*cpu_isa="(avx2|avx512|avx512bf16|avx512vnni)"', k) for k in m), m
    assert m["process_resident_memory_bytes"] > 1e6 and m["process_open_fds"] > 3
    assert m["process_cpu_seconds_total"] > 0 and abs(m["process_start_time_seconds"] - time.time()) < 600


def test_error_messages_hide_paths():
    sid = "sess-broken"
    with open(os.path.join(SRV.session_dir, f"{sid}.session"), "w") as f:
        f.write("{not a record")
    st, out, _ = SRV.request("POST", f"/v1/sessions/{sid}/restore", {})
    assert st == 400, (st, out)
    msg = out["error"]["message"]
    assert SRV.session_dir not in msg, msg
    # the default session_dir, "sessions", is also a word: only paths are replaced (with no
    # session allowed at all, there is none to evict to disk, and a new one gets 429)
    with Server("--session-dir", "sessions", "--max-sessions", "0") as s:
        st, out, _ = s.request("POST", "/v1/sessions", {})
        assert st == 429 and "sessions" in out["error"]["message"] and "<" not in out["error"]["message"], out


def test_log_lines_are_escaped():
    SRV.request("GET", "/x%0A2026-01-01T00:00:00Z%20req=forged%20GET%20/admin%20status=200")
    deadline = time.time() + 10  # the line is written once the answer is out
    while "req=forged" not in SRV.output() and time.time() < deadline:
        time.sleep(0.02)
    log = SRV.output()
    assert "\nreq=forged" not in log and "\n2026-01-01T00:00:00Z req=forged" not in log, log[-500:]
    assert "/x\\x0a2026-01-01T00:00:00Z" in log, log[-500:]


def test_stream_events_carry_whole_steps():
    # With prompt lookup a step may produce several bytes of one sequence: they go out as one
    # event, so there are never more events than steps, and fewer events than bytes.
    with Server("--lookup", "4", "--slots", "2") as s:
        body = {"prompt_base64": base64.b64encode(b"abcabcabcabcabcabcabc").decode(), "max_tokens": 400,
                "temperature": 0}
        whole = b64(s.post("/v1/generate", body)["bytes_base64"])
        before = s.metrics()
        ev = s.stream("/v1/generate", body)
        after = s.metrics()
        chunks = [b64(e["bytes_base64"]) for e in ev[:-2]]
        assert b"".join(chunks) == whole
        steps = after["mambabyte_steps_total"] - before["mambabyte_steps_total"]
        kept = after["mambabyte_spec_accepted_bytes_total"] - before["mambabyte_spec_accepted_bytes_total"]
        assert kept > 100 and len(chunks) <= steps and len(chunks) < len(whole) - kept / 2, (len(chunks), steps, kept)
        # the stop-string hold-back still applies to such events
        stop = whole[100:104]
        ev = s.stream("/v1/generate", dict(body, stop=stop.decode("latin-1")))
        got = b"".join(b64(e["bytes_base64"]) for e in ev[:-2])
        assert got == whole[:whole.index(stop)] and ev[-2]["finish_reason"] == "stop", (got, stop)


def main():
    global SRV
    with Server("--api-key", KEY, "--max-body-bytes", "4096", "--cors-origins", "https://app.example, https://b.example",
                "--request-timeout-s", "600") as s:
        s.key = KEY
        SRV = s
        run([test_json_trailing_text_and_duplicate_keys, test_framing_errors_answered_in_json, test_head_health_and_cors,
             test_request_id, test_bearer_any_case, test_metrics_limits_build_and_process, test_error_messages_hide_paths,
             test_log_lines_are_escaped])
    run([test_retry_after_on_429_and_503, test_stream_events_carry_whole_steps])


if __name__ == "__main__":
    main()
