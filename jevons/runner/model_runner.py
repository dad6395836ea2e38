"""Turns a step's RunnerInput (runner/step_io.py) into one flat batch, runs
the model over the paged cache, samples at the positions that produce a token
(every draft position too, verified by runner/spec/verify.py) and returns a
RunnerOutput keyed by request id."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext
from jevons.runner.sampler import Sampler, SamplerOutput, SamplingBatch
from jevons.runner.spec.verify import accept
from jevons.runner.step_io import RunnerInput, RunnerOutput, RunRequest, SampledToken

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
        # Drafts made here for the next step (enable_mtp, enable_draft_model):
        # called after each forward as drafter(inp, hidden, out).
        self.drafter: Callable[[RunnerInput, torch.Tensor, RunnerOutput], None] | None = None

    def enable_cuda_graphs(self, max_batch: int, max_blocks_per_seq: int) -> None:
        """Capture decode steps as CUDA graphs (runner/cuda_graphs.py). Opt-in
        (JEVONS_CUDA_GRAPHS=1) until it has been timed and checked on a GPU."""
        from jevons.runner.cuda_graphs import DecodeGraphRunner

        self.graphs = DecodeGraphRunner(self.model, self.kv_caches, self.block_size, max_batch,
                                        max_blocks_per_seq, self.device)
        self.graphs.capture()

    def enable_mtp(self, num_drafts: int) -> None:
        """Draft with the checkpoint's MTP layer (runner/spec/mtp.py); its KV
        cache layer must be among kv_caches (runner/builder.py adds it)."""
        from jevons.runner.spec.mtp import MTPProposer

        if getattr(self.model, "mtp_layers", None) is None:
            raise ValueError("speculative method 'mtp' needs a checkpoint with a multi-token-prediction layer "
                             "(DeepSeek-V3/R1); this model has none")
        mtp = MTPProposer(num_drafts, self.block_size, self.device, self.every_row_decodes)
        self.drafter = lambda inp, hidden, out: mtp(self.model, self.kv_caches, inp, hidden, out)

    def enable_draft_model(self, model: nn.Module, kv_caches: list, num_drafts: int) -> None:
        """Draft with a smaller model over its own KV cache (runner/spec/draft_model.py)."""
        from jevons.runner.spec.draft_model import DraftModelProposer

        self.drafter = DraftModelProposer(model, kv_caches, num_drafts, self.block_size, self.device,
                                          self.every_row_decodes)

    def _build(self, inp: RunnerInput) -> tuple[torch.Tensor, torch.Tensor, ForwardContext, list[int]]:
        ids: list[int] = []
        query_lens: list[int] = []
        context_lens: list[int] = []
        sample_idx: list[int] = []
        width = max(1, max(len(r.block_ids) for r in inp.requests))
        rows: list[list[int]] = []  # block tables padded with 0, made a tensor in one call
        for r in inp.requests:
            ids.extend(r.token_ids)
            query_lens.append(len(r.token_ids))
            context_lens.append(r.context_len)
            rows.append(list(r.block_ids) + [0] * (width - len(r.block_ids)))
            if r.samples:  # the last row, and each draft's row before it
                sample_idx.extend(range(len(ids) - 1 - r.num_drafts, len(ids)))
        tables = torch.tensor(rows, dtype=torch.int64)
        if self.every_row_decodes:
            meta = AttentionMetadata.build_rows(query_lens, context_lens, tables, self.block_size, self.device)
        elif any(r.num_drafts for r in inp.requests):
            meta = _verify_as_decode_rows(inp, query_lens, context_lens, tables, self.block_size, self.device)
        else:
            meta = AttentionMetadata.build(query_lens, context_lens, tables, self.block_size, self.device)
        if all(q == 1 for q in query_lens):  # one token a request (decode): its position is its context length
            positions = torch.tensor(context_lens, dtype=torch.int64, device=self.device)
        else:
            ql = torch.tensor(query_lens)
            cl = torch.tensor(context_lens)
            starts = torch.repeat_interleave(cl - torch.cumsum(ql, 0) + ql, ql)
            positions = (torch.arange(len(ids)) + starts).to(self.device)
        input_ids = torch.tensor(ids, dtype=torch.int64, device=self.device)
        return input_ids, positions, ForwardContext(meta, self.kv_caches), sample_idx

    @torch.inference_mode()
    def execute(self, inp: RunnerInput) -> RunnerOutput:
        """Run one step: a forward over every request's tokens, and a draw for
        each request that samples."""
        input_ids, positions, ctx, sample_idx = self._build(inp)
        if self.graphs is not None and self.graphs.can_run(ctx.attn):
            hidden = self.graphs.run(input_ids, positions, ctx.attn)
        else:
            hidden = self.model(input_ids, positions, ctx)
        samplers = [r for r in inp.requests if r.samples]
        if not samplers:
            if self.drafter is not None:  # the drafter's cache catches up over these positions
                self.drafter(inp, hidden, RunnerOutput())
            return RunnerOutput()
        logits = self.model.compute_logits(hidden[torch.tensor(sample_idx, device=self.device)])
        # One sampling row per sampled position: a request with drafts has
        # 1 + num_drafts of them, in order, sharing its settings and generator.
        rows = [(r, j) for r in samplers for j in range(r.num_drafts + 1)]
        # Token history only when a row uses penalties; a row without them gets
        # none (its penalties are the identity either way). A draft row's
        # history includes the drafts before it, as if they had been accepted.
        penalties = any(r.prompt_ids is not None for r in samplers)
        batch = SamplingBatch(
            params=[r.params for r, _ in rows],
            generators=[r.generator for r, _ in rows],
            prompt_ids=[r.prompt_ids or [] for r, _ in rows] if penalties else [],
            output_ids=[(r.output_ids or []) + _drafts(r)[:j] for r, j in rows] if penalties else [],
            banned=[r.banned for r, _ in rows],
            # The grammar's mask fits the first row only (draft rows would need the
            # matcher advanced through the drafts): constrained requests get no drafts.
            grammar_masks=[r.grammar_mask if j == 0 else None for r, j in rows],
        )
        draws = _draws(self.sampler(logits, batch))
        out, i = RunnerOutput(), 0
        for r in samplers:
            out.sampled[r.request_id] = draws[i]
            if r.num_drafts:
                out.spec[r.request_id] = accept(_drafts(r), draws[i : i + r.num_drafts + 1])
            i += r.num_drafts + 1
        if self.drafter is not None:  # drafts for the next step, on each request's last new token
            self.drafter(inp, hidden, out)
        return out

    @staticmethod
    def kv_bytes_per_block(spec: list[tuple[tuple[int, ...], tuple[int, ...]]], block_size: int, dtype: torch.dtype) -> int:
        elem = torch.tensor([], dtype=dtype).element_size()
        per_token = sum(math.prod(k) + math.prod(v) for k, v in spec)
        return per_token * block_size * elem


def _verify_as_decode_rows(inp: RunnerInput, query_lens: list[int], context_lens: list[int], tables: torch.Tensor,
                           block_size: int, device: torch.device) -> AttentionMetadata:
    """A request verifying drafts attends as 1 + k decode rows (each token to
    the cache up to itself, as build_rows does for every row): the decode
    kernel, so the verified tokens see the attention arithmetic that plain
    decoding would have given them, and a few rows cost little more than one.
    Other requests (prefill chunks) keep their spans."""
    ql: list[int] = []
    cl: list[int] = []
    seq: list[int] = []
    for i, (r, q, c) in enumerate(zip(inp.requests, query_lens, context_lens)):
        if r.num_drafts:
            ql += [1] * q
            cl += range(c, c + q)
            seq += [i] * q
        else:
            ql.append(q)
            cl.append(c)
            seq.append(i)
    return AttentionMetadata.build(ql, cl, tables[torch.tensor(seq)], block_size, device)


def _drafts(r: RunRequest) -> list[int]:
    return r.token_ids[len(r.token_ids) - r.num_drafts :]


def _draws(sout: SamplerOutput) -> list[SampledToken]:
    """The sampler's batched tensors as one SampledToken per row."""
    tokens = sout.tokens.tolist()
    cols = [None if t is None else t.tolist() for t in (sout.logprobs, sout.ranks, sout.top_ids, sout.top_logprobs)]
    return [SampledToken(tok, *(None if c is None else c[i] for c in cols)) for i, tok in enumerate(tokens)]
