"""One worker process: one rank of a tensor-parallel group, holding its shard
of the model and of the KV cache (runner/mp_executor.py starts them).

It joins the group, builds its shard (runner/builder.py with this rank's
TensorParallel), reports ready, then runs steps until told to stop or until
the engine's end of the pipe closes (the engine is gone: the worker leaves
rather than lingering). Each step's RunnerInput arrives pickled, the same
bytes to every rank; every rank runs the forward and samples alike (the
logits are all-gathered), and rank 0 alone sends the RunnerOutput back,
with the state its draws left each seeded request's generator in. The other
ranks answer with an empty acknowledgement, so the engine knows each rank
finished the step (or how it failed).

Messages to the engine: ("ready", BuiltModel without model or caches | None),
("ok", RunnerOutput | None, {request id: generator state} | None) and
("error", text). From the engine: a pickled RunnerInput, or b"" to stop.
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
from jevons.runner.step_io import RunnerInput

log = logging.getLogger("jevons")


def worker_main(place: WorkerPlace, config: EngineConfig, threads: int, conn: Connection) -> None:
    """The process's entry point (spawned: nothing is inherited but arguments)."""
    from jevons.runner.builder import build_model
    from jevons.runner.executor import make_runner

    try:
        torch.set_num_threads(threads)
        tp = join_group(place, config.device)
        config = dataclasses.replace(config, device=rank_device(config.device, place.rank))
        built = build_model(config, progress=False, tp=tp)
        runner = make_runner(config, built)
        info = dataclasses.replace(built, model=None, kv_caches=[]) if place.rank == 0 else None
        conn.send(("ready", info))
    except BaseException as e:  # noqa: BLE001 - reported, then the process ends
        _send(conn, ("error", _describe(e, place.rank, "loading the model")))
        return
    try:
        _serve(runner, place.rank, conn)
    finally:
        leave_group()


def _serve(runner, rank: int, conn: Connection) -> None:
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):  # the engine is gone
            return
        if not data:  # asked to stop
            return
        try:
            inp: RunnerInput = pickle.loads(data)
            out = runner.execute(inp)
            if rank == 0:
                gens = {r.request_id: r.generator.get_state() for r in inp.requests if r.generator is not None}
                reply = ("ok", out, gens)
            else:
                reply = ("ok", None, None)
        except Exception as e:  # noqa: BLE001 - the engine decides whether the step or the group failed
            reply = ("error", _describe(e, rank, "a step"))
        if not _send(conn, reply):
            return


def _describe(e: BaseException, rank: int, what: str) -> str:
    log.debug("worker rank %d failed in %s:\n%s", rank, what, "".join(traceback.format_exception(e)))
    return f"{type(e).__name__}: {e}"


def _send(conn: Connection, msg: tuple) -> bool:
    try:
        conn.send(msg)
        return True
    except (BrokenPipeError, EOFError, OSError):
        return False
