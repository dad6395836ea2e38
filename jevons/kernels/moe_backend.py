"""Which function runs the routed experts of a MoE layer.

Every backend has the signature of `torch_ref.moe.fused_experts`:
(x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights [T, k] float32,
topk_ids [T, k]) -> [T, H]. A fused GPU kernel (Triton grouped GEMM, FP8)
registers under its own name and is tested against "torch".
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch


class ExpertsFn(Protocol):
    def __call__(
        self, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor: ...


def _torch() -> ExpertsFn:
    from jevons.kernels.torch_ref.moe import fused_experts

    return fused_experts


# Factories, so importing this module never imports a backend's dependencies.
_BACKENDS: dict[str, Callable[[], ExpertsFn]] = {"torch": _torch}


def register_moe_backend(name: str, factory: Callable[[], ExpertsFn]) -> None:
    _BACKENDS[name] = factory


def moe_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_moe_backend(name: str = "torch") -> ExpertsFn:
    if name not in _BACKENDS:
        raise ValueError(f"unknown MoE backend {name!r}; available: {', '.join(moe_backends())}")
    return _BACKENDS[name]()
