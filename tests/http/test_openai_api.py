"""The completions API as OpenAI clients, vLLM and llama.cpp's server use it, over real HTTP:
tolerant fields (stream_options.include_usage, max_completion_tokens, ignore_eos, suffix "",
response_format text; unknown fields ignored and listed in X-Ignored-Fields, or refused with
strict_fields), model names (404 model_not_found, model_aliases, GET /v1/models/{id}), and
prompts as token ids (bytes)."""
import json

from mbserver import Server, run

SRV = None


def completion(body, srv=None):
    st, out, h = (srv or SRV).request("POST", "/v1/completions", body)
    assert st == 200, f"{body} -> {st} {out}"
    return out, h


def test_tolerant_fields():
    base = {"prompt": "Hello", "max_tokens": 12, "seed": 3, "temperature": 0.8}
    plain, h = completion(base)
    assert "X-Ignored-Fields" not in h, h
    extras = {"max_completion_tokens": 12, "ignore_eos": True, "suffix": "", "response_format": {"type": "text"},
              "stream_options": None, "logprobs": None, "echo": False, "n": 1, "best_of": 1,
              "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "model": None, "user": "u"}
    same, h = completion(dict(base, **extras))
    assert same["choices"][0]["text"] == plain["choices"][0]["text"], (same, plain)
    assert "X-Ignored-Fields" not in h, h
    # max_completion_tokens alone is max_tokens
    alias, _ = completion({"prompt": "Hello", "max_completion_tokens": 7, "seed": 3})
    assert alias["usage"]["completion_tokens"] == 7, alias
    # unknown fields are ignored, listed in the header and logged
    out, h = completion(dict(base, foo=1, tools=[], **{"bad\nname": 2}))
    assert out["choices"][0]["text"] == plain["choices"][0]["text"]
    assert h.get("X-Ignored-Fields") == "foo, tools, bad?name", h
    assert "ignored unknown fields: foo, tools, bad?name" in SRV.output()
    st, body, h = SRV.request("POST", "/v1/completions", dict(base, stream_options={"include_usage": True, "x": 1}))
    assert st == 200 and h.get("X-Ignored-Fields") == "stream_options.x", (st, h)
    # the native API's own fields are unknown here: ignored, not used
    st, body, h = SRV.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "session": "abc",
                                                          "timeout": 0, "prompt_base64": "!!"})
    assert st == 200 and h.get("X-Ignored-Fields") == "session, timeout, prompt_base64", (st, body, h)
    # native endpoint and session creation are tolerant too
    st, body, h = SRV.request("POST", "/v1/generate", {"prompt": "x", "max_tokens": 1, "frobnicate": True})
    assert st == 200 and h.get("X-Ignored-Fields") == "frobnicate", (st, body, h)
    # a list of many ignored fields is cut short, never past the header's budget
    many = dict(base, **{f"field_number_{i:04d}": i for i in range(200)})
    out, h = completion(many)
    assert h["X-Ignored-Fields"].endswith("...") and len(h["X-Ignored-Fields"]) < 512, h


def test_tolerant_fields_still_checked():
    bad = [{"max_tokens": 5, "max_completion_tokens": 6}, {"max_completion_tokens": -1},
           {"suffix": "x"}, {"suffix": 3}, {"response_format": {"type": "json_object"}},
           {"response_format": "text"}, {"stream_options": "yes"}, {"stream_options": {"include_usage": 1}},
           {"ignore_eos": "no"}, {"n": 0}, {"best_of": 65}, {"echo": "yes"}, {"logprobs": 21},
           {"logprobs": -1}, {"logprobs": 1.5}, {"prompt": [256]}, {"prompt": [-1]}, {"prompt": [1.5]},
           {"prompt": [["a"]]}, {"prompt": {}}, {"prompt": []}, {"model": 5},
           {"presence_penalty": 2.5}, {"frequency_penalty": -3}, {"repetition_penalty": 0},
           {"logit_bias": []}, {"logit_bias": {"256": 1}}, {"logit_bias": {"a": 1}}, {"logit_bias": {"01": 1}},
           {"logit_bias": {"-1": 1}}, {"logit_bias": {"1": 101}}, {"logit_bias": {"1": "x"}}]
    for extra in bad:
        body = dict({"prompt": "x"}, **extra)
        st, out, _ = SRV.request("POST", "/v1/completions", body)
        assert st == 400 and out["error"]["code"] == "invalid_value", (body, st, out)


