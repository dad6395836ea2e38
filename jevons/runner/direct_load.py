"""Quantized layers built straight from the checkpoint, never from a float copy.

Under `-q int4`/`int8` every nn.Linear but the head and MLA's kv_b_proj is
replaced by a quantized layer (models/layers/linear.py `quantize_model`; the
head gets its own int8 copy, and kv_b_proj is loaded in float here and
turned into int8 rows by its layer right after, layers/mla_kv_b.py), and
a DeepSeek MoE's routed experts by `QgemmExperts`. Materializing those layers
in float first, filling them and then packing them cost a 1.5B Q4_K_M GGUF
~60% of its start-up and a 27-layer V2-Lite more memory than the box has
(~2.3 GB of float32 per MoE layer). So the loader plans first, on the meta
model: those layers become `PendingLinear`s (bias only) and their experts'
stacked weights empty, nothing of them is allocated, the stream skips their
tensors, and after it each is built from the file one module at a time:
- a GGUF's Q4_0/Q4_1/Q4_K/Q8_0 blocks are packed into the qgemm blob as they
  are (kernels/cpu/gguf_pack.py, csrc/gguf_pack.c), with no float weight;
- Q6_K, Q5_0, F32/F16/BF16 (and Q8_0 at int4) are quantized in C straight
  from their blocks (kernels/cpu/qgemm_quant.py), no float tensor either;
- an untied model's embedding stays in the file (`StoredEmbedding`: rows
  dequantized in C as they are looked up), a tied one is dequantized in C
  straight into its parameter (the head reads all of it);
- the rest (Q5_1, Q5_K, Q2_K, Q3_K) are dequantized one tensor (or one
  expert) at a time, quantized and freed, so peak memory stays near the
  packed model's size.
The result is the layer `quantize_model` / `moe_qgemm.install` make from the
float model: the same function of the same levels (tests/test_direct_load.py).
Not under tensor parallelism (a rank holds a slice of each tensor; the old
path slices the floats), nor where a layer's parts are not all in the file.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from jevons.kernels.cpu import gguf_pack, qgemm, qgemm_quant
from jevons.kernels.cpu import moe_qgemm as moe_kernel
from jevons.models.layers import moe_qgemm
from jevons.models.layers.linear import (
    SKIP, checkpoint_parts, linear_from_levels, linear_from_qweight, quantized_linear, stored_bits_taken,
    stored_levels,
)
from jevons.runner import packed_cache

log = logging.getLogger("jevons")


class DirectSource(Protocol):
    """What the direct path reads (loader/gguf_checkpoint.GGUFCheckpoint)."""

    def tensor_names(self) -> list[str]: ...

    def quantized_levels(self, name: str) -> Any: ...

    def stored_blocks(self, name: str) -> Any: ...  # loader/gguf_quant.StoredBlocks | None

    def read_weight(self, name: str, dtype: torch.dtype, expert: int | None = None) -> torch.Tensor: ...


class PendingLinear(nn.Module):
    """An nn.Linear whose weight is never allocated: it stands in until the
    direct loader replaces it; only its bias is loaded by the stream. An
    untied output head stays one: compute_logits runs `fast_head` instead."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a PendingLinear runs only after runner/direct_load.py installs its layer")


@dataclass(frozen=True)
class DirectPlan:
    method: str
    linears: tuple[tuple[str, tuple[str, ...]], ...]  # (module name, HF weight names stacked along N)
    experts: tuple[tuple[str, str], ...]  # (DeepseekMoE module name, its HF prefix "model.layers.3.mlp")
    head: bool = False  # the untied output head: only its quantized `fast_head` is built
    embedding: bool = False  # the float embedding, dequantized in C straight into its parameter
    stored_embedding: bool = False  # ... or left in the file, its rows dequantized when looked up

    def consumed(self) -> frozenset[str]:
        """HF names the weight stream skips: these layers read them here."""
        names = {n for _, parts in self.linears for n in parts} | ({_HEAD} if self.head else set())
        names |= {_EMBED} if self.embedding or self.stored_embedding else set()
        names |= {f"{prefix}.experts.{p}.weight" for _, prefix in self.experts for p in _EXPERT_PROJS}
        return frozenset(names)

    def __len__(self) -> int:
        return len(self.linears) + len(self.experts) + int(self.head) + int(self.embedding or self.stored_embedding)

    def filled(self) -> tuple[str, ...]:
        """Prefixes of the model's load tags `install` fills instead of the stream."""
        return tuple(f"{name}.experts." for name, _ in self.experts) + \
            (("embed_tokens.weight",) if self.embedding or self.stored_embedding else ())


_EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
_HEAD = "lm_head.weight"
_EMBED = "model.embed_tokens.weight"


def plan(model: nn.Module, method: str, source: DirectSource, device: torch.device) -> DirectPlan:
    """Which layers of a model still on the meta device are built from the
    file: every linear `quantize_model` would quantize whose parts the file
    holds, and (int4) every MoE whose experts the fused kernel serves."""
    if not method.startswith(("int4", "int8")):
        return DirectPlan(method, (), ())
    names = set(source.tensor_names())
    linears = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and not any(s in name for s in SKIP):
            parts = tuple(checkpoint_parts(model, name))
            if all(p in names for p in parts):
                linears.append((name, parts))
    experts = []
    if method.startswith("int4") and device.type == "cpu":
        for name, mod in model.named_modules():
            if not hasattr(mod, "quantize_experts_int4") or not moe_qgemm.fits(mod, device):
                continue
            prefix = f"model.{name}"
            if all(f"{prefix}.experts.{p}.weight" in names for p in _EXPERT_PROJS):
                experts.append((name, prefix))
    # quantize_model gives a model that prefers `fast_head` an int8 copy of its
    # head; the float head would then never run (yet cost a float copy and
    # oneDNN's reorder of it: 934 MB for a 151k x 1536 vocabulary).
    head = getattr(model, "supports_fast_head", False) and isinstance(getattr(model, "lm_head", None), nn.Linear) \
        and _HEAD in names
    # The embedding stays float (it is looked up); its dequantization in C
    # skips numpy's temporaries and the copy (a 151k x 1536 Q4_K: ~2 s of 5).
    emb, b = getattr(model, "embed_tokens", None), source.stored_blocks(_EMBED) if _EMBED in names else None
    embedding = isinstance(emb, nn.Embedding) and b is not None and b.rows is None \
        and tuple(b.shape) == tuple(emb.weight.shape) and b.kind in qgemm_quant.BLOCK_KINDS \
        and qgemm_quant.dequantize_available() and device.type == "cpu"
    # An untied model that only looks its embedding up keeps it as stored:
    # the 151k x 1536 table of a 1.5B is 933 MB of float32 written at start
    # (~0.6-0.9 s with its page faults) for a few rows a step.
    stored = embedding and getattr(model, "embedding_lookup_only", False) \
        and isinstance(getattr(model, "lm_head", None), nn.Linear)
    return DirectPlan(method, tuple(linears), tuple(experts), head, embedding and not stored, stored)


def detach(model: nn.Module, p: DirectPlan) -> None:
    """Before materializing: the planned layers give up their float weights."""
    for name, _ in p.linears:
        parent, child = _parent(model, name)
        setattr(parent, child, PendingLinear(getattr(parent, child)))
    for name, _ in p.experts:
        ex = model.get_submodule(name).experts
        ex.w13 = nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)
        ex.w2 = nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)
    if p.head:
        model.lm_head = PendingLinear(model.lm_head)
    if p.stored_embedding:  # never allocated: install puts a StoredEmbedding in its place
        model.embed_tokens.weight = nn.Parameter(torch.empty(0, device="meta"), requires_grad=False)


