"""AsyncEngine: the step loop on its own thread, fed from asyncio.

The event loop never runs model code: requests go into an inbox the step
thread drains before each step, and each step's outputs are handed back with
call_soon_threadsafe. A slow client therefore only slows its own stream. An
abort (e.g. a client disconnect) is applied before the next step, so its
blocks are free within one step.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from jevons.engine.engine_core import EngineCore
from jevons.engine.output_processor import SeqDelta
from jevons.errors import EngineDeadError, EngineOverloadedError
from jevons.sampling_params import SamplingParams

log = logging.getLogger("jevons")


@dataclass
class StepEvent:
    """One step's news for one user request."""

    deltas: list[SeqDelta]
    finished: bool = False
    num_cached_tokens: int = 0
    # Filled on the final event: arrival, first scheduled, first token, finish (monotonic s).
    timings: dict[str, float] = field(default_factory=dict)


class _Stream:
    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[StepEvent | BaseException] = asyncio.Queue()
        self.open = set(range(n))
        self.done = False

    def put(self, item: StepEvent | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncEngine:
    def __init__(self, core: EngineCore, max_waiting: int | None = None) -> None:
        self.core = core
        self.max_waiting = max_waiting
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._pending_adds = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dead: BaseException | None = None
        # Observers called on the step thread after each step (metrics, ledgers).
        self.step_hooks: list[Callable[[EngineCore, float], None]] = []
        self._thread = threading.Thread(target=self._loop, name="jevons-engine", daemon=True)
        self._thread.start()

    # --- front (event loop side) -------------------------------------------------
    def num_waiting(self) -> int:
        return self._pending_adds + len(self.core.scheduler.waiting)

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[StepEvent]:
        """Stream a request's events; raises InvalidRequestError before the
        first event if it can never be served. Leaving the iteration early
        (client gone) aborts the request."""
        if self.dead is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead!r}")
        self.core.validate(prompt_ids, params)
        with self._lock:
            if self.max_waiting is not None and self.num_waiting() >= self.max_waiting:
                raise EngineOverloadedError(f"{self.num_waiting()} requests are already waiting")
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in flight")
            stream = _Stream(asyncio.get_running_loop(), params.n)
            self._streams[request_id] = stream
            self._pending_adds += 1
        self._inbox.put(("add", request_id, prompt_ids, params))
        self._wake.set()
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    break
        finally:
            if not stream.done:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def is_idle(self) -> bool:
        return not self._streams

    # --- step thread -------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, rid, ids, params = cmd
                with self._lock:
                    self._pending_adds -= 1
                stream = self._streams.get(rid)
                if stream is None:
                    continue
                try:
                    self.core.add_request(rid, ids, params)
                except Exception as e:  # invalid after all: report to the caller
                    stream.done = True
                    self._streams.pop(rid, None)
                    stream.put(e)
            else:
                rid = cmd[1]
                deltas = self.core.abort(rid)
                stream = self._streams.pop(rid, None)
                if stream is not None and not stream.done:
                    stream.done = True
                    stream.put(StepEvent(deltas, finished=True))

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                if not self.core.has_work():
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                t0 = time.perf_counter()
                deltas = self.core.step()
                self._dispatch(deltas)
                for hook in self.step_hooks:
                    hook(self.core, time.perf_counter() - t0)
        except BaseException as e:  # a bug: fail every stream rather than hang them
            log.exception("engine step loop died")
            self.dead = e
            for stream in self._streams.values():
                stream.put(EngineDeadError(f"the engine stopped: {e!r}"))
            self._streams.clear()

    def _dispatch(self, deltas: list[SeqDelta]) -> None:
        by_parent: dict[str, list[SeqDelta]] = {}
        for d in deltas:
            by_parent.setdefault(d.parent_id, []).append(d)
        for rid, ds in by_parent.items():
            stream = self._streams.get(rid)
            if stream is None:
                continue
            for d in ds:
                if d.finish_reason is not None:
                    stream.open.discard(d.index)
            finished = not stream.open
            ev = StepEvent(ds, finished, num_cached_tokens=ds[0].num_cached_tokens)
            if finished:
                ev.timings = next((d.timings for d in ds if d.timings), {})
                stream.done = True
                self._streams.pop(rid, None)
            stream.put(ev)
