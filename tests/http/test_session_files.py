"""Sessions on disk and their limits: a saved session is one checksummed record,
<session_dir>/<id>.session, and every change to it (history length, pending byte, id, shape,
state) is refused, as are out-of-range fields under a correct checksum; DELETE deletes the
record; idle sessions expire after session_ttl_s; past max_sessions the least recently used idle
session goes to disk instead of a 429, and past max_spill_bytes spilled states go to disk; a
session on disk is loaded back, unchanged, when a request names it."""
import base64
import math
import os
import struct
import time

from mbserver import Server, b64, run

FIXED = 8 + 4 + 4 * 7 + 8 + 4  # magic, version, shape, n_bytes, pending fields, id_len (srv_session_file.h)


def fnv1a(data):
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def seal(body):
    """A record from everything before its checksum."""
    return body + struct.pack("<Q", fnv1a(body))


def gen(srv, prompt, session=None, n=20, seed=3):
    body = {"prompt_base64": base64.b64encode(prompt).decode(), "max_tokens": n, "seed": seed}
    if session:
        body["session"] = session
    return b64(srv.post("/v1/generate", body)["bytes_base64"])


def record(srv, sid):
    with open(os.path.join(srv.session_dir, sid + ".session"), "rb") as f:
        return f.read()


def put(srv, sid, data):
    with open(os.path.join(srv.session_dir, sid + ".session"), "wb") as f:
        f.write(data)


def test_record_is_checked_whole():
    with Server("--slots", "2") as srv:
        sid = srv.post("/v1/sessions", {"prompt": "Once upon a time"})["id"]
        out = gen(srv, b" there", sid)
        saved = srv.post(f"/v1/sessions/{sid}/save", {})
        assert saved["saved"] is True and saved["n_bytes"] == 16 + 6 + 20, saved
        assert sorted(os.listdir(srv.session_dir)) == [sid + ".session"], os.listdir(srv.session_dir)
        good = record(srv, sid)
        assert good[:8] == b"MBSESS01"
        body = bytearray(good[:-8])
        id_len = body[FIXED - 2]
        # what continuing gives, from memory
        fork = srv.post(f"/v1/sessions/{sid}/fork", {})["id"]
        want = gen(srv, b" and", fork)

        def renamed(new_id, b=None):
            b = bytearray(b if b is not None else body)
            b[FIXED - 2] = len(new_id)
            return bytes(b[:FIXED]) + new_id.encode() + bytes(b[FIXED + id_len:])

        # a copy under another id loads (when named) and continues exactly like the original
        put(srv, "copy-1", seal(renamed("copy-1")))
        info = srv.request("GET", "/v1/sessions/copy-1")[1]
        assert info["n_bytes"] == saved["n_bytes"], info
        assert gen(srv, b" and", "copy-1") == want

        def bad(name, data, why, said):
            put(srv, name, data)
            st, out, _ = srv.request("GET", f"/v1/sessions/{name}")
            assert st == 400 and out["error"]["code"] == "session_corrupt", (why, st, out)
            assert said in out["error"]["message"], (why, out)
            st, out, _ = srv.request("POST", "/v1/generate", {"prompt": "x", "session": name})
            assert st == 400, (why, st, out)

        flipped = bytearray(good)
        flipped[FIXED - 12] ^= 1  # a bit of n_bytes, checksum left as it was
        bad(sid + "x", bytes(flipped), "history length changed", "checksum")
        bad("copy-2", bytes(renamed("copy-2")) + good[-8:], "renamed without a new checksum", "checksum")

        def field(off, fmt, value):
            b = bytearray(renamed("copy-3"))
            struct.pack_into(fmt, b, off, value)
            return seal(bytes(b))

        bad("copy-3", field(FIXED - 12, "<Q", 10 ** 19), "n_bytes past 2^53", "history length")
        bad("copy-3", field(FIXED - 12, "<Q", 2 ** 53 + 1), "n_bytes past 2^53", "history length")
        bad("copy-3", field(FIXED - 4, "<B", 2), "has_pending 2", "pending")
        b = bytearray(renamed("copy-3"))
        b[FIXED - 4], b[FIXED - 3] = 0, 65
        bad("copy-3", seal(bytes(b)), "a pending byte without has_pending", "pending")
        b = bytearray(renamed("copy-3"))
        struct.pack_into("<Q", b, FIXED - 12, 0)  # no history, yet a pending byte
        bad("copy-3", seal(bytes(b)), "n_bytes below the pending byte", "history length")
        bad("copy-3", field(12, "<I", 65), "another model's shape", "shape")
        bad("copy-3", field(8, "<I", 2), "another format version", "version")
        bad("copy-3", field(FIXED + len("copy-3") + 8 + 4, "<f", math.nan), "a NaN in the state", "not finite")
        bad("copy-3", seal(bytes(renamed("copy-3"))[:-4]), "truncated state", "size")
        bad("copy-3", seal(bytes(renamed("copy-3")) + b"\0\0\0\0"), "trailing bytes", "size")
        bad("copy-3", seal(bytes(body)), "another session's record", "another session")
        bad("copy-3", b"", "empty", "not a session record")
        b = bytearray(renamed("copy-3"))
        b[FIXED:FIXED + 6] = b"../../"
        bad("copy-3", seal(bytes(b)), "an id that is not an id", "id")
        for x in (sid, fork, "copy-1"):
            srv.request("DELETE", f"/v1/sessions/{x}")
        srv.wait_idle()


