"""A standing fuzz of the HTTP API: no input gets a 5xx, and none hurts the
engine (alive afterwards, every KV block free, no sequence left running,
and a normal request still answered).

- schemathesis over the app's own OpenAPI schema (the one /openapi.json
  serves): its coverage phase sends each field's boundary and wrong-type
  values (negative cases only: positive ones are valid requests, each a
  generation, which the two below send more cheaply), then a bounded
  fuzzing phase per operation;
- a sweep: every field of chat, completions, tokenize and detokenize at each
  extreme value of its kind (huge and negative ints, NaN and infinities,
  wrong types, long strings, lone surrogates, out-of-vocabulary ids, odd
  messages and template variables), alone and beside the fields that give
  it meaning (logprobs, stream, echo, a prefix message, ...);
- Hypothesis: random combinations of two to four such fields, and raw
  bodies that are not JSON at all.

A request that kills the engine fails its test with that request's payload
(no shrinking: every later request would fail too). Bounded for the suite:
a tiny model, about 3,500 requests, about 40 s of CPU. JEVONS_FUZZ_EXAMPLES=N
runs N examples per schemathesis operation and N x 4 random combinations
instead; JEVONS_FUZZ_RANDOM=1 draws new ones on each run rather than the same
derandomized sequence."""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

EXAMPLES = int(os.environ.get("JEVONS_FUZZ_EXAMPLES", "0")) or None
DERANDOMIZE = not os.environ.get("JEVONS_FUZZ_RANDOM")
MAX_MODEL_LEN = 64  # short generations: the fuzz is about inputs, not output length
TIMEOUT = 120


def fuzz_server(tiny_llama) -> ServerThread:
    engine = {"model": str(tiny_llama), "max_model_len": MAX_MODEL_LEN}
    return ServerThread(build_app(ServeConfig(engine=engine_config(**engine), served_model_names=("tiny",))))


def assert_unhurt(srv: ServerThread) -> None:
    """The engine serves, and once idle holds no sequence and no KV block."""
    state = srv.app.state.jevons
    assert state.health() == (200, "ok", None), state.health()
    core = state.engine.core
    deadline = time.monotonic() + TIMEOUT
    while core.has_work() or core.num_free_blocks() != core.kv.num_blocks:
        assert time.monotonic() < deadline, (core.has_work(), core.num_free_blocks(), core.kv.num_blocks)
        time.sleep(0.02)
    r = httpx.post(srv.url + "/v1/chat/completions", timeout=TIMEOUT, json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text


def assert_no_server_error(r: httpx.Response | Any, what: str) -> None:
    assert r.status_code < 500, f"{r.status_code} for {what}: {r.text[:500]}"
    ctype = r.headers.get("content-type") or ""
    ctype = ctype[0] if isinstance(ctype, list) else ctype  # schemathesis: a list per header
    if r.status_code == 200 and ctype.startswith("text/event-stream"):
        # A stream that failed after its 200 ends with an error event instead.
        assert '"server_error"' not in r.text and '"engine_dead"' not in r.text, f"stream error for {what}: {r.text[-500:]}"


# --- schemathesis ----------------------------------------------------------------

SPEC = build_app(ServeConfig()).openapi()
SCHEMA = schemathesis.openapi.from_dict(SPEC, config=SchemathesisConfig.from_dict(
    {"phases": {"coverage": {"generation": {"mode": "negative"}}}}))


@pytest.fixture(scope="module")
def server(tiny_llama):
    """One server for the whole module; afterwards it must still be unhurt."""
    with fuzz_server(tiny_llama) as srv:
        yield srv
        assert_unhurt(srv)


def test_the_served_schema_is_the_one_fuzzed(server):
    assert httpx.get(server.url + "/openapi.json", timeout=TIMEOUT).json() == SPEC


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES or 40, deadline=None, derandomize=DERANDOMIZE, database=None,
          suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(case, server):
    r = case.call(base_url=server.url, timeout=TIMEOUT)
    assert_no_server_error(r, f"{case.method} {case.path} {case.body!r:.800}")


# --- extreme values, field by field ----------------------------------------------

INT_VALUES = [0, 1, -1, 2, 64, 65, 128, 129, 319, 320, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64,
              18446744073709551489, 10**20, -(2**63) - 1, 10**400]
FLOAT_VALUES = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, -0.0, 0.0, 0.5, 2.0000001, 100.5,
                -2.5, 2**64]
