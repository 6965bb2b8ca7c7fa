#!/usr/bin/env python3
"""spec_bench.py URL PROMPTS.json: plain against speculative decoding on one daemon started with
--draft (bench/spec-gpu.sh starts it). For each sampling setting (greedy; temperature 0.7 with a
seed per prompt) and each concurrency, every prompt is generated three ways on the same daemon:
speculative.enabled false (plain), true (the drafter drafts every round) and absent (the server
decides by measured cost), the three ways taking turns on rounds of `conc` prompts, so that a
change of load on the machine meets all three alike. Prints one Markdown row per setting and concurrency: bytes/s of each
way, the ratios, the drafts' acceptance, bytes per verification round, and the step time split
(drafter, verifier, host) from /metrics, and how often the server chose to draft in the auto
run (model drafts per scheduler step: at concurrency 1, the share of steps that drafted); and checks that every speculative output equals the
plain one. Then a second table: the forced runs' acceptance by draft position (of the drafts
that reached position P, the share whose byte there was kept; /metrics).

options: --bytes N (256) --conc 1,8,64 --temps 0,0.7"""
import base64
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


URL = urlparse(sys.argv[1] if len(sys.argv) > 2 else sys.exit(__doc__))
PROMPTS = [p.encode() for p in json.load(open(sys.argv[2], encoding="utf-8"))]
BYTES = int(arg("--bytes", "256"))
CONC = [int(c) for c in arg("--conc", "1,8,64").split(",")]
TEMPS = [float(t) for t in arg("--temps", "0,0.7").split(",")]


def post(body):
    c = http.client.HTTPConnection(URL.hostname, URL.port, timeout=600)
    c.request("POST", "/v1/generate", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {out}")
    return out


def metrics():
    c = http.client.HTTPConnection(URL.hostname, URL.port, timeout=60)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    return m


class Way:
    """One way of decoding over the rounds: outputs, seconds, summed timings, metric deltas."""

    def __init__(self, spec):
        self.spec = spec
        self.outs = [None] * len(PROMPTS)
        self.secs = 0.0
        self.tot = {"drafts": 0, "drafted_bytes": 0, "accepted_bytes": 0}
        self.delta = {}


def run(temp, conc, way, ids):
    """Prompts ids at `conc` at once, added to way."""
    spec, outs, tot = way.spec, way.outs, way.tot
    nxt = iter(ids)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            body = {"prompt_base64": base64.b64encode(PROMPTS[i]).decode(), "max_tokens": BYTES,
                    "temperature": temp, "seed": 1000 + i}
            if spec is not None:
                body["speculative"] = {"enabled": spec}
            r = post(body)
            outs[i] = base64.b64decode(r["bytes_base64"])
            with lock:
                for k in tot:
                    tot[k] += r["timings"][k]

    m0 = metrics()
    t0 = time.time()
    ts = [threading.Thread(target=worker) for _ in range(conc)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    way.secs += time.time() - t0
    m1 = metrics()
    for k in m1:
        if k.split("{")[0].endswith("_total"):
            way.delta[k] = way.delta.get(k, 0) + m1[k] - m0.get(k, 0)


def split(d):
    step = d.get("mambabyte_step_seconds_total", 0)
    drafter = d.get("mambabyte_spec_drafter_seconds_total", 0)
    fwd = d.get("mambabyte_forward_seconds_total", 0)
    return drafter, fwd, max(step - drafter - fwd, 0)


def by_position(d, source="model", most=16):
    """Kept / drafted at draft positions 1.. from metric deltas."""
    out = []
    for p in range(1, most + 1):
        at = f'{{source="{source}",position="{p}"}}'
        drafted = d.get("mambabyte_spec_position_drafted_total" + at, 0)
        if not drafted:
            break
        out.append(d.get("mambabyte_spec_position_accepted_total" + at, 0) / drafted)
    return out


def main():
    post({"prompt": "warm up", "max_tokens": 32, "speculative": {"enabled": True}})
    print(f"{len(PROMPTS)} prompts x {BYTES} bytes; bytes/s of all requests together (wall clock)\n")
    print("| sampling | conc | plain B/s | spec B/s | spec/plain | auto B/s | auto/plain | accepted | "
          "bytes/round | spec step split: drafter / verifier / host (s) | auto drafts/step | exact |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")
    positions = []
    for temp in TEMPS:
        for conc in CONC:
            ways = [Way(False), Way(True), Way(None)]
            for r in range(0, len(PROMPTS), conc):
                for w in ways[r // conc % 3:] + ways[:r // conc % 3]:
                    run(temp, conc, w, range(r, min(r + conc, len(PROMPTS))))
            (plain, tp), (spec, ts), (auto, ta) = ((w.outs, w.secs) for w in ways)
            tot, d = ways[1].tot, ways[1].delta
            n = sum(len(o) for o in plain)
            acc = tot["accepted_bytes"] / tot["drafted_bytes"] if tot["drafted_bytes"] else 0
            per_round = (tot["accepted_bytes"] + tot["drafts"]) / tot["drafts"] if tot["drafts"] else 0
            dr, fw, host = split(d)
            ad = ways[2].delta
            auto_share = ad.get("mambabyte_spec_model_drafts_total", 0) / max(1, ad.get("mambabyte_steps_total", 0))
            exact = "yes" if plain == spec == auto else \
                f"NO ({sum(a != b for a, b in zip(plain, spec))} spec, {sum(a != b for a, b in zip(plain, auto))} auto)"
            name = "greedy" if temp == 0 else f"T={temp:g} seeded"
            print(f"| {name} | {conc} | {n / tp:.0f} | {n / ts:.0f} | {tp / ts:.2f}x | {n / ta:.0f} | {tp / ta:.2f}x | "
                  f"{100 * acc:.0f}% | {per_round:.2f} | {dr:.2f} / {fw:.2f} / {host:.2f} | {auto_share:.2f} | {exact} |",
                  flush=True)
            positions.append((name, conc, by_position(d)))
            if exact != "yes":
                sys.exit("speculative output differs from plain decoding")
    most = max((len(p) for _, _, p in positions), default=0)
    print("\nForced speculation, kept / drafted by draft position (1: the first drafted byte)\n")
    print("| sampling | conc | " + " | ".join(str(p + 1) for p in range(most)) + " |")
    print("|---|---:|" + "---:|" * most)
    for name, conc, p in positions:
        print(f"| {name} | {conc} | " + " | ".join(f"{x:.2f}" for x in p) + " |" * (most - len(p) + 1))


if __name__ == "__main__":
    main()
