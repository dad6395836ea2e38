"""Every value validated before it reaches the engine (issue 21): each input
that once took the engine down, or answered 500, is a 400 naming its field,
and a normal request right after it answers normally. Admission counts
sequences: --max-waiting counts n, and --max-request-tokens caps n x max_tokens."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from jevons.config import engine_config
from jevons.sampling_params import SamplingParams
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

MSGS = [{"role": "user", "content": "The quick brown fox"}]
CHAT = {"model": "tiny", "messages": MSGS, "max_tokens": 4}
COMPLETION = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 4}




@pytest.fixture(scope="module")
def vocab(server) -> int:
    return server.app.state.jevons.engine.core.model_config.vocab_size


def post(server, path: str, body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def post_raw(server, path: str, raw: str) -> httpx.Response:
    """A body as the bytes given: NaN, lone surrogates and the like, which a JSON encoder may refuse to write."""
    return httpx.post(server.url + path, content=raw.encode("ascii"), timeout=60,
                      headers={"content-type": "application/json"})


def bad_request(r: httpx.Response, param: str) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"
    return err


def still_serving(server, client) -> None:
    """A normal request answers normally; the engine holds nothing more. (No
    wall-clock bound: a loaded CI box makes those flaky; the client's timeout
    catches a hang.)"""
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
    assert server.get("/health").json()["status"] == "ok"
    core = server.app.state.jevons.engine.core
    deadline = time.monotonic() + 10
    while (core.has_work() or core.num_free_blocks() != core.kv.num_blocks) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not core.has_work() and core.num_free_blocks() == core.kv.num_blocks and not core.children


# --- the inputs from the issue ------------------------------------------------------

@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_huge_top_k_is_400(server, client, path, body):
    err = bad_request(post(server, path, {**body, "top_k": 100000000000000000000, "temperature": 0.8}), "top_k")
    assert "top_k" in err["message"]
    bad_request(post(server, path, {**body, "top_k": 1e20, "temperature": 0.8}), "top_k")  # a float is no integer
    still_serving(server, client)


def test_huge_top_k_beside_a_sampled_stream(server, client):
    """Sent while a sampled request streams: refused, and the stream finishes."""
    done: dict = {}

    def stream():
        body = {**COMPLETION, "max_tokens": 60, "temperature": 1.0, "seed": 3, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
            done["events"] = [line for line in r.iter_lines() if line.startswith("data: ")]

    t = threading.Thread(target=stream)
    t.start()
    for _ in range(3):
        bad_request(post(server, "/v1/completions", {**COMPLETION, "top_k": 10**20, "temperature": 1.0}), "top_k")
    t.join(60)
    assert done["events"][-1] == "data: [DONE]"
    assert json.loads(done["events"][-2][6:])["choices"][0]["finish_reason"] == "length"
    still_serving(server, client)


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
def test_stop_token_id_outside_the_vocabulary_is_400(server, client, vocab, path, body):
    err = bad_request(post(server, path, {**body, "stop_token_ids": [vocab], "min_tokens": 1}), "stop_token_ids")
    assert str(vocab) in err["message"]
    bad_request(post(server, path, {**body, "stop_token_ids": [-1]}), "stop_token_ids")
    bad_request(post(server, path, {**body, "stop_token_ids": [10**30], "min_tokens": 1}), "stop_token_ids")
    still_serving(server, client)


def test_out_of_range_seed_with_n_128_is_400(server, client):
    err = bad_request(post(server, "/v1/chat/completions", {**CHAT, "n": 128, "seed": 18446744073709551489}), "seed")
    assert "64-bit" in err["message"]
    bad_request(post(server, "/v1/chat/completions", {**CHAT, "seed": -(2**63) - 1}), "seed")
    bad_request(post(server, "/v1/chat/completions", {**CHAT, "n": 129}), "n")
    ok = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, n=2, seed=2**63 - 1)
    assert len(ok.choices) == 2  # the int64 bounds themselves are fine, siblings' seeds included
    ok = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2, seed=-(2**63))
    assert ok.choices[0].message.content is not None
    still_serving(server, client)


@pytest.mark.parametrize("path,raw,param", [
    ("/v1/chat/completions", '{"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "a\\ud800b"}]}',
     "messages[0].content"),
    ("/v1/chat/completions", '{"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": '
                             '[{"type": "text", "text": "\\udfff"}]}]}', "messages[0].content[0].text"),
    ("/v1/chat/completions", '{"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}], '
                             '"stop": ["\\ud83d"]}', "stop[0]"),
    ("/v1/chat/completions", '{"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}], '
                             '"chat_template_kwargs": {"\\ud800": 1}}', "chat_template_kwargs"),
    ("/v1/completions", '{"model": "tiny", "max_tokens": 3, "prompt": ["ok", "\\ud800"]}', "prompt[1]"),
    ("/tokenize", '{"prompt": "\\ud800"}', "prompt"),
])
def test_lone_surrogate_is_400(server, client, path, raw, param):
    err = bad_request(post_raw(server, path, raw), param)
    assert "surrogate" in err["message"]
    still_serving(server, client)


@pytest.mark.parametrize("kwargs", [
    {"source": "x"}, {"self": 1}, {"messages": []}, {"add_generation_prompt": False}, {"chat_template": "{{ 1 }}"},
    {"tools": []}, {"special_tokens": {}}, {"not-a-name": 1}, {"1x": 1}, {"": 1}, {"__class__": 1}, {"for": 1},
])
def test_clashing_template_kwargs_are_400(server, client, kwargs):
    err = bad_request(post(server, "/v1/chat/completions", {**CHAT, "chat_template_kwargs": kwargs}),
                      "chat_template_kwargs")
    assert repr(next(iter(kwargs))) in err["message"]
    bad_request(post(server, "/tokenize", {"messages": MSGS, "chat_template_kwargs": kwargs}), "chat_template_kwargs")
    still_serving(server, client)


def test_harmless_template_kwargs_pass(server, client):
    r = post(server, "/v1/chat/completions", {**CHAT, "chat_template_kwargs": {"enable_thinking": False, "x_1": [1]}})
    assert r.status_code == 200, r.text


def test_template_failing_on_request_values_is_400(server, client):
    # A message whose content is a part list the template cannot join as text is refused earlier; a
    # template variable of the wrong type that the template then calls is the request's fault too.
    tok = server.app.state.jevons.engine.core.tokenizer
    original = tok.chat_template
    tok.chat_template = "{{ messages[0]['content'] }}{{ budget + 1 }}"
    try:
        err = bad_request(post(server, "/v1/chat/completions", {**CHAT, "chat_template_kwargs": {"budget": "x"}}),
                          "messages")
        assert "chat template" in err["message"]
    finally:
        tok.chat_template = original
    still_serving(server, client)


@pytest.mark.parametrize("path,patch,param", [
    ("/v1/chat/completions", {"max_tokens": "10"}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 10.0}, "max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": "10"}, "max_completion_tokens"),
    ("/v1/chat/completions", {"stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"stream": 1}, "stream"),
    ("/v1/chat/completions", {"n": "2"}, "n"),
    ("/v1/chat/completions", {"n": 1.5}, "n"),
    ("/v1/chat/completions", {"seed": "1"}, "seed"),
    ("/v1/chat/completions", {"temperature": "0.5"}, "temperature"),
    ("/v1/chat/completions", {"temperature": True}, "temperature"),
    ("/v1/chat/completions", {"top_p": "1"}, "top_p"),
    ("/v1/chat/completions", {"logprobs": "true"}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": "2"}, "top_logprobs"),
    ("/v1/chat/completions", {"presence_penalty": "0"}, "presence_penalty"),
    ("/v1/chat/completions", {"ignore_eos": "false"}, "ignore_eos"),
    ("/v1/chat/completions", {"stop_token_ids": ["5"]}, "stop_token_ids[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "prefix": "yes"}]}, "messages[0].prefix"),
    ("/v1/chat/completions", {"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ("/v1/completions", {"max_tokens": "4"}, "max_tokens"),
    ("/v1/completions", {"echo": "no"}, "echo"),
    ("/v1/completions", {"logprobs": "2"}, "logprobs"),
    ("/v1/completions", {"prompt": [1, -3]}, "prompt"),
])
def test_strict_types_as_openai(server, client, path, patch, param):
    base = CHAT if path == "/v1/chat/completions" else COMPLETION
    bad_request(post(server, path, {**base, **patch}), param)
    still_serving(server, client)


@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty",
                                   "repetition_penalty", "min_p"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400(server, client, field, value):
    raw = json.dumps(CHAT)[:-1] + f', "{field}": {value}}}'
    bad_request(post_raw(server, "/v1/chat/completions", raw), field)
    raw = json.dumps(COMPLETION)[:-1] + f', "logit_bias": {{"5": {value}}}}}'
    r = post_raw(server, "/v1/completions", raw)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("logit_bias"), r.text


def test_numeric_bounds(server, client, vocab):
    for patch, param in [
        ({"logit_bias": {str(vocab): 1}}, "logit_bias"),
        ({"logit_bias": {"99999999999999999999999": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"-5": 1}}, "logit_bias"),
        ({"logit_bias": {"five": 1}}, "logit_bias"),
        ({"repetition_penalty": 1e300}, "repetition_penalty"),
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"min_tokens": 2**40}, "min_tokens"),
        ({"max_reasoning_tokens": 2**40}, "max_reasoning_tokens"),
        ({"top_logprobs": 10**20, "logprobs": True}, "top_logprobs"),
        ({"n": 10**20}, "n"),
    ]:
        bad_request(post(server, "/v1/chat/completions", {**CHAT, **patch}), param)
    bad_request(post(server, "/v1/completions", {**COMPLETION, "logprobs": 10**20}), "logprobs")
    still_serving(server, client)


@pytest.mark.parametrize("prompt", [[10**20], [[1, 2], [3, 10**20]], [0, 2**63]])
def test_prompt_ids_outside_the_vocabulary_are_400_even_with_echo(server, client, prompt):
    bad_request(post(server, "/v1/completions", {**COMPLETION, "prompt": prompt, "echo": True}), "prompt")
    bad_request(post(server, "/v1/completions", {**COMPLETION, "prompt": prompt}), "prompt")
    still_serving(server, client)


def test_sampling_params_bounds_for_direct_callers():
    for kw, param in [({"top_k": 10**20}, "top_k"), ({"seed": 2**64}, "seed"), ({"temperature": float("nan")},
                      "temperature"), ({"top_p": float("inf")}, "top_p"), ({"stop_token_ids": [-1]}, "stop_token_ids"),
                      ({"max_tokens": 2.5}, "max_tokens"), ({"n": True}, "n")]:
        with pytest.raises(ValueError) as e:
            SamplingParams(**kw)
        assert e.value.param == param
    with pytest.raises(ValueError) as e:
        SamplingParams(stop_token_ids=[400]).check_vocab(320)
    assert e.value.param == "stop_token_ids"


# --- admission counts sequences -----------------------------------------------------

@pytest.fixture(scope="module")
def small_server(tiny_llama):
    engine = {"model": str(tiny_llama), "max_num_seqs": 2}
    app = build_app(ServeConfig(engine=engine_config(**engine), served_model_names=("tiny",), max_waiting=8,
                                max_request_tokens=2000))
    with ServerThread(app) as srv:
        yield srv


def test_n_beyond_max_waiting_is_400(small_server):
    err = bad_request(post(small_server, "/v1/chat/completions", {**CHAT, "n": 128}), "n")
    assert "--max-waiting" in err["message"] and "128" in err["message"]
    ok = post(small_server, "/v1/chat/completions", {**CHAT, "n": 8, "max_tokens": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 8


def test_waiting_sequences_count_n(small_server):
    """One request of n=8 fills the queue of 8 (2 run, 6 wait): a request of
    n=3 gets 429, while one of n=2 still fits."""
    core = small_server.app.state.jevons.engine.core
    long = {**COMPLETION, "n": 8, "max_tokens": 250, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", small_server.url + "/v1/completions", json=long, timeout=60) as r:
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while len(core.scheduler.waiting) != 6 and time.monotonic() < deadline:
            time.sleep(0.005)  # the siblings follow the leader's prefill by a step
        assert len(core.scheduler.waiting) == 6
        busy = post(small_server, "/v1/completions", {**COMPLETION, "n": 3})
        assert busy.status_code == 429, busy.text
        assert "sequences" in busy.json()["error"]["message"] and busy.headers["retry-after"]
        fits = {**COMPLETION, "n": 2, "stream": True}
        with httpx.stream("POST", small_server.url + "/v1/completions", json=fits, timeout=60) as r2:
            assert r2.status_code == 200  # admitted (it would wait its turn; leaving aborts it)
    deadline = time.monotonic() + 10  # leaving the streams aborted all their sequences
    while (core.has_work() or core.num_free_blocks() != core.kv.num_blocks) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not core.has_work() and core.num_free_blocks() == core.kv.num_blocks


def test_request_token_cap(small_server):
    err = bad_request(post(small_server, "/v1/chat/completions", {**CHAT, "n": 5, "max_tokens": 450}), "n")
    assert "2250" in err["message"] and "--max-request-tokens" in err["message"]
    bad_request(post(small_server, "/v1/chat/completions", {**CHAT, "max_completion_tokens": 2001}),
                "max_completion_tokens")
    # A batch of prompts counts each prompt's sequences.
    err = bad_request(post(small_server, "/v1/completions", {**COMPLETION, "prompt": ["a", "b", "c", "d", "e"],
                                                            "max_tokens": 450}), "n")
    assert "5 prompts" in err["message"]
    # Without max_tokens, the context left after the prompt counts (here ~500 per sequence).
    err = bad_request(post(small_server, "/v1/chat/completions", {"model": "tiny", "messages": MSGS, "n": 5}), "n")
    assert "max_tokens is not set" in err["message"]
    assert post(small_server, "/v1/chat/completions", {**CHAT, "n": 4, "max_tokens": 450}).status_code == 200
