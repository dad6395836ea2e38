"""Turns a scheduled step into one flat batch, runs the model over the paged
cache, and samples at the positions that produce a token."""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from jevons.engine.scheduler import SchedulerOutput
from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext
from jevons.runner.sampler import Sampler, SamplerOutput, SamplingBatch

log = logging.getLogger("jevons")


class ModelRunner:
    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        block_size: int,
        device: torch.device,
        every_row_decodes: bool = False,
    ) -> None:
        self.model = model
        # The deterministic mode: prompt rows attend as decode rows do (see
        # AttentionMetadata.build_rows).
        self.every_row_decodes = every_row_decodes
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler()
        self.graphs = None  # DecodeGraphRunner, see enable_cuda_graphs

    def enable_cuda_graphs(self, max_batch: int, max_blocks_per_seq: int) -> None:
        """Capture decode steps as CUDA graphs (runner/cuda_graphs.py). Opt-in
        (JEVONS_CUDA_GRAPHS=1) until it has been timed and checked on a GPU."""
        from jevons.runner.cuda_graphs import DecodeGraphRunner

        self.graphs = DecodeGraphRunner(self.model, self.kv_caches, self.block_size, max_batch,
                                        max_blocks_per_seq, self.device)
        self.graphs.capture()

    def _build(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, ForwardContext, list[int]]:
        ids: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        sample_idx: list[int] = []
        width = max(len(s.block_ids) for s in out.scheduled)
        tables = torch.zeros(len(out.scheduled), max(width, 1), dtype=torch.int64)
        for row, s in enumerate(out.scheduled):
            start = s.context_len
            ids.extend(s.request.all_token_ids[start : start + s.num_tokens])
            query_lens.append(s.num_tokens)
            context_lens.append(start)
            tables[row, : len(s.block_ids)] = torch.tensor(s.block_ids, dtype=torch.int64)
            if s.samples:
                sample_idx.append(len(ids) - 1)
        build = AttentionMetadata.build_rows if self.every_row_decodes else AttentionMetadata.build
        meta = build(query_lens, context_lens, tables, self.block_size, self.device)
        ql = torch.tensor(query_lens)
        cl = torch.tensor(context_lens)
        starts = torch.repeat_interleave(cl - torch.cumsum(ql, 0) + ql, ql)
        positions = (torch.arange(len(ids)) + starts).to(self.device)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        return input_ids, positions, ForwardContext(meta, self.kv_caches), sample_idx

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, banned: dict[str, list[int]] | None = None) -> tuple[list[str], SamplerOutput | None]:
        """Run one step. Returns the ids of the requests that sampled (in row
        order) and the sampler's output for them."""
        input_ids, positions, ctx, sample_idx = self._build(out)
        if self.graphs is not None and self.graphs.can_run(ctx.attn):
            hidden = self.graphs.run(input_ids, positions, ctx.attn)
        else:
            hidden = self.model(input_ids, positions, ctx)
        samplers = [s.request for s in out.scheduled if s.samples]
        if not samplers:
            return [], None
        logits = self.model.compute_logits(hidden[torch.tensor(sample_idx, device=self.device)])
        banned = banned or {}
        batch = SamplingBatch(
            params=[r.params for r in samplers],
            generators=[r.generator for r in samplers],
            prompt_ids=[r.prompt_token_ids for r in samplers] if any(r.params.uses_penalties for r in samplers) else [],
            output_ids=[r.output_token_ids for r in samplers] if any(r.params.uses_penalties for r in samplers) else [],
            banned=[banned.get(r.request_id, []) for r in samplers],
        )
        return [r.request_id for r in samplers], self.sampler(logits, batch)

    @staticmethod
    def kv_bytes_per_block(spec: list[tuple[tuple[int, ...], tuple[int, ...]]], block_size: int, dtype: torch.dtype) -> int:
        elem = torch.tensor([], dtype=dtype).element_size()
        per_token = sum(math.prod(k) + math.prod(v) for k, v in spec)
        return per_token * block_size * elem
