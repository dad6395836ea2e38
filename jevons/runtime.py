"""The kernel/runtime switches: which kernels run, read once at start.

Each switch has a JEVONS_* environment variable that sets its default, so a
user can still say `JEVONS_QGEMM=0 jevons serve`; but the environment is read
once, when an engine is built (runner/builder.py calls `configure`), or on
first use outside an engine, and never again per op call or forward. The
setting is process-wide, like the kernels it selects.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

_OFF = ("0", "false", "off", "no")


def _on(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in _OFF


@dataclass(frozen=True)
class RuntimeConfig:
    # "torch" | "triton" | "cpu" forces a kernel backend (kernels/registry.py);
    # None picks per device. JEVONS_KERNEL_BACKEND.
    kernel_backend: str | None = None
    # jevons's C kernels for the CPU (kernels/cpu/); off: plain torch. JEVONS_CPU_KERNELS.
    cpu_kernels: bool = True
    # jevons's group-quantized GEMM (kernels/cpu/qgemm.py) where it fits. JEVONS_QGEMM.
    qgemm: bool = True
    # Dense weights prepacked into oneDNN's blocked layout on CPU. JEVONS_PREPACK.
    prepack: bool = True
    # The one-call C decode step for Llama on CPU (kernels/cpu/llama_decode.py). JEVONS_FUSED_DECODE.
    fused_decode: bool = True
    # CUDA graphs for decode: opt-in until timed and checked on a GPU. JEVONS_CUDA_GRAPHS.
    cuda_graphs: bool = False
    # glibc malloc tuned for large tensors (runner/cpu_malloc.py). JEVONS_MALLOC_TUNING.
    malloc_tuning: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RuntimeConfig":
        env = os.environ if env is None else env
        backend = (env.get("JEVONS_KERNEL_BACKEND") or "").strip().lower() or None
        d = cls()
        return cls(
            kernel_backend=backend,
            cpu_kernels=_on(env, "JEVONS_CPU_KERNELS", d.cpu_kernels),
            qgemm=_on(env, "JEVONS_QGEMM", d.qgemm),
            prepack=_on(env, "JEVONS_PREPACK", d.prepack),
            fused_decode=_on(env, "JEVONS_FUSED_DECODE", d.fused_decode),
            cuda_graphs=_on(env, "JEVONS_CUDA_GRAPHS", d.cuda_graphs),
            malloc_tuning=_on(env, "JEVONS_MALLOC_TUNING", d.malloc_tuning),
        )


_current: RuntimeConfig | None = None


def current() -> RuntimeConfig:
    """The switches in force (read from the environment on first use)."""
    global _current
    if _current is None:
        _current = RuntimeConfig.from_env()
    return _current


def configure(config: RuntimeConfig | None = None) -> RuntimeConfig:
    """Set the switches (None: read the environment again); returns them."""
    global _current
    _current = RuntimeConfig.from_env() if config is None else config
    return _current


def reset() -> None:
    """Forget the switches: the next `current()` reads the environment again."""
    global _current
    _current = None
