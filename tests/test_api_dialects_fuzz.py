"""Hypothesis over the two dialects' nested inputs (Responses items, Anthropic
content blocks, tools, tool_choice, thinking), which the OpenAPI schema only
types as objects: every answer is a 2xx or a 4xx in the dialect's own shape,
never a 5xx, and the engine ends with every KV block free."""
from __future__ import annotations

import time

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.sampled_from(["", "x", "add", "call_1", "{}"]))
JSONISH = st.recursive(LEAF, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                    st.dictionaries(st.sampled_from(["type", "text", "x"]), kids,
                                                                    max_size=3)), max_leaves=6)


def obj(kinds: list[str], **fields):
    """An object of one of these types, each field either well-formed or anything."""
    return st.fixed_dictionaries({"type": st.sampled_from(kinds)},
                                 optional={k: st.one_of(v, JSONISH) for k, v in fields.items()})


TEXT = st.sampled_from(["hi", "The quick brown fox", ""])
PART = obj(["input_text", "output_text", "refusal", "input_image"], text=TEXT, refusal=TEXT)
ITEM = st.one_of(
    obj(["message"], role=st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
        content=st.one_of(TEXT, st.lists(PART, max_size=2))),
    obj(["reasoning"], content=st.lists(obj(["reasoning_text"], text=TEXT), max_size=2), summary=st.just([]),
        encrypted_content=st.sampled_from(["jevons-reasoning-v1:aGk=", "junk"])),
    obj(["function_call"], call_id=st.just("call_1"), name=st.just("add"), arguments=st.just('{"a": 1}')),
    obj(["function_call_output"], call_id=st.just("call_1"), output=st.one_of(TEXT, st.lists(PART, max_size=1))),
    JSONISH,
)
RESP_TOOL = obj(["function", "web_search"], name=st.sampled_from(["add", "a b"]),
                parameters=st.just({"type": "object", "properties": {}}))
RESPONSES = st.fixed_dictionaries(
    {"model": st.just("tiny"), "max_output_tokens": st.integers(1, 2),
     "input": st.one_of(TEXT, st.lists(ITEM, min_size=1, max_size=4))},
    optional={"tools": st.lists(RESP_TOOL, max_size=2), "tool_choice": st.one_of(
        st.sampled_from(["none", "auto", "required"]), obj(["function"], name=st.just("add")), JSONISH),
        "instructions": TEXT, "text": st.fixed_dictionaries({"format": obj(["text", "json_object", "json_schema"])}),
        "stream": st.booleans(), "store": st.booleans()})

BLOCK = st.one_of(
    obj(["text"], text=TEXT), obj(["thinking"], thinking=TEXT, signature=st.just("")),
    obj(["tool_use"], id=st.just("toolu_1"), name=st.just("add"), input=st.just({"a": 1})),
    obj(["tool_result"], tool_use_id=st.just("toolu_1"), content=st.one_of(TEXT, st.lists(obj(["text"], text=TEXT),
                                                                                             max_size=2))),
    obj(["image", "redacted_thinking"]), JSONISH)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                 "content": st.one_of(TEXT, st.lists(BLOCK, max_size=3))})
MESSAGES = st.fixed_dictionaries(
    {"model": st.just("tiny"), "max_tokens": st.integers(1, 2), "messages": st.lists(MESSAGE, min_size=1, max_size=3)},
    optional={"system": st.one_of(TEXT, st.lists(obj(["text", "image"], text=TEXT), max_size=2)),
              "tools": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["add", "a b"])},
                                                      optional={"input_schema": JSONISH}), max_size=2),
              "tool_choice": st.one_of(obj(["auto", "any", "none", "tool"], name=st.just("add")), JSONISH),
              "thinking": st.one_of(obj(["enabled", "disabled", "adaptive"], budget_tokens=st.integers(0, 3)), JSONISH),
              "stream": st.booleans()})

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _no_leaks(server) -> None:
    core = server.app.state.jevons.engine.core
    deadline = time.monotonic() + 60  # a bound on a hang: the last stream's abort lands within a step
    while core.has_work() or core.num_free_blocks() != core.kv.num_blocks:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_responses_items_never_5xx(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        @SETTINGS
        @given(RESPONSES)
        def check(body):
            r = http.post("/v1/responses", json=body)
            assert r.status_code < 500, (body, r.text[:300])
            if r.status_code >= 400:
                assert r.json()["error"]["type"] == "invalid_request_error" or r.status_code == 404
            elif body.get("stream"):
                assert "response.completed" in r.text or "response.incomplete" in r.text, r.text[-300:]

        check()
    _no_leaks(server)


def test_messages_blocks_never_5xx(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        @SETTINGS
        @given(MESSAGES)
        def check(body):
            r = http.post("/v1/messages", json=body)
            assert r.status_code < 500, (body, r.text[:300])
            if r.status_code >= 400:
                err = r.json()
                assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
            elif body.get("stream"):
                assert "event: message_stop" in r.text, r.text[-300:]
            c = http.post("/v1/messages/count_tokens", json={k: v for k, v in body.items()
                                                             if k in ("model", "messages", "system", "tools")})
            assert c.status_code < 500, (body, c.text[:300])

        check()
    _no_leaks(server)
