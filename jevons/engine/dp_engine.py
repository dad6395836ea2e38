"""Data parallelism: N engine replicas (one EngineCore and step thread each,
each with its own copy of the model and KV cache) behind AsyncEngine's
interface, so one server serves them all. A replica whose executor is `mp`
runs its model in a worker process of its own, so replicas compute in
parallel; the engine side of each (scheduling, detokenizing) stays here.

Requests go where their prompt's prefix most likely sits in a prefix cache,
balanced against load (engine/dp_router.py). A replica that dies (its step
thread gave up, or its workers are gone) fails its own requests in flight
with its error, as a lone engine does, and gets no new ones; the others
keep serving. The whole engine is dead only when every replica is.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from jevons.engine.async_engine import AsyncEngine, StepEvent
from jevons.engine.dp_router import PrefixAffinityRouter
from jevons.engine.engine_core import EngineCore
from jevons.sampling_params import SamplingParams


class DataParallelEngine:
    def __init__(self, engines: list[AsyncEngine], router: PrefixAffinityRouter | None = None) -> None:
        if not engines:
            raise ValueError("a data-parallel engine needs at least one replica")
        self.engines = engines
        self.router = router or PrefixAffinityRouter(len(engines), engines[0].core.kv.block_size)
        self.owner: dict[str, int] = {}  # request id -> its replica, while in flight
        self.step_hooks = _SharedHooks(engines)

    @property
    def core(self) -> EngineCore:
        """A live replica's core: the tokenizer, model config and limits, the
        same on every replica. Counters are per replica: see `replica_stats`."""
        return next((e.core for e in self.engines if e.dead is None), self.engines[0].core)

    @property
    def dead(self) -> BaseException | None:
        """None while any replica serves; else the first replica's reason."""
        if any(e.dead is None for e in self.engines):
            return None
        return self.engines[0].dead

    @property
    def max_waiting(self) -> int | None:
        return self.engines[0].max_waiting

    def alive(self) -> list[bool]:
        return [_alive(e) for e in self.engines]

    def num_waiting(self) -> int:
        return sum(e.num_waiting() for e in self.engines if e.dead is None)

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[StepEvent]:
        i = self.router.pick(prompt_ids, self.alive())
        self.owner[request_id] = i
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.owner.pop(request_id, None)
                self.router.done(i)

        try:
            async for ev in self.engines[i].generate(request_id, prompt_ids, params):
                if ev.finished:  # a caller may stop at the final event and never resume us
                    release()
                yield ev
        finally:
            release()

    def abort(self, request_id: str) -> None:
        i = self.owner.get(request_id)
        if i is not None:
            self.engines[i].abort(request_id)

    def shutdown(self, timeout: float = 5.0) -> None:
        for e in self.engines:
            e.shutdown(timeout)

    def replica_stats(self) -> list[dict[str, float]]:
        return [e.core.stats() for e in self.engines]

    def stats(self) -> dict[str, float]:
        """The replicas' counters summed; fractions and ratios averaged."""
        per = self.replica_stats()
        out = {k: sum(s.get(k, 0.0) for s in per) for k in per[0]}
        for k in out:
            if k.endswith(("_perc", "_rate", "_length")):
                out[k] /= len(per)
        return out


def _alive(e: AsyncEngine) -> bool:
    if e.dead is not None:
        return False
    try:
        e.core.executor.health()
    except Exception:  # noqa: BLE001 - its workers are gone: it can only fail requests
        return False
    return True


class _SharedHooks(list):
    """step_hooks of the whole: a hook appended here runs after every replica's steps."""

    def __init__(self, engines: list[AsyncEngine]) -> None:
        super().__init__()
        self._engines = engines

    def append(self, hook) -> None:  # type: ignore[override]
        super().append(hook)
        for e in self._engines:
            e.step_hooks.append(hook)
