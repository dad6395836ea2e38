"""The "mp" executor: N worker processes on this machine (runner/worker.py),
one rank of a torch.distributed group each, started with torch.multiprocessing's
spawn (a fresh interpreter: no forked OpenMP or CUDA state).

Each step the RunnerInput is pickled once and the same bytes go down every
worker's pipe. The pipes are only the engine's mailbox; the workers talk to
one another through collectives alone. A worker idles on its pipe between
steps (an idle server may send nothing for hours, longer than any collective
timeout should be), and sees the engine's end close if the engine dies.

Nothing here waits without a deadline: a step waits for every rank's answer
at most ParallelConfig.step_timeout_s (the group's collectives time out
after as long), and a worker that exits is noticed at once through its
process sentinel. Either way the workers are stopped and every later call
raises WorkerError, which the engine turns into errors for the requests in
flight (its reset), never a hang.

A step that fails on every rank with the same error (a bad sampling
parameter, say: every rank samples the same rows) leaves the ranks in step,
so it is raised as an ordinary step fault and the engine's fault isolation
goes on as in one process. Any other mix of answers means the ranks may
have left a collective half done: the group is torn down.
"""
from __future__ import annotations

import logging
import pickle
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import NoReturn

from jevons.config import EngineConfig
from jevons.runner.builder import BuiltModel
from jevons.runner.distributed import WorkerPlace, free_port, rank_threads
from jevons.runner.executor import WorkerError, refuse_unsupported, settle
from jevons.runner.step_io import RunnerInput, RunnerOutput

log = logging.getLogger("jevons")


class MpExecutor:
    runner = None  # the model lives in the workers

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        import torch.multiprocessing as mp

        from jevons.runner.worker import worker_main

        par = config.parallel
        refuse_unsupported(config)
        self.world_size = par.world_size
        self.step_timeout_s = par.step_timeout_s
        self.dead: str | None = None  # why the executor stopped, once it has
        ctx = mp.get_context("spawn")
        init = f"tcp://127.0.0.1:{free_port()}"
        threads = rank_threads(par.processes)
        self.conns: list[Connection] = []
        self.procs = []
        for rank in range(self.world_size):
            ours, theirs = ctx.Pipe()
            place = WorkerPlace(rank, self.world_size, init, par.step_timeout_s,
                                device_index=par.data_parallel_rank * self.world_size + rank)  # its own GPU
            proc = ctx.Process(target=worker_main, args=(place, config, threads, theirs), daemon=True,
                               name=f"jevons-worker-{rank}")
            proc.start()
            theirs.close()  # so the worker's death reads as EOF here
            self.conns.append(ours)
            self.procs.append(proc)
        # Workers are stopped when the executor is shut down or dropped.
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns)
        log.info("started %d worker processes (%s, %d threads each)", self.world_size, init, threads)
        replies = self._collect(par.start_timeout_s, "loading the model")
        errors = [(rank, r[1]) for rank, r in enumerate(replies) if r[0] == "error"]
        if errors:
            self._fail(f"worker rank {errors[0][0]} failed while loading the model: {errors[0][1]}", ValueError)
        self.built: BuiltModel = replies[0][1]

    # --- the Executor protocol --------------------------------------------------
    def execute(self, inp: RunnerInput) -> RunnerOutput:
        self.health()
        data = pickle.dumps(inp, protocol=pickle.HIGHEST_PROTOCOL)  # once, for every rank
        for rank, conn in enumerate(self.conns):
            try:
                conn.send_bytes(data)
            except OSError as e:
                self._fail(f"worker rank {rank} cannot take a step ({type(e).__name__}: {e}); {self._exits()}")
        replies = self._collect(self.step_timeout_s, "a step")
        try:
            return settle(inp, replies)
        except WorkerError as e:
            self._fail(str(e))

    def health(self) -> None:
        if self.dead is None:
            exits = self._exits()
            if exits:
                self._fail(exits)
        if self.dead is not None:
            raise WorkerError(self.dead)

    def shutdown(self) -> None:
        self._finalizer()

    # --- waiting on the workers ----------------------------------------------------
    def _collect(self, timeout_s: float, what: str) -> list[tuple]:
        """Every rank's answer, or WorkerError on a death or past the deadline."""
        deadline = time.monotonic() + timeout_s
        replies: list[tuple | None] = [None] * self.world_size
        while True:
            for rank, conn in enumerate(self.conns):
                if replies[rank] is None and conn.poll():
                    try:
                        replies[rank] = conn.recv()
                    except (EOFError, OSError):
                        self._fail(f"worker rank {rank} went away during {what}; {self._exits()}")
            if all(r is not None for r in replies):
                return replies  # type: ignore[return-value]
            exits = self._exits()
            if exits:
                self._fail(f"{exits} during {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [rank for rank, r in enumerate(replies) if r is None]
                self._fail(f"worker rank {missing[0]} gave no answer to {what} in {timeout_s:g} s")
            pending = [c for c, r in zip(self.conns, replies) if r is None]
            wait(pending + [p.sentinel for p in self.procs], timeout=min(left, 5.0))

    def _exits(self) -> str:
        """Which workers have exited, as words ("" when all are running)."""
        gone = [f"worker rank {rank} (pid {p.pid}) exited with code {p.exitcode}"
                for rank, p in enumerate(self.procs) if not p.is_alive()]
        return "; ".join(gone)

    def _fail(self, reason: str, kind: type[Exception] = WorkerError) -> NoReturn:
        """Stop every worker and raise: this executor runs no more steps."""
        self.dead = f"tensor-parallel workers stopped: {reason}"
        log.error("%s", self.dead)
        self._finalizer()
        raise kind(self.dead)


def _stop(procs: list, conns: list[Connection]) -> None:
    """Ask each worker to stop, then make sure: terminate, then kill."""
    for conn in conns:
        try:
            conn.send_bytes(b"")
        except OSError:
            pass
    deadline = time.monotonic() + 5.0
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(timeout=2.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=2.0)
    for conn in conns:
        conn.close()
