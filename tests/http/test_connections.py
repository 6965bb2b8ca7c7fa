"""Connections under slow clients and slow work, with real sockets: a stream whose first byte
takes longer than connection_timeout_s, or that waits in the queue, gets SSE keep-alive comments
and is not cut, nor is a whole answer that takes that long; clients that send their request head or body slowly are
closed at request_read_timeout_s (1 s past max_connections_per_ip from one address), and
/health answers at once while such an attack fills max_connections, or while the daemon is out
of file descriptors."""
import json
import os
import resource
import socket
import threading
import time

from mbserver import Server, parse_sse, run

# Fed one byte per step (--max-batch-tokens 1), this prompt takes seconds to read.
SLOW_PROMPT = "x" * 40000


def read_all(sock, timeout):
    sock.settimeout(timeout)
    out = b""
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return out, True
            out += d
    except (socket.timeout, ConnectionResetError):
        return out, False


def post_raw(port, path, body):
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def dechunk(body):
    out, i = b"", 0
    while True:
        j = body.index(b"\r\n", i)
        n = int(body[i:j], 16)
        if n == 0:
            return out
        out += body[j + 2:j + 2 + n]
        i = j + 2 + n + 2


def test_slow_first_byte_keeps_stream_alive():
    with Server("--connection-timeout-s", "1", "--keepalive-s", "0.2", "--max-batch-tokens", "1",
                "--prefill-chunk", "1") as s:
        t0 = time.time()
        sock = post_raw(s.port, "/v1/completions", {"prompt": SLOW_PROMPT, "max_tokens": 8, "stream": True})
        raw, closed = read_all(sock, 60)
        sock.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        text = dechunk(body).decode()
        first_data = text.index("data: ")
        waited = time.time() - t0
        keepalives = text[:first_data].count(": keep-alive\n\n")
        assert waited > 1.5, f"the first byte came too soon ({waited:.1f}s) to prove anything"
        assert keepalives >= 3, (keepalives, text[:200])
        # the comments are well-formed SSE: a client that skips them sees the usual events
        events = parse_sse(text.replace(": keep-alive\n\n", ""))
        assert events[-2]["choices"][0]["finish_reason"] == "length", events[-2]
        assert "".join(e["choices"][0]["text"] for e in events[:-1]), events
        # a whole answer that takes longer than the idle timeout is not cut either
        sock = post_raw(s.port, "/v1/generate", {"prompt": SLOW_PROMPT, "max_tokens": 4})
        raw, _ = read_all(sock, 60)
        sock.close()
        assert raw.startswith(b"HTTP/1.1 200"), raw[:300]
        out = json.loads(raw.partition(b"\r\n\r\n")[2])
        assert out["usage"]["completion_bytes"] == 4 and out["timings"]["ttfb_ms"] > 1000, out
        assert 'status=499' not in s.output()


def test_queued_stream_gets_keepalives():
    # one slot, taken for 2 s: a stream waiting in the queue starts with keep-alives, then gets
    # its events; one whose deadline passes in the queue ends with an error event
    with Server("--slots", "1", "--keepalive-s", "0.2", "--connection-timeout-s", "1",
                "--max-tokens-limit", "1000000") as s:
        busy = threading.Thread(target=s.request, args=("POST", "/v1/generate", {
            "prompt": "a", "max_tokens": 1000000, "timeout": 2}))
        busy.start()
        while s.metrics()["mambabyte_slots_active"] == 0:
            time.sleep(0.01)
        late = post_raw(s.port, "/v1/generate", {"prompt": "q", "max_tokens": 5, "stream": True, "timeout": 0.6})
        t0 = time.time()
        sock = post_raw(s.port, "/v1/completions", {"prompt": "q", "max_tokens": 5, "stream": True})
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and time.time() - t0 < 1, (first, time.time() - t0)
        rest, _ = read_all(sock, 30)
        sock.close()
        text = dechunk((first + rest).partition(b"\r\n\r\n")[2]).decode()
        assert text.startswith(": keep-alive\n\n") and text[:text.index("data: ")].count(": keep-alive") >= 3, text[:300]
        events = parse_sse(text.replace(": keep-alive\n\n", ""))
        assert events[-2]["choices"][0]["finish_reason"] == "length", events[-2]
        raw, _ = read_all(late, 30)
        late.close()
        events = parse_sse(dechunk(raw.partition(b"\r\n\r\n")[2]).decode().replace(": keep-alive\n\n", ""))
        assert raw.startswith(b"HTTP/1.1 200") and events[-2]["error"]["code"] == "timeout", events
        busy.join()