TEXT_VALUES = ["", "\ud800", "a\udfffb", "\x00", "🙂", "<|im_end|>", "<|im_start|>", "{{ 7 * 7 }}",
               "{% for x in range(99999999) %}x{% endfor %}", "x" * 10_000, " " * 5000]
WRONG_VALUES = [None, True, "1", "yes", [], {}, [1], {"a": 1}]
ID_LISTS = [[], [0], [319], [320], [49152], [-1], [2**31], [2**63], [10**20], [1, 2**64], [1.5], ["1"], [None],
            [[1]], list(range(300))]
MESSAGE_LISTS = [
    [{"role": "user", "content": t}] for t in TEXT_VALUES
] + [
    [{"role": "user"}], [{"role": "user", "content": None}], [{"role": "wizard", "content": "x"}],
    [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}],
    [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [{"type": "image_url"}]}],
    [{"role": "user", "content": [{}]}], [{"role": "user", "content": [1]}], [{"role": "user", "content": {}}],
    [{"role": "user", "content": "a", "prefix": True}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "prefix": True}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "prefix": True,
                                         "reasoning_content": "\ud800"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "prefix": "yes"}],
    [{"role": "assistant", "content": "b", "tool_calls": "x"}],
    [{"role": "assistant", "content": "b", "tool_calls": [{"function": 1}]}],
    [{"role": "tool", "content": "x", "tool_call_id": 5}], [{"role": "user", "content": "x", "name": {"a": 1}}],
    [{"role": "user", "content": "x", "\ud800": 1}], [{"role": "system", "content": "x"}] * 200,
]
TEMPLATE_KWARGS = [{k: 1} for k in ("enable_thinking", "source", "self", "messages", "add_generation_prompt",
                                    "__class__", "1x", "tools", "chat_template", "raise_exception", "bos_token",
                                    "tokenize", "x-y", "", "conversation", "\ud800")] + [{"x": "\ud800"}]
STOPS = [*TEXT_VALUES, ["a"] * 5, ["a"] * 50, ["\ud800"], [""], [1], "x" * 100_000]
LOGIT_BIASES = [{"1": v} for v in (*FLOAT_VALUES, 100, -100, 101, "1", None)] + [
    {str(k): 1} for k in (-1, 320, 49152, 2**63, 10**20)] + [{"x": 1}, {"\ud800": 1}, {"1.5": 1}, {"": 1}]


def _values(kind: str) -> list[Any]:
    return {"int": INT_VALUES + FLOAT_VALUES[:3] + WRONG_VALUES, "float": FLOAT_VALUES + INT_VALUES + WRONG_VALUES,
            "bool": [True, False, 0, 1, 2, "true"] + WRONG_VALUES, "text": TEXT_VALUES + WRONG_VALUES,
            "ids": ID_LISTS + WRONG_VALUES, "stop": STOPS + WRONG_VALUES, "messages": MESSAGE_LISTS + WRONG_VALUES,
            "kwargs": TEMPLATE_KWARGS + WRONG_VALUES, "bias": LOGIT_BIASES + WRONG_VALUES,
            "any": INT_VALUES[:4] + FLOAT_VALUES[:3] + TEXT_VALUES[:3] + WRONG_VALUES}[kind]


