"""What runs the model for the engine: an `Executor` takes a step's
RunnerInput and returns its RunnerOutput (runner/step_io.py), wherever the
model lives.

- `UniExecutor` ("uni", the default on one device): the model and its KV
  cache in the engine's own process, a thin wrapper over ModelRunner.
- `MpExecutor` ("mp", runner/mp_executor.py): N worker processes on this
  machine, one shard of the model each (tensor parallelism), joined by
  torch.distributed.
- `RayExecutor` ("ray", runner/ray_executor.py): the same workers in Ray
  actors, anywhere in a Ray cluster.

The engine builds one with runner/executors.py's `build_executor` and never
looks behind it: it reads what it needs about the model (tokenizer, config,
KV blocks, fingerprint) from `executor.built`, whose model and KV caches are
None and [] when workers hold them.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from jevons import runtime
from jevons.config import EngineConfig
from jevons.runner.builder import BuiltModel, build_model
from jevons.runner.model_runner import ModelRunner
from jevons.runner.step_io import RunnerInput, RunnerOutput


class WorkerError(RuntimeError):
    """A worker died, stopped answering or left the group in an unknown
    state: the executor is unusable (every later step raises this too)."""


@runtime_checkable
class Executor(Protocol):
    built: BuiltModel  # what the engine needs to know about the model
    runner: ModelRunner | None  # the in-process runner, None when workers run the model

    def execute(self, inp: RunnerInput) -> RunnerOutput:
        """Run one step. A fault of the step itself raises and leaves the
        executor usable; a lost worker raises WorkerError."""
        ...

    def health(self) -> None:
        """Raise WorkerError if the executor can no longer run a step."""
        ...

    def shutdown(self) -> None:
        """Stop the workers (idempotent)."""
        ...


def refuse_unsupported(config: EngineConfig) -> None:
    """What worker executors refuse before starting a worker: the host and
    disk KV tiers (they copy blocks out of the engine's own cache tensors)."""
    if config.cache.cpu_cache_bytes > 0 or config.cache.disk_cache_dir:
        raise ValueError("the host and disk KV cache tiers are not supported with worker processes yet "
                         "(the KV cache lives in the workers); drop --cpu-cache-size/--disk-cache-dir")


def settle(inp: RunnerInput, replies: list[tuple]) -> RunnerOutput:
    """Rank 0's RunnerOutput from every rank's answer to a step (runner/worker.py).
    The same error on every rank leaves the ranks in step (each samples the
    same rows, so a bad row fails everywhere alike): an ordinary step fault,
    RuntimeError, that the engine's fault isolation handles as in one
    process. Any other mix may have left a collective half done: WorkerError."""
    errors = [r[1] for r in replies if r[0] == "error"]
    if errors:
        if len(errors) == len(replies) and len(set(errors)) == 1:
            raise RuntimeError(errors[0])
        rank = next(rank for rank, r in enumerate(replies) if r[0] == "error")
        raise WorkerError(f"worker rank {rank} failed in a step the others did not ({errors[0]})")
    if any(r[1] is not None for r in replies[1:]):
        # DP-attention: every rank answers for its own requests (runner/dp_attention.py).
        from jevons.runner.dp_attention import merge

        out = merge(inp, [r[1] for r in replies])
        gen_states = {k: v for r in replies for k, v in (r[2] or {}).items()}
    else:
        _, out, gen_states = replies[0]
    # The draws advanced copies of the seeded generators: carry their state
    # back, so the engine's own objects move on exactly as in one process.
    for r in inp.requests:
        if r.generator is not None and r.request_id in gen_states:
            r.generator.set_state(gen_states[r.request_id])
    return out


def make_runner(config: EngineConfig, built: BuiltModel) -> ModelRunner:
    """The ModelRunner over a built model (in the engine, or in a worker)."""
    assert built.model is not None
    runner = ModelRunner(built.model, built.kv_caches + built.kv_window_caches, built.block_size, built.device,
                         every_row_decodes=config.deterministic)
    if built.device.type == "cuda" and runtime.current().cuda_graphs:
        runner.enable_cuda_graphs(config.scheduler.max_num_seqs, -(-built.max_model_len // built.block_size))
    return runner


class UniExecutor:
    """The model in this process: execute is ModelRunner.execute."""

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        self.built = build_model(config, progress)  # resolve, load, quantize, size and fingerprint the KV cache
        self.runner: ModelRunner | None = make_runner(config, self.built)

    def execute(self, inp: RunnerInput) -> RunnerOutput:
        return self.runner.execute(inp)

    def health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
