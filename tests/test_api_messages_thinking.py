"""Thinking through the other dialects, on the tiny <think> model of
test_server_reasoning.py: Anthropic `thinking` blocks (budget_tokens is the
reasoning budget) and Responses `reasoning` items carry exactly what the chat
route returns as reasoning_content, streamed and not."""
from __future__ import annotations

import anthropic
import openai
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from test_server_reasoning import build_reasoning_model

MSGS = [{"role": "user", "content": "What is 2 + 2?"}]
T0 = {"temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = build_reasoning_model(tmp_path_factory.mktemp("tiny-reasoner"))
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("r1",)))
    with ServerThread(app) as srv:
        assert app.state.jevons.reasoning
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url + "/anthropic", api_key="unused", max_retries=0, timeout=60)


def chat(client, max_tokens, **extra):
    r = client.chat.completions.create(model="r1", messages=MSGS, max_tokens=max_tokens, temperature=0,
                                       extra_body=extra)
    msg = r.choices[0].message
    return msg.model_extra["reasoning_content"], msg.content, r


@pytest.mark.parametrize("thinking, budget", [({"type": "enabled", "budget_tokens": 4}, 4),
                                              ({"type": "disabled"}, 0)])
def test_thinking_blocks_match_reasoning_content(claude, client, thinking, budget):
    m = claude.messages.create(model="r1", max_tokens=16, messages=MSGS, thinking=thinking, extra_body=T0)
    reasoning, content, _ = chat(client, 16, max_reasoning_tokens=budget)
    thinking_text = "".join(b.thinking for b in m.content if b.type == "thinking")
    text = "".join(b.text for b in m.content if b.type == "text")
    assert (thinking_text, text) == (reasoning, content)
    if budget:  # the template opens <think>; the budget closes it after 4 tokens
        assert reasoning and m.content[0].type == "thinking" and m.content[0].signature == ""


def test_thinking_stream_matches(claude):
    kw = dict(model="r1", max_tokens=16, messages=MSGS, thinking={"type": "enabled", "budget_tokens": 4},
              extra_body=T0)
    full = claude.messages.create(**kw)
    with claude.messages.stream(**kw) as stream:
        kinds, thinking, text = [], "", ""
        for ev in stream:
            if ev.type == "content_block_start":
                kinds.append(ev.content_block.type)
            elif ev.type == "content_block_delta" and ev.delta.type == "thinking_delta":
                thinking += ev.delta.thinking
            elif ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                text += ev.delta.text
        final = stream.get_final_message()
    assert kinds == [b.type for b in full.content]
    assert thinking == "".join(b.thinking for b in full.content if b.type == "thinking")
    assert text == "".join(b.text for b in full.content if b.type == "text")
    assert [b.type for b in final.content] == kinds


def test_thinking_history_is_accepted(claude):
    history = [*MSGS, {"role": "assistant", "content": [{"type": "thinking", "thinking": "2 and 2", "signature": "x"},
                                                        {"type": "text", "text": "4"}]},
               {"role": "user", "content": "And 3 + 3?"}]
    m = claude.messages.create(model="r1", max_tokens=4, messages=history)
    assert m.usage.output_tokens <= 4


def test_responses_reasoning_item_matches(client):
    r = client.responses.create(model="r1", input=MSGS, max_output_tokens=16, reasoning={"effort": "minimal"},
                                temperature=0)
    reasoning, content, chat_r = chat(client, 16, reasoning_effort="minimal")
    items = {item.type: item for item in r.output}
    assert items["message"].content[0].text == content
    assert reasoning and r.output[0].type == "reasoning" and r.output[0].content[0].text == reasoning
    assert r.usage.output_tokens_details.reasoning_tokens == chat_r.usage.completion_tokens_details.reasoning_tokens


def test_responses_reasoning_stream(client):
    kw = dict(model="r1", input="What is 2 + 2?", max_output_tokens=16, temperature=0)
    full = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    expected = [i.content[0].text if i.type == "reasoning" else None for i in full.output]
    assert reasoning and reasoning == expected[0] and text == full.output_text
    assert [e.item.type for e in events if e.type == "response.output_item.added"] == [i.type for i in full.output]
    final = events[-1].response
    assert [i.id for i in final.output] == [e.item.id for e in events if e.type == "response.output_item.done"]


def test_responses_reasoning_items_in_input(client):
    items = [{"role": "user", "content": "What is 2 + 2?"},
             {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Add."}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]},
             {"role": "user", "content": "And 3 + 3?"}]
    r = client.responses.create(model="r1", input=items, max_output_tokens=3)
    assert r.usage.output_tokens <= 3


def test_responses_encrypted_reasoning_round_trip(client):
    """Codex-style (store false, include reasoning.encrypted_content): the blob
    sent back stands for the reasoning it came with."""
    kw = dict(model="r1", max_output_tokens=12, temperature=0, store=False)
    r = client.responses.create(input=MSGS, include=["reasoning.encrypted_content"], **kw)
    reasoning = r.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    follow = [*MSGS, *[o.model_dump(exclude_none=True) for o in r.output], {"role": "user", "content": "And 3 + 3?"}]
    with_text = client.responses.create(input=follow, **kw)
    follow[1] = {"type": "reasoning", "summary": [], "encrypted_content": reasoning.encrypted_content}
    assert client.responses.create(input=follow, **kw).output_text == with_text.output_text
