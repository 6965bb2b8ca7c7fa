"""mbserver.py: what the real-HTTP tests share: start the daemon ($MB_BIN, default the ASan
build) on a free loopback port with the fixture model, talk to it, stop it and check that it
exited cleanly (status 0: no sanitizer report, no leak)."""
import base64
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("MB_BIN", os.path.join(ROOT, "build/asan/mambabyte"))
MODEL = os.path.join(ROOT, "tests/fixtures/tiny-byte-tied")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *flags, env=None, session_dir=None, model=None):
        self.port = free_port()
        self.session_dir = session_dir or tempfile.mkdtemp(prefix="mb-sessions-")
        self.log = tempfile.NamedTemporaryFile(prefix="mb-serve-", suffix=".log", delete=False)
        args = [BIN, "serve", "-m", model or MODEL, "--host", "127.0.0.1", "--port", str(self.port),
                "--session-dir", self.session_dir, "--threads", "1",
                "--device", os.environ.get("MB_DEVICE", "cpu"), *flags]
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        self.key = None
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited early:\n" + self.output())
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("daemon not ready in 60 s:\n" + self.output())

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def conn(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self, extra=None):
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = "Bearer " + self.key
        h.update(extra or {})
        return h

    def request(self, method, path, body=None, headers=None, raw=None):
        """Returns (status, parsed JSON or text, response headers)."""
        c = self.conn()
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        c.request(method, path, body=data, headers=self.headers(headers))
        r = c.getresponse()
        payload = r.read()
        c.close()
        ctype = r.getheader("Content-Type", "")
        out = json.loads(payload) if ctype.startswith("application/json") else payload.decode("utf-8", "replace")
        return r.status, out, dict(r.getheaders())

    def post(self, path, body):
        status, out, _ = self.request("POST", path, body)
        assert status == 200, f"{path} {body} -> {status} {out}"
        return out

    def stream(self, path, body):
        """POSTs with stream: true; returns the list of parsed events (the last is "[DONE]")."""
        c = self.conn()
        c.request("POST", path, body=json.dumps(dict(body, stream=True)).encode(), headers=self.headers())
        r = c.getresponse()
        assert r.status == 200, f"{path} -> {r.status} {r.read()!r}"
        assert r.getheader("Content-Type") == "text/event-stream"
        events = parse_sse(r.read().decode())
        c.close()
        return events

    def metrics(self):
        status, text, _ = self.request("GET", "/metrics")
        assert status == 200, text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def by_position(self, source):
        """/metrics' drafts by draft position for a source ("lookup" or "model"): two lists,
        drafts that reached position 1, 2, ... and those whose byte there was kept."""
        m = self.metrics()
        out = []
        for what in ("drafted", "accepted"):
            col, p = [], 1
            while (k := f'mambabyte_spec_position_{what}_total{{source="{source}",position="{p}"}}') in m:
                col.append(m[k])
                p += 1
            out.append(col)
        return out

    def wait_counter(self, name, at_least, timeout=10):
        """/metrics once the counter `name` has reached at_least. A request is counted when the
        HTTP library reports it finished, which can come after the client has read the whole
        response: a scrape right after the response may not count it yet."""
        deadline = time.time() + timeout
        m = self.metrics()
        while m.get(name, 0) < at_least and time.time() < deadline:
            time.sleep(0.02)
            m = self.metrics()
        return m

    def wait_idle(self, timeout=30):
        """Waits until no slot runs a request and nothing waits: what a leak would prevent."""
        deadline = time.time() + timeout
        m = {}
        while time.time() < deadline:
            m = self.metrics()
            if m["mambabyte_slots_active"] == 0 and m["mambabyte_queue_depth"] == 0:
                return m
            time.sleep(0.05)
        raise AssertionError(f"slots still active: {m}")

    def stop(self, sig=signal.SIGTERM, timeout=60):
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        assert rc == 0, f"daemon exited with {rc}:\n{self.output()[-6000:]}"
        return self.output()

    def __enter__(self):
        return self

    def __exit__(self, typ, *rest):
        if typ is None:
            self.stop()
        elif self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            sys.stderr.write(self.output()[-4000:])


def parse_sse(text):
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), repr(block)
        data = block[6:]
        events.append(data if data == "[DONE]" else json.loads(data))
    assert events and events[-1] == "[DONE]", events[-3:]
    return events


def b64(s):
    return base64.b64decode(s)


def cli_logits(data, model=MODEL):
    """The raw logits `mambabyte logits` gives at every position of data: [len][256] floats."""
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in"), os.path.join(d, "out")
        with open(src, "wb") as f:
            f.write(data)
        subprocess.run([BIN, "logits", "-m", model, "--input", src, "--out", dst, "--threads", "1"],
                       check=True, capture_output=True)
        raw = open(dst, "rb").read()
    vals = struct.unpack(f"<{len(raw) // 4}f", raw)
    return [vals[i * 256:(i + 1) * 256] for i in range(len(data))]


def position_deltas(before, after):
    """Per draft position: drafts that reached it and kept it between two by_position()s."""
    pad = lambda c, n: c + [0.0] * (n - len(c))
    n = max(len(after[0]), len(before[0]))
    return [[a - b for a, b in zip(pad(after[w], n), pad(before[w], n))] for w in (0, 1)]


def check_positions(drafted_at, kept_at, drafted, kept):
    """The per-position counts add up to the totals, fall with the position, and a position is
    kept only when the ones before it were."""
    assert sum(drafted_at) == drafted and sum(kept_at) == kept, (drafted_at, kept_at, drafted, kept)
    assert all(a >= b for a, b in zip(drafted_at, drafted_at[1:])), drafted_at
    assert all(a >= b for a, b in zip(kept_at, kept_at[1:])), kept_at
    assert all(k <= d for k, d in zip(kept_at, drafted_at)), (kept_at, drafted_at)


def run(tests):
    """Runs each test function in order; any assertion fails the program."""
    for t in tests:
        t0 = time.time()
        t()
        print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
