"""Sessions: a session continued over 3 requests equals one request over the whole text; fork,
list, info, delete; more sessions than slots (idle states spill to host memory and come back
unchanged); save, restart the daemon, restore, continue; the X-Session-Id header (what a load
balancer routes on) on answers and requests, and the ids of sessions made through it."""
import base64

from mbserver import Server, b64, run

SRV = None
PARTS = [b"Once upon a time", b" and then", b"\xc3\xa9\x00 the end?"]


def gen(prompt, session=None, n=40, seed=7):
    body = {"prompt_base64": base64.b64encode(prompt).decode(), "max_tokens": n, "seed": seed}
    if session:
        body["session"] = session
    return SRV.post("/v1/generate", body)


def continue_three(session, seed=7):
    """Feeds PARTS to the session one request each; returns the whole text and the last output."""
    whole = b""
    for i, p in enumerate(PARTS):
        out = b64(gen(p, session, seed=seed)["bytes_base64"])
        whole += p
        if i < len(PARTS) - 1:
            whole += out
    return whole, out


def new_session(prompt=None):
    body = {} if prompt is None else {"prompt_base64": base64.b64encode(prompt).decode()}
    s = SRV.post("/v1/sessions", body)
    assert s["object"] == "session" and s["n_bytes"] == len(prompt or b""), s
    return s["id"]


def test_three_requests_equal_one():
    for seed in (7, 8):
        sid = new_session()
        whole, last = continue_three(sid, seed)
        one = b64(gen(whole, seed=seed)["bytes_base64"])
        assert one == last, (seed, one, last)
        info = SRV.request("GET", f"/v1/sessions/{sid}")[1]
        assert info["n_bytes"] == len(whole) + len(last) and info["busy"] is False, info


def test_create_with_prompt_and_continue_streamed():
    sid = new_session(PARTS[0])
    ev = SRV.stream("/v1/generate", {"prompt": "", "session": sid, "max_tokens": 30, "seed": 3})
    streamed = b"".join(b64(e["bytes_base64"]) for e in ev[:-2])
    assert ev[-2]["session"] == sid
    assert streamed == b64(gen(PARTS[0], n=30, seed=3)["bytes_base64"])


def test_fork_list_delete():
    sid = new_session(PARTS[0])
    fork = SRV.post(f"/v1/sessions/{sid}/fork", {})
    assert fork["id"] != sid and fork["n_bytes"] == len(PARTS[0])
    a = gen(PARTS[1], sid)["bytes_base64"]
    b = gen(PARTS[1], fork["id"])["bytes_base64"]
    assert a == b, "a fork continues exactly like its source"
    ids = {s["id"] for s in SRV.request("GET", "/v1/sessions")[1]["data"]}
    assert {sid, fork["id"]} <= ids
    st, body, _ = SRV.request("DELETE", f"/v1/sessions/{sid}")
    assert st == 200 and body["deleted"] is True
    st, body, _ = SRV.request("GET", f"/v1/sessions/{sid}")
    assert st == 404 and body["error"]["code"] == "session_not_found", body
    st, body, _ = SRV.request("POST", "/v1/generate", {"prompt": "x", "session": sid})
    assert st == 404, body
    SRV.request("DELETE", f"/v1/sessions/{fork['id']}")


def test_more_sessions_than_slots_spill():
    # 10 sessions on 4 slots, advanced in turns: each must still equal its one-request twin.
    sids = [new_session() for _ in range(10)]
    wholes = [b""] * 10
    lasts = [b""] * 10
    for i, p in enumerate(PARTS):
        for k, sid in enumerate(sids):
            out = b64(gen(p + bytes([65 + k]), sid, n=20, seed=k)["bytes_base64"])
            wholes[k] += p + bytes([65 + k])
            if i < len(PARTS) - 1:
                wholes[k] += out
            lasts[k] = out
    m = SRV.metrics()
    assert m["mambabyte_sessions_spilled"] >= 6, m
    for k in range(10):
        assert b64(gen(wholes[k], n=20, seed=k)["bytes_base64"]) == lasts[k], k
    for sid in sids:
        SRV.request("DELETE", f"/v1/sessions/{sid}")