def test_stream_options_include_usage():
    req = {"prompt": "Stream me", "max_tokens": 20, "seed": 5}
    ev = SRV.stream("/v1/completions", dict(req, stream_options={"include_usage": True}))
    assert ev[-1] == "[DONE]"
    usage = ev[-2]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 9, "completion_tokens": 20,
                                                         "total_tokens": 29}, usage
    assert ev[-3]["choices"][0]["finish_reason"] == "length" and "usage" not in ev[-3], ev[-3]
    assert all("usage" not in e for e in ev[:-2])
    text = "".join(e["choices"][0]["text"] for e in ev[:-2])
    assert text == completion(req)[0]["choices"][0]["text"]
    # without it: the usage rides in the finish chunk, as before
    ev = SRV.stream("/v1/completions", dict(req, stream_options={"include_usage": False}))
    assert ev[-2]["choices"][0]["finish_reason"] == "length" and ev[-2]["usage"]["completion_tokens"] == 20


def test_token_id_prompts():
    text, _ = completion({"prompt": "Hi!", "max_tokens": 10, "seed": 9})
    for p in ([72, 105, 33], [[72, 105, 33]], ["Hi!"]):
        out, _ = completion({"prompt": p, "max_tokens": 10, "seed": 9})
        assert out["choices"][0]["text"] == text["choices"][0]["text"], p
        assert out["usage"]["prompt_tokens"] == 3
    # any byte, NUL included, as an id
    out, _ = completion({"prompt": [0, 255, 10], "max_tokens": 2, "seed": 1})
    assert out["usage"]["prompt_tokens"] == 3


def test_models():
    st, body, _ = SRV.request("GET", "/v1/models/tiny-byte-tied")
    assert st == 200 and body["id"] == "tiny-byte-tied" and body["object"] == "model", body
    st, body, _ = SRV.request("GET", "/v1/models/gpt-3.5-turbo-instruct")
    assert st == 404 and body["error"]["code"] == "model_not_found", body
    st, body, h = SRV.request("POST", "/v1/models/tiny-byte-tied", {})
    assert st == 405 and h.get("Allow") == "GET", (st, body)
    out, _ = completion({"prompt": "x", "max_tokens": 2, "model": "tiny-byte-tied"})
    assert out["model"] == "tiny-byte-tied"
    for path in ("/v1/completions", "/v1/generate"):
        st, body, _ = SRV.request("POST", path, {"prompt": "x", "max_tokens": 2, "model": "gpt-3.5-turbo-instruct"})
        assert st == 404 and body["error"]["code"] == "model_not_found", (path, st, body)
        assert body["error"]["type"] == "invalid_request_error"


def test_model_aliases_and_strict_fields():
    with Server("--model-aliases", "gpt-3.5-turbo-instruct, org/other-name", "--strict-fields", "true") as s:
        for name in ("gpt-3.5-turbo-instruct", "org/other-name", "tiny-byte-tied"):
            out, _ = completion({"prompt": "x", "max_tokens": 2, "model": name}, s)
            st, body, _ = s.request("GET", "/v1/models/" + name)
            assert st == 200 and body["id"] == name, (name, body)
        st, body, _ = s.request("POST", "/v1/completions", {"prompt": "x", "model": "gpt-4"})
        assert st == 404 and body["error"]["code"] == "model_not_found", body
        st, body, h = s.request("POST", "/v1/completions", {"prompt": "x", "foo": 1})
        assert st == 400 and "foo" in body["error"]["message"] and "X-Ignored-Fields" not in h, body
        st, body, _ = s.request("POST", "/v1/completions", {"prompt": "x", "stream_options": {"y": 1}})
        assert st == 400 and "stream_options.y" in body["error"]["message"], body
        st, body, _ = s.request("POST", "/v1/sessions", {"prompt": "x", "foo": 1})
        assert st == 400, body
    with Server("--model-aliases", "*") as s:
        out, _ = completion({"prompt": "x", "max_tokens": 2, "model": "anything-at-all"}, s)
        assert out["choices"]


def test_bounded_requests():
    """What one request may make the server hold is bounded: every prompt of a list within
    max_prompt_bytes, and the log-probabilities kept for the answer within 64 MB; each is a 400
    naming the limit, and the server serves on."""
    st, out, _ = SRV.request("POST", "/v1/completions", {"prompt": ["a", "x" * 262145], "max_tokens": 1})
    assert st == 400 and "262144" in out["error"]["message"], (st, out)
    big = {"prompt": "x" * 200000, "echo": True, "logprobs": 20, "max_tokens": 1}
    st, out, _ = SRV.request("POST", "/v1/completions", dict(big, n=2))
    assert st == 400 and "64 MB" in out["error"]["message"], (st, out)
    st, out, _ = SRV.request("POST", "/v1/completions", dict(big, prompt="x" * 20000, max_tokens=0))
    assert st == 200 and len(out["choices"][0]["logprobs"]["token_logprobs"]) == 20000, (st, str(out)[:300])
    completion({"prompt": "Hello", "max_tokens": 2})


def main():
    global SRV
    with Server() as SRV:
        run([test_tolerant_fields, test_tolerant_fields_still_checked, test_stream_options_include_usage,
             test_token_id_prompts, test_models, test_bounded_requests])
    run([test_model_aliases_and_strict_fields])


if __name__ == "__main__":
    main()