SAMPLING_KINDS = {
    "model": "text", "temperature": "float", "top_p": "float", "top_k": "int", "min_p": "float", "n": "int",
    "stop": "stop", "seed": "int", "presence_penalty": "float", "frequency_penalty": "float",
    "repetition_penalty": "float", "stream": "bool", "stream_options": "any", "ignore_eos": "bool", "user": "text",
    "min_tokens": "int", "stop_token_ids": "ids", "include_stop_str_in_output": "bool",
    "skip_special_tokens": "bool", "logit_bias": "bias", "max_tokens": "int", "metadata": "any",
    "frobnicate": "any",
}
KINDS = {
    "/v1/chat/completions": {
        **SAMPLING_KINDS, "messages": "messages", "max_completion_tokens": "int", "logprobs": "bool",
        "top_logprobs": "int", "max_reasoning_tokens": "int", "reasoning_effort": "text", "tools": "any",
        "tool_choice": "any", "chat_template_kwargs": "kwargs", "response_format": "any",
    },
    "/v1/completions": {**SAMPLING_KINDS, "prompt": "text", "suffix": "text", "logprobs": "int", "echo": "bool",
                        "best_of": "int"},
    "/tokenize": {"model": "text", "prompt": "text", "messages": "messages", "add_special_tokens": "bool",
                  "add_generation_prompt": "bool", "return_token_strs": "bool", "chat_template_kwargs": "kwargs"},
    "/detokenize": {"model": "text", "tokens": "ids", "skip_special_tokens": "bool"},
}
BASES = {
    "/v1/chat/completions": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    "/v1/completions": {"model": "tiny", "prompt": "hello", "max_tokens": 4},
    "/tokenize": {"prompt": "hello"},
    "/detokenize": {"tokens": [1, 2, 3]},
}
# Fields whose value only matters beside another.
PARTNERS: dict[str, list[dict[str, Any]]] = {
    "/v1/chat/completions": [{"logprobs": True}, {"stream": True, "stream_options": {"include_usage": True}},
                             {"temperature": 0}, {"messages": [{"role": "user", "content": "a"}, {
                                 "role": "assistant", "content": "b", "prefix": True}]}],
    "/v1/completions": [{"prompt": [1, 2, 3], "echo": True}, {"stream": True}, {"logprobs": 2}, {"n": 3},
                        {"prompt": ["a", "b"]}],
    "/tokenize": [{"prompt": None, "messages": [{"role": "user", "content": "hi"}]}],
    "/detokenize": [],
}


# The values tried beside each partner too.
PARTNERED = {"int": [-1, 320, 2**31, 2**63, 10**20, -(2**63) - 1], "ids": [[320], [49152], [-1], [2**63]],
             "text": ["\ud800", "x" * 10_000], "messages": MESSAGE_LISTS[-12:]}


def sweep(path: str) -> list[dict[str, Any]]:
    """Every field of `path` at each of its kind's extreme values, alone, and
    (ints and lists) beside each partner field that gives it meaning."""
    out = []
    base, kinds = BASES[path], KINDS[path]
    for field, kind in kinds.items():
        for value in _values(kind):
            out.append({**base, field: value})
        for value in PARTNERED.get(kind, []):
            out += [{**base, **partner, field: value} for partner in PARTNERS[path] if field not in partner]
    if "prompt" in kinds and path == "/v1/completions":
        out += [{**base, "prompt": p} for p in ID_LISTS + [[ids] for ids in ID_LISTS] + [[[]], [[1], []], ["a", 1]]]
    return out


def _client(srv: ServerThread) -> httpx.Client:
    # TCP_NODELAY: httpx writes a request's head and body apart, and Nagle's
    # algorithm would hold the body for the server's delayed ACK (40 ms each).
    nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    return httpx.Client(base_url=srv.url, timeout=TIMEOUT, transport=nodelay)


