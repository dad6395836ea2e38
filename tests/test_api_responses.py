"""POST /v1/responses with the official `openai` client against the tiny-model
server: plain, streamed (the typed event sequence), previous_response_id,
GET/DELETE, usage, and OpenAI-shaped 400s for what jevons does not implement."""
from __future__ import annotations

import httpx
import openai
import pytest

GREEDY = dict(model="tiny", temperature=0)


def chat_text(client, messages, max_tokens):
    r = client.chat.completions.create(messages=messages, max_tokens=max_tokens, **GREEDY)
    return r.choices[0].message.content, r.choices[0].finish_reason


def test_string_input_matches_chat(client):
    r = client.responses.create(input="The quick brown fox", max_output_tokens=8, **GREEDY)
    assert r.object == "response" and r.id.startswith("resp_")
    text, finish = chat_text(client, [{"role": "user", "content": "The quick brown fox"}], 8)
    assert r.output_text == text
    assert r.status == ("incomplete" if finish == "length" else "completed")
    if finish == "length":
        assert r.incomplete_details.reason == "max_output_tokens"
    msg = r.output[-1]
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    u = r.usage
    assert u.output_tokens <= 8 and u.input_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens >= 0 and u.output_tokens_details.reasoning_tokens == 0


def test_items_and_instructions_match_chat(client):
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Paged attention"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "keeps blocks."}]},
        {"role": "user", "content": "The quick brown fox"},
    ]
    r = client.responses.create(input=items, instructions="Be brief.", max_output_tokens=6, **GREEDY)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paged attention"},
                {"role": "assistant", "content": "keeps blocks."}, {"role": "user", "content": "The quick brown fox"}]
    assert r.output_text == chat_text(client, messages, 6)[0]
    assert r.instructions == "Be brief."


def test_stream_event_sequence(client):
    kw = dict(input="The quick brown fox", max_output_tokens=10, **GREEDY)
    full = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == ("response.completed" if full.status == "completed" else "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert types.count(kind) == 1, kind
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == full.output_text
    final = events[-1].response
    assert final.output_text == full.output_text and final.usage.output_tokens == full.usage.output_tokens
    assert final.output[0].id == events[2].item.id


def test_stream_helper_assembles_the_response(client):
    kw = dict(input="Paged attention", max_output_tokens=6, model="tiny", temperature=0,
              extra_body={})
    with client.responses.stream(**kw) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert text == client.responses.create(**kw).output_text


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(input="Paged attention", max_output_tokens=5, **GREEDY)
    second = client.responses.create(input="The quick brown fox", previous_response_id=first.id,
                                     max_output_tokens=5, **GREEDY)
    messages = [{"role": "user", "content": "Paged attention"}, {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "The quick brown fox"}]
    assert second.output_text == chat_text(client, messages, 5)[0]
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens


def test_get_and_delete(client):
    r = client.responses.create(input="Paged attention", max_output_tokens=3, **GREEDY)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage.output_tokens == r.usage.output_tokens
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(input="x", previous_response_id=r.id, max_output_tokens=2, model="tiny")


def test_store_false_is_not_kept(client):
    r = client.responses.create(input="Paged attention", max_output_tokens=2, store=False, model="tiny")
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_reasoning_effort_and_logprobs(client):
    r = client.responses.create(input="Paged attention", max_output_tokens=4, reasoning={"effort": "low"},
                                top_logprobs=2, include=["message.output_text.logprobs"], **GREEDY)
    assert r.reasoning.effort == "low"
    part = r.output[-1].content[0]
    assert len(part.logprobs) == r.usage.output_tokens or len(part.logprobs) == r.usage.output_tokens - 1
    assert all(len(lp.top_logprobs) == 2 for lp in part.logprobs)


@pytest.mark.parametrize("body, param", [
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
    ({"input": "hi", "reasoning": {"summary": "detailed"}}, "reasoning.summary"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "truncation": "auto"}, "truncation"),
    ({"input": "hi", "include": ["file_search_call.results"]}, "include"),
    ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "gAAAA-openai"}]},
     "input[0].encrypted_content"),
    ({"input": [{"type": "reasoning", "summary": [], "encrypted_content": "jevons-reasoning-v1:!!"}]},
     "input[0].encrypted_content"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}},
     "text.format.schema"),
    ({"input": "hi", "tool_choice": "banana"}, "tool_choice"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]}, "input[0].arguments"),
    ({"input": "hi", "frobnicate": 1}, "frobnicate"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": []}, "input"),
    ({"input": "hi", "stream_options": {"include_obfuscation": True}}, "stream_options"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    r = httpx.post(server.url + "/v1/responses", json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"


def _fail_when_max_tokens(n: int):
    """A fault_injector failing the request that asked for exactly n tokens, at its second sample."""
    def inject(where: str, req) -> None:
        if where == "sample" and req is not None and req.params.max_tokens == n and req.num_output_tokens >= 1:
            raise RuntimeError("injected")
    return inject


def test_engine_fault_mid_stream_is_response_failed(server, client):
    core = server.app.state.jevons.engine.core
    core.fault_injector = _fail_when_max_tokens(13)
    try:
        events = list(client.responses.create(input="The quick brown fox", max_output_tokens=13, stream=True,
                                              model="tiny", temperature=0))
        with pytest.raises(openai.InternalServerError) as e:
            client.responses.create(input="The quick brown fox", max_output_tokens=13, model="tiny")
    finally:
        core.fault_injector = None
    assert events[0].type == "response.created" and events[-1].type == "response.failed"
    assert events[-1].response.error.code == "request_failed" and events[-1].response.status == "failed"
    assert e.value.body["code"] == "request_failed"
    assert client.responses.create(input="x", max_output_tokens=2, model="tiny").usage.output_tokens <= 2


def test_input_items_of_a_chain(client):
    first = client.responses.create(input="Paged attention", max_output_tokens=2, model="tiny")
    second = client.responses.create(input=[{"role": "user", "content": [{"type": "input_text", "text": "Again"}]}],
                                     previous_response_id=first.id, max_output_tokens=2, model="tiny")
    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [i.type for i in items] == ["message", "message", "message"]
    assert [i.role for i in items] == ["user", "assistant", "user"]
    assert items[0].content[0].text == "Paged attention" and items[2].content[0].text == "Again"
    assert items[1].id == first.output[-1].id  # the first answer, as it was output
    newest = client.responses.input_items.list(second.id, limit=1)
    assert [i.id for i in newest.data] == [items[2].id] and newest.has_more
    after = client.responses.input_items.list(second.id, limit=5, after=items[2].id)
    assert [i.id for i in after.data] == [items[1].id, items[0].id] and not after.has_more
