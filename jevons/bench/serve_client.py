"""A streaming client for any OpenAI-compatible server (jevons, llama.cpp's
llama-server, vLLM, Ollama): sends a dataset at a paced arrival rate under a
concurrency cap and times every chunk.

Only standard fields go over the wire plus `ignore_eos` (understood by jevons,
vLLM and llama-server; others ignore it), so output lengths match the dataset
wherever the server allows it; otherwise the server's own usage counts rule."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import httpx
from tqdm import tqdm

from jevons.bench.arrivals import arrival_offsets
from jevons.bench.datasets import SampleRequest
from jevons.bench.metrics import RequestResult

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class ServeTarget:
    base_url: str
    model: str
    endpoint: str = "/v1/completions"
    api_key: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)

    def url(self) -> str:
        return self.base_url.rstrip("/") + self.endpoint

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, req: SampleRequest, max_tokens: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens or req.output_len,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        if self.endpoint.endswith("/chat/completions"):
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        return body | self.extra_body


def _chunk_text(choice: dict[str, Any]) -> str:
    """Generated text in one streamed choice, completions or chat shaped
    (reasoning models stream their thinking as reasoning_content)."""
    if "text" in choice:
        return choice.get("text") or ""
    delta = choice.get("delta") or {}
    return (delta.get("reasoning_content") or "") + (delta.get("content") or "")


async def send_request(client: httpx.AsyncClient, target: ServeTarget, req: SampleRequest,
                       count_tokens: Callable[[str], int] | None = None,
                       max_tokens: int | None = None,
                       clock: Callable[[], float] = time.perf_counter) -> RequestResult:
    """Stream one request and time it. Only chunks that carry text are token
    events, so a role-only first delta or an empty finish chunk neither starts
    TTFT nor adds an ITL gap. `clock` is read once at the start, once per text
    chunk and once at the end (tests pass a fake one)."""
    res = RequestResult(success=False, prompt_len=req.prompt_len)
    usage: dict[str, Any] = {}
    chunks = 0
    start = clock()
    last = start
    try:
        async with client.stream("POST", target.url(), json=target.body(req, max_tokens),
                                 headers=target.headers()) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators and ": keep-alive" comments
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    res.error = str(data["error"])[:300]
                    return res
                if data.get("usage"):
                    usage = data["usage"]
                for choice in data.get("choices") or []:
                    text = _chunk_text(choice)
                    if not text:
                        continue
                    now = clock()
                    if chunks == 0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
                    chunks += 1
                    res.generated_text += text
        res.latency = clock() - start
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    if chunks == 0:
        res.error = "the stream carried no text"
        return res
    res.success = True
    res.prompt_len = int(usage.get("prompt_tokens") or req.prompt_len)
    if usage.get("completion_tokens"):
        res.output_tokens = int(usage["completion_tokens"])
    elif count_tokens is not None:
        res.output_tokens = count_tokens(res.generated_text)
    else:
        res.output_tokens = chunks
    return res


def make_client(max_connections: int, read_timeout_s: float) -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment must never sit between the
    # client and a loopback server; it would also distort every timing.
    return httpx.AsyncClient(
        timeout=httpx.Timeout(read_timeout_s, connect=10.0),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        trust_env=False,
    )


async def run_benchmark(target: ServeTarget, reqs: list[SampleRequest], request_rate: float,
                        burstiness: float = 1.0, max_concurrency: int | None = None, seed: int = 0,
                        request_timeout_s: float = 600.0, num_warmups: int = 1,
                        count_tokens: Callable[[str], int] | None = None,
                        progress: bool = True, desc: str = "serve",
                        clock: Callable[[], float] = time.perf_counter,
                        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                        ) -> tuple[list[RequestResult], float]:
    """Send `reqs` at `request_rate` (gamma arrivals), at most `max_concurrency`
    in flight; returns per-request results (dataset order) and the run's wall time.
    Multi-turn requests wait for their conversation's previous turn. `clock` and
    `sleep` time and pace the run (tests pass a fake pair)."""
    if not reqs:
        raise ValueError("no requests to send")
    conns = max_concurrency or len(reqs)
    async with make_client(conns + 1, request_timeout_s) as client:
        # The warm-up also proves the server and model name work. Its prompt is
        # outside the dataset, so it leaves nothing in a prefix cache to hit.
        warm_req = SampleRequest([0], min(16, reqs[0].output_len), prompt="Warm-up: say something short.")
        for _ in range(num_warmups):
            warm = await send_request(client, target, warm_req, count_tokens, clock=clock)
            if not warm.success:
                raise RuntimeError(f"warm-up request to {target.url()} failed: {warm.error}")

        sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        done_turn: dict[tuple[int, int], asyncio.Event] = {
            (r.conv_id, r.turn): asyncio.Event() for r in reqs if r.conv_id is not None}
        bar = tqdm(total=len(reqs), desc=desc, unit="req", disable=not progress, leave=False)

        async def one(req: SampleRequest) -> RequestResult:
            try:
                prev = done_turn.get((req.conv_id, req.turn - 1)) if req.conv_id is not None else None
                if prev is not None:
                    await prev.wait()
                try:
                    if sem is None:
                        return await asyncio.wait_for(send_request(client, target, req, count_tokens, clock=clock),
                                                      request_timeout_s)
                    async with sem:
                        return await asyncio.wait_for(send_request(client, target, req, count_tokens, clock=clock),
                                                      request_timeout_s)
                except asyncio.TimeoutError:
                    return RequestResult(success=False, prompt_len=req.prompt_len,
                                         error=f"timed out after {request_timeout_s}s")
            finally:
                if req.conv_id is not None:
                    done_turn[(req.conv_id, req.turn)].set()  # a failed turn must not block the next
                bar.update(1)

        offsets = arrival_offsets(len(reqs), request_rate, burstiness, seed)
        start = clock()
        tasks = []
        for req, at in zip(reqs, offsets):
            delay = start + at - clock()
            if delay > 0:
                await sleep(delay)
            tasks.append(asyncio.create_task(one(req)))
        results = await asyncio.gather(*tasks)
        duration = clock() - start
        bar.close()
    return list(results), duration


async def fetch_model_name(base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> str:
    """The first model the server lists at /v1/models."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        resp = await client.get(base_url.rstrip("/") + "/v1/models", headers=headers)
        resp.raise_for_status()
        models = resp.json().get("data") or []
    if not models:
        raise RuntimeError(f"{base_url}/v1/models lists no model; pass --served-model-name")
    return str(models[0]["id"])
