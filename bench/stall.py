"""stall.py: what a long prompt does to the streams already decoding (prefill_stall, issue 10).

Starts the daemon ($MB_BIN, default build/rel/mambabyte) on a loopback port, opens DECODERS
streaming completions, and once they all stream sends prompts of PROMPT bytes, one after another
(non-streamed, max_tokens 1). Each stream's events are timed as they arrive: the gaps between a
stream's events while a prompt is being read, against its gaps before any prompt came, and the
prompts' time to their answer. Once with each value of prefill_stall given. The calm gaps' p99
says how much of a tail is the client's own (one Python process reading every stream).
Usage: python3 bench/stall.py [MODEL_DIR] [STALL ...]   (defaults: the bundled model, 0 1)
Environment: DECODERS (8), PROMPT (4096), PROMPTS (4), MB_DEVICE (cpu), THREADS (2)."""
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "http"))
import mbserver  # noqa: E402

ROOT = mbserver.ROOT
if "MB_BIN" not in os.environ:
    mbserver.BIN = os.path.join(ROOT, "build/rel/mambabyte")
MODEL = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models/mambabyte-small")
STALLS = sys.argv[2:] or ["0", "1"]
N_DEC = int(os.environ.get("DECODERS", "8"))
PROMPT = int(os.environ.get("PROMPT", "4096"))
N_PROMPTS = int(os.environ.get("PROMPTS", "4"))
TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was "
        "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity. ")


def decoder(srv, stop, times):
    c = srv.conn(timeout=600)
    body = {"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0.8, "seed": 1,
            "stream": True}
    c.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers=srv.headers())
    r = c.getresponse()
    while not stop.is_set():
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            times.append(time.perf_counter())
    c.close()


def run(stall):
    srv = mbserver.Server("--prefill-stall", stall, "--threads", os.environ.get("THREADS", "2"),
                          "--log-requests", "false", model=MODEL)
    stop = threading.Event()
    times = [[] for _ in range(N_DEC)]
    th = [threading.Thread(target=decoder, args=(srv, stop, times[i]), daemon=True)
          for i in range(N_DEC)]
    for t in th:
        t.start()
    while min(len(t) for t in times) < 50:
        time.sleep(0.05)
    t_calm = time.perf_counter()
    time.sleep(1.0)
    windows, ttfb = [], []
    prompt = (TEXT * (PROMPT // len(TEXT) + 1))[:PROMPT]
    for _ in range(N_PROMPTS):
        t0 = time.perf_counter()
        srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 1, "temperature": 0})
        t1 = time.perf_counter()
        windows.append((t0, t1))
        ttfb.append(t1 - t0)
        time.sleep(0.3)
    stop.set()
    srv.proc.terminate()
    srv.proc.wait(timeout=60)

    def gaps(lo, hi):
        out = []
        for ts in times:
            out += [b - a for a, b in zip(ts, ts[1:]) if lo <= a and b <= hi]
        return out

    calm = sorted(gaps(t_calm, t_calm + 1.0))
    busy = sorted(g for lo, hi in windows for g in gaps(lo, hi))

    def p99(x):
        return x[int(0.99 * (len(x) - 1))] if x else 0

    return (statistics.median(calm), p99(calm), statistics.median(busy) if busy else 0, p99(busy),
            max(busy) if busy else 0, statistics.median(ttfb))


print(f"{MODEL}: {N_DEC} streams decoding, {N_PROMPTS} prompts of {PROMPT} bytes one after another")
print("| prefill_stall | stream gap calm: median / p99 (ms) | gap while a prompt is read: median / "
      "p99 / max (ms) | max / calm | prompt answered in (ms, median) |")
print("| ---: | ---: | ---: | ---: | ---: |")
for s in STALLS:
    step, step99, med, p99, mx, tt = run(s)
    print(f"| {s} | {step * 1e3:.2f} / {step99 * 1e3:.2f} | {med * 1e3:.2f} / {p99 * 1e3:.2f} / "
          f"{mx * 1e3:.2f} | {mx / step:.1f}x | {tt * 1e3:.0f} |")
