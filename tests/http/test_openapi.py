"""GET /openapi.json over real HTTP: the repository's server/openapi.json, public, naming every
route; then a bounded property-based run of schemathesis (PyPI; tools/deps.sh --test installs
it) against the live daemon: no 5xx, every status code documented, every response matching its
schema (streams' events included)."""
import json
import os
import shutil
import subprocess
import tempfile
import time

from mbserver import ROOT, Server, run

SRV = None
KEY = "k3y"


def test_document():
    saved, SRV.key = SRV.key, None
    try:
        st, doc, h = SRV.request("GET", "/openapi.json")
    finally:
        SRV.key = saved
    assert st == 200 and h["Content-Type"] == "application/json", (st, h)
    with open(os.path.join(ROOT, "server/openapi.json")) as f:
        assert doc == json.load(f), "the served document is the repository's"
    assert doc["openapi"].startswith("3.")
    routes = {"/health", "/metrics", "/openapi.json", "/v1/models", "/v1/models/{id}", "/v1/completions",
              "/v1/generate", "/v1/sessions", "/v1/sessions/{id}", "/v1/sessions/{id}/fork",
              "/v1/sessions/{id}/save", "/v1/sessions/{id}/restore"}
    assert set(doc["paths"]) == routes, set(doc["paths"]) ^ routes
    fields = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for f in ("prompt", "max_tokens", "max_completion_tokens", "logprobs", "echo", "n", "best_of", "stream_options",
              "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "suffix", "ignore_eos",
              "response_format", "model", "speculative", "seed", "stop"):
        assert f in fields, f
    st, _, h = SRV.request("POST", "/openapi.json", {})
    assert st == 405 and h.get("Allow") == "GET"


def test_schemathesis():
    exe = shutil.which("schemathesis")
    if not exe:
        print("SKIPPED test_schemathesis: schemathesis is not installed (tools/deps.sh --test installs it "
              "from PyPI; it could not be installed here)")
        return
    t0 = time.time()
    r = subprocess.run([exe, "run", f"http://127.0.0.1:{SRV.port}/openapi.json", "-H", f"Authorization: Bearer {KEY}",
                        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                        "response_schema_conformance", "--max-examples", "40", "--seed", "15",
                        "--phases", "examples,coverage,fuzzing", "--request-timeout", "30", "--max-failures", "5"],
                       capture_output=True, text=True, timeout=300, cwd=tempfile.mkdtemp(prefix="mb-st-"))
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-2000:]
    assert "generated" in r.stdout, r.stdout[-2000:]
    print(f"     schemathesis: {r.stdout.strip().splitlines()[-1]} ({time.time() - t0:.0f}s)")
    SRV.wait_idle(60)


def main():
    global SRV
    with Server("--api-key", KEY, "--max-tokens-limit", "64", "--default-max-tokens", "16", "--slots", "16") as SRV:
        SRV.key = KEY
        run([test_document, test_schemathesis])


if __name__ == "__main__":
    main()