class StoredEmbedding(nn.Module):
    """An embedding left as the file stores it (a view into the memory map):
    each lookup dequantizes its rows in C (qgemm_quant.dequantize_blocks),
    the same values as the dequantized table's rows, so the model computes
    the same function without the float table ever existing."""

    def __init__(self, raw: Any, kind: int, num_embeddings: int, embedding_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.raw, self.kind, self.dtype = raw, kind, dtype
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(*ids.shape, self.embedding_dim, dtype=self.dtype)
        if not qgemm_quant.dequantize_blocks(self.raw, self.kind, out.view(-1, self.embedding_dim), ids.reshape(-1)):
            raise RuntimeError("StoredEmbedding: the C dequantizer is unavailable")
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, stored as ggml type {self.kind}"


def install(model: nn.Module, p: DirectPlan, source: DirectSource, dtype: torch.dtype, device: torch.device,
            bar: Any = None) -> None:
    """After the stream (biases loaded): build every planned layer from the file."""
    cache = _packed_cache(p, source, dtype, device)
    for name, parts in p.linears:
        parent, child = _parent(model, name)
        setattr(parent, child, _linear(getattr(parent, child), parts, p.method, source, dtype, device, cache, name))
        _tick(bar)
    for name, prefix in p.experts:
        moe = model.get_submodule(name)

        def read(proj: str, e: int, prefix: str = prefix) -> torch.Tensor:
            return source.read_weight(f"{prefix}.experts.{proj}.weight", dtype, expert=e)
        packer = _experts_packer(moe, source, prefix, dtype)
        if not moe_qgemm.install(moe, source.quantized_levels, prefix, read, packer):
            raise RuntimeError(f"{name}: the fused expert kernel was planned but does not run")
        _tick(bar)
    if p.stored_embedding:
        b, emb = source.stored_blocks(_EMBED), model.embed_tokens
        if dtype in (torch.float32, torch.bfloat16):
            model.embed_tokens = StoredEmbedding(b.raw, b.kind, emb.num_embeddings, emb.embedding_dim, dtype)
        else:  # a dtype the C dequantizer does not write: the float table after all
            model.embed_tokens = nn.Embedding.from_pretrained(source.read_weight(_EMBED, dtype), freeze=True)
        _tick(bar)
    if p.embedding:
        w = model.embed_tokens.weight.data
        b = source.stored_blocks(_EMBED)
        if not qgemm_quant.dequantize_blocks(b.raw, b.kind, w):
            w.copy_(source.read_weight(_EMBED, dtype))
        _tick(bar)
    if p.head:  # what quantize_model makes of a head: int8 under int4 too
        model.fast_head = _linear(model.lm_head, [_HEAD], p.method.replace("int4", "int8"), source, dtype, device,
                                  cache, "fast_head")
        _tick(bar)
    if cache is not None:
        if cache.hit:
            log.info("packed weights of %d layers mapped from %s", len(p.linears) + int(p.head), cache.payload)
        cache.save()  # on a miss: written on a background thread


def _packed_cache(p: DirectPlan, source: DirectSource, dtype: torch.dtype,
                  device: torch.device) -> packed_cache.PackedCache | None:
    """The on-disk cache of this plan's blobs where it is on (runner/packed_cache.py):
    dense layers and the head of a GGUF on the CPU (not a MoE's experts)."""
    path = getattr(getattr(source, "file", None), "path", None)
    if p.experts or device.type != "cpu" or path is None:
        return None
    plan = list(p.linears) + ([("fast_head", (_HEAD,))] if p.head else [])
    return packed_cache.PackedCache.open(path, p.method, dtype, plan)


def _linear(pending: PendingLinear, parts: Iterable[str], method: str, source: DirectSource,
            dtype: torch.dtype, device: torch.device, cache: packed_cache.PackedCache | None = None,
            key: str = "") -> nn.Module:
    """The quantized layer: packed from stored levels when they fit, else
    quantized from the parts' floats (read one at a time, freed after). With
    a cache: its blob when it has one, else the packed blob is handed to it."""
    qw = cache.get(key) if cache is not None else None
    if qw is not None and (qw.n, qw.k) == (pending.out_features, pending.in_features):
        return linear_from_qweight(qw, pending.bias)
    layer, qw = _build_linear(pending, list(parts), method, source, dtype, device)
    if cache is not None:
        cache.put(key, qw)
    return layer


def _build_linear(pending: PendingLinear, parts: list[str], method: str, source: DirectSource,
                  dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, qgemm.QWeight | None]:
    """_linear's layer, with its QWeight where one of the C paths made it."""
    bits = stored_bits_taken(pending.out_features, pending.in_features, device, method)
    blocks = [source.stored_blocks(n) for n in parts] if bits is not None else []
    shape_ok = bool(blocks) and all(b is not None and len(b.shape) == 2 for b in blocks) \
        and sum(b.shape[0] for b in blocks) == pending.out_features and blocks[0].shape[1] == pending.in_features
    if shape_ok and gguf_pack.available() and all(_packs(b, bits) for b in blocks):
        qw = _stacked(blocks, bits, [gguf_pack.has_zero(b.kind) for b in blocks],
                      lambda b, out: gguf_pack.pack_blocks(b.raw, b.kind, *b.shape, b.rows, out))
        return linear_from_qweight(qw, pending.bias), qw
    # Where every part is whole tiles, the levels fit exactly where the C packer did.
    if not (shape_ok and gguf_pack.available() and all(b.shape[0] % qgemm.TILE == 0 for b in blocks)):
        packed = linear_from_levels(pending.out_features, pending.in_features, device, pending.bias, method,
                                    stored_levels(parts, source.quantized_levels))
        if packed is not None:
            return packed, None
    if shape_ok:
        # No exact levels: quantized in C from the stored blocks as the float
        # path below would from their dequantization (no float tensor at all).
        qw = _stacked(blocks, bits, [bits == 4] * len(blocks),
                      lambda b, out: qgemm_quant.quantize_blocks(b.raw, b.kind, *b.shape, b.rows, dtype, bits, out))
        if qw is not None:
            return linear_from_qweight(qw, pending.bias), qw
    weight = torch.cat([source.read_weight(n, dtype) for n in parts]) if len(parts) > 1 \
        else source.read_weight(parts[0], dtype)
    linear = nn.Linear(pending.in_features, pending.out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(weight.to(device), requires_grad=False)
    linear.bias = pending.bias
    return quantized_linear(linear, method), None


def _stacked(blocks: list[Any], bits: int, zeros: list[bool],
             fill: Callable[[Any, torch.Tensor | None], qgemm.QWeight | None]) -> qgemm.QWeight | None:
    """The parts' blobs stacked along N: where all store zeros or none, each
    part is written straight into its tiles of one blob (`fill(blocks, out)`;
    joining copies afterwards cost ~0.5 s of a 1.5B's start-up), else they
    are joined by _cat_tiles. None where `fill` gives None for any part."""
    if len(blocks) == 1 or len(set(zeros)) > 1:
        qws = [fill(b, None) for b in blocks]
        return _cat_tiles(qws) if all(q is not None for q in qws) else None
    n, k = sum(b.shape[0] for b in blocks), blocks[0].shape[1]
    blob = torch.empty(n // qgemm.TILE, k // qgemm.GROUP, qgemm.group_bytes(bits, zeros[0]), dtype=torch.uint8)
    tile = 0
    for b in blocks:
        if fill(b, blob[tile:tile + b.shape[0] // qgemm.TILE]) is None:
            return None
        tile += b.shape[0] // qgemm.TILE
    return qgemm.QWeight(blob, n, k, bits, zeros[0])


def _cat_tiles(qws: list[qgemm.QWeight]) -> qgemm.QWeight:
    """Parts stacked along N (fused q/k/v, gate/up): whole 16-row tiles, as
    they are where all store zeros or none (else each with zeros)."""
    if len(qws) == 1:
        return qws[0]
    has_zero = any(q.has_zero for q in qws)
    if has_zero:
        qws = [qgemm.with_zeros(q) for q in qws]
    return qgemm.QWeight(torch.cat([q.blob for q in qws]), sum(q.n for q in qws), qws[0].k, qws[0].bits, has_zero)


def _packs(b: Any, bits: int, dims: int = 2) -> bool:
    """Whether the C packer takes these stored blocks at `bits` as they are."""
    if b is None or len(b.shape) != dims or b.kind not in gguf_pack.KINDS or gguf_pack.KINDS[b.kind][2] != bits:
        return False
    rows = b.shape[-2] * (b.shape[0] if dims == 3 else 1)
    return gguf_pack.fits(b.kind, rows, b.shape[-1])


def _experts_packer(moe: nn.Module, source: DirectSource, prefix: str,
                    dtype: torch.dtype) -> moe_qgemm.StackedFor | None:
    """A layer's stacked expert blocks packed in C (what the levels, or the
    float path, give: tested), or None to let install read the levels."""
    if not gguf_pack.available():
        return None
    ex = moe.experts
    shapes = {"gate_proj": (ex.inter, ex.hidden), "up_proj": (ex.inter, ex.hidden), "down_proj": (ex.hidden, ex.inter)}

    def stacked(proj: str) -> moe_kernel.StackedQWeights | None:
        b = source.stored_blocks(f"{prefix}.experts.{proj}.weight")
        n, k = shapes[proj]
        if b is None or tuple(b.shape) != (ex.num_experts, n, k) or b.rows is not None:
            return None
        bits = gguf_pack.KINDS.get(b.kind, (0, 0, 0))[2]
        if _packs(b, bits, dims=3):
            qw = gguf_pack.pack_blocks(b.raw, b.kind, ex.num_experts * n, k)
        elif proj == "down_proj":
            # No exact levels: install would quantize each expert's float to
            # 4 bits; the same in C from the blocks. (Not gate/up: install
            # quantizes both from floats when either lacks levels.)
            qw = qgemm_quant.quantize_blocks(b.raw, b.kind, ex.num_experts * n, k, None, dtype, 4)
        else:
            return None
        if qw is None:
            return None
        return moe_kernel.StackedQWeights(qw.blob.view(ex.num_experts, n // qgemm.TILE, *qw.blob.shape[1:]), n, k,
                                          qw.bits, qw.has_zero)
    return stacked


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)