def test_save_restart_restore():
    global SRV
    sid = new_session()
    gen(PARTS[0], sid)
    gen(PARTS[1], sid)
    saved = SRV.post(f"/v1/sessions/{sid}/save", {})
    assert saved["saved"] is True
    # what continuing would give without a restart, on a fork
    fork = SRV.post(f"/v1/sessions/{sid}/fork", {})["id"]
    expect = gen(PARTS[2], fork)["bytes_base64"]
    dir_ = SRV.session_dir
    SRV.stop()
    SRV = Server("--slots", "4", session_dir=dir_)
    restored = SRV.post(f"/v1/sessions/{sid}/restore", {})
    assert restored["id"] == sid and restored["n_bytes"] == saved["n_bytes"], restored
    assert gen(PARTS[2], sid)["bytes_base64"] == expect
    st, body, _ = SRV.request("POST", f"/v1/sessions/{sid}/restore", {})
    assert st == 409, body
    st, body, _ = SRV.request("POST", "/v1/sessions/never-saved/restore", {})
    assert st == 404 and body["error"]["code"] == "session_not_found", body
    # deleting a session deletes its record (tests/http/test_session_files.py has the rest)
    SRV.request("DELETE", f"/v1/sessions/{sid}")
    st, body, _ = SRV.request("POST", f"/v1/sessions/{sid}/restore", {})
    assert st == 404, body
    SRV.wait_idle()


def test_session_header():
    """Every answer about a session names it in X-Session-Id, and every answer names the daemon;
    a request may name its session by the header alone; a creation may choose the id; a fork's
    id keeps its source's route (the id up to the first '_'), the part a balancer hashes."""
    st, out, h = SRV.request("POST", "/v1/sessions", {"prompt": "Once"}, headers={"X-Session-Id": "chosen-1"})
    assert st == 200 and out["id"] == "chosen-1" and h["X-Session-Id"] == "chosen-1", (st, out, h)
    daemon = h["X-Mambabyte-Daemon"]
    assert daemon.endswith(f":{SRV.port}"), daemon
    st, out, _ = SRV.request("POST", "/v1/sessions", {}, headers={"X-Session-Id": "chosen-1"})
    assert st == 409 and out["error"]["code"] == "session_exists", out
    st, out, _ = SRV.request("POST", "/v1/sessions", {}, headers={"X-Session-Id": "bad id"})
    assert st == 400, out
    # the header alone names the session: the same bytes as naming it in the body, on a fork
    fork = SRV.post("/v1/sessions/chosen-1/fork", {})["id"]
    assert fork.startswith("chosen-1_") and len(fork) == len("chosen-1_") + 16, fork
    fork2 = SRV.post(f"/v1/sessions/{fork}/fork", {})["id"]
    assert fork2.startswith("chosen-1_") and fork2 != fork, fork2
    body = {"prompt": " upon", "max_tokens": 20, "seed": 5}
    st, by_header, h = SRV.request("POST", "/v1/generate", body, headers={"X-Session-Id": "chosen-1"})
    assert st == 200 and h["X-Session-Id"] == "chosen-1", (st, by_header)
    assert by_header["bytes_base64"] == SRV.post("/v1/generate", dict(body, session=fork))["bytes_base64"]
    st, out, h = SRV.request("POST", "/v1/generate", dict(body, session=fork2),
                             headers={"X-Session-Id": "chosen-1"})
    assert st == 400 and "X-Session-Id" in out["error"]["message"], out
    st, out, h = SRV.request("GET", "/v1/sessions/chosen-1", headers={"X-Session-Id": fork})
    assert st == 400, out
    st, out, h = SRV.request("GET", f"/v1/sessions/{fork}")
    assert st == 200 and h["X-Session-Id"] == fork and h["X-Mambabyte-Daemon"] == daemon, h
    st, out, h = SRV.request("POST", "/v1/completions", {"prompt": "a"}, headers={"X-Session-Id": fork})
    assert st == 400, out
    st, out, h = SRV.request("POST", "/v1/generate", {"prompt": "a", "max_tokens": 2})
    assert st == 200 and "X-Session-Id" not in h and h["X-Mambabyte-Daemon"] == daemon, h
    st, out, _ = SRV.request("POST", "/v1/generate", {"prompt": "", "max_tokens": 2},
                             headers={"X-Session-Id": "gone-1"})
    assert st == 404 and "X-Session-Id" in out["error"]["message"], out
    for x in ("chosen-1", fork, fork2):
        SRV.request("DELETE", f"/v1/sessions/{x}")
    SRV.wait_idle()


def main():
    global SRV
    SRV = Server("--slots", "4")
    try:
        run([test_three_requests_equal_one, test_create_with_prompt_and_continue_streamed, test_fork_list_delete,
             test_more_sessions_than_slots_spill, test_session_header, test_save_restart_restore])
        SRV.stop()
    finally:
        if SRV.proc.poll() is None:
            SRV.proc.kill()
            print(SRV.output()[-3000:])


if __name__ == "__main__":
    main()
