"""The one place that decides how many CPU threads a benchmark uses.

jevons (torch intra-op threads) and the llama.cpp peer (`-t`/`-tb`) must get
the same count, or a ratio between them measures the thread setting instead of
the engine. Every benchmark calls `apply_threads` once and passes the returned
number on to peers and to any server it launches."""
from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # non-Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(requested: int | None) -> int:
    """`--threads` if given (must be positive), else every available core."""
    if requested is None or requested == 0:
        return available_cores()
    if requested < 0:
        raise ValueError(f"--threads must be positive, got {requested}")
    return requested


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op thread count for this process and return it."""
    import torch

    n = resolve_threads(requested)
    torch.set_num_threads(n)
    return n


def thread_env(n: int) -> dict[str, str]:
    """Environment for a child process (a launched `jevons serve`) so torch and
    OpenMP start with `n` threads there too."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(n)
    env["MKL_NUM_THREADS"] = str(n)
    return env
