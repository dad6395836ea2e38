"""Fault isolation in the step loop (issue 21): an exception while preparing,
sampling or detokenizing one request fails that request alone (its blocks
freed, its n siblings aborted, usage counting what it generated) while the
others in the same step get exactly the tokens they would have had alone; a
fault that fails the whole step resets the engine in-process (every request in
flight failed cleanly, every block free) and /health says so; a fault that
keeps coming back ends in a dead engine rather than a loop."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from conftest import assert_no_leaks
from jevons.config import engine_config
from jevons import LLM, SamplingParams
from jevons.cost.ledger import Ledger
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

PROMPTS = [[5, 6, 7, 8, 9 + i] for i in range(4)]
# Seeded and sampled, and greedy: both must come out the same with a failing neighbour.
SEEDED = SamplingParams(temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


class Boom(RuntimeError):
    pass


def fail_at(stage: str, parent_id: str, after: int = 2, index: int | None = None):
    """A fault_injector raising for one request at `stage` once it has `after` tokens."""

    def inject(where: str, req) -> None:
        if (where == stage and req is not None and req.parent_id == parent_id and req.num_output_tokens >= after
                and (index is None or req.index == index)):
            raise Boom(f"injected at {stage}")

    return inject


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), dtype="float32", progress=False)


def run(llm, params_list):
    return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params_list, use_tqdm=False)


def next_id(llm) -> int:
    """The request id LLM.generate gives its next prompt."""
    import itertools

    n = next(llm._ids)
    llm._ids = itertools.count(n)
    return n


@pytest.mark.parametrize("stage", ["prepare", "sample", "detokenize"])
def test_a_fault_in_one_request_fails_only_it(llm, stage):
    params = [SEEDED, GREEDY, SEEDED, GREEDY]
    alone = [llm.generate([{"prompt_token_ids": p}], sp, use_tqdm=False)[0].outputs[0] for p, sp in zip(PROMPTS, params)]
    core = llm.engine
    core.fault_injector = fail_at(stage, str(next_id(llm) + 1))
    try:
        outs = run(llm, params)
    finally:
        core.fault_injector = None
    assert outs[1].outputs[0].finish_reason == "error"
    for i in (0, 2, 3):
        assert outs[i].outputs[0].finish_reason == "length"
        assert outs[i].outputs[0].token_ids == alone[i].token_ids
    assert_no_leaks(llm)
    assert core.num_resets == 0


def test_n_siblings_are_aborted_with_the_failing_one(llm):
    core = llm.engine
    rid = next_id(llm)
    n3 = SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True)
    core.fault_injector = fail_at("detokenize", str(rid), after=3, index=1)
    before = core.generation_tokens_total
    try:
        outs = llm.generate([{"prompt_token_ids": PROMPTS[0]}, {"prompt_token_ids": PROMPTS[1]}], [n3, GREEDY],
                            use_tqdm=False)
    finally:
        core.fault_injector = None
    reasons = [o.finish_reason for o in outs[0].outputs]
    assert reasons[1] == "error" and reasons[0] == reasons[2] == "abort"
    # Every token generated reached the caller (the failing one's last token too).
    assert len(outs[0].outputs[1].token_ids) == 3 and all(len(o.token_ids) >= 3 for o in outs[0].outputs)
    assert sum(len(o.token_ids) for o in outs[0].outputs) + len(outs[1].outputs[0].token_ids) == \
        core.generation_tokens_total - before
    assert outs[1].outputs[0].finish_reason == "length"
    assert_no_leaks(llm)


def test_a_real_sampler_fault_is_found_by_splitting_the_batch(llm):
    """No hook: the sampler itself raises on one row (after drawing every
    seeded row's noise). The batch is rerun in parts, generators rewound."""
    params = [SEEDED, SEEDED, GREEDY, SamplingParams(temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)]
    alone = [llm.generate([{"prompt_token_ids": p}], sp, use_tqdm=False)[0].outputs[0] for p, sp in zip(PROMPTS, params)]
    bad = SamplingParams(temperature=0.9, seed=5, max_tokens=8, ignore_eos=True)
    sampler = llm.engine.runner.sampler

    def faulty(logits, batch):
        out = sampler(logits, batch)
        if any(p is bad for p in batch.params):
            raise IndexError("a bad row")
        return out

    llm.engine.runner.sampler = faulty
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS + [[9, 9, 9]]], params + [bad], use_tqdm=False)
    finally:
        llm.engine.runner.sampler = sampler
    assert outs[4].outputs[0].finish_reason == "error"
    assert [o.outputs[0].token_ids for o in outs[:4]] == [a.token_ids for a in alone]
    assert_no_leaks(llm)


