"""No silent drops (issue 13): every chat/completions field works or is a 400
naming it. Unsupported OpenAI fields, unknown fields, the temperature bound,
max_tokens beyond the context, reasoning_effort, and `--lenient`, which logs
and ignores instead."""
from __future__ import annotations

import logging

import httpx
import openai
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from jevons.server.errors import APIError
from jevons.server.protocol import UNSUPPORTED, ChatCompletionRequest
from jevons.server.sampling import REASONING_EFFORT, chat_sampling_params

MSGS = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}




def chat(client, **kw):
    return client.chat.completions.create(model="tiny", messages=kw.pop("messages", MSGS),
                                          max_tokens=kw.pop("max_tokens", 2), **kw)


def rejected(call, param: str) -> dict:
    with pytest.raises(openai.BadRequestError) as e:
        call()
    body = e.value.body
    assert body["param"] == param and param in body["message"], body
    assert body["type"] == "invalid_request_error"
    return body


UNSUPPORTED_CASES = [
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"prediction": {"type": "content", "content": "hello"}}, "prediction"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"verbosity": "low"}, "verbosity"),
    ({"extra_body": {"moderation": {"model": "m"}}}, "moderation"),
]


@pytest.mark.parametrize("kw,param", UNSUPPORTED_CASES)
def test_unsupported_field_is_400_naming_it(client, kw, param):
    body = rejected(lambda: chat(client, **kw), param)
    assert "not supported by this server yet" in body["message"]
    assert body["code"] == "unsupported_parameter"


def test_every_unsupported_field_has_a_case():
    assert {p for _, p in UNSUPPORTED_CASES} == set(UNSUPPORTED)


@pytest.mark.parametrize("kw", [
    {"tools": []},
    {"tools": [TOOL], "tool_choice": "none"},  # the template sees the tools; no call is wanted
    {"tool_choice": "auto"},
    {"tool_choice": "none"},
    {"functions": [{"name": "f"}], "function_call": "none"},
    {"response_format": {"type": "text"}},
    {"modalities": ["text"]},
    {"verbosity": "medium"},
    # Bookkeeping: labels, storage, routing; nothing in the output changes.
    {"metadata": {"team": "a"}, "store": True, "service_tier": "auto", "user": "u1", "parallel_tool_calls": False,
     "prompt_cache_key": "k", "safety_identifier": "s"},
    # vLLM's and DeepSeek's extensions stay.
    {"extra_body": {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "ignore_eos": True, "stop_token_ids": [7],
                    "min_tokens": 1, "skip_special_tokens": False, "include_stop_str_in_output": True,
                    "chat_template_kwargs": {"x": 1}, "max_reasoning_tokens": 8}},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "he", "prefix": True}]},
    {"reasoning_effort": "low"},
    {"temperature": 2.0},
])
def test_harmless_and_supported_fields_pass(client, kw):
    assert chat(client, **kw).choices[0].finish_reason in ("stop", "length")


def test_unknown_fields_are_400_like_openai(server, client):
    rejected(lambda: chat(client, extra_body={"frobnicate": 1}), "frobnicate")
    r = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                   json={"model": "tiny", "messages": MSGS, "max_tokens": 2, "zeta": 1, "alpha": 2})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Unrecognized request arguments supplied: alpha, zeta"
    # On the legacy API the chat-only fields are unknown too.
    rejected(lambda: client.completions.create(model="tiny", prompt="hi", max_tokens=2,
                                               extra_body={"tools": [TOOL]}), "tools")


def test_temperature_is_bounded_to_2(client):
    body = rejected(lambda: chat(client, temperature=3), "temperature")
    assert "[0, 2]" in body["message"]
    rejected(lambda: client.completions.create(model="tiny", prompt="hi", temperature=2.5), "temperature")


