"""AsyncEngine: the step loop on its own thread, fed from asyncio.

The event loop never runs model code: requests go into an inbox the step
thread drains before each step, and each step's outputs are handed back with
call_soon_threadsafe. A slow client therefore only slows its own stream. An
abort (e.g. a client disconnect) is applied before the next step, so its
blocks are free within one step.

Admission counts sequences, not requests: a request of n sequences needs n
places under `max_waiting` (and one with n above it can never fit: a 400),
and n x max_tokens may not exceed `max_request_tokens`.

Faults: a request that fails inside a step (EngineCore fails it alone) ends
its stream with RequestFailedError. A step that fails as a whole resets the
core (every request in flight fails, every block is freed) and the loop goes
on; `max_consecutive_faults` such steps in a row, with no step running in
between, and the engine is declared dead. After every step, a request the
core holds that no stream owns any more is aborted.
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
from jevons.errors import EngineDeadError, EngineOverloadedError, InvalidRequestError, RequestFailedError
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

    def put(self, item: StepEvent | BaseException) -> bool:
        """False when nobody can receive it any more (the event loop closed)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            return False
        return True


class AsyncEngine:
    def __init__(self, core: EngineCore, max_waiting: int | None = None, max_request_tokens: int | None = None,
                 max_consecutive_faults: int = 3) -> None:
        self.core = core
        self.max_waiting = max_waiting
        self.max_request_tokens = max_request_tokens
        self.max_consecutive_faults = max_consecutive_faults
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
        """Sequences (not requests) queued for a slot, including ones not yet handed to the core."""
        return self._pending_adds + len(self.core.scheduler.waiting)

    def _admit(self, params: SamplingParams, max_tokens: int) -> None:
        n = params.n
        if self.max_request_tokens is not None and n * max_tokens > self.max_request_tokens:
            what = f"n={n} x max_tokens={max_tokens}" if params.max_tokens is not None else \
                f"n={n} x {max_tokens} (the context left after the prompt, as max_tokens is not set)"
            raise InvalidRequestError(
                f"this request may generate {n * max_tokens} tokens ({what}), more than this server allows per "
                f"request ({self.max_request_tokens}, --max-request-tokens); lower n or max_tokens",
                param="n" if n > 1 else "max_tokens", code="request_too_large")
        if self.max_waiting is None:
            return
        if n > self.max_waiting:
            raise InvalidRequestError(
                f"n={n} is more sequences than this server queues at once ({self.max_waiting}, --max-waiting); "
                "lower n", param="n", code="request_too_large")
        waiting = self.num_waiting()
        if waiting + n > self.max_waiting:
            raise EngineOverloadedError(f"{waiting} sequences are already waiting, this request adds {n}, "
                                        f"the queue holds {self.max_waiting}")

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[StepEvent]:
        """Stream a request's events; raises InvalidRequestError before the
        first event if it can never be served. Leaving the iteration early
        (client gone) aborts the request."""
        if self.dead is not None:
            raise EngineDeadError(f"the engine stopped: {self.dead!r}")
        # Checked once, here, as the server answers: a max_tokens the context cannot hold is an error.
        max_tokens = self.core.validate(prompt_ids, params, fit_context=False)
        with self._lock:
            self._admit(params, max_tokens)
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in flight")
            stream = _Stream(asyncio.get_running_loop(), params.n)
            self._streams[request_id] = stream
            self._pending_adds += params.n
        self._inbox.put(("add", request_id, prompt_ids, params, max_tokens))
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
        if not self._thread.is_alive():  # never under a step that is still running
            # Queued disk-cache writes land, and worker processes stop, now
            # rather than at interpreter exit.
            self.core.close()

    # --- step thread -------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while True:
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, rid, ids, params, max_tokens = cmd
                with self._lock:
                    self._pending_adds -= params.n
                stream = self._streams.get(rid)
                if stream is None:
                    continue
                try:
                    self.core.add_request(rid, ids, params, max_tokens)
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
        while not self._stop.is_set():
            try:
                self._drain_inbox()
                if not self.core.has_work():
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                t0 = time.perf_counter()
                deltas = self.core.step()  # faults inside it are contained there
                if self._given_up():
                    self._dispatch(deltas)
                    return self._die(self.dead)
                self._dispatch(deltas)
                self._abort_orphans()
                for hook in self.step_hooks:
                    try:
                        hook(self.core, time.perf_counter() - t0)
                    except Exception:  # an observer's bug is not the engine's
                        log.exception("step hook %r failed", hook)
            except Exception as e:  # outside what the core contains: reset and go on
                log.exception("engine step loop failed; resetting the engine")
                try:
                    deltas = self.core.reset(e)
                    given_up = self._given_up()
                    self._dispatch(deltas)
                except BaseException as e2:
                    return self._die(e2)
                if given_up:
                    return self._die(self.dead)
            except BaseException as e:
                self._die(e)
                raise

    def _given_up(self) -> bool:
        """Too many failed steps in a row: mark the engine dead (before anyone
        hears of the last failure, so that /health already says so)."""
        if self.core.consecutive_faults < self.max_consecutive_faults:
            return False
        self.dead = RuntimeError(f"{self.core.consecutive_faults} steps in a row failed; last: {self.core.last_fault}")
        return True

    def _die(self, e: BaseException | None) -> None:
        """Give up: fail every stream rather than hang them; /health says so."""
        log.error("the engine stopped: %r", e)
        self.dead = e
        for stream in list(self._streams.values()):
            stream.put(EngineDeadError(f"the engine stopped: {e!r}"))
        self._streams.clear()

    def _abort_orphans(self) -> None:
        """No sequence runs without an owner: a request the core holds whose
        stream is gone (it cannot happen by design; this is the net under it)."""
        for rid in [r for r in self.core.children if r not in self._streams]:
            log.warning("aborting request %s: no stream owns it", rid)
            self.core.abort(rid)

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
            error = next((d for d in ds if d.finish_reason == "error"), None)
            finished = not stream.open or error is not None
            ev = StepEvent(ds, finished and error is None, num_cached_tokens=ds[0].num_cached_tokens)
            if finished:
                ev.timings = next((d.timings for d in ds if d.timings), {})
                stream.done = True
                self._streams.pop(rid, None)
            delivered = stream.put(ev)
            if error is not None:
                # The tokens this step made reach the caller first (usage counts them), then the error.
                delivered = stream.put(RequestFailedError(rid, error.error or "unknown error")) and delivered
            if not delivered:  # nobody listens any more: do not let it run on
                self._streams.pop(rid, None)
                self.core.abort(rid)
