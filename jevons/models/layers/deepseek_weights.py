"""Where each DeepSeek checkpoint tensor goes inside jevons' DeepSeek model.

Hugging Face names are mapped to our modules: gate/up projections fuse into
one gate_up_proj, the per-expert tensors `mlp.experts.{e}.{proj}.weight` go
into the stacked expert tensors, and `layers.{N + d}` (N = num_hidden_layers)
is the MTP layer at depth d. FP8 weights arrive here already dequantized,
with their block scales, which are left on the owning module.

Under tensor parallelism `tp_slice` first cuts each tensor to this rank's
part (its heads' rows, its columns, its experts, its vocabulary rows).
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
# Column-parallel (output rows cut) and row-parallel (input columns cut)
# weights outside the routed experts. The head-major layouts of q_proj /
# q_b_proj ([heads, qk]), kv_b_proj ([heads, nope + v]) and o_proj's input
# ([heads, v]) make an even cut of rows or columns exactly a cut of heads.
_COLUMN = (".q_proj.", ".q_b_proj.", ".kv_b_proj.", ".gate_proj.", ".up_proj.")
_ROW = (".o_proj.", ".down_proj.")


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


def _part(t: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    n = t.shape[dim] // size
    return t.narrow(dim, rank * n, n)


def tp_slice(model: nn.Module, name: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """This rank's (name, part) of a full checkpoint tensor (already renamed by
    target_name), or None when the rank holds none of it: another rank's
    routed expert, or a row-parallel bias (rank 0 alone adds it). Norms, the
    router, q_a_proj, kv_a_proj_with_mqa and MTP's eh_proj are replicated."""
    tp = model.tp
    r, n = tp.rank, tp.size
    m = _EXPERT.match(name) or _STACKED.match(name)
    if m is not None:
        moe = model.get_submodule(m.group(1).removesuffix(".experts"))
        first, count = moe.first_expert, moe.experts.num_experts
        proj = m.group(m.lastindex)
        stacked = m.re is _STACKED
        if tp.expert_parallel or tp.dp_attention:  # whole experts
            if stacked:
                return name, t[first : first + count]
            local = int(m.group(2)) - first
            if not 0 <= local < count:
                return None
            return f"{m.group(1)}.{local}.{proj}.weight", t
        # every expert, a slice of its intermediate size
        dim = (0 if proj != "down_proj" else 1) + int(stacked)
        return name, _part(t, dim, r, n)
    if tp.dp_attention:
        return name, t  # everything but the routed experts is whole on every rank
    if name in ("embed_tokens.weight", "lm_head.weight"):
        start, rows = tp.vocab_shard(t.shape[0])
        out = t.new_zeros(rows, *t.shape[1:])  # the last shard padded past the vocabulary
        take = max(0, min(rows, t.shape[0] - start))
        out[:take] = t[start : start + take]
        return name, out
    if any(f in name for f in _COLUMN):
        return name, _part(t, 0, r, n)
    if any(f in name for f in _ROW):
        if name.endswith(".bias"):
            return (name, t) if r == 0 else None
        return name, _part(t, 1, r, n)
    return name, t


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
