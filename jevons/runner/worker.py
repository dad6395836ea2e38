"""One worker: one rank of a tensor-parallel group, holding its shard of the
model and of the KV cache. `Worker` is the rank itself (build, then steps);
`worker_main` runs one in a process of its own for runner/mp_executor.py,
and runner/ray_executor.py runs one inside a Ray actor.

A worker joins the group, builds its shard (runner/builder.py with this
rank's TensorParallel) and then runs steps. Every rank runs the forward and
samples alike (the logits are all-gathered); rank 0 alone answers with the
RunnerOutput, and with the state its draws left each seeded request's
generator in. The other ranks answer with an empty acknowledgement, so the
engine knows each rank finished the step (or how it failed). Under
DP-attention (runner/dp_attention.py) each rank runs only its own requests
of the step (an idle rank still meets the others in every MoE layer) and
every rank answers for its own; the executor merges them.

Answers: ("ready", BuiltModel without model or caches | None) once loaded;
("ok", RunnerOutput | None, {request id: generator state} | None) or
("error", text) per step. Over a pipe (mp) the engine sends a pickled
RunnerInput per step, or b"" to stop; a closed pipe means the engine is
gone, and the worker leaves rather than lingering.
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
import traceback
from multiprocessing.connection import Connection

import torch

from jevons.config import EngineConfig
from jevons.runner.distributed import WorkerPlace, join_group, leave_group, rank_device
from jevons.runner.dp_attention import RequestPlacement, copy_blocks
from jevons.runner.step_io import RunnerInput, RunnerOutput

log = logging.getLogger("jevons")


class Worker:
    """One rank: joins the group and builds its shard on construction (every
    rank of the group at once: they meet in collectives while building)."""

    def __init__(self, place: WorkerPlace, config: EngineConfig, threads: int) -> None:
        from jevons.runner.builder import build_model
        from jevons.runner.executor import make_runner

        self.rank = place.rank
        torch.set_num_threads(threads)
        tp = join_group(place, config.device)
        par = config.parallel
        tp = dataclasses.replace(tp, expert_parallel=par.enable_expert_parallel, dp_attention=par.enable_dp_attention)
        self.tp = tp
        config = dataclasses.replace(config, device=rank_device(config.device, place.device_index))
        built = build_model(config, progress=False, tp=tp)
        self.placement = RequestPlacement(place.world_size, built.block_size) if par.enable_dp_attention else None
        self.dtype, self.device = built.dtype, built.device
        self.runner = make_runner(config, built)
        # What the engine needs to know about the model, without the tensors.
        self.info = dataclasses.replace(built, model=None, kv_caches=[]) if place.rank == 0 else None

    def step(self, inp: RunnerInput) -> tuple:
        """Run one step; the answer for the engine (never raises)."""
        try:
            if self.placement is not None:  # DP-attention: this rank's requests only
                parts, copies = self.placement.split(inp)
                if copies:  # prefix-cache hits on blocks another rank computed
                    copy_blocks(self.runner.kv_caches, copies, self.tp.group)
                inp = parts[self.rank]
                if not inp.requests:  # none here: still meet the others in every MoE layer
                    self.runner.model.dp_idle(self.dtype, self.device)
                    return ("ok", RunnerOutput(), {})
            out = self.runner.execute(inp)
        except Exception as e:  # noqa: BLE001 - the engine decides whether the step or the group failed
            return ("error", describe(e, self.rank, "a step"))
        if self.rank != 0 and self.placement is None:
            return ("ok", None, None)
        gens = {r.request_id: r.generator.get_state() for r in inp.requests if r.generator is not None}
        return ("ok", out, gens)

    def close(self) -> None:
        leave_group()


def worker_main(place: WorkerPlace, config: EngineConfig, threads: int, conn: Connection) -> None:
    """A worker process's entry point (spawned: nothing is inherited but arguments)."""
    try:
        worker = Worker(place, config, threads)
        conn.send(("ready", worker.info))
    except BaseException as e:  # noqa: BLE001 - reported, then the process ends
        _send(conn, ("error", describe(e, place.rank, "loading the model")))
        return
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):  # the engine is gone
                return
            if not data:  # asked to stop
                return
            try:
                reply = worker.step(pickle.loads(data))
            except Exception as e:  # noqa: BLE001 - an input that does not unpickle
                reply = ("error", describe(e, place.rank, "a step"))
            if not _send(conn, reply):
                return
    finally:
        worker.close()


def describe(e: BaseException, rank: int, what: str) -> str:
    """The error as the engine reports it: the same text on every rank that
    hits the same fault (no rank in it), so the engine can tell they agree."""
    log.debug("worker rank %d failed in %s:\n%s", rank, what, "".join(traceback.format_exception(e)))
    return f"{type(e).__name__}: {e}"


def _send(conn: Connection, msg: tuple) -> bool:
    try:
        conn.send(msg)
        return True
    except (BrokenPipeError, EOFError, OSError):
        return False
