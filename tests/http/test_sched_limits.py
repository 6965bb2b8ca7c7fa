"""The scheduler's limits and fault paths: a new prompt is read while looping streams draft by
prompt lookup (drafts do not starve prefill); a job the scheduler cannot queue (out of memory)
fails with 503 instead of hanging; a request ends with a 503 some time after its deadline even
when the scheduler does not answer; a failed rollback after a sequence finished leaves its
session empty, not diverged; a client hanging up while its first byte is computed (the
ThreadSanitizer run checks the job's first-byte time is not raced); shutdown waits until the
answers are sent. Faults are injected with the daemon's test hook MB_FAULT_SCHED
(server/srv_sched.c)."""
import base64
import json
import signal
import socket
import sys
import threading
import time

from mbserver import Server, run


def gen(srv, prompt, n=40, **kw):
    body = dict({"prompt_base64": base64.b64encode(prompt).decode(), "max_tokens": n, "temperature": 0}, **kw)
    return srv.post("/v1/generate", body)


def test_prefill_not_starved_by_drafts():
    # issue 9 item 2, scaled down: 16 tokens a step and streams whose output loops (the fixture
    # model repeats 'x' for ever). Its drafts are one byte (what followed the latest 'x'), so 8
    # streams (not 7) take the whole step: a byte and a draft each, nothing left for a prompt.
    with Server("--slots", "9", "--max-batch-tokens", "16", "--lookup", "1") as srv:
        first, ends, errors = {}, {}, []

        def stream(i):
            try:
                c = srv.conn()
                body = {"prompt": "x" * (20 + i), "max_tokens": 4000, "temperature": 0, "stream": True}
                c.request("POST", "/v1/generate", body=json.dumps(body), headers=srv.headers())
                r = c.getresponse()
                assert r.status == 200, r.status
                r.readline()
                first[i] = time.time()
                r.read()
                ends[i] = time.time()
                c.close()
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.time() + 60
        while len(first) < 8 and time.time() < deadline and not errors:
            time.sleep(0.005)
        assert len(first) == 8 and not ends, (first, ends, errors)
        prompt = bytes(range(32, 232))  # 200 bytes, no 'x': nothing for lookup to find
        out = gen(srv, prompt, n=1)
        answered = time.time()
        for t in threads:
            t.join()
        assert not errors, errors
        m = srv.metrics()
        assert m["mambabyte_spec_accepted_bytes_total"] > 10000, m  # the streams did draft
        assert answered < min(ends.values()), (
            f"the new prompt waited for the looping streams: answered {answered - min(first.values()):.2f}s "
            f"after they started, the first stream ended at {min(ends.values()) - min(first.values()):.2f}s "
            f"(ttfb {out['timings']['ttfb_ms']} ms)")
        srv.wait_idle()


def test_admission_out_of_memory_is_503():
    # issue 9 item 4: a job taken from the queue that cannot be put in the waiting list used to be
    # dropped with its reference held, and its HTTP thread waited for ever.
    with Server("--slots", "2", env={"MB_FAULT_SCHED": "waiting_oom"}) as srv:
        before = srv.metrics().get('mambabyte_requests_total{code="503"}', 0)  # /health while loading
        for stream in (False, True):
            c = srv.conn(timeout=30)
            body = {"prompt": "hello", "max_tokens": 8, "stream": stream}
            c.request("POST", "/v1/completions", body=json.dumps(body), headers=srv.headers())
            r = c.getresponse()
            out = json.loads(r.read())
            c.close()
            assert r.status == 503 and out["error"]["code"] == "out_of_memory", (r.status, out)
        srv.wait_idle()
        m = srv.wait_counter('mambabyte_requests_total{code="503"}', before + 2)
        assert m['mambabyte_requests_total{code="503"}'] - before == 2, m
        # session jobs do not pass through the waiting list and still work
        assert srv.post("/v1/sessions", {})["object"] == "session"