def test_max_tokens_beyond_the_context_names_both_numbers(server, client):
    msgs = [{"role": "user", "content": "x " * 240}]
    p = httpx.post(server.url + "/tokenize", json={"messages": msgs}, timeout=30).json()["count"]
    assert p < 500
    fits = chat(client, messages=msgs, max_tokens=512 - p)  # exactly the context: fine
    assert fits.usage.prompt_tokens == p
    for field in ("max_tokens", "max_completion_tokens"):
        kw = {"max_tokens": None, field: 513 - p} if field != "max_tokens" else {"max_tokens": 513 - p}
        body = rejected(lambda: chat(client, messages=msgs, **kw), field)
        assert body["code"] == "context_length_exceeded"
        msg = body["message"]
        assert "maximum context length is 512 tokens" in msg and "requested 513 tokens" in msg
        assert f"{p} in the messages" in msg and f"{513 - p} in the completion" in msg
    prompt = [10 + i % 300 for i in range(500)]
    client.completions.create(model="tiny", prompt=prompt, max_tokens=12)
    body = rejected(lambda: client.completions.create(model="tiny", prompt=prompt, max_tokens=13), "max_tokens")
    assert "500 in the prompt" in body["message"] and "13 in the completion" in body["message"]
    # A batch is checked prompt by prompt; the default max_tokens (16) counts as OpenAI counts it.
    rejected(lambda: client.completions.create(model="tiny", prompt=[[5, 6], prompt]), "max_tokens")


def _budget(**kw):
    return chat_sampling_params(ChatCompletionRequest(messages=MSGS, **kw)).max_reasoning_tokens


def test_reasoning_effort_maps_to_the_thinking_budget():
    assert {e: _budget(reasoning_effort=e) for e in REASONING_EFFORT} == {
        "none": 0, "minimal": 256, "low": 1024, "medium": 8192, "high": 32768, "xhigh": None, "max": None}
    assert _budget() is None
    assert _budget(reasoning_effort="high", max_reasoning_tokens=7) == 7  # explicit wins
    with pytest.raises(APIError) as e:  # a bad value is an error even when it would not be used
        _budget(reasoning_effort="bogus", max_reasoning_tokens=7)
    assert e.value.param == "reasoning_effort"


def test_bad_reasoning_effort_is_400(client):
    body = rejected(lambda: chat(client, extra_body={"reasoning_effort": "extreme"}), "reasoning_effort")
    assert "low" in body["message"]


def test_reasoning_effort_caps_a_reasoning_model(tmp_path_factory):
    from test_server_reasoning import build_reasoning_model

    path = build_reasoning_model(tmp_path_factory.mktemp("tiny-reasoner"))
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("r1",)))
    with ServerThread(app) as srv:
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        kw = dict(model="r1", messages=[{"role": "user", "content": "2 + 2?"}], max_tokens=12, temperature=0)

        def reasoning_tokens(**extra):
            r = c.chat.completions.create(**kw, extra_body={"ignore_eos": True, **extra})
            return r.usage.completion_tokens_details.reasoning_tokens

        assert reasoning_tokens(reasoning_effort="none") == 1  # </think> at once
        assert reasoning_tokens(reasoning_effort="none", max_reasoning_tokens=4) == 5
        assert reasoning_tokens(reasoning_effort="high") == reasoning_tokens()


@pytest.fixture(scope="module")
def lenient(tiny_llama):
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",), lenient=True))
    with ServerThread(app) as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_lenient_logs_and_ignores(lenient, caplog):
    with caplog.at_level(logging.WARNING, logger="jevons.server"):
        r = chat(lenient, response_format={"type": "json_object"}, tools=[TOOL], temperature=3,
                 extra_body={"frobnicate": 1})
        lenient.completions.create(model="tiny", prompt="hi", max_tokens=2, temperature=2.5,
                                   extra_body={"guided_xml": {}})
    assert r.choices[0].finish_reason in ("stop", "length")
    warned = " ".join(rec.getMessage() for rec in caplog.records if rec.name == "jevons.server")
    for name in ("frobnicate", "guided_xml"):
        assert name in warned
    # Values that are wrong rather than unsupported stay errors.
    rejected(lambda: chat(lenient, temperature=-1), "temperature")
