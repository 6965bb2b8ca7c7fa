#!/usr/bin/env python3
"""`mambabyte loadgen` against the real daemon on a loopback port (tests/http/mbserver.py starts
it with the fixture model): every request sent is counted as completed or failed; the bytes it
counts are the bytes the daemon served (replayed here with Python's own client, and against
the daemon's usage and /metrics); 429s and a daemon killed mid-run are counted failures with a
report at the end; the JSON parses; a bad URL or an unreachable port is one clear error; the
engine-alone mode runs the same workload. Runs $MB_BIN (default the ASan build)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "http"))
from mbserver import BIN, MODEL, ROOT, Server, free_port, run  # noqa: E402

TMP = tempfile.mkdtemp(prefix="mb-loadgen-")
PROMPT = "It was the best of times, it was the worst of times, it was the age of wisdom.\n"


def loadgen(*args, timeout=300):
    return subprocess.run([BIN, "loadgen", "--quiet", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def report(path):
    with open(path) as f:
        j = json.load(f)
    assert j["sent"] == j["completed"] + j["failed"] == len(j["per_request"]), j
    return j


def prompt_file():
    """One document, so every request sends the same prompt (PROMPT, all of it)."""
    path = os.path.join(TMP, "one.txt")
    with open(path, "w") as f:
        f.write(PROMPT)
    return path


def test_bytes_counted_are_bytes_served():
    out = os.path.join(TMP, "stream.json")
    with Server() as srv:
        r = loadgen("--url", f"http://127.0.0.1:{srv.port}", "--concurrency", "4", "--requests", "12",
                    "--prompts", prompt_file(), "--prompt-bytes", str(len(PROMPT)), "--max-tokens", "40",
                    "--temperature", "0.9", "--seed", "7", "--json", out)
        assert r.returncode == 0, r.stderr
        assert "completed 12, failed 0" in r.stdout, r.stdout
        assert "time to first byte" in r.stdout and "end-to-end" in r.stdout, r.stdout
        j = report(out)
        assert j["completed"] == 12 and j["settings"]["seed"] == 7 and j["peak_concurrency"] <= 4, j
        assert j["input_bytes"] == 12 * len(PROMPT), j
        # the daemon's own count: usage per request, and /metrics over the measured run
        assert all(x["usage_output"] == 40 and x["usage_prompt"] == len(PROMPT) for x in j["per_request"]), j
        assert j["usage_output_bytes"] == 480 and j["server"]["generated_bytes"] == 480, j["server"]
        assert j["server"]["requests_by_code"].get("200", 0) >= 12, j["server"]
        assert j["server"]["batch_sequences_mean"] >= 1, j["server"]
        # the text bytes of each answer, replayed with the request's seed (seed + idx): the byte model
        # may write invalid UTF-8, which the daemon sends as U+FFFD, so text bytes are counted as sent
        for x in j["per_request"]:
            events = srv.stream("/v1/completions", {"prompt": PROMPT, "max_tokens": 40, "temperature": 0.9,
                                                    "seed": 7 + x["idx"]})
            text = "".join(e["choices"][0]["text"] for e in events[:-1])
            assert x["output_bytes"] == len(text.encode()), (x, len(text.encode()))
            assert x["chunks"] >= 1 and 0 < x["ttfb_ms"] <= x["e2e_ms"], x
        lat = j["latency_ms"]
        for k in ("ttfb", "tpob", "inter_chunk", "e2e"):
            s = lat[k]
            assert s["mean"] >= 0 and s["median"] <= s["p90"] <= s["p99"] <= s["max"], (k, s)
        assert lat["ttfb"]["n"] == lat["e2e"]["n"] == 12, lat
        srv.wait_idle()


def test_native_endpoint_counts_exact_bytes():
    out = os.path.join(TMP, "native.json")
    with Server() as srv:
        r = loadgen("--url", f"http://127.0.0.1:{srv.port}/v1/generate", "--concurrency", "3", "--requests", "9",
                    "--prompt-bytes", "50", "--max-tokens", "33", "--temperature", "1", "--json", out)
        assert r.returncode == 0, r.stderr
        j = report(out)
        assert j["settings"]["api"] == "native" and j["completed"] == 9, j
        assert all(x["output_bytes"] == x["usage_output"] == 33 for x in j["per_request"]), j["per_request"]
        assert j["output_bytes"] == j["server"]["generated_bytes"] == 9 * 33, j


def test_no_stream_and_open_loop():
    with Server() as srv:
        url = f"http://127.0.0.1:{srv.port}"
        out = os.path.join(TMP, "whole.json")
        r = loadgen("--url", url, "--no-stream", "--concurrency", "2", "--requests", "6", "--max-tokens", "20",
                    "--json", out)
        assert r.returncode == 0, r.stderr
        j = report(out)
        assert j["completed"] == 6 and not j["settings"]["stream"], j
        assert j["latency_ms"]["tpob"]["n"] == 0 and j["usage_output_bytes"] == 120, j
        out = os.path.join(TMP, "rate.json")
        r = loadgen("--url", url, "--rate", "40", "--burstiness", "0.5", "--requests", "20", "--max-tokens", "10",
                    "--slo", "ttfb:60000,tpob:60000", "--json", out)
        assert r.returncode == 0, r.stderr
        j = report(out)
        assert j["settings"]["mode"] == "rate" and j["completed"] == 20, j
        assert j["goodput"]["requests"] == 20 and j["goodput"]["fraction"] == 1, j["goodput"]
        assert "goodput" in r.stdout, r.stdout
        srv.wait_idle()


def test_seed_sends_the_same_requests():
    with Server() as srv:
        runs = []
        for k in range(2):
            out = os.path.join(TMP, f"seed{k}.json")
            r = loadgen("--url", f"http://127.0.0.1:{srv.port}/v1/generate", "--requests", "5", "--seed", "11",
                        "--temperature", "1", "--max-tokens", "8", "--json", out)
            assert r.returncode == 0, r.stderr
            runs.append([(x["idx"], x["prompt_bytes"], x["output_bytes"]) for x in report(out)["per_request"]])
        assert runs[0] == runs[1], runs


def test_429_storm_is_counted():
    out = os.path.join(TMP, "storm.json")
    with Server("--slots", "1", "--queue-limit", "1") as srv:
        r = loadgen("--url", f"http://127.0.0.1:{srv.port}", "--concurrency", "12", "--requests", "60",
                    "--max-tokens", "64", "--json", out)
        assert r.returncode == 0, r.stderr
        j = report(out)
        causes = {f["cause"]: f["count"] for f in j["failures"]}
        assert causes.get("http 429", 0) > 0 and j["completed"] > 0, (causes, j["completed"])
        assert sum(causes.values()) == j["failed"], causes
        assert "http 429" in r.stdout and "requests   sent 60" in r.stdout, r.stdout
        assert j["server"]["requests_by_code"].get("429", 0) == causes["http 429"], j["server"]
        srv.wait_idle()


def test_daemon_killed_mid_run():
    out = os.path.join(TMP, "killed.json")
    srv = Server()
    try:
        lg = subprocess.Popen([BIN, "loadgen", "--quiet", "--url", f"http://127.0.0.1:{srv.port}",
                               "--concurrency", "4", "--duration", "120", "--max-tokens", "4000", "--warmup", "0",
                               "--json", out], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        deadline = time.time() + 60
        while time.time() < deadline and srv.metrics().get("mambabyte_slots_active", 0) < 1:
            time.sleep(0.05)
        time.sleep(0.3)
        srv.proc.kill()
        srv.proc.wait()
        stdout, stderr = lg.communicate(timeout=120)
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
    assert lg.returncode == 0, stderr
    j = report(out)
    assert j["failed"] >= 1 and j["duration_s"] < 60, j
    assert any(f["cause"].startswith("transport") for f in j["failures"]), j["failures"]
    assert j["stopped_early"] and "refused" in j["stopped_early"], j["stopped_early"]
    assert "failed" in stdout and "note" in stdout, stdout


def one_error_line(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith("mambabyte loadgen: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert r.stdout == "", r.stdout


def test_bad_urls_are_one_clear_error():
    one_error_line(loadgen("--url", f"http://127.0.0.1:{free_port()}", "--requests", "3"),
                   "cannot reach", "Couldn't connect")
    one_error_line(loadgen("--url", "htp//nowhere"), "not a URL")
    one_error_line(loadgen("--url", "ftp://127.0.0.1:21/"), "http or https")
    one_error_line(loadgen("--requests", "3"), "--url")
    one_error_line(loadgen("--url", "http://127.0.0.1:1", "--concurrency", "0"), "--concurrency", "out of range")
    one_error_line(loadgen("--url", "http://127.0.0.1:1", "--slo", "ttfb"), "--slo")
    one_error_line(loadgen("--url", "http://127.0.0.1:1", "--prompts", "/nonexistent/file"), "/nonexistent/file")
    with Server("--api-key", "sesame") as srv:
        url = f"http://127.0.0.1:{srv.port}"
        one_error_line(loadgen("--url", url + "/v1/complete", "--requests", "3"), "warm-up", "status 404")
        one_error_line(loadgen("--url", url, "--requests", "3"), "warm-up", "status 401")
        r = loadgen("--url", url, "--api-key", "sesame", "--requests", "3", "--max-tokens", "5")
        assert r.returncode == 0 and "completed 3, failed 0" in r.stdout, (r.stdout, r.stderr)
        # asking for speculation where there is no drafter: the daemon's 400 names it
        one_error_line(loadgen("--url", url, "--api-key", "sesame", "--requests", "2", "--speculative", "on"),
                       "warm-up", "status 400", "drafter")


def test_engine_alone_runs_the_same_workload():
    out = os.path.join(TMP, "engine.json")
    r = loadgen("--engine", MODEL, "--threads", "1", "--concurrency", "3", "--requests", "7",
                "--prompt-bytes", "300", "--max-tokens", "9", "--temperature", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    j = report(out)
    assert j["completed"] == 7 and j["output_bytes"] == 63 and j["input_bytes"] == 2100, j
    assert j["settings"]["engine"] == MODEL and j["server"] is None, j["settings"]
    assert all(x["chunks"] == 9 for x in j["per_request"]), j["per_request"]
    # the daemon generates the same bytes for the same request: exact bytes from the native endpoint
    with Server() as srv:
        out2 = os.path.join(TMP, "engine-http.json")
        r = loadgen("--url", f"http://127.0.0.1:{srv.port}/v1/generate", "--concurrency", "3", "--requests", "7",
                    "--prompt-bytes", "300", "--max-tokens", "9", "--temperature", "1", "--json", out2)
        assert r.returncode == 0, r.stderr
        assert report(out2)["output_bytes"] == 63
    one_error_line(loadgen("--engine", MODEL, "--rate", "5"), "closed loop")


def test_interrupt_still_reports():
    out = os.path.join(TMP, "sigint.json")
    with Server() as srv:
        lg = subprocess.Popen([BIN, "loadgen", "--quiet", "--url", f"http://127.0.0.1:{srv.port}",
                               "--concurrency", "2", "--duration", "120", "--max-tokens", "50", "--json", out],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        lg.send_signal(signal.SIGINT)
        stdout, stderr = lg.communicate(timeout=60)
        assert lg.returncode == 0, stderr
        j = report(out)
        assert j["completed"] >= 1 and j["failed"] == 0 and j["duration_s"] < 60, j
        srv.wait_idle()


def test_speculation_on_and_off():
    """--speculative sends the request field; the daemon's /metrics then counts the drafts (the
    fixture's random weights reject nearly all of them: only their count is checked)."""
    with Server("--draft", os.path.join(ROOT, "models/drafter-small")) as srv:
        drafts = {}
        for flag in ("on", "off"):
            out = os.path.join(TMP, f"spec-{flag}.json")
            r = loadgen("--url", f"http://127.0.0.1:{srv.port}", "--concurrency", "2", "--requests", "4",
                        "--prompt-bytes", "64", "--max-tokens", "16", "--speculative", flag, "--json", out)
            assert r.returncode == 0, r.stderr
            j = report(out)
            assert j["completed"] == 4 and j["settings"]["speculative"] == (flag == "on"), j["settings"]
            drafts[flag] = j["server"]["spec_drafts"]
            if flag == "on":
                assert 0 <= j["server"]["spec_acceptance"] <= 1, j["server"]
                assert "speculation:" in r.stdout, r.stdout
        assert drafts["on"] > 0 and drafts["off"] == 0, drafts
        srv.wait_idle()


if __name__ == "__main__":
    run([test_bytes_counted_are_bytes_served, test_native_endpoint_counts_exact_bytes,
         test_no_stream_and_open_loop, test_seed_sends_the_same_requests, test_429_storm_is_counted,
         test_daemon_killed_mid_run, test_bad_urls_are_one_clear_error, test_engine_alone_runs_the_same_workload,
         test_interrupt_still_reports, test_speculation_on_and_off])
