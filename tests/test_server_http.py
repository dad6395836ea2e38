"""Raw HTTP: error JSON for every kind of bad request, SSE framing byte by
byte, /health while loading, /metrics names, auth, and the OpenAPI schema."""
from __future__ import annotations

import json
import threading

import httpx
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.auth import key_digest, key_matches, read_keys_file
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def server(tiny_llama):
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",)))
    with ServerThread(app) as srv:
        yield srv


def post(server, path: str, body, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def assert_openai_error(r: httpx.Response, status: int, param: str | None = "<any>") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param != "<any>":
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("patch,param", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -3}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs=true
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "a", "prefix": True}]}, "messages[0].prefix"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_reasoning_tokens": -1}, "max_reasoning_tokens"),
])
def test_invalid_chat_values_are_400(server, patch, param):
    assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, **patch}), 400, param)


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a", 1]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "logprobs": 99}, "logprobs"),
])
def test_invalid_completion_values_are_400(server, body, param):
    err = assert_openai_error(post(server, "/v1/completions", {"model": "tiny", **body}), 400, param)
    if param == "suffix":
        assert "fill-in-the-middle" in err["message"]


def test_missing_body_and_bad_json_are_400(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert_openai_error(r, 400)
    assert_openai_error(post(server, "/v1/chat/completions", {"model": "tiny"}), 400, "messages")


def test_context_length_error_names_both_lengths(server):
    msgs = [{"role": "user", "content": "x " * 700}]
    n = post(server, "/tokenize", {"messages": msgs}).json()["count"]
    err = assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, "messages": msgs}), 400, "messages")
    assert err["code"] == "context_length_exceeded"
    assert f"{n} tokens" in err["message"] and "512" in err["message"]


def test_unknown_fields_are_400_and_harmless_ones_pass(server):
    # Issue 13 ("no silent drops") reversed "unknown fields are ignored": OpenAI
    # answers 400 for a field it does not know, and so does this server now
    # (--lenient restores ignoring; tests/test_server_validation.py).
    harmless = {"parallel_tool_calls": True, "response_format": {"type": "text"}, "user": "u1"}
    r = post(server, "/v1/chat/completions", {**CHAT, **harmless})
    assert r.status_code == 200, r.text
    err = assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, **harmless, "frobnicate": {"x": 1}}),
                              400, "frobnicate")
    assert "frobnicate" in err["message"]


def test_unknown_model_and_route(server):
    assert_openai_error(post(server, "/v1/chat/completions", {**CHAT, "model": "gpt-17"}), 404, "model")
    assert_openai_error(httpx.get(server.url + "/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(server.url + "/v1/chat/completions"), 405)


def parse_sse(raw: bytes) -> list[str]:
    """Check the framing and return the data payloads."""
    text = raw.decode("utf-8")
    assert text.endswith("data: [DONE]\n\n")
    events = text.split("\n\n")
    assert events[-1] == ""
    payloads = []
    for ev in events[:-1]:
        if ev.startswith(":"):
            continue  # keep-alive comment
        assert ev.startswith("data: ") and "\n" not in ev, repr(ev)
        payloads.append(ev[len("data: "):])
    return payloads


def test_sse_framing_chat(server):
    body = {**CHAT, "max_tokens": 5, "n": 2, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    payloads = parse_sse(r.content)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    *body_chunks, usage_chunk = chunks
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 10
    assert all(c["usage"] is None for c in body_chunks)
    for idx in (0, 1):
        mine = [c["choices"][0] for c in body_chunks if c["choices"][0]["index"] == idx]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["finish_reason"] == "length"
        assert all(m["finish_reason"] is None for m in mine[:-1])
        assert all(len(c["choices"]) == 1 for c in body_chunks)


def test_sse_framing_completions_without_usage(server):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 4, "stream": True,
                                         "ignore_eos": True})
    payloads = parse_sse(r.content)
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stream_errors_before_start_are_plain_json(server):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "x " * 700, "stream": True})
    assert_openai_error(r, 400, "prompt")


def test_tokenize_detokenize(server):
    r = post(server, "/tokenize", {"prompt": "The quick brown fox", "return_token_strs": True})
    assert r.status_code == 200
    t = r.json()
    assert t["count"] == len(t["tokens"]) == len(t["token_strs"]) and t["max_model_len"] == 512
    assert post(server, "/detokenize", {"tokens": t["tokens"]}).json() == {"prompt": "The quick brown fox"}
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    usage = post(server, "/v1/chat/completions", CHAT).json()["usage"]
    assert chat["count"] == usage["prompt_tokens"]
    assert_openai_error(post(server, "/detokenize", {"tokens": [-1]}), 400, "tokens")
    assert_openai_error(post(server, "/tokenize", {}), 400)


