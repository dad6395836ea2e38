"""POST /v1/messages (and /anthropic/v1/messages) with the official `anthropic`
client against the tiny-model server: plain, system prompts, streamed, stop
sequences, prefill, count_tokens, and Anthropic-shaped errors."""
from __future__ import annotations

import anthropic
import httpx
import pytest

CHAT = dict(model="tiny", temperature=0)
USER = [{"role": "user", "content": "The quick brown fox"}]
T0 = {"temperature": 0}  # this anthropic package has no temperature argument; the API still takes it


@pytest.fixture(scope="module", params=["", "/anthropic"])
def claude(server, request):
    """The Anthropic client at Anthropic's path layout and at DeepSeek's /anthropic base URL."""
    return anthropic.Anthropic(base_url=server.url + request.param, api_key="unused", max_retries=0, timeout=60)


def chat(client, messages, max_tokens, **kw):
    r = client.chat.completions.create(messages=messages, max_tokens=max_tokens, **CHAT, **kw)
    return r.choices[0]


def test_create_matches_chat(claude, client):
    m = claude.messages.create(model="tiny", max_tokens=8, messages=USER, extra_body=T0)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_") and m.model == "tiny"
    c = chat(client, USER, 8)
    assert "".join(b.text for b in m.content if b.type == "text") == c.message.content
    assert m.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[c.finish_reason]
    u = m.usage
    assert u.output_tokens <= 8 and u.input_tokens + u.cache_read_input_tokens > 0
    assert u.cache_creation_input_tokens == 0


@pytest.mark.parametrize("system", ["Be brief.", [{"type": "text", "text": "Be brief."}]])
def test_system_prompt(claude, client, system):
    m = claude.messages.create(model="tiny", max_tokens=6, system=system, messages=USER, extra_body=T0)
    c = chat(client, [{"role": "system", "content": "Be brief."}, *USER], 6)
    assert m.content[0].text == c.message.content


def test_stream_matches_create(claude):
    kw = dict(model="tiny", max_tokens=10, messages=USER, extra_body=T0)
    full = claude.messages.create(**kw)
    with claude.messages.stream(**kw) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == full.content[0].text
    assert final.content[0].text == text and final.stop_reason == full.stop_reason
    assert final.usage.output_tokens == full.usage.output_tokens


def test_stream_event_sequence(server):
    body = {"model": "tiny", "max_tokens": 6, "messages": USER, "stream": True}
    with httpx.stream("POST", server.url + "/v1/messages", json=body, timeout=60) as r:
        names = [line.split(": ", 1)[1] for line in r.iter_lines() if line.startswith("event: ")]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    body_events = [n for n in names[2:-2] if n != "ping"]
    assert body_events[0] == "content_block_start" and body_events[-1] == "content_block_stop"
    assert set(body_events[1:-1]) == {"content_block_delta"}


def test_stop_sequence(claude):
    full = claude.messages.create(model="tiny", max_tokens=12, messages=USER, extra_body=T0).content[0].text
    word = full.strip()[2:5] if len(full.strip()) > 5 else None
    if not word:
        pytest.skip("the tiny model said too little to stop on")
    m = claude.messages.create(model="tiny", max_tokens=12, messages=USER, extra_body=T0, stop_sequences=[word])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == word
    assert word not in m.content[0].text


def test_prefill_is_continued(claude):
    m = claude.messages.create(model="tiny", max_tokens=4, extra_body=T0,
                               messages=[*USER, {"role": "assistant", "content": "jumps over"}])
    plain = claude.messages.create(model="tiny", max_tokens=4, extra_body=T0, messages=USER)
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens > \
        plain.usage.input_tokens + plain.usage.cache_read_input_tokens


def test_count_tokens(claude):
    n = claude.messages.count_tokens(model="tiny", system="Be brief.", messages=USER).input_tokens
    m = claude.messages.create(model="tiny", max_tokens=1, system="Be brief.", messages=USER)
    assert n == m.usage.input_tokens + m.usage.cache_read_input_tokens


