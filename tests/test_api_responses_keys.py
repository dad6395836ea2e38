"""The dialects behind API keys, prices and a ledger: a stored response belongs
to its key (another key gets a 404), the store is a file beside the ledger,
Anthropic clients authenticate with x-api-key and get 401s in their shape,
and one prompt at temperature 0 gives one text through all three chat
dialects, each with its ledger row (its id's prefix names the dialect) and
its cost."""
from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from jevons.config import engine_config
from jevons.cost.ledger import Ledger
from jevons.server.app import build_app
from jevons.server.auth import key_id
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from jevons.server.dialects.openai_responses.store import ResponseStore, store_path_beside

ALICE, BOB = "sk-alice", "sk-bob"
PRICES = '[models.tiny]\ncurrency = "USD"\ninput_cache_hit = 0.5\ninput_cache_miss = 2.0\noutput = 8.0\n'
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory):
    return tmp_path_factory.mktemp("ledger") / "ledger.sqlite"


@pytest.fixture(scope="module")
def server(tiny_llama, ledger_path, tmp_path_factory):
    prices = tmp_path_factory.mktemp("prices") / "prices.toml"
    prices.write_text(PRICES)
    config = ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",),
                         prices=str(prices), ledger=str(ledger_path), api_keys=(ALICE, BOB))
    with ServerThread(build_app(config)) as srv:
        yield srv


def oai(server, key):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def claude(server, key):
    return anthropic.Anthropic(base_url=server.url + "/anthropic", api_key=key, max_retries=0, timeout=60)


def test_a_stored_response_belongs_to_its_key(server, ledger_path):
    alice, bob = oai(server, ALICE), oai(server, BOB)
    r = alice.responses.create(model="tiny", input=PROMPT, max_output_tokens=3)
    assert alice.responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="tiny", input="x", previous_response_id=r.id, max_output_tokens=2)
    follow = alice.responses.create(model="tiny", input="x", previous_response_id=r.id, max_output_tokens=2)
    assert follow.previous_response_id == r.id
    # On disk beside the ledger: another process (or a restart) reads it back.
    path = store_path_beside(str(ledger_path))
    assert path.parent == ledger_path.parent and path.exists()
    store = ResponseStore(path)
    try:
        stored = store.get(r.id, key_id(ALICE)).response
        assert stored["output"][-1]["id"] == r.output[-1].id
        assert stored["output"][-1]["content"][0]["text"] == r.output_text
        assert store.get(r.id, key_id(BOB)) is None
    finally:
        store.close()


def test_x_api_key_and_anthropic_401s(server):
    m = claude(server, ALICE).messages.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert m.usage.output_tokens <= 2
    with pytest.raises(anthropic.AuthenticationError) as e:
        claude(server, "sk-wrong").messages.create(model="tiny", max_tokens=2,
                                                  messages=[{"role": "user", "content": "x"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    r = httpx.post(server.url + "/anthropic/v1/messages/count_tokens", json={"model": "tiny", "messages": []})
    assert r.status_code == 401 and r.json()["type"] == "error" and "x-api-key" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/responses", json={"model": "tiny", "input": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # OpenAI's shape there
    r = httpx.post(server.url + "/v1/chat/completions", headers={"x-api-key": BOB},
                   json={"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
    assert r.status_code == 200


def test_one_prompt_three_dialects_three_ledger_rows(server, ledger_path):
    chat = oai(server, ALICE).chat.completions.create(model="tiny", temperature=0, max_tokens=8,
                                                      messages=[{"role": "user", "content": PROMPT}])
    resp = oai(server, ALICE).responses.create(model="tiny", temperature=0, max_output_tokens=8, input=PROMPT)
    msg = claude(server, ALICE).messages.create(model="tiny", max_tokens=8, extra_body={"temperature": 0},
                                                messages=[{"role": "user", "content": PROMPT}])
    text = chat.choices[0].message.content
    assert resp.output_text == text and msg.content[0].text == text
    with Ledger(ledger_path) as led:
        rows = {e.request_id: e for e in led.entries()}
    for rid, prefix in ((chat.id, "chatcmpl-"), (resp.id, "resp_"), (msg.id, "msg_")):
        assert rid.startswith(prefix) and rows[rid].key_id == key_id(ALICE)
        assert rows[rid].completion_tokens == chat.usage.completion_tokens
        assert rows[rid].prompt_tokens == chat.usage.prompt_tokens
    cost = chat.usage.model_extra["cost"]["output"]
    assert resp.usage.model_extra["cost"]["output"] == cost and msg.usage.model_extra["cost"]["output"] == cost
