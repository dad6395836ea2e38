"""Perplexity on a fixed text: the quality check that keeps quantization and
other speed-ups honest. Scored the way llama.cpp's llama-perplexity scores,
so the two numbers are comparable on the same GGUF: the text is cut into
windows of `ctx` tokens, and in each window only the second half is scored
(the first half is context)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token
    scored_tokens: int
    windows: int
    ctx: int


def default_text() -> str:
    """The US Declaration of Independence (public domain), shipped with jevons."""
    return resources.files("jevons.data").joinpath("declaration.txt").read_text()


@torch.inference_mode()
def perplexity(core, text: str, ctx: int = 512) -> PerplexityResult:
    """`core` is an EngineCore with no requests in flight (its cache is borrowed)."""
    ids = core.tokenizer.encode(text, add_special_tokens=True)
    ctx = min(ctx, core.max_model_len)
    windows = len(ids) // ctx
    if windows == 0:
        raise ValueError(f"the text has {len(ids)} tokens; perplexity needs at least one window of {ctx}")
    pool = core.kv.pool
    blocks = pool.allocate(core.kv.blocks_needed(ctx))
    try:
        table = torch.tensor([[b.block_id for b in blocks]])
        total, count = 0.0, 0
        for w in range(windows):
            window = torch.tensor(ids[w * ctx : (w + 1) * ctx], device=core.device)
            meta = AttentionMetadata.build([ctx], [0], table, core.kv.block_size, core.device)
            hidden = core.runner.model(window, torch.arange(ctx, device=core.device), ForwardContext(meta, core.runner.kv_caches))
            first = ctx // 2
            logits = core.runner.model.compute_logits(hidden[first - 1 : ctx - 1])
            total += F.cross_entropy(logits, window[first:ctx], reduction="sum").item()
            count += ctx - first
    finally:
        pool.free(blocks)
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, count, windows, ctx)
