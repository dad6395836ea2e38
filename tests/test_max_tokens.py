"""max_tokens against the context is checked once, by the engine
(engine/validation.py), which refuses in its own terms (ContextLengthError:
the numbers, param "max_tokens" or "prompt"); each HTTP dialect says it with
its own field name, and Messages lowers it instead, as before."""
from __future__ import annotations

import httpx
import pytest

from jevons.engine.validation import ContextLengthError
from jevons.errors import InvalidRequestError
from jevons.sampling_params import SamplingParams
from jevons.server.sampling import request_error


def test_the_engine_refuses_or_fits_in_its_own_terms(server):
    core = server.app.state.jevons.engine.core
    ids = [5] * 500
    assert core.validate(ids, SamplingParams(max_tokens=100)) == core.max_model_len - 500  # LLM: lowered
    with pytest.raises(ContextLengthError) as e:
        core.validate(ids, SamplingParams(max_tokens=100), fit_context=False)
    err = e.value
    assert (err.param, err.code, err.prompt_tokens, err.max_tokens, err.max_model_len) == \
        ("max_tokens", "context_length_exceeded", 500, 100, core.max_model_len)
    with pytest.raises(ContextLengthError) as e:
        core.validate([5] * core.max_model_len, SamplingParams(max_tokens=1))
    assert e.value.param == "prompt" and e.value.max_tokens is None


def test_each_api_names_its_own_fields():
    err = request_error(ContextLengthError(500, 13, 512), "max_completion_tokens", "messages")
    assert err.param == "max_completion_tokens" and err.code == "context_length_exceeded"
    assert "requested 513 tokens (500 in the messages, 13 in the completion)" in err.message
    assert err.message.endswith("reduce the length of the messages or max_completion_tokens.")
    err = request_error(ContextLengthError(600, None, 512), "max_tokens", "prompt")
    assert err.param == "prompt" and "600 tokens" in err.message
    kv = InvalidRequestError("needs 9 KV blocks; lower max_tokens or enlarge the KV cache", param="max_tokens")
    err = request_error(kv, "max_completion_tokens", "messages")
    assert err.param == "max_completion_tokens" and "lower max_completion_tokens" in err.message
    other = request_error(InvalidRequestError("bad id", param="stop_token_ids"), "max_tokens", "prompt")
    assert other.param == "stop_token_ids" and other.message == "bad id"


def test_responses_names_max_output_tokens(server):
    r = httpx.post(server.url + "/v1/responses", timeout=60,
                   json={"model": "tiny", "input": "x " * 240, "max_output_tokens": 500})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "max_output_tokens" and err["code"] == "context_length_exceeded"
    assert "max_output_tokens" in err["message"] and "512" in err["message"]


def test_messages_lowers_it_instead(server):
    r = httpx.post(server.url + "/v1/messages", timeout=60, json={
        "model": "tiny", "max_tokens": 100000, "messages": [{"role": "user", "content": "x " * 240}],
        "temperature": 0, "stop_sequences": ["x"]})
    assert r.status_code == 200, r.text