class Dripper:
    """Slow-header attackers: sockets from a given local address that send a request head one
    byte every `every` seconds and never finish it."""

    def __init__(self, port, sources, per_source, every=0.3):
        self.socks = []
        for src in sources:
            for _ in range(per_source):
                s = socket.socket()
                s.bind((src, 0))
                try:
                    s.connect(("127.0.0.1", port))
                    s.sendall(b"GET /health HTTP/1.1\r\n")
                except OSError:
                    pass
                self.socks.append(s)
        self.stop = False
        self.t = threading.Thread(target=self.drip, args=(every,))
        self.t.start()

    def drip(self, every):
        while not self.stop:
            for s in self.socks:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            time.sleep(every)

    def open_count(self):
        """How many attacker sockets the server has not closed."""
        n = 0
        for s in self.socks:
            s.setblocking(False)
            try:
                n += s.recv(1, socket.MSG_PEEK) != b""
            except BlockingIOError:
                n += 1
            except OSError:
                pass
        return n

    def close(self):
        self.stop = True
        self.t.join()
        for s in self.socks:
            s.close()


def health_time(port):
    """Seconds until GET /health answers 200, retrying refused or reset connections."""
    t0 = time.time()
    while time.time() - t0 < 30:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            raw, _ = read_all(s, 2)
            s.close()
            if raw.startswith(b"HTTP/1.1 200"):
                return time.time() - t0
        except OSError:
            pass
        time.sleep(0.05)
    return 999


def test_slow_heads_one_address():
    with Server("--max-connections", "64", "--max-connections-per-ip", "8", "--request-read-timeout-s", "2",
                "--connection-timeout-s", "60") as s:
        d = Dripper(s.port, ["127.0.0.2"], 64)
        try:
            assert health_time(s.port) < 1
            time.sleep(1.3)  # past its share, an address gets 1 s for a head
            assert d.open_count() <= 8, d.open_count()
            time.sleep(1.2)
            assert d.open_count() == 0, "slow heads outlived request_read_timeout_s"
        finally:
            d.close()


def test_burst_from_one_address():
    # 100 connections from one address at once, heads sent only after all are open: past the
    # address's share they get a shorter deadline, not a refusal
    with Server("--max-connections-per-ip", "8") as s:
        socks = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(100)]
        time.sleep(0.2)
        for x in socks:
            x.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answers = [read_all(x, 5)[0] for x in socks]
        for x in socks:
            x.close()
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), sum(a.startswith(b"HTTP/1.1 200") for a in answers)


def test_slow_heads_fill_max_connections():
    with Server("--max-connections", "64", "--max-connections-per-ip", "8", "--request-read-timeout-s", "2",
                "--connection-timeout-s", "60") as s:
        d = Dripper(s.port, [f"127.0.0.{i}" for i in range(2, 10)], 8)
        try:
            time.sleep(0.3)
            assert health_time(s.port) < 1, "a full house of slow heads kept /health out"
            time.sleep(2.5)
            assert d.open_count() == 0
            assert health_time(s.port) < 1
        finally:
            d.close()


def test_slow_body_is_cut_at_the_deadline():
    with Server("--request-read-timeout-s", "1", "--connection-timeout-s", "60") as s:
        for drip in (True, False):
            sock = socket.create_connection(("127.0.0.1", s.port))
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            t0 = time.time()
            closed = False
            while time.time() - t0 < 10 and not closed:
                if drip:
                    try:
                        sock.send(b" ")
                    except OSError:
                        closed = True
                _, closed = read_all(sock, 0.2) if not closed else (b"", True)
            sock.close()
            assert closed and time.time() - t0 < 3, (drip, time.time() - t0)
        assert health_time(s.port) < 1


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors():
    # 64 descriptors and 200 idle connections: accept() fails with EMFILE while the listening
    # socket stays readable; the door must neither spin nor keep /health out.
    with Server("--max-connections", "500", "--max-connections-per-ip", "0") as s:
        soft, hard = resource.prlimit(s.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(s.proc.pid, resource.RLIMIT_NOFILE, (64, hard))
        socks = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(200)]
        try:
            time.sleep(0.3)
            c0 = cpu_seconds(s.proc.pid)
            time.sleep(1)
            assert cpu_seconds(s.proc.pid) - c0 < 0.3, "the accepting thread spins"
            assert health_time(s.port) < 1
        finally:
            for x in socks:
                x.close()
            resource.prlimit(s.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))


def main():
    run([test_slow_first_byte_keeps_stream_alive, test_queued_stream_gets_keepalives, test_slow_heads_one_address, test_burst_from_one_address,
         test_slow_heads_fill_max_connections,
         test_slow_body_is_cut_at_the_deadline, test_out_of_descriptors])


if __name__ == "__main__":
    main()