def test_every_wait_is_bounded():
    # A scheduler that does not answer (here: it sleeps 34 s; a hung device would do the same)
    # must not hold requests for ever: the HTTP layer gives up request_timeout_s (1 s here) + 30 s
    # after arrival with a 503, for generation and session requests alike.
    with Server("--request-timeout-s", "1", env={"MB_FAULT_SCHED": "stall=34"}) as srv:
        results = {}

        def call(name, method, path, body):
            t0 = time.time()
            st, out, _ = srv.request(method, path, body)
            results[name] = (st, out, time.time() - t0)

        calls = [("generate", "POST", "/v1/generate", {"prompt": "hi", "max_tokens": 4}),
                 ("session", "POST", "/v1/sessions", {})]
        threads = []
        for c in calls:
            threads.append(threading.Thread(target=call, args=c))
            threads[-1].start()
            time.sleep(0.5)  # the generation is in the scheduler, which sleeps now
        for t in threads:
            t.join()
        for name, (st, out, took) in results.items():
            assert st == 503 and out["error"]["code"] == "timeout", (name, st, out)
            assert 30 < took < 34, (name, took)
        time.sleep(4)  # the scheduler wakes up and finds nothing left to do
        assert srv.post("/v1/sessions", {})["object"] == "session"
        srv.wait_idle()


def test_failed_rollback_on_retire_empties_session():
    # issue 9 item 6: a stop string inside an accepted draft retires the sequence and rolls its
    # slot back; when that rollback fails the slot is reset, and the session must start over
    # empty like after any engine failure, not keep a history its state no longer holds.
    with Server("--lookup", "1", env={"MB_FAULT_SCHED": "rollback"}) as srv:
        sid = srv.post("/v1/sessions", {"prompt": "xxxxxxxxxxxx"})["id"]
        out = gen(srv, b"", n=50, session=sid, stop=["xx"])
        assert out["finish_reason"] == "stop", out
        info = srv.request("GET", f"/v1/sessions/{sid}")[1]
        assert info["n_bytes"] == 0, info
        assert "rollback failed" in srv.output()
        for prompt in (b"a", b"Zq"):
            assert gen(srv, prompt, n=1, session=sid)["bytes_base64"] == gen(srv, prompt, n=1)["bytes_base64"]
            srv.request("DELETE", f"/v1/sessions/{sid}")
            sid = srv.post("/v1/sessions", {})["id"]
        srv.wait_idle()


def test_hang_up_while_the_first_byte_is_computed():
    # issue 9 item 5: the scheduler wrote the job's first-byte time without the job's lock while
    # the HTTP thread of a client that left read it under the lock. Here the whole prompt is
    # one long forward, and the client leaves during it: its HTTP thread reads the time while
    # the scheduler is about to write it (the ThreadSanitizer run, make test-tsan, saw a race).
    with Server("--prefill-chunk", "20000", "--max-batch-tokens", "20000") as srv:
        for stream in (False, True):
            body = json.dumps({"prompt": "y" * 20000, "max_tokens": 5, "stream": stream}).encode()
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(0.3)
            s.close()
            srv.wait_idle()
        assert gen(srv, b"still fine", n=4)["finish_reason"] == "length"


def test_shutdown_waits_for_answers_to_be_sent():
    # SIGTERM lets running requests finish: a stream whose bytes are all computed but not yet
    # sent (its client reads slowly) gets its end before the daemon stops, not a cut connection.
    srv = Server("--shutdown-timeout-s", "30", "--max-tokens-limit", "60000")
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        # some 11 MB of events: more than the socket buffers hold
        body = json.dumps({"prompt": "bye", "max_tokens": 60000, "stream": True}).encode()
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200"), data
        while srv.metrics()["mambabyte_generated_bytes_total"] < 60000:  # all computed, little sent
            time.sleep(0.01)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        assert b"data: [DONE]" in data and b'"finish_reason":"length"' in data, data[-300:]
        assert srv.proc.wait(60) == 0, srv.output()[-3000:]
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def main():
    only = sys.argv[1:]  # names of tests to run; all when none
    tests = [test_prefill_not_starved_by_drafts, test_admission_out_of_memory_is_503, test_every_wait_is_bounded,
         test_failed_rollback_on_retire_empties_session, test_hang_up_while_the_first_byte_is_computed,
             test_shutdown_waits_for_answers_to_be_sent]
    run([t for t in tests if not only or t.__name__ in only])


if __name__ == "__main__":
    main()
