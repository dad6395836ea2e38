"""A real server on a loopback port, driven by the official `openai` package:
sync and async clients, streaming and not, n > 1, stop, logprobs, seeds,
usage, and DeepSeek prefix completion."""
from __future__ import annotations

import asyncio

import openai
import pytest


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]




@pytest.fixture()
def aclient(server):
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_chat_sync(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=7, temperature=0)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("length", "stop")
    u = r.usage
    assert u.completion_tokens <= 7 and u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens_details.reasoning_tokens == 0
    assert u.prompt_tokens_details.cached_tokens == u.model_extra["prompt_cache_hit_tokens"]
    assert u.model_extra["prompt_cache_miss_tokens"] == u.prompt_tokens - u.prompt_tokens_details.cached_tokens


def test_prefix_cache_hits_show_in_usage(client):
    long_msgs = [{"role": "user", "content": "Paged attention keeps the KV cache in fixed-size blocks. " * 4}]
    first = client.chat.completions.create(model="tiny", messages=long_msgs, max_tokens=2)
    second = client.chat.completions.create(model="tiny", messages=long_msgs, max_tokens=2)
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= 16  # at least one full block came from the cache
    assert second.usage.model_extra["prompt_cache_hit_tokens"] == second.usage.prompt_tokens_details.cached_tokens


def test_chat_stream_matches_non_stream(client):
    kw = dict(model="tiny", messages=MSGS, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert full.usage.completion_tokens == 12


def test_n_greater_than_one(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, n=3, seed=1, temperature=1.0)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 18  # counted over all choices
    stream = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, n=3, seed=1,
                                            temperature=1.0, stream=True)
    texts = {0: "", 1: "", 2: ""}
    finished = set()
    roles = set()
    for ch in stream:
        for c in ch.choices:
            if c.delta.role:
                roles.add(c.index)
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                assert c.index not in finished
                finished.add(c.index)
    assert roles == finished == {0, 1, 2}
    assert texts == {c.index: c.message.content for c in r.choices}  # same seed, same samples


def test_seed_reproducibility(client):
    kw = dict(model="tiny", prompt="The quick brown", max_tokens=16, temperature=1.0)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1


def test_stop_strings(client):
    kw = dict(model="tiny", prompt="Continuous batching", max_tokens=24, temperature=0,
              extra_body={"ignore_eos": True})
    text = client.completions.create(**kw).choices[0].text
    clean = [i for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2] and text[i:i + 2] not in text[:i]]
    assert clean, f"no usable stop string in {text!r}"
    stop = text[clean[0]:clean[0] + 2]
    r = client.completions.create(stop=[stop, "never-appears"], **kw)
    assert r.choices[0].text == text[:clean[0]]
    assert r.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=24, temperature=0,
                                          extra_body={"ignore_eos": True})
    content = chat.choices[0].message.content
    cut = next((i for i in range(2, len(content)) if content[i] not in content[:i] and content[i] != "\ufffd"), None)
    if cut is not None:
        r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=24, temperature=0,
                                           stop=content[cut], extra_body={"ignore_eos": True})
        assert r.choices[0].message.content == content[:cut]
        assert r.choices[0].finish_reason == "stop"


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=5, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert entry.logprob <= 0
        if "\ufffd" not in entry.token:  # else part of a character: its raw bytes (tests/test_token_bytes.py)
            assert entry.bytes == list(entry.token.encode("utf-8"))
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.logprob <= tops[0] + 1e-5
    no = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=2)
    assert no.choices[0].logprobs is None


def test_completion_logprobs_and_batches(client):
    r = client.completions.create(model="tiny", prompt=["The quick", "Paged"], max_tokens=4, logprobs=2, n=2,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        lp = c.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
        assert lp.text_offset[0] == 0
        assert all(b >= a for a, b in zip(lp.text_offset, lp.text_offset[1:]))
        for tok, top in zip(lp.tokens, lp.top_logprobs):
            assert tok in top and 1 <= len(top) <= 3  # partial UTF-8 tokens all decode to U+FFFD
    assert r.usage.completion_tokens == 16
    ids = client.completions.create(model="tiny", prompt=[[42, 71, 311], [5, 6]], max_tokens=3)
    assert len(ids.choices) == 2 and ids.usage.prompt_tokens == 5
    one = client.completions.create(model="tiny", prompt=[42, 71, 311], max_tokens=3)
    assert len(one.choices) == 1 and one.usage.prompt_tokens == 3


def test_completion_echo(client):
    r = client.completions.create(model="tiny", prompt="The quick", max_tokens=3, echo=True)
    assert r.choices[0].text.startswith("The quick")


def test_async_client(aclient):
    async def main():
        r = await aclient.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4)
        assert r.choices[0].finish_reason in ("length", "stop")
        stream = await aclient.completions.create(model="tiny", prompt="Hello", max_tokens=5, stream=True,
                                                  extra_body={"ignore_eos": True},
                                                  stream_options={"include_usage": True})
        text, usage, finish = "", None, None
        async for ch in stream:
            if ch.choices:
                text += ch.choices[0].text
                finish = ch.choices[0].finish_reason or finish
            if ch.usage:
                usage = ch.usage
        assert finish == "length" and usage.completion_tokens == 5
        # Several at once: the engine batches them; each gets its own answer.
        rs = await asyncio.gather(*[
            aclient.chat.completions.create(model="tiny", messages=MSGS, max_tokens=6, seed=i,
                                            extra_body={"ignore_eos": True})
            for i in range(8)
        ])
        assert all(x.usage.completion_tokens == 6 for x in rs)
        await aclient.close()

    asyncio.run(main())


def test_prefix_completion(client, server):
    """DeepSeek: a last assistant message with prefix=true is continued."""
    tok = server.app.state.jevons.engine.core.tokenizer
    msgs = [{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "def add(a, b):", "prefix": True}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    # The prompt ends with the assistant text, not with a closed turn or a new header.
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True) + "def add(a, b):"
    assert r.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
    raw = client.completions.create(model="tiny", prompt=tok.encode(prompt, add_special_tokens=False), max_tokens=5,
                                    temperature=0, extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == raw.choices[0].text


def test_errors_through_the_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSGS, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=MSGS)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x " * 600)
    assert "1200" in e.value.message and "512" in e.value.message  # both lengths
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
