"""Which executor runs the model: ParallelConfig.backend picks it
(runner/executor.py has the contract and the in-process one)."""
from __future__ import annotations

from jevons.config import EngineConfig
from jevons.runner.executor import Executor, UniExecutor


def build_executor(config: EngineConfig, progress: bool = True) -> Executor:
    backend = config.parallel.backend
    if backend == "uni":
        return UniExecutor(config, progress)
    if backend == "mp":
        from jevons.runner.mp_executor import MpExecutor

        return MpExecutor(config, progress)
    if backend == "ray":
        from jevons.runner.ray_executor import RayExecutor

        return RayExecutor(config, progress)
    raise ValueError(f"unknown distributed executor backend {backend!r}")
