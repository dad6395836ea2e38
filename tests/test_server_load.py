"""Under load: clients that vanish mid-stream free their KV blocks at once,
a full waiting queue answers 429 (never 5xx) while every accepted request
completes, and queued streams get keep-alive comments."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from jevons.config import engine_config
from jevons.kernels.cpu import qgemm
from jevons.kernels.cpu.llama_decode import LlamaDecodePlan
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

LONG = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 400, "ignore_eos": True}


def wait_until(cond, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def all_blocks_free(core) -> bool:
    return not core.has_work() and core.num_free_blocks() == core.kv.num_blocks


# "int4": on a CPU with the qgemm kernel, decode steps run as one C call
# (kernels/cpu/llama_decode.py), so dropped streams are checked on that path too.
@pytest.fixture(scope="module", params=["none", "int4"])
def server(request, tiny_llama):
    engine = {"model": str(tiny_llama), "quantization": request.param}
    app = build_app(ServeConfig(engine=engine_config(**engine), served_model_names=("tiny",)))
    with ServerThread(app) as srv:
        yield srv


def test_dropped_streams_free_every_block(server):
    core = server.app.state.jevons.engine.core
    tokens_before = core.generation_tokens_total

    async def drop_after_a_few_chunks(client: httpx.AsyncClient, i: int) -> int:
        body = {**LONG, "stream": True, "seed": i, "temperature": 1.0}
        seen = 0
        async with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    seen += 1
                    if seen == 3:
                        break  # leaving the block closes the connection mid-stream
        return seen

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*[drop_after_a_few_chunks(client, i) for i in range(20)])

    assert asyncio.run(main()) == [3] * 20
    if core.quantization == "int4" and qgemm.available():
        assert isinstance(core.runner.model._decode_plan, LlamaDecodePlan)  # the one-call path ran
    assert wait_until(lambda: all_blocks_free(core)), (core.num_free_blocks(), core.kv.num_blocks)
    # Aborted, not run to the end: far fewer than 20 x 400 tokens were generated.
    assert core.generation_tokens_total - tokens_before < 20 * 400 // 4

    # A non-streaming client that gives up is aborted too.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 450}, timeout=0.3)
    assert wait_until(lambda: all_blocks_free(core))

    # And the server still answers.
    r = httpx.post(server.url + "/v1/completions", json={**LONG, "max_tokens": 5}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    assert all_blocks_free(core)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'jevons:request_success_total{finished_reason="abort",model_name="tiny"}' in metrics


@pytest.fixture(scope="module")
def small_server(tiny_llama):
    """Two sequences at a time and two more may wait: easy to overload."""
    cfg = ServeConfig(engine=engine_config(model=str(tiny_llama), max_num_seqs=2), served_model_names=("tiny",),
                      max_waiting=2, retry_after_s=3, sse_keepalive_s=0.05)
    with ServerThread(build_app(cfg)) as srv:
        yield srv


def test_overload_gives_429_and_accepted_requests_complete(small_server):
    core = small_server.app.state.jevons.engine.core

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        body = {**LONG, "max_tokens": 60, "seed": i}
        if i % 2:
            body["stream"] = True
        await asyncio.sleep(0.01 * i)  # a burst, slightly spread: some wait, most are turned away
        return await client.post("/v1/completions", json=body)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=40)) as client:
            return await asyncio.gather(*[one(client, i) for i in range(16)])

    responses = asyncio.run(main())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(429) >= 1 and codes.count(200) >= 2, codes
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "3"
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
        elif r.headers["content-type"].startswith("text/event-stream"):
            assert r.text.endswith("data: [DONE]\n\n") and '"finish_reason":"length"' in r.text
        else:
            assert r.json()["usage"]["completion_tokens"] == 60
    assert wait_until(lambda: all_blocks_free(core))
    r = httpx.post(small_server.url + "/v1/completions", json={**LONG, "max_tokens": 3}, timeout=60)
    assert r.status_code == 200


def test_keepalive_while_queued(small_server):
    """Two long requests hold both slots; a third stream waits and hears keep-alives."""

    async def main() -> bytes:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120) as client:
            holders = [asyncio.create_task(client.post("/v1/completions", json={**LONG, "max_tokens": 450}))
                       for _ in range(2)]
            await asyncio.sleep(0.2)
            raw = b""
            async with client.stream("POST", "/v1/completions",
                                     json={**LONG, "max_tokens": 3, "stream": True}) as r:
                async for part in r.aiter_raw():
                    raw += part
            for h in holders:
                assert (await h).status_code == 200
            return raw

    raw = asyncio.run(main())
    first_data = raw.index(b"data: ")
    assert b": keep-alive\n\n" in raw[:first_data], raw[:200]
    assert raw.endswith(b"data: [DONE]\n\n")
