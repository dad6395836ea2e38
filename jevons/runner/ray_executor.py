"""The "ray" executor: the same workers as "mp" (runner/worker.py), each in a
Ray actor, placed by a placement group anywhere in a Ray cluster (one
bundle per rank: a GPU each on GPUs, CPUs otherwise), so one model can span
machines: `ray start --head` on one, `ray start --address=HEAD:6379` on the
others, then `jevons serve --distributed-executor-backend ray -tp N` on any.
With no cluster running, `ray.init()` starts one on this machine.

Ray places the actors and carries the engine's messages; the ranks talk to
each other by torch.distributed collectives alone (rendezvous at rank 0's
node). Each step's RunnerInput is put in Ray's object store once and every
actor reads it from there. As with mp, nothing waits without a deadline:
`ray.wait` on the ranks' answers up to ParallelConfig.step_timeout_s, and an
actor that dies (its node lost, or killed) fails its answer at once; either
way the actors are killed and every later step raises WorkerError.

Ray is an optional extra (`pip install -e .[ray]`); it is imported only when
this executor is asked for.
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Any, NoReturn

from jevons.config import EngineConfig
from jevons.runner.builder import BuiltModel
from jevons.runner.distributed import WorkerPlace, free_port, rank_threads
from jevons.runner.executor import WorkerError, refuse_unsupported, settle
from jevons.runner.step_io import RunnerInput, RunnerOutput
from jevons.runner.worker import Worker, describe

log = logging.getLogger("jevons")


class RayWorker:
    """The actor: a Worker built on demand (after rank 0's address is known)."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    def address(self) -> tuple[str, int]:
        """This node's address and a port free on it (rank 0's rendezvous)."""
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def load(self, place: WorkerPlace, config: EngineConfig, threads: int) -> tuple:
        try:
            self.worker = Worker(place, config, threads)
        except BaseException as e:  # noqa: BLE001 - answered, like the mp worker's
            return ("error", describe(e, place.rank, "loading the model"))
        return ("ready", self.worker.info)

    def step(self, inp: RunnerInput) -> tuple:
        assert self.worker is not None
        return self.worker.step(inp)


class RayExecutor:
    runner = None  # the model lives in the actors

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--distributed-executor-backend ray needs Ray: pip install -e '.[ray]'") from None
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        refuse_unsupported(config)
        par = config.parallel
        self.world_size, self.step_timeout_s = par.world_size, par.step_timeout_s
        self.dead: str | None = None
        if not ray.is_initialized():
            ray.init(log_to_driver=False)  # RAY_ADDRESS or a running cluster, else a local one
        gpu = config.device.startswith("cuda")
        bundle = {"GPU": 1.0, "CPU": 1.0} if gpu else {"CPU": 1.0}
        self.pg = placement_group([bundle] * self.world_size, strategy="PACK")
        self.actors: list[Any] = []
        self._finalizer = weakref.finalize(self, _stop, self.actors, self.pg)
        ready, _ = ray.wait([self.pg.ready()], timeout=par.start_timeout_s)
        if not ready:
            self._fail(f"the Ray cluster has no room for {self.world_size} workers of {bundle} "
                       f"(resources: {ray.cluster_resources()})")
        actor = ray.remote(RayWorker)
        for rank in range(self.world_size):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank)
            self.actors.append(actor.options(num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                                             scheduling_strategy=strategy, name=None).remote())
        (host, port), = self._collect([self.actors[0].address.remote()], par.start_timeout_s, "placing rank 0")
        init = f"tcp://{host}:{port}"
        threads = rank_threads(par.processes)
        log.info("starting %d Ray workers (%s, %d threads each)", self.world_size, init, threads)
        refs = [a.load.remote(WorkerPlace(rank, self.world_size, init, par.step_timeout_s, device_index=0),
                              config, threads) for rank, a in enumerate(self.actors)]
        replies = self._collect(refs, par.start_timeout_s, "loading the model")
        errors = [(rank, r[1]) for rank, r in enumerate(replies) if r[0] == "error"]
        if errors:
            self._fail(f"worker rank {errors[0][0]} failed while loading the model: {errors[0][1]}", ValueError)
        self.built: BuiltModel = replies[0][1]

    # --- the Executor protocol --------------------------------------------------
    def execute(self, inp: RunnerInput) -> RunnerOutput:
        import ray

        self.health()
        ref = ray.put(inp)  # once; every actor reads it from the object store
        replies = self._collect([a.step.remote(ref) for a in self.actors], self.step_timeout_s, "a step")
        try:
            return settle(inp, replies)
        except WorkerError as e:
            self._fail(str(e))

    def health(self) -> None:
        if self.dead is not None:
            raise WorkerError(self.dead)

    def shutdown(self) -> None:
        self._finalizer()

    # --- waiting on the actors --------------------------------------------------------
    def _collect(self, refs: list, timeout_s: float, what: str) -> list:
        """Every ref's value in order, or WorkerError on a death or past the deadline."""
        import ray

        deadline = time.monotonic() + timeout_s
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        values: list = [None] * len(refs)
        pending = list(refs)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"worker rank {rank_of[pending[0]]} gave no answer to {what} in {timeout_s:g} s")
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            for ref in done:
                try:
                    values[rank_of[ref]] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - ActorDiedError, a lost node, ...
                    self._fail(f"worker rank {rank_of[ref]} died during {what} ({type(e).__name__}: {e})")
        return values

    def _fail(self, reason: str, kind: type[Exception] = WorkerError) -> NoReturn:
        self.dead = f"tensor-parallel workers stopped: {reason}"
        log.error("%s", self.dead)
        self._finalizer()
        raise kind(self.dead)


def _stop(actors: list, pg: Any) -> None:
    import ray

    if not ray.is_initialized():
        return
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone
            pass
    try:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
    except Exception:  # noqa: BLE001
        pass