def test_health_metrics_and_models(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "detail": None}
    post(server, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 3, "ignore_eos": True})
    m = httpx.get(server.url + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for name in ("jevons:num_requests_running", "jevons:num_requests_waiting", "jevons:kv_cache_usage_perc",
                 "jevons:prefix_cache_queries_total", "jevons:prefix_cache_hits_total",
                 "jevons:prompt_tokens_total", "jevons:generation_tokens_total",
                 'jevons:request_success_total{finished_reason="length",model_name="tiny"}',
                 "jevons:time_to_first_token_seconds_bucket", "jevons:inter_token_latency_seconds_bucket",
                 "jevons:e2e_request_latency_seconds_bucket", "jevons:request_queue_time_seconds_bucket"):
        assert name in m.text, name
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"


def test_openapi_lists_the_routes(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    paths = spec["paths"]
    for path, method in [("/v1/chat/completions", "post"), ("/v1/completions", "post"), ("/v1/models", "get"),
                         ("/health", "get"), ("/metrics", "get"), ("/tokenize", "post"), ("/detokenize", "post")]:
        assert method in paths[path], path
    chat = paths["/v1/chat/completions"]["post"]
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert {"400", "429"} <= set(chat["responses"])
    props = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    for field in ("messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n",
                  "stop", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs",
                  "top_logprobs", "stream", "stream_options", "ignore_eos", "user", "max_reasoning_tokens"):
        assert field in props, field
    assert httpx.get(server.url + "/docs").status_code == 200


def test_health_is_503_while_loading(tiny_llama):
    from jevons.llm import LLM

    release = threading.Event()

    def slow_engine():
        assert release.wait(30)
        return LLM(str(tiny_llama), progress=False).engine

    app = build_app(ServeConfig(served_model_names=("tiny",), retry_after_s=2), engine_factory=slow_engine)
    srv = ServerThread(app).start(wait_for_model=False)
    try:
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = post(srv, "/v1/chat/completions", CHAT)
        assert_openai_error(r, 503)
        assert r.headers["retry-after"] == "2"
        release.set()
        srv.wait_healthy(30)
        assert httpx.get(srv.url + "/health").status_code == 200
        assert post(srv, "/v1/chat/completions", CHAT).status_code == 200
    finally:
        release.set()
        srv.stop()


def test_failed_load_reports_error(tmp_path):
    app = build_app(ServeConfig(engine=engine_config(model=str(tmp_path / "missing"))))
    srv = ServerThread(app).start(wait_for_model=False)
    try:
        with pytest.raises(RuntimeError):
            srv.wait_healthy(30)
        r = httpx.get(srv.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "error"
    finally:
        srv.stop()


def test_api_keys(tiny_llama, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nsk-from-file\n\n")
    assert read_keys_file(keys_file) == ["sk-from-file"]
    keys = [key_digest(k) for k in ("sk-one", "sk-from-file")]
    assert key_matches("sk-one", keys) and not key_matches("sk-on", keys) and not key_matches("ключ", keys)

    cfg = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",),
                      api_keys=("sk-one", *read_keys_file(keys_file)))
    with ServerThread(build_app(cfg)) as srv:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-one"},
                        {"Authorization": "Basic sk-one"}):
            for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("POST", "/tokenize")):
                r = httpx.request(method, srv.url + path, json=CHAT, headers=headers)
                err = assert_openai_error(r, 401)
                assert err["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        for key in ("sk-one", "sk-from-file"):
            r = post(srv, "/v1/chat/completions", CHAT, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        # Probes stay open by default.
        assert httpx.get(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 200
        assert httpx.get(srv.url + "/openapi.json").status_code == 200

    cfg = ServeConfig(engine=engine_config(model=str(tiny_llama)), api_keys=("sk-one",), auth_health_metrics=True)
    with ServerThread(build_app(cfg)) as srv:
        assert httpx.get(srv.url + "/health").status_code == 401
        assert httpx.get(srv.url + "/metrics").status_code == 401
        assert httpx.get(srv.url + "/health", headers={"Authorization": "Bearer sk-one"}).status_code == 200


def test_engine_failure_mid_stream(tiny_llama):
    """A bug in a step: the open stream gets an error event and [DONE]; the
    engine resets and /health says so; when it keeps failing, the engine is
    declared dead and later requests get a clear error; nothing hangs."""
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",)))
    with ServerThread(app) as srv:
        engine = app.state.jevons.engine
        core = engine.core

        def broken_step():
            raise RuntimeError("injected failure")

        core.step = broken_step
        r = post(srv, "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 5, "stream": True})
        assert r.status_code == 200
        payloads = parse_sse(r.content)
        assert payloads[-1] == "[DONE]"
        err = json.loads(payloads[-2])["error"]
        assert "injected failure" in err["message"] and err["type"] == "server_error"
        health = httpx.get(srv.url + "/health").json()
        assert health["status"] == "ok" and "injected failure" in health["detail"]
        for _ in range(engine.max_consecutive_faults - 1):
            assert_openai_error(post(srv, "/v1/completions", {"model": "tiny", "prompt": "Hi"}), 500)
        assert httpx.get(srv.url + "/health").json()["status"] == "error"
        assert_openai_error(post(srv, "/v1/completions", {"model": "tiny", "prompt": "Hi"}), 503)