def test_bypassed_validation_top_k_fails_one_request_not_the_engine(llm):
    """Even a value validation would refuse (set after construction) fails only its request."""
    bad = SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True)
    bad.top_k = 10**20
    alone = llm.generate([{"prompt_token_ids": PROMPTS[0]}], SEEDED, use_tqdm=False)[0].outputs[0]
    outs = llm.generate([{"prompt_token_ids": PROMPTS[0]}, {"prompt_token_ids": PROMPTS[1]}], [SEEDED, bad],
                        use_tqdm=False)
    assert outs[1].outputs[0].finish_reason == "error"
    assert outs[0].outputs[0].token_ids == alone.token_ids
    assert_no_leaks(llm)


def test_a_fault_in_the_forward_resets_the_engine(llm):
    core = llm.engine
    before = core.num_resets

    def forward_fails(where, req):
        if where == "forward":
            raise Boom("the model forward failed")

    core.fault_injector = forward_fails
    try:
        outs = run(llm, [GREEDY] * 4)
    finally:
        core.fault_injector = None
    assert [o.outputs[0].finish_reason for o in outs] == ["error"] * 4
    assert core.num_resets == before + 1 and "the model forward failed" in core.last_fault
    assert_no_leaks(llm)
    assert core.kv.pool.num_cached == 0  # the device prefix cache was emptied too
    again = run(llm, [GREEDY] * 4)  # and it serves as before
    assert all(o.outputs[0].finish_reason == "length" for o in again)
    assert core.consecutive_faults == 0


# --- through the server -------------------------------------------------------------

MSGS = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fault-ledger") / "ledger.sqlite"


@pytest.fixture(scope="module")
def server(tiny_llama, ledger_path):
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama), dtype="float32"),
                                served_model_names=("tiny",), ledger=str(ledger_path)))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture()
def core(server):
    core = server.app.state.jevons.engine.core
    yield core
    core.fault_injector = None


def all_free(core, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not core.has_work() and core.num_free_blocks() == core.kv.num_blocks and not core.children:
            return True
        time.sleep(0.02)
    return False


def chat_body(i: int, **kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": f"The quick brown fox {i}"}],
            "max_tokens": 12, "temperature": 1.0, "seed": 100 + i, "extra_body": {"ignore_eos": True}, **kw}


def raw_body(i: int, **kw) -> dict:
    body = chat_body(i, **kw)
    extra = body.pop("extra_body")
    return {**body, **extra}


def fail_request_with_seed(seed: int, stage: str, after: int = 3, index: int | None = None):
    def inject(where: str, req) -> None:
        if (where == stage and req is not None and req.params.seed == seed and req.num_output_tokens >= after
                and (index is None or req.index == index)):
            raise Boom(f"injected at {stage}")

    return inject


async def _chat_all(url: str, bodies: list[dict]) -> list:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)

    async def one(b):
        try:
            return await client.chat.completions.create(**b)
        except openai.APIStatusError as e:
            return e

    async with client:  # closed inside this event loop, not after it
        return await asyncio.gather(*(one(b) for b in bodies))


