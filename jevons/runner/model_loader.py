"""Build a model from a checkpoint: construct on the meta device (no memory),
materialize directly in the target dtype, then stream weights in one tensor at
a time, so peak memory stays near the model's own size. A quantized run of a
GGUF (`load_model_direct`) never materializes the layers it quantizes: they
are built from the file's blocks (runner/direct_load.py)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm import tqdm

from jevons.config import ModelConfig
from jevons.models.layers.tensor_parallel import TensorParallel
from jevons.models.registry import build_model
from jevons.runner import direct_load

log = logging.getLogger("jevons")


def materialize(cfg: ModelConfig, dtype: torch.dtype, device: torch.device,
                tp: TensorParallel | None = None, prepare: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """The module with uninitialized weights: this rank's shard under tensor
    parallelism, so no rank ever holds the whole model. `prepare` sees it on
    the meta device first (runner/direct_load.py takes weights out there)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"), _MetaShortcuts():
            model = build_model(cfg, tp)
    finally:
        torch.set_default_dtype(old)
    if prepare is not None:
        prepare(model)
    with _MetaShortcuts():
        model = model.to_empty(device=device)
    for m in model.modules():
        if hasattr(m, "to_device"):
            m.to_device(device)
    return model


class _MetaShortcuts(TorchFunctionMode):
    """Two steps of building on the meta device that do nothing useful yet
    run torch's Python meta kernels, whose first calls import torch._dynamo
    and sympy (1.5-2.5 s of a server's start-up together):
    - module constructors fill their weights (nn.init.normal_, uniform_,
      ...): on the meta device a no-op, answered with the tensor itself;
    - to_empty() calls empty_like on each meta tensor: a contiguous one gets
      torch.empty of its shape and dtype (what empty_like gives it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            t = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        elif func is torch.empty_like and args and isinstance(args[0], torch.Tensor) and args[0].is_meta \
                and args[0].is_contiguous() and set(kwargs) <= {"device"}:
            t = args[0]
            return torch.empty(t.shape, dtype=t.dtype, device=kwargs.get("device", t.device),
                               requires_grad=t.requires_grad)
        return func(*args, **kwargs)


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
        _check_complete(model, model.load_weights(bar))
    return _finish(model)


def load_model_direct(cfg: ModelConfig, source: direct_load.DirectSource, method: str, dtype: torch.dtype,
                      device: torch.device, progress: bool = True) -> nn.Module:
    """load_model for a quantized run (`method` int4/int8) of one process:
    the layers the file can build (runner/direct_load.py) never exist in
    float; the rest stream in as usual. The caller still runs quantize_model
    (the output head, anything not planned) as after load_model."""
    planned: list[direct_load.DirectPlan] = []

    def prepare(meta: nn.Module) -> None:
        planned.append(direct_load.plan(meta, method, source, device))
        direct_load.detach(meta, planned[0])

    model = materialize(cfg, dtype, device, prepare=prepare)
    p = planned[0]
    skip = p.consumed()
    n_stream = sum(1 for n in source.tensor_names() if n not in skip)
    with tqdm(total=n_stream + len(p), desc="Loading weights", unit="tensor", disable=not progress,
              leave=False) as bar:
        def stream():
            for item in source.iter_weights(dtype, skip=skip):
                yield item
                bar.update(1)
        loaded = model.load_weights(stream())
        # What install fills: every one of its tensors is in the file (the plan checked).
        _check_complete(model, loaded, ignore=p.filled())
        direct_load.install(model, p, source, dtype, device, bar)
    log.info("built %d linear layers and %d MoE layers' experts straight from the file",
             len(p.linears), len(p.experts))
    return _finish(model)


def _check_complete(model: nn.Module, loaded: set[str], ignore: tuple[str, ...] = ()) -> None:
    expected = getattr(model, "expected_weights", lambda: loaded)()
    missing = {m for m in expected - loaded if not m.startswith(ignore)}
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {sorted(missing)[:5]}")


def _finish(model: nn.Module) -> nn.Module:
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
