"""Build a model from a checkpoint: construct on the meta device (no memory),
materialize directly in the target dtype, then stream weights in one tensor at
a time, so peak memory stays near the model's own size."""
from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm import tqdm

from jevons.config import ModelConfig
from jevons.models.layers.tensor_parallel import TensorParallel
from jevons.models.registry import build_model

log = logging.getLogger("jevons")


def materialize(cfg: ModelConfig, dtype: torch.dtype, device: torch.device,
                tp: TensorParallel | None = None) -> nn.Module:
    """The module with uninitialized weights: this rank's shard under tensor
    parallelism, so no rank ever holds the whole model."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = build_model(cfg, tp)
    finally:
        torch.set_default_dtype(old)
    model = model.to_empty(device=device)
    for m in model.modules():
        if hasattr(m, "to_device"):
            m.to_device(device)
    return model


def load_model(
    cfg: ModelConfig,
    weights,  # Iterator[tuple[str, torch.Tensor]] | None (None: dummy weights)
    dtype: torch.dtype,
    device: torch.device,
    num_tensors: int | None = None,
    progress: bool = True,
    tp: TensorParallel | None = None,
) -> nn.Module:
    model = materialize(cfg, dtype, device, tp)
    if weights is None:
        init_dummy_weights(model)
    else:
        bar = tqdm(weights, total=num_tensors, desc="Loading weights", unit="tensor", disable=not progress, leave=False)
        loaded = model.load_weights(bar)
        expected = getattr(model, "expected_weights", lambda: loaded)()
        missing = expected - loaded
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {sorted(missing)[:5]}")
    post = getattr(model, "post_load", None)
    if post is not None:
        post()
    return model.eval()


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int = 0) -> None:
    """Random weights at a realistic scale, for performance work without a
    checkpoint (`load_format="dummy"`). Norm weights start at one."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            continue
        if name.endswith("norm.weight") or "layernorm" in name:
            p.fill_(1.0)
            continue
        vals = torch.randn(p.shape, generator=g) * 0.02
        p.copy_(vals.to(p.dtype))
