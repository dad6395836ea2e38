"""Dense linears with their weights prepacked for oneDNN, on the CPU.

`F.linear` on a plain [N, K] bf16 or fp32 weight makes oneDNN reorder the
weight into its blocked layout on every call; at decode batch sizes that
reorder costs as much as the multiply. Packing once at load time
(`mkldnn._reorder_linear_weight`, the same step torch.compile's CPU "freezing"
takes) measured 1.3x to 2.3x faster per call here, for every row count from 1
to 512, with the same results.

`pack_model` swaps every nn.Linear of a loaded model for a PackedLinear and
checks each one against F.linear on a random input; a layer that fails the
check, or a torch build without the ops, keeps its nn.Linear.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from jevons import runtime
from jevons.models.layers.linear import output_head

log = logging.getLogger("jevons")

ENV_VAR = "JEVONS_PREPACK"
# Row count oneDNN tunes the packed layout for; any count works with it.
PACK_ROWS_HINT = 32


def prepack_available() -> bool:
    if not runtime.current().prepack:
        return False
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available() and mkldnn is not None
        and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise")
    )


class PackedLinear(nn.Module):
    """y = x @ W^T + b with W held in oneDNN's packed layout (not a plain tensor:
    it has no data_ptr and no useful state_dict entry)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_ROWS_HINT)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _packable(mod: nn.Module) -> bool:
    w = getattr(mod, "weight", None)
    return (
        type(mod) is nn.Linear and w is not None and w.device.type == "cpu"
        and w.dtype in (torch.bfloat16, torch.float32) and w.dim() == 2
    )


def _check(linear: nn.Linear, packed: PackedLinear, verdicts: dict[tuple, bool] | None = None) -> bool:
    """Same result as F.linear on a random input (bf16: within rounding).

    What can go wrong is oneDNN's handling of a shape and dtype (a build whose
    packed path is broken for them), not a layer's values, so one check per
    (shape, dtype, bias) answers for every layer like it: `verdicts` carries
    the answers across a model. Checking all 113 linears of a 1.5B model
    cost 8.6 s of its 85 s start-up (2-core EPYC); the distinct shapes, 6."""
    w = linear.weight
    key = (tuple(w.shape), w.dtype, linear.bias is not None)
    if verdicts is not None and key in verdicts:
        return verdicts[key]
    ok = _compare(linear, packed)
    if verdicts is not None:
        verdicts[key] = ok
    return ok


def _compare(linear: nn.Linear, packed: PackedLinear) -> bool:
    w = linear.weight
    x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0)).to(w.dtype)
    with torch.inference_mode():
        want = torch.nn.functional.linear(x, w, linear.bias).float()
        got = packed(x).float()
    tol = 1e-2 if w.dtype == torch.bfloat16 else 1e-4
    return got.shape == want.shape and torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max().item())


def pack_linear(linear: nn.Linear, verdicts: dict[tuple, bool] | None = None) -> nn.Module:
    """A PackedLinear for `linear` when packing works here, else `linear` itself
    (`verdicts`: the shared check results of `_check`)."""
    if not (prepack_available() and _packable(linear)):
        return linear
    try:
        packed = PackedLinear(linear)
    except RuntimeError as e:  # a oneDNN build without this path
        log.info("weight prepacking unavailable (%s)", e)
        return linear
    return packed if _check(linear, packed, verdicts) else linear


def pack_model(model: nn.Module) -> int:
    """Replace every packable nn.Linear in place (nested ones included, such as
    the dense copies quantized layers keep for large batches); returns how many.
    Only models that declare `prepack_linears = True` are packed: a packed
    layer has no .weight, and some models read weights directly (DeepSeek's
    MLA absorbs kv_b_proj's). A tied head without a quantized copy gets a
    packed one as `fast_head` (the embedding stays for lookups: one more copy)."""
    if not prepack_available() or not getattr(model, "prepack_linears", False):
        return 0
    head = output_head(model)
    if getattr(model, "fast_head", None) is None and head is not None and head is not getattr(model, "lm_head", None):
        packed = pack_linear(head)
        if packed is not head:
            model.fast_head = packed
    # Walk parents, not named_modules(): a layer can sit under two parents
    # (an untied lm_head is also the int8 head's dense copy) and both must
    # point at the one packed module.
    done: dict[int, nn.Module] = {}
    verdicts: dict[tuple, bool] = {}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if not _packable(child):
                continue
            if id(child) not in done:
                done[id(child)] = pack_linear(child, verdicts)
            setattr(parent, child_name, done[id(child)])
    return sum(1 for old_id, new in done.items() if id(new) != old_id)