def test_delete_deletes_the_record():
    # issue 9 item 13: 50 create/save/delete rounds used to leave 100 files behind
    with Server("--slots", "2") as srv:
        for i in range(50):
            sid = srv.post("/v1/sessions", {"prompt": f"round {i}"})["id"]
            srv.post(f"/v1/sessions/{sid}/save", {})
            assert os.path.exists(os.path.join(srv.session_dir, sid + ".session"))
            st, out, _ = srv.request("DELETE", f"/v1/sessions/{sid}")
            assert st == 200 and out["deleted"] is True, out
        assert os.listdir(srv.session_dir) == [], os.listdir(srv.session_dir)
        # a session only on disk (saved before a restart) is deleted there
        sid = srv.post("/v1/sessions", {"prompt": "kept"})["id"]
        srv.post(f"/v1/sessions/{sid}/save", {})
    with Server("--slots", "2", session_dir=srv.session_dir) as srv:
        st, out, _ = srv.request("DELETE", f"/v1/sessions/{sid}")
        assert st == 200 and os.listdir(srv.session_dir) == [], (st, out)
        st, out, _ = srv.request("DELETE", f"/v1/sessions/{sid}")
        assert st == 404, out


def test_idle_sessions_expire():
    with Server("--slots", "2", "--session-ttl-s", "1.5") as srv:
        old = srv.post("/v1/sessions", {"prompt": "old"})["id"]
        srv.post(f"/v1/sessions/{old}/save", {})
        live = srv.post("/v1/sessions", {"prompt": "live"})["id"]
        for _ in range(6):  # used every half second: stays
            time.sleep(0.5)
            gen(srv, b".", live, n=1)
        st, out, _ = srv.request("GET", f"/v1/sessions/{old}")
        assert st == 404, out
        assert os.listdir(srv.session_dir) == [], "an expired session's record goes with it"
        assert srv.request("GET", f"/v1/sessions/{live}")[0] == 200
        assert srv.metrics()["mambabyte_sessions"] == 1


def test_records_on_disk_expire():
    # a session evicted to disk (or saved before a restart) expires there too, counted from when
    # it was last in memory; a record of a session in memory stays while the session is used
    with Server("--slots", "2", "--max-sessions", "1", "--session-ttl-s", "1.5") as srv:
        old = srv.post("/v1/sessions", {"prompt": "evicted"})["id"]
        srv.post(f"/v1/sessions/{old}/save", {})
        live = srv.post("/v1/sessions", {"prompt": "in memory"})["id"]  # evicts old to disk
        srv.post(f"/v1/sessions/{live}/save", {})
        assert sorted(os.listdir(srv.session_dir)) == sorted([old + ".session", live + ".session"])
        for _ in range(6):
            time.sleep(0.5)
            gen(srv, b".", live, n=1)
        assert os.listdir(srv.session_dir) == [live + ".session"], os.listdir(srv.session_dir)
        assert srv.request("GET", f"/v1/sessions/{old}")[0] == 404


