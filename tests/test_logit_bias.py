"""logit_bias (OpenAI semantics): token id -> bias in [-100, 100] added to the
logits before sampling. The sampler against a reference, validation, and the
server (chat and completions, through the official client) where +100 forces a
token at temperature 0 and -100 bans one."""
from __future__ import annotations

import openai
import pytest
import torch

from jevons.runner.sampler import Sampler, SamplingBatch, apply_logit_bias
from jevons.sampling_params import SamplingParams

MSGS = [{"role": "user", "content": "The quick brown fox"}]


def batch(params):
    n = len(params)
    return SamplingBatch(params, [None] * n, [[]] * n, [[]] * n, [[]] * n)


def test_bias_is_added_per_row():
    torch.manual_seed(0)
    logits = torch.randn(3, 40)
    params = [SamplingParams(logit_bias={"3": 2.5, 7: -1}), SamplingParams(), SamplingParams(logit_bias={39: 100})]
    got = apply_logit_bias(logits.clone(), params)
    want = logits.clone()
    want[0, 3] += 2.5
    want[0, 7] -= 1
    want[2, 39] += 100
    assert torch.equal(got, want)


def test_plus_100_forces_and_minus_100_bans_in_the_sampler():
    torch.manual_seed(1)
    logits = torch.randn(4, 50)
    top = logits.argmax(-1).tolist()
    params = [
        SamplingParams(temperature=0, logit_bias={11: 100}),
        SamplingParams(temperature=0, logit_bias={top[1]: -100}),
        SamplingParams(temperature=1.0, seed=3, logit_bias={22: 100}),  # sampled rows too
        SamplingParams(temperature=0),
    ]
    tokens = Sampler()(logits.clone(), batch(params)).tokens.tolist()
    assert tokens[0] == 11
    assert tokens[1] != top[1]
    assert tokens[2] == 22
    assert tokens[3] == top[3]


@pytest.mark.parametrize("bias", [{"abc": 1}, {"-1": 1}, {-1: 1}, {"1.5": 1}, {"5": 101}, {"5": -100.5},
                                  {"5": float("nan")}, {"5": "x"}])
def test_bad_bias_names_the_field(bias):
    with pytest.raises(ValueError) as e:
        SamplingParams(logit_bias=bias)
    assert e.value.param == "logit_bias"


def test_vocab_bound():
    SamplingParams(logit_bias={"9": 1}).check_vocab(10)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        SamplingParams(logit_bias={"10": 1}).check_vocab(10)


@pytest.fixture(scope="module")
def llm(tiny_llama):
    from jevons.llm import LLM

    return LLM(str(tiny_llama), progress=False)


def test_llm_generate(llm):
    out = llm.generate({"prompt_token_ids": [5, 6, 7]},
                       SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logit_bias={"42": 100}))
    assert out[0].outputs[0].token_ids == [42] * 4
    with pytest.raises(ValueError, match="logit_bias"):
        llm.generate("hi", SamplingParams(logit_bias={"100000": 1}))




def _text(server, token: int) -> str:
    import httpx

    return httpx.post(server.url + "/detokenize", json={"tokens": [token]}, timeout=30).json()["prompt"]


def test_chat_plus_100_forces_a_token(server, client):
    token = 42
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=5, temperature=0,
                                       logit_bias={str(token): 100}, extra_body={"ignore_eos": True})
    assert r.choices[0].message.content == _text(server, token) * 5


def test_minus_100_bans_the_greedy_token(server, client, llm):
    import httpx

    # The same model and settings as the server's: the LLM says which token ids
    # the texts are (a token may be half a UTF-8 character, so texts alone can't).
    ids = httpx.post(server.url + "/tokenize", json={"messages": MSGS}, timeout=30).json()["tokens"]
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    plain = llm.generate({"prompt_token_ids": ids}, greedy)[0].outputs[0]
    top = plain.token_ids[0]
    no_top = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logit_bias={top: -100})
    banned = llm.generate({"prompt_token_ids": ids}, no_top)[0].outputs[0]
    assert banned.token_ids[0] != top
    for bias, want in ((None, plain.text), ({str(top): -100}, banned.text)):
        extra = {"logit_bias": bias} if bias else {}
        chat = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, temperature=0,
                                              extra_body={"ignore_eos": True}, **extra)
        assert chat.choices[0].message.content == want
        legacy = client.completions.create(model="tiny", prompt=ids, max_tokens=4, temperature=0,
                                           extra_body={"ignore_eos": True}, **extra)
        assert legacy.choices[0].text == want


def test_completions_bias(server, client):
    prompt = [5, 6, 7, 8]
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
    forced = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0,
                                       logit_bias={"42": 100}, extra_body={"ignore_eos": True}).choices[0].text
    assert forced == _text(server, 42) * 3 != plain


@pytest.mark.parametrize("bias,needle", [({"100000": 1}, "vocabulary"), ({"5": 101}, "[-100, 100]"),
                                         ({"x": 1}, "token ids")])
def test_bad_bias_is_400(client, bias, needle):
    for call in (lambda: client.chat.completions.create(model="tiny", messages=MSGS, logit_bias=bias),
                 lambda: client.completions.create(model="tiny", prompt="hi", logit_bias=bias)):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == "logit_bias" and needle in e.value.body["message"]
