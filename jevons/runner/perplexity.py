"""Perplexity on a fixed text: the quality check that keeps quantization and
other speed-ups honest. Scored the way llama.cpp's llama-perplexity scores,
so the two numbers are comparable on the same GGUF: the text is cut into
windows of `ctx` tokens, and in each window only the second half is scored
(the first half is context).

Two paths compute the same scores (issue 13: quality measured on the path
that runs):

- "prefill": one forward per window, every token of it at once, as a prompt
  runs. In the deterministic mode (`core.runner.every_row_decodes`) the rows
  attend as decode rows (AttentionMetadata.build_rows), as the engine does.
- "decode": the window teacher-forced one token at a time, as generation
  runs: step t feeds token t over the t tokens already cached, and the
  logits of a scored position come from that one-row step (ctx forwards
  per window, so slow: see `max_windows`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext

PATHS = ("prefill", "decode")


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token
    scored_tokens: int
    windows: int
    ctx: int
    path: str = "prefill"  # "prefill" | "decode"
    nll_sum: float = 0.0  # the summed NLL (fp64 sum of per-window fp32 sums)


def default_text() -> str:
    """The US Declaration of Independence (public domain), shipped with jevons."""
    return resources.files("jevons.data").joinpath("declaration.txt").read_text()


def _prefill_window(core, window: torch.Tensor, table: torch.Tensor, first: int) -> torch.Tensor:
    """Logits predicting window[first:] from one forward over the window."""
    ctx = window.shape[0]
    build = AttentionMetadata.build_rows if core.runner.every_row_decodes else AttentionMetadata.build
    meta = build([ctx], [0], table, core.kv.block_size, core.device)
    model = core.runner.model
    hidden = model(window, torch.arange(ctx, device=core.device), ForwardContext(meta, core.runner.kv_caches))
    return model.compute_logits(hidden[first - 1 : ctx - 1])


def _decode_window(core, window: torch.Tensor, table: torch.Tensor, first: int, bar) -> torch.Tensor:
    """Logits predicting window[first:], one decode step per token: step t
    feeds token t with t tokens of context. The last token is never fed
    (nothing after it is scored)."""
    ctx = window.shape[0]
    model = core.runner.model
    rows = []
    for t in range(ctx - 1):
        meta = AttentionMetadata.build([1], [t], table, core.kv.block_size, core.device)
        hidden = model(window[t : t + 1], torch.tensor([t], device=core.device), ForwardContext(meta, core.runner.kv_caches))
        if t >= first - 1:
            rows.append(model.compute_logits(hidden))
        bar.update(1)
    return torch.cat(rows)


@torch.inference_mode()
def perplexity(
    core,
    text: str,
    ctx: int = 512,
    path: str = "prefill",
    max_windows: int | None = None,
    progress: bool = False,
) -> PerplexityResult:
    """`core` is an EngineCore with no requests in flight (its cache is
    borrowed). `max_windows` scores only the first N windows; `progress`
    shows a bar over the decode path's steps."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, not {path!r}")
    ids = core.tokenizer.encode(text, add_special_tokens=True)
    ctx = min(ctx, core.max_model_len)
    windows = len(ids) // ctx
    if windows == 0:
        raise ValueError(f"the text has {len(ids)} tokens; perplexity needs at least one window of {ctx}")
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be at least 1, not {max_windows}")
        windows = min(windows, max_windows)
    first = ctx // 2
    pool = core.kv.pool
    blocks = pool.allocate(core.kv.blocks_needed(ctx))
    from tqdm import tqdm

    bar = tqdm(total=windows * (ctx - 1), desc="perplexity (decode)", unit="step", leave=False,
               disable=not progress or path != "decode")
    try:
        table = torch.tensor([[b.block_id for b in blocks]])
        total, count = 0.0, 0
        for w in range(windows):
            window = torch.tensor(ids[w * ctx : (w + 1) * ctx], device=core.device)
            if path == "prefill":
                logits = _prefill_window(core, window, table, first)
            else:
                logits = _decode_window(core, window, table, first, bar)
            total += F.cross_entropy(logits, window[first:ctx], reduction="sum").item()
            count += ctx - first
    finally:
        bar.close()
        pool.free(blocks)
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, count, windows, ctx, path, total)