def _post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    # NaN and infinities go out as Python's json writes them; lone surrogates as \ud800 escapes.
    raw = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    return client.post(path, content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", sorted(BASES))
def test_every_field_at_its_extremes_gets_no_server_error(server, path):
    with _client(server) as client:
        for body in sweep(path):
            assert_no_server_error(_post(client, path, body), f"POST {path} {json.dumps(body)[:800]}")
    assert_unhurt(server)


# --- random combinations (Hypothesis) ---------------------------------------------

def often(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` three times in four."""
    return st.integers(0, 3).flatmap(lambda k: rare if k == 0 else common)


STRATEGIES = {
    "int": often(st.one_of(st.sampled_from(INT_VALUES), st.integers(-200, 400), st.integers()),
                 st.sampled_from(WRONG_VALUES + FLOAT_VALUES)),
    "float": often(st.one_of(st.sampled_from(FLOAT_VALUES), st.floats(-3, 3), st.floats(), st.integers(-3, 3)),
                   st.sampled_from(WRONG_VALUES)),
    "bool": often(st.booleans(), st.sampled_from(WRONG_VALUES)),
    "text": often(st.one_of(st.sampled_from(TEXT_VALUES), st.text(max_size=40)), st.sampled_from(WRONG_VALUES)),
    "ids": often(st.lists(st.one_of(st.integers(0, 319), st.sampled_from(INT_VALUES)), min_size=1, max_size=8),
                 st.sampled_from(ID_LISTS + WRONG_VALUES)),
    "stop": st.one_of(st.sampled_from(STOPS), st.lists(st.text(max_size=8), max_size=5)),
    "messages": often(st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]),
         "content": st.one_of(st.sampled_from(TEXT_VALUES), st.text(max_size=30))},
        optional={"prefix": st.booleans(), "reasoning_content": st.text(max_size=10)}), min_size=1, max_size=4),
        st.sampled_from(MESSAGE_LISTS + WRONG_VALUES)),
    "kwargs": st.one_of(st.sampled_from(TEMPLATE_KWARGS), st.dictionaries(st.text(max_size=6), st.sampled_from(
        INT_VALUES[:4] + TEXT_VALUES[:4] + WRONG_VALUES), max_size=3)),
    "bias": st.one_of(st.sampled_from(LOGIT_BIASES), st.dictionaries(
        st.integers(-2, 330).map(str), st.floats(-150, 150), max_size=4)),
    "any": st.sampled_from(_values("any")),
}
PATHS = often(st.sampled_from(["/v1/chat/completions", "/v1/completions"]), st.sampled_from(["/tokenize",
                                                                                           "/detokenize"]))


@st.composite
def requests(draw) -> tuple[str, bytes | dict[str, Any]]:
    """(path, body): a valid request with two to four fields set to extreme
    values (or dropped), or now and then bytes that are not JSON at all."""
    path = draw(PATHS)
    if draw(st.integers(0, 29)) == 0:
        return path, draw(st.one_of(st.binary(max_size=200), st.sampled_from([
            b'{"model": "tiny", "messages": [\xff]}', b"[]", b"null", b'"x"', b"1e999999", b'{"a": 1' * 1000])))
    body = dict(BASES[path])
    kinds = KINDS[path]
    for name in draw(st.lists(st.sampled_from(sorted(kinds)), min_size=2, max_size=4, unique=True)):
        if name in body and draw(st.integers(0, 9)) == 0:
            del body[name]
        else:
            body[name] = draw(STRATEGIES[kinds[name]])
    return path, body


def test_random_combinations_get_no_server_error(server):
    client = _client(server)

    # No shrinking: after a request that kills the engine every later one fails
    # too, and the report must show the one that did it.
    @settings(max_examples=EXAMPLES * 4 if EXAMPLES else 500, deadline=None, derandomize=DERANDOMIZE,
              database=None, suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(req=requests())
    def one(req: tuple[str, bytes | dict[str, Any]]) -> None:
        path, body = req
        what = body[:800] if isinstance(body, bytes) else json.dumps(body)[:800]
        assert_no_server_error(_post(client, path, body), f"POST {path} {what}")

    try:
        one()
    finally:
        client.close()
    assert_unhurt(server)