@pytest.mark.parametrize("stage", ["sample", "detokenize"])
def test_server_one_request_fails_with_500_the_rest_answer(server, core, stage):
    bodies = [chat_body(i) for i in range(4)]
    alone = [r.choices[0].message.content for r in asyncio.run(_chat_all(server.url, bodies))]
    core.fault_injector = fail_request_with_seed(102, stage)
    got = asyncio.run(_chat_all(server.url, bodies))
    err = got[2]
    assert isinstance(err, openai.InternalServerError), err
    assert err.status_code == 500 and err.body["code"] == "request_failed"
    rid = err.response.headers["x-request-id"]
    assert rid.startswith("chatcmpl-") and rid in err.body["message"]
    assert "injected at" in err.body["message"]
    assert [r.choices[0].message.content for i, r in enumerate(got) if i != 2] == alone[:2] + alone[3:]
    assert all_free(core)
    assert server.get("/health").json() == {"status": "ok", "detail": None}


def test_server_n_siblings_aborted_and_billed(server, core, ledger_path):
    core.fault_injector = fail_request_with_seed(7, "detokenize", after=3, index=1)
    tokens_before = core.generation_tokens_total
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": MSGS, "n": 3, "seed": 7, "temperature": 1.0, "max_tokens": 20,
        "ignore_eos": True})
    assert r.status_code == 500 and r.json()["error"]["code"] == "request_failed"
    rid = r.headers["x-request-id"]
    assert all_free(core)
    generated = core.generation_tokens_total - tokens_before
    deadline = time.monotonic() + 10
    while True:
        with Ledger(ledger_path) as led:
            rows = {e.request_id: e for e in led.entries()}
        if rid in rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    row = rows[rid]
    assert row.completion_tokens == generated >= 9  # >= 3 tokens in each of the 3 sequences
    assert set(row.finish_reason.split(",")) == {"error", "abort"}


def test_server_streaming_request_gets_an_error_event(server, core):
    core.fault_injector = fail_request_with_seed(55, "detokenize", after=4)
    body = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 30, "seed": 55, "temperature": 1.0,
            "ignore_eos": True, "stream": True}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "request_failed" and "cmpl-" in err["message"]
    assert sum(1 for e in events[:-2] if json.loads(e)["choices"][0]["text"]) >= 1
    assert all_free(core)


def test_server_step_fault_resets_and_health_says_so(server, core):
    first = httpx.post(server.url + "/v1/chat/completions", json=raw_body(0, max_tokens=5), timeout=60)
    assert first.status_code == 200
    failing = {"on": True}

    def forward_fails(where, req):
        if where == "forward" and failing["on"]:
            raise Boom("the device fell over")

    core.fault_injector = forward_fails
    engine = server.app.state.jevons.engine
    # Hold the engine thread until all three requests are in its inbox, so that
    # they run as one step: one request failing alone is that request's fault
    # (no reset), and a step of three that all fail is the engine's.
    drain = engine._drain_inbox

    def drain_all_three() -> None:
        deadline = time.monotonic() + 30
        while engine._inbox.qsize() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        engine._drain_inbox = drain
        drain()

    engine._drain_inbox = drain_all_three
    try:
        got = asyncio.run(_chat_all(server.url, [chat_body(i, max_tokens=5) for i in range(3)]))
    finally:
        engine._drain_inbox = drain
    assert all(isinstance(g, openai.InternalServerError) for g in got)
    assert all("the device fell over" in g.body["message"] for g in got)
    failing["on"] = False
    assert all_free(core)
    health = server.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert "reset" in health.json()["detail"] and "the device fell over" in health.json()["detail"]
    again = httpx.post(server.url + "/v1/chat/completions", json=raw_body(0, max_tokens=5), timeout=60)
    assert again.status_code == 200
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]


def test_a_fault_that_keeps_coming_back_ends_in_a_dead_engine(tiny_llama):
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",)))
    with ServerThread(app) as srv:
        engine = app.state.jevons.engine
        core = engine.core

        def forward_fails(where, req):
            if where == "forward":
                raise Boom("broken for good")

        core.fault_injector = forward_fails
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 3}
        for _ in range(engine.max_consecutive_faults):
            r = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 500 and "broken for good" in r.json()["error"]["message"]
        deadline = time.monotonic() + 10
        while engine.dead is None and time.monotonic() < deadline:
            time.sleep(0.02)
        health = srv.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "error"
        assert httpx.post(srv.url + "/v1/completions", json=body, timeout=60).status_code == 503