@pytest.mark.parametrize("body, status, field", [
    ({"messages": USER}, 400, "max_tokens"),
    ({"max_tokens": 0, "messages": USER}, 400, "max_tokens"),
    ({"max_tokens": 5, "messages": []}, 400, "messages"),
    ({"max_tokens": 5, "messages": USER, "temperature": 1.5}, 400, "temperature"),
    ({"max_tokens": 5, "messages": USER, "frobnicate": True}, 400, "frobnicate"),
    ({"max_tokens": 5, "messages": USER, "mcp_servers": [{"url": "x"}]}, 400, "mcp_servers"),
    ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, 400, "messages[0].role"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
     "messages[0].content[0]"),
    ({"max_tokens": 5, "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 9}}, 400,
     "thinking.budget_tokens"),
    ({"max_tokens": 5, "messages": USER, "thinking": {"type": "enabled"}}, 400, "thinking.budget_tokens"),
    ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "sometimes"}}, 400, "tool_choice"),
    ({"max_tokens": 5, "messages": USER, "model": "claude-opus"}, 404, "model"),
])
@pytest.mark.parametrize("prefix", ["", "/anthropic"])
def test_errors_in_anthropic_shape(server, body, status, field, prefix):
    r = httpx.post(server.url + prefix + "/v1/messages", json={"model": "tiny", **body},
                   headers={"anthropic-version": "2023-06-01"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["type"] == "error" and set(err["error"]) == {"type", "message"}
    assert err["error"]["type"] == {400: "invalid_request_error", 404: "not_found_error"}[status]
    assert field in err["error"]["message"]


def test_client_raises_its_own_errors(claude):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="tiny", max_tokens=5, messages=USER, extra_body={"temperature": 1.5})
    assert e.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="nope", max_tokens=5, messages=USER)


def test_malformed_json_is_an_anthropic_400(server):
    r = httpx.post(server.url + "/v1/messages", content=b"{not json", timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "error"


def test_engine_fault_is_an_anthropic_error(server, claude):
    from test_api_responses import _fail_when_max_tokens

    core = server.app.state.jevons.engine.core
    core.fault_injector = _fail_when_max_tokens(13)
    try:
        with pytest.raises(anthropic.APIStatusError) as streamed:
            with claude.messages.stream(model="tiny", max_tokens=13, messages=USER) as stream:
                for _ in stream:
                    pass
        with pytest.raises(anthropic.InternalServerError) as plain:
            claude.messages.create(model="tiny", max_tokens=13, messages=USER)
    finally:
        core.fault_injector = None
    assert streamed.value.body["error"]["type"] == "api_error"
    assert plain.value.status_code == 500 and plain.value.body["error"]["type"] == "api_error"
    assert claude.messages.create(model="tiny", max_tokens=2, messages=USER).usage.output_tokens <= 2


def test_models_under_anthropic(server):
    claude = anthropic.Anthropic(base_url=server.url + "/anthropic", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in claude.models.list()] == ["tiny"]
    assert claude.models.retrieve("tiny").type == "model"
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("claude-opus")


def test_max_tokens_beyond_the_context_runs_to_its_end(claude):
    """Anthropic clients send a high max_tokens (Claude Code: 32000); it is a cap,
    lowered to what the 512-token context holds, and the stop says the context ended it."""
    line = "Paged attention keeps the KV cache in fixed-size blocks. "

    def count(n):
        return claude.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": line * n}]).input_tokens

    one, two = count(1), count(2)
    reps = 1 + (500 - one) // (two - one)  # a prompt of about 500 of the context's 512 tokens
    m = claude.messages.create(model="tiny", max_tokens=32000, extra_body=T0,
                               messages=[{"role": "user", "content": line * reps}])
    prompt = m.usage.input_tokens + m.usage.cache_read_input_tokens
    assert prompt + m.usage.output_tokens == 512
    assert m.stop_reason == "model_context_window_exceeded"