def test_idle_time_starts_when_a_request_ends():
    # a request that runs longer than session_ttl_s (here the scheduler stalls 2.5 s in it)
    # leaves its session idle from its end, not from its start
    with Server("--session-ttl-s", "1.5", env={"MB_FAULT_SCHED": "stall=2.5"}) as srv:
        sid = srv.post("/v1/sessions", {})["id"]
        gen(srv, b"slow", sid, n=4)
        st, out, _ = srv.request("GET", f"/v1/sessions/{sid}")
        assert st == 200 and out["n_bytes"] == 8, out


def test_evicted_to_disk_before_429():
    # issue 9 item 13: max_sessions held used to mean 429 for every new session
    with Server("--slots", "2", "--max-sessions", "3") as srv:
        prompts = [b"first session", b"second one", b"third", b"fourth!", b"fifth."]
        sids = []
        for p in prompts:
            st, out, _ = srv.request("POST", "/v1/sessions", {"prompt_base64": base64.b64encode(p).decode()})
            assert st == 200, out
            sids.append(out["id"])
        m = srv.metrics()
        assert m["mambabyte_sessions"] == 3, m
        on_disk = sorted(f[:-8] for f in os.listdir(srv.session_dir))
        assert on_disk == sorted(sids[:2]), (on_disk, sids)
        # each continues exactly as one request over its whole text would, loaded back or not
        for p, sid in zip(prompts, sids):
            assert gen(srv, b" more", sid) == gen(srv, p + b" more"), sid
        srv.wait_idle()


def test_spill_budget():
    # issue 9 item 11: spilled states had no limit; past max_spill_bytes they go to disk
    with Server("--slots", "1", "--max-spill-bytes", "0") as probe:
        sid = probe.post("/v1/sessions", {"prompt": "probe"})["id"]
        probe.post(f"/v1/sessions/{sid}/save", {})
        id_len = len(sid)
        state = len(record(probe, sid)) - (FIXED + id_len + 8 + 8)
    with Server("--slots", "2", "--max-spill-bytes", str(2 * state)) as srv:
        prompts = [f"session number {i}".encode() for i in range(8)]
        sids = [srv.post("/v1/sessions", {"prompt_base64": base64.b64encode(p).decode()})["id"] for p in prompts]
        m = srv.metrics()
        assert m["mambabyte_sessions_spilled"] <= 2, m
        assert m["mambabyte_sessions_spilled_bytes"] == m["mambabyte_sessions_spilled"] * state, m
        assert m["mambabyte_sessions_spilled_bytes"] <= 2 * state, m
        assert len(os.listdir(srv.session_dir)) >= 4, os.listdir(srv.session_dir)
        for p, sid in zip(prompts, sids):
            assert gen(srv, b"!", sid) == gen(srv, p + b"!"), sid
        m = srv.metrics()
        assert m["mambabyte_sessions_spilled_bytes"] <= 2 * state, m


def test_no_disk_to_evict_to():
    # session_dir cannot be created: past max_spill_bytes spilled states are dropped (the budget
    # holds), and past max_sessions a new session gets 429 as before
    with Server("--slots", "1", "--max-spill-bytes", "0", "--max-sessions", "3",
                session_dir="/dev/null/sessions") as srv:
        sids = [srv.post("/v1/sessions", {"prompt": f"s{i}"})["id"] for i in range(3)]
        m = srv.metrics()
        assert m["mambabyte_sessions_spilled_bytes"] == 0 and m["mambabyte_sessions"] == 1, m
        assert "dropped it" in srv.output()
        assert srv.request("GET", f"/v1/sessions/{sids[0]}")[0] == 404
        st, out, _ = srv.request("POST", f"/v1/sessions/{sids[2]}/save", {})
        assert st == 500 and out["error"]["code"] == "save_failed", out
        assert "/dev/null" not in out["error"]["message"] and "/dev/null" in srv.output(), out
        for _ in range(2):
            srv.post("/v1/sessions", {})  # empty sessions hold no state: they stay
        st, out, _ = srv.request("POST", "/v1/sessions", {})
        assert st == 429 and out["error"]["code"] == "too_many_sessions", out


def main():
    run([test_record_is_checked_whole, test_delete_deletes_the_record, test_idle_sessions_expire, test_records_on_disk_expire,
         test_idle_time_starts_when_a_request_ends, test_evicted_to_disk_before_429, test_spill_budget, test_no_disk_to_evict_to])


if __name__ == "__main__":
    main()
