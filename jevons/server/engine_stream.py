"""Engine requests as the routes use them.

`open_stream` starts AsyncEngine.generate and runs it up to its first real
wait, so admission errors (prompt too long -> 400, queue full -> 429) are
raised before any HTTP response has started. `merge` interleaves several
requests' events (a batch of completion prompts) and yields None every
`tick` seconds of silence, which the SSE writer turns into keep-alives.
`close` aborts whatever has not finished, synchronously: it is called from
`finally` blocks that may run under cancellation, where awaiting is not safe."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from jevons.engine.async_engine import AsyncEngine, StepEvent
from jevons.sampling_params import SamplingParams


class EngineStream:
    def __init__(self, engine: AsyncEngine, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        self.engine = engine
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self._agen = engine.generate(request_id, prompt_ids, params)
        self.next: asyncio.Future[StepEvent] | None = None
        self.finished = False

    def advance(self) -> asyncio.Future[StepEvent]:
        self.next = asyncio.ensure_future(self._agen.__anext__())
        return self.next

    def close(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.next is not None:
            if not self.next.done():
                # Cancelling the pending read runs generate()'s own abort on its way out.
                self.next.cancel()
            elif not self.next.cancelled():
                self.next.exception()  # mark retrieved: no "never retrieved" noise
        self.engine.abort(self.request_id)  # idempotent; covers a stream between reads


async def open_stream(engine: AsyncEngine, request_id: str, prompt_ids: list[int], params: SamplingParams) -> EngineStream:
    s = EngineStream(engine, request_id, prompt_ids, params)
    fut = s.advance()
    # generate() validates and enqueues synchronously before its first await;
    # one loop turn lets it get there (or fail) without waiting for a token.
    await asyncio.sleep(0)
    if fut.done() and fut.exception() is not None:
        s.finished = True
        raise fut.exception()  # type: ignore[misc]
    return s


async def open_streams(engine: AsyncEngine, reqs: list[tuple[str, list[int], SamplingParams]]) -> list[EngineStream]:
    """Open all or none: if one is refused, the ones already queued are aborted."""
    streams: list[EngineStream] = []
    try:
        for rid, ids, params in reqs:
            streams.append(await open_stream(engine, rid, ids, params))
    except BaseException:
        close_all(streams)
        raise
    return streams


def close_all(streams: list[EngineStream]) -> None:
    for s in streams:
        s.close()


async def merge(streams: list[EngineStream], tick: float | None) -> AsyncIterator[tuple[int, StepEvent] | None]:
    """Yield (stream index, event) as events arrive, or None after `tick`
    seconds without any. Ends when every stream has finished."""
    pending: dict[asyncio.Future[StepEvent], int] = {}
    for i, s in enumerate(streams):
        if not s.finished:
            pending[s.next or s.advance()] = i
    while pending:
        done, _ = await asyncio.wait(pending.keys(), timeout=tick, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            yield None
            continue
        for fut in sorted(done, key=lambda f: pending[f]):
            i = pending.pop(fut)
            s = streams[i]
            try:
                ev = fut.result()
            except StopAsyncIteration:
                s.finished = True
                continue
            except BaseException:
                s.finished = True
                raise
            if ev.finished:
                s.finished = True
            yield i, ev
            if not s.finished:
                pending[s.advance()] = i


async def wait_for_disconnect(receive) -> None:
    """Returns when the client has gone. Only safe once the body has been read
    (FastAPI has, before calling a route): then `receive` only reports that."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
