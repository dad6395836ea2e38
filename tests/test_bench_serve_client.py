"""The serve client against a tiny fake OpenAI SSE server on loopback: it
times chunks as vLLM does, honours the concurrency cap and multi-turn order,
reports failures, and `jevons bench serve --base-url` runs a sweep end to end.

No assertion here reads the wall clock: timings come from a FakeClock the
client is given, so a loaded machine cannot make them fail."""
from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import threading
import time
from dataclasses import dataclass, field

import pytest
from fastapi import Request  # module level: FastAPI resolves the (string) annotation here

from jevons.bench.datasets import SampleRequest, multi_turn_dataset
from jevons.bench.metrics import calculate_metrics
from jevons.bench.serve_client import ServeTarget, fetch_model_name, run_benchmark, send_request, make_client
from jevons.bench.servers import free_port

TTFT = 0.10  # the fake server's delay before the first token
GAP = 0.02  # and between tokens


class FakeClock:
    """Time that moves `tick` per read and by exactly what is slept: the client's
    timings become a function of its logic alone."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@dataclass
class FakeState:
    inflight: int = 0
    max_inflight: int = 0
    # prompt -> (start, end) as positions in the server's sequence of events
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    bodies: list[dict] = field(default_factory=list)
    events: itertools.count = field(default_factory=itertools.count)


def make_app(state: FakeState):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    async def stream(body: dict, chat: bool):
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        state.bodies.append(body)
        if prompt.startswith("fail"):
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        n = int(body["max_tokens"])
        state.inflight += 1
        state.max_inflight = max(state.max_inflight, state.inflight)
        start = next(state.events)

        def chunk(text: str | None, finish: str | None = None) -> str:
            choice = ({"index": 0, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
                      if chat else {"index": 0, "text": text or "", "finish_reason": finish})
            return f"data: {json.dumps({'choices': [choice]})}\n\n"

        async def gen():
            try:
                if chat:  # a role-only delta first: must not count as the first token
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'role': 'assistant'}}]})}\n\n"
                yield ": keep-alive\n\n"
                await asyncio.sleep(TTFT)
                for i in range(n):
                    if i:
                        await asyncio.sleep(GAP)
                    yield chunk(f" t{i}")
                yield chunk(None if chat else "", "length")  # empty finish chunk: no ITL gap
                if not body.get("no_usage"):
                    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n,
                             "total_tokens": len(prompt.split()) + n}
                    yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                state.inflight -= 1
                state.spans[prompt] = (start, next(state.events))

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await stream(await request.json(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await stream(await request.json(), chat=True)

    return app


@pytest.fixture(scope="module")
def fake_server():
    import uvicorn

    state = FakeState()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "fake server did not start"
    yield f"http://127.0.0.1:{port}", state
    server.should_exit = True
    thread.join(timeout=10)


def _req(prompt: str, out: int, **kw) -> SampleRequest:
    return SampleRequest(prompt_ids=[1] * len(prompt.split()), output_len=out, prompt=prompt, **kw)


async def _one(url: str, req: SampleRequest, endpoint: str = "/v1/completions", clock=time.perf_counter, **extra):
    async with make_client(4, 30) as client:
        return await send_request(client, ServeTarget(url, "fake-model", endpoint, extra_body=extra), req,
                                  count_tokens=lambda t: len(t.split()), clock=clock)


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_one_request_timings(fake_server, endpoint: str) -> None:
    url, state = fake_server
    clock = FakeClock(tick=GAP)  # every read of the clock is GAP later than the one before
    r = asyncio.run(_one(url, _req("a b c", 6), endpoint, clock=clock))
    assert r.success, r.error
    assert r.output_tokens == 6 and r.prompt_len == 3  # from the server's usage
    assert r.generated_text == " t0 t1 t2 t3 t4 t5"
    # The clock is read at the send, at each of the 6 text chunks (not at the
    # role-only delta, the keep-alive or the empty finish chunk) and at the end.
    assert r.ttft == pytest.approx(GAP)
    assert r.itl == pytest.approx([GAP] * 5)  # one gap per text chunk after the first
    assert r.latency == pytest.approx(7 * GAP) and r.latency >= r.ttft + sum(r.itl)
    assert r.tpot == pytest.approx((r.latency - r.ttft) / 5)
    body = state.bodies[-1]
    assert body["stream"] and body["ignore_eos"] and body["max_tokens"] == 6 and body["model"] == "fake-model"
    assert body["stream_options"] == {"include_usage": True}


def test_no_usage_falls_back_to_counting(fake_server) -> None:
    url, _ = fake_server
    r = asyncio.run(_one(url, _req("x y", 4), no_usage=True))
    assert r.success and r.output_tokens == 4 and r.prompt_len == 2  # counted text; dataset prompt_len


def test_failure_is_reported(fake_server) -> None:
    url, _ = fake_server
    r = asyncio.run(_one(url, _req("fail now", 4)))
    assert not r.success and "HTTP 500" in r.error


def test_model_name(fake_server) -> None:
    assert asyncio.run(fetch_model_name(fake_server[0])) == "fake-model"


def test_concurrency_cap_and_metrics(fake_server) -> None:
    url, state = fake_server
    state.max_inflight = 0
    reqs = [_req(f"p{i} q r", 3) for i in range(6)] + [_req("fail here", 3)]
    target = ServeTarget(url, "fake-model")
    clock = FakeClock(tick=GAP)
    results, duration = asyncio.run(run_benchmark(target, reqs, float("inf"), max_concurrency=2, num_warmups=1,
                                                  progress=False, clock=clock, sleep=clock.sleep))
    assert state.max_inflight == 2  # 7 requests, never more than two at a time
    assert [r.success for r in results] == [True] * 6 + [False]
    done = [r for r in results if r.success]
    assert all(r.ttft > 0 and len(r.itl) == 2 for r in done)
    assert duration > max(r.latency for r in done)
    m = calculate_metrics(results, duration, {"ttft": 60_000})
    assert m["completed"] == 6 and m["failed"] == 1 and m["total_output_tokens"] == 18
    assert m["request_goodput"] == pytest.approx(m["request_throughput"])
    assert m["median_ttft_ms"] == pytest.approx(1000 * statistics.median(r.ttft for r in done))
    assert m["median_itl_ms"] == pytest.approx(1000 * statistics.median(g for r in done for g in r.itl))


def test_paced_arrivals_take_time(fake_server) -> None:
    url, _ = fake_server
    reqs = [_req(f"r{i}", 2) for i in range(5)]
    clock = FakeClock()  # moves only by what the pacing sleeps
    results, duration = asyncio.run(run_benchmark(ServeTarget(url, "fake-model"), reqs, 20.0, seed=1,
                                                  num_warmups=0, progress=False, clock=clock, sleep=clock.sleep))
    from jevons.bench.arrivals import arrival_offsets

    assert all(r.success for r in results)
    assert duration == pytest.approx(arrival_offsets(5, 20.0, 1.0, 1)[-1]) and duration > 0


def test_multi_turn_waits_for_previous_turn(fake_server) -> None:
    url, state = fake_server
    reqs = multi_turn_dataset(6, 3, (2, 3), (2, 2), list(range(100, 200)), seed=0)
    for r in reqs:
        r.prompt = f"conv{r.conv_id} turn{r.turn} " + " ".join(map(str, r.prompt_ids))
    results, _ = asyncio.run(run_benchmark(ServeTarget(url, "fake-model"), reqs, float("inf"), num_warmups=0,
                                           progress=False))
    assert all(r.success for r in results)
    by = {(r.conv_id, r.turn): state.spans[r.prompt] for r in reqs}
    for (c, t), (start, _end) in by.items():
        if t:
            assert start >= by[(c, t - 1)][1]  # sent only after the previous turn finished


def test_bench_serve_cli_sweep(fake_server, tiny_llama, tmp_path, capsys) -> None:
    from jevons.cli import main

    url, _ = fake_server
    out = tmp_path / "serve.json"
    rc = main(["bench", "serve", "--base-url", url, "--tokenizer", str(tiny_llama), "--num-prompts", "4",
               "--input-len", "4:8", "--output-len", "3", "--request-rate", "inf", "40", "--goodput", "ttft:5000",
               "--no-progress", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "med TTFT" in printed and "goodput" in printed and "plot:" in printed
    doc = json.loads(out.read_text())
    runs = doc["results"]["jevons"]
    assert [m["completed"] for m in runs] == [4, 4] and runs[1]["request_rate"] == 40
    assert all(m["total_output_tokens"] == 12 and m["median_ttft_ms"] > 0 for m in runs)
    assert doc["ratios"] is None and (tmp_path / "serve.png").stat().st_size > 1000
