"""Where each DeepSeek checkpoint tensor goes inside jevons' DeepSeek model.

Hugging Face names are mapped to our modules: gate/up projections fuse into
one gate_up_proj, the per-expert tensors `mlp.experts.{e}.{proj}.weight` go
into the stacked expert tensors, and `layers.{N + d}` (N = num_hidden_layers)
is the MTP layer at depth d. FP8 weights arrive here already dequantized,
with their block scales, which are left on the owning module.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from jevons.models.layers.moe import StackedExperts
from jevons.models.layers.mtp import MTP_OWN, MTP_SHARED

_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
# All experts of one projection in one [E, out, in] tensor (a GGUF's *_exps).
_STACKED = re.compile(r"^(.*\.experts)\.(gate_proj|up_proj|down_proj)\.weight$")
_GATE_UP = {".gate_proj.": 0, ".up_proj.": 1}


def target_name(name: str, num_layers: int) -> str | None:
    """Our parameter name for a checkpoint tensor (before fusing), or None for
    one we deliberately do not load."""
    name = name.removeprefix("model.")
    if "rotary_emb." in name:
        return None
    m = re.match(r"^layers\.(\d+)\.(.*)$", name)
    if m is None or int(m.group(1)) < num_layers:
        return name
    depth, rest = int(m.group(1)) - num_layers, m.group(2)
    if rest.startswith(MTP_SHARED):
        return None
    if rest.startswith(MTP_OWN):
        return f"mtp_layers.{depth}.{rest}"
    return f"mtp_layers.{depth}.block.{rest}"


def keep_scale(module: nn.Module, scale: torch.Tensor, shard: int = 0, num_shards: int = 1) -> None:
    """Leave a weight's FP8 block scale on its module as `weight_scale_inv`; for
    fused weights the shards' scales stack along the output dim."""
    rows = scale.shape[0]
    held = getattr(module, "weight_scale_inv", None)
    if held is None or held.shape[0] != rows * num_shards:
        held = torch.empty(rows * num_shards, scale.shape[1], dtype=scale.dtype, device=scale.device)
        module.weight_scale_inv = held
    held[shard * rows : (shard + 1) * rows].copy_(scale)


def load_one(
    model: nn.Module, params: dict[str, nn.Parameter], name: str, t: torch.Tensor, scale: torch.Tensor | None
) -> set[str]:
    """Copy one (already renamed) tensor into the model; return its load tags
    (several for a stacked expert tensor, one otherwise)."""
    m = _EXPERT.match(name)
    if m is not None:
        experts: StackedExperts = model.get_submodule(m.group(1))
        return {f"{m.group(1)}.{experts.load(int(m.group(2)), m.group(3), t, scale)}"}
    m = _STACKED.match(name)
    if m is not None and scale is None:
        stacked: StackedExperts = model.get_submodule(m.group(1))
        return {f"{m.group(1)}.{tag}" for tag in stacked.load_stacked(m.group(2), t)}
    return {_load_dense(model, params, name, t, scale)}


def _load_dense(
    model: nn.Module, params: dict[str, nn.Parameter], name: str, t: torch.Tensor, scale: torch.Tensor | None
) -> str:
    for frag, shard in _GATE_UP.items():
        if frag in name:
            target = name.replace(frag, ".gate_up_proj.")
            p = params[target]
            size = p.shape[0] // 2
            p.data[shard * size : (shard + 1) * size].copy_(t)
            if scale is not None:
                keep_scale(model.get_submodule(target.rsplit(".", 1)[0]), scale, shard, 2)
            return f"{target}#{shard}"
    if name not in params:
        raise KeyError(f"checkpoint tensor {name!r} has no place in the DeepSeek model")
    params[name].data.copy_(t)
    if scale is not None:
        keep_scale(model.get_submodule(name.rsplit(".", 1)[0]), scale)
    return name


def expected_tags(model: nn.Module, prefix_filter: str = "") -> set[str]:
    """Load tags a complete checkpoint produces, for parameters under prefix_filter."""
    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, StackedExperts) and mod_name.startswith(prefix_filter):
            out |= mod.expected(mod_name + ".")
    for name, _ in model.named_parameters():
        if not name.startswith(prefix_filter) or ".experts.w" in name:
            continue
        if ".gate_up_proj." in name:
            out |= {f"{name}#0", f"{name}#1"}
        else:
            out.add(name)
    return out
