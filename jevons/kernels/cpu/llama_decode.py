"""A Llama decode step as one C call (csrc/llama_decode.c), beside the CPU
kernels it calls. It reads the model's modules by their attribute names
(layers, self_attn, mlp, norms, rotary), so it imports nothing from models/.

At batch 1 on the CPU the kernels of a step take about 7 ms and the Python
between them took 3 ms more: some 300 small calls, each parsing arguments and
allocating its output. When every matmul of the model runs on jevons's qgemm
kernel (`-q int4` / `int8`, the default for a 4-bit GGUF), a step made only of
decode rows can skip all of that: the weights' addresses are gathered once
into a plan, and each step passes the plan plus this step's metadata.

The C side calls the very kernels the modules call, in the same order, so
where the modules run the kernel too the hidden states are identical to the
bit (tests/test_llama_decode_plan.py); the modules run qgemm at every row
count (one model on every path, models/layers/linear.py). Anything the plan
does not cover (prefill, other backends, dense-only weights, larger batches)
runs the modules. JEVONS_FUSED_DECODE=0 turns it off."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from jevons import runtime
from jevons.kernels.cpu import qgemm
from jevons.kernels.cpu.ffi import F, I, L, P, kernel
from jevons.kernels.registry import ops_for

ENV_VAR = "JEVONS_FUSED_DECODE"


class StepContext(Protocol):
    """What a step's models.forward_context.ForwardContext offers this module."""

    attn: Any  # kernels/attention_metadata.py's AttentionMetadata
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
_ARGS = (P, P, I, P, P, P, L, I, I, I, I, I, F, F, P, P, P, P, P, P, L, P, I, I)


def enabled() -> bool:
    return runtime.current().fused_decode


@dataclass(frozen=True)
class LlamaDecodePlan:
    ptrs: torch.Tensor  # int64 [layers, 12]: see the C file's header
    ints: torch.Tensor  # int32 [layers, 8]: bit widths, has-zero flags
    caches: list  # the runner's kv_caches list the plan was built for
    dtype: torch.dtype
    max_rows: int  # above this the modules run (the same kernels, step by step)
    keep: tuple  # the tensors whose addresses are in ptrs (kept alive)


def _linear_entry(mod: nn.Module, dtype: torch.dtype) -> tuple[qgemm.QWeight, torch.Tensor | None, int] | None:
    qw = getattr(mod, "qw", None)
    if not isinstance(qw, qgemm.QWeight):
        return None
    bias = getattr(mod, "bias", None)
    if bias is not None and (bias.dtype != dtype or not bias.is_contiguous()):
        return None
    return qw, bias, qgemm.COMPACT_MAX_ROWS


def build_plan(model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype
               ) -> LlamaDecodePlan | None:
    """The plan for `model` over these caches, or None when some layer is not
    covered (a dense or PyTorch-format linear, mismatched dtypes)."""
    if kernel("llama_decode", dtype, _ARGS, ctypes.c_int) is None or len(kv_caches) != len(model.layers):
        return None
    rows, ints, keep, limits = [], [], [], []
    for layer, (kc, vc) in zip(model.layers, kv_caches):
        attn, mlp = layer.self_attn, layer.mlp
        linears = [_linear_entry(m, dtype) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
        norms = (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)
        if any(e is None for e in linears) or any(w.dtype != dtype or not w.is_contiguous() for w in norms):
            return None
        if kc.dtype != dtype or vc.dtype != dtype or not (kc.is_contiguous() and vc.is_contiguous()) or kc.dim() != 4:
            return None
        rows.append([norms[0].data_ptr(), norms[1].data_ptr(), *(e[0].blob.data_ptr() for e in linears),
                     *(e[1].data_ptr() if e[1] is not None else 0 for e in linears), kc.data_ptr(), vc.data_ptr()])
        ints.append([*(e[0].bits for e in linears), *(int(e[0].has_zero) for e in linears)])
        limits += [e[2] for e in linears]
        keep += [*norms, *(e[0].blob for e in linears), *(e[1] for e in linears if e[1] is not None)]
    final = model.norm.weight
    if final.dtype != dtype or not final.is_contiguous():
        return None
    return LlamaDecodePlan(torch.tensor(rows, dtype=torch.int64), torch.tensor(ints, dtype=torch.int32), kv_caches,
                           dtype, min(limits), (*keep, final))


def fused_decode(model: nn.Module, x: torch.Tensor, positions: torch.Tensor, ctx: StepContext) -> torch.Tensor | None:
    """The final hidden states for a decode-only batch, or None to run the modules."""
    meta = ctx.attn
    n = x.shape[0]
    if meta.prefills or len(meta.decode_seqs) != n or n == 0 or ops_for(x.device).backend != "cpu":
        return None
    plan = getattr(model, "_decode_plan", None)
    if plan is False:
        return None
    if plan is None or plan.dtype != x.dtype or plan.caches is not ctx.kv_caches:
        plan = build_plan(model, ctx.kv_caches, x.dtype)
        model._decode_plan = plan if plan is not None else False
        if plan is None:
            return None
    if n > plan.max_rows:
        return None
    kc = ctx.kv_caches[0][0]
    cos, sin = (t.reshape(n, -1).contiguous() for t in model.rotary.lookup(positions, x.dtype))
    tokens, seqs, lens, bt, slots = (
        t if t.dtype == torch.int64 and t.is_contiguous() else t.to(torch.int64).contiguous()
        for t in (meta.decode_tokens, meta.decode_seqs, meta.seq_lens, meta.block_tables, meta.slot_mapping)
    )
    x = x.contiguous()
    out = torch.empty_like(x)
    attn = model.layers[0].self_attn
    rc = kernel("llama_decode", x.dtype, _ARGS, ctypes.c_int)(
        plan.ptrs.data_ptr(), plan.ints.data_ptr(), len(model.layers), model.norm.weight.data_ptr(),
        x.data_ptr(), out.data_ptr(), n, x.shape[1], attn.nh, attn.nkv, attn.hd, model.layers[0].mlp.intermediate,
        model.norm.eps, attn.attn.scale, cos.data_ptr(), sin.data_ptr(), slots.data_ptr(), tokens.data_ptr(),
        seqs.data_ptr(), bt.data_ptr(), bt.stride(0), lens.data_ptr(), kc.shape[1], torch.get_num_threads(),
    )
    if rc != 0:
        raise MemoryError("fused decode step could not allocate its scratch buffers")
    return out
