"""Reasoning models end to end: a tiny model whose tokenizer has <think> and
</think> (and FIM tokens), with a chat template that pre-fills <think> unless
told not to."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from jevons.engine.reasoning import ReasoningParser

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if thinking is not defined or thinking %}<think>\n{% endif %}{% endif %}"
)
TAGS = ["<think>", "</think>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]


def build_reasoning_model(path: Path) -> Path:
    from tiny_models import CORPUS, build_model
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    # As in DeepSeek-R1 and Qwen3: the tags are added tokens but not "special",
    # so they survive skip_special_tokens and show in the text.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    build_model(path, "llama", vocab_size=tok.get_vocab_size())
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": None, "eos_token": "<|im_end|>", "chat_template": TEMPLATE, "add_bos_token": False}))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = build_reasoning_model(tmp_path_factory.mktemp("tiny-reasoner"))
    app = build_app(ServeConfig(engine=engine_config(model=str(path)), served_model_names=("r1",)))
    with ServerThread(app) as srv:
        assert app.state.jevons.reasoning  # auto-detected from the tokenizer
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


MSGS = [{"role": "user", "content": "What is 2 + 2?"}]
GREEDY = dict(model="r1", temperature=0, extra_body={"ignore_eos": True})


def raw_completion(client, server, messages, max_tokens, **template_kwargs) -> tuple[str, str]:
    """The unparsed text the model writes for this conversation, and the prompt."""
    body = {"messages": messages, "chat_template_kwargs": template_kwargs or None}
    ids = httpx.post(server.url + "/tokenize", json=body).json()["tokens"]
    tok = server.app.state.jevons.engine.core.tokenizer
    text = client.completions.create(prompt=ids, max_tokens=max_tokens, **GREEDY).choices[0].text
    return text, tok.decode(ids, skip_special_tokens=False)


def test_prefilled_think_goes_to_reasoning_content(client, server):
    r = client.chat.completions.create(messages=MSGS, max_tokens=12, **GREEDY)
    raw, prompt = raw_completion(client, server, MSGS, 12)
    assert prompt.endswith("<think>\n")
    reasoning, content = ReasoningParser(True).feed(raw, final=True)
    msg = r.choices[0].message
    assert msg.model_extra["reasoning_content"] == reasoning
    assert msg.content == content
    details = r.usage.completion_tokens_details
    if "</think>" not in raw:
        assert reasoning and details.reasoning_tokens == r.usage.completion_tokens == 12
    else:
        assert 0 < details.reasoning_tokens < 12


def test_thinking_off_means_plain_content(client, server):
    r = client.chat.completions.create(messages=MSGS, max_tokens=10,
                                       **{**GREEDY, "extra_body": {"ignore_eos": True,
                                                                   "chat_template_kwargs": {"thinking": False}}})
    raw, prompt = raw_completion(client, server, MSGS, 10, thinking=False)
    assert not prompt.endswith("<think>\n")
    expected = ReasoningParser(False).feed(raw, final=True)
    assert (r.choices[0].message.model_extra["reasoning_content"], r.choices[0].message.content) == expected
    if not raw.lstrip().startswith("<think>"):
        assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_streaming_splits_the_same_way(client):
    kw = dict(messages=MSGS, max_tokens=16, **GREEDY)
    full = client.chat.completions.create(**kw).choices[0].message
    reasoning = content = ""
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content += c.delta.content or ""
    assert reasoning == full.model_extra["reasoning_content"] and content == full.content


def test_reasoning_cap_closes_the_block(client):
    kw = dict(messages=MSGS, max_tokens=16, **{**GREEDY, "extra_body": {"ignore_eos": True,
                                                                       "max_reasoning_tokens": 4}})
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    # 4 thinking tokens, then the engine writes </think> and the answer follows.
    assert r.usage.completion_tokens_details.reasoning_tokens == 5
    assert msg.model_extra["reasoning_content"] and msg.content
    reasoning = content = ""
    for ch in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for c in ch.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            content += c.delta.content or ""
        if ch.usage:
            assert ch.usage.completion_tokens_details.reasoning_tokens == 5
    assert (reasoning, content) == (msg.model_extra["reasoning_content"], msg.content)


def test_prefix_completion_continues_reasoning(client, server):
    msgs = MSGS + [{"role": "assistant", "content": "", "reasoning_content": "Two plus two", "prefix": True}]
    r = client.chat.completions.create(messages=msgs, max_tokens=6, **GREEDY)
    tok = server.app.state.jevons.engine.core.tokenizer
    prompt = tok.apply_chat_template(MSGS, add_generation_prompt=True) + "Two plus two"
    assert r.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))
    raw = client.completions.create(prompt=tok.encode(prompt, add_special_tokens=False), max_tokens=6,
                                    **GREEDY).choices[0].text
    assert r.choices[0].message.model_extra["reasoning_content"] == ReasoningParser(True).feed(raw, True)[0]


def test_fill_in_the_middle(client, server):
    r = client.completions.create(model="r1", prompt="def add(a, b):", suffix="\n    return c\n", max_tokens=4)
    fim = "<|fim_prefix|>def add(a, b):<|fim_suffix|>\n    return c\n<|fim_middle|>"
    count = httpx.post(server.url + "/tokenize", json={"prompt": fim}).json()["count"]
    assert r.usage.prompt_tokens == count
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="r1", prompt=[1, 2, 3], suffix="x", max_tokens=4)
