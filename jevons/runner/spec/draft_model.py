"""A smaller model sharing the tokenizer as the proposer (`"method":
"draft_model"`, `"model": PATH`).

The draft model has its own paged KV cache, laid out like the target's and
addressed through the same block tables (its pool has as many blocks), so
the target's allocation, rollback, preemption and prefix reuse cover it too.
After each target forward it catches up over the same computed, kept
positions plus the step's last new token, then decodes greedily k - 1 more
tokens (a point mass per draft, as the verifier's rule requires), each only
where the request's blocks already cover its position. A block loaded from a
host/disk tier carries no draft KV: drafts over it are poor, never wrong."""
from __future__ import annotations

import torch
from torch import nn

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext
from jevons.runner.step_io import RunnerInput, RunnerOutput


class DraftModelProposer:
    def __init__(self, model: nn.Module, kv_caches: list, num_drafts: int, block_size: int, device: torch.device,
                 every_row_decodes: bool) -> None:
        self.model, self.kv_caches, self.k = model, kv_caches, num_drafts
        self.block_size, self.device = block_size, device
        self.build = AttentionMetadata.build_rows if every_row_decodes else AttentionMetadata.build

    def _forward(self, ids: list[int], qlens: list[int], clens: list[int], tables: list[list[int]]) -> torch.Tensor:
        bt = torch.zeros(len(tables), max(max(len(t) for t in tables), 1), dtype=torch.int64)
        for i, t in enumerate(tables):
            bt[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
        ctx = ForwardContext(self.build(qlens, clens, bt, self.block_size, self.device), self.kv_caches)
        positions = torch.cat([torch.arange(c, c + q) for q, c in zip(qlens, clens)]).to(self.device)
        return self.model(torch.tensor(ids, dtype=torch.int64, device=self.device), positions, ctx)

    def _covered(self, pos: int, block_ids: list[int]) -> bool:
        return pos < len(block_ids) * self.block_size

    @torch.inference_mode()
    def __call__(self, inp: RunnerInput, hidden: torch.Tensor, out: RunnerOutput) -> None:
        ids: list[int] = []
        qlens, clens, tables = [], [], []
        heads: list[tuple[str, int, int, list[int]]] = []  # request id, its last row, that row's position, blocks
        for r in inp.requests:
            known = len(r.token_ids) - r.num_drafts
            seq = r.token_ids[:known]
            if r.samples:
                new = [t.token for t in out.tokens(r.request_id)]
                seq = seq + new  # the accepted drafts are new[:-1]; new[-1] is the step's last token
                if not self._covered(r.context_len + len(seq) - 1, r.block_ids):
                    seq = seq[:-1]  # no slot for the last token yet: no drafts this time
                elif r.request_id in out.sampled:
                    heads.append((r.request_id, len(ids) + len(seq) - 1, r.context_len + len(seq) - 1, r.block_ids))
            if seq:
                ids += seq
                qlens.append(len(seq))
                clens.append(r.context_len)
                tables.append(r.block_ids)
        if not ids:
            return
        h = self._forward(ids, qlens, clens, tables)
        if not heads:
            return
        tok = self.model.compute_logits(h[torch.tensor([row for _, row, _, _ in heads])]).max(-1).indices.tolist()
        drafts = [[t] for t in tok]
        live = list(range(len(heads)))
        for j in range(1, self.k):
            live = [i for i in live if self._covered(heads[i][2] + j, heads[i][3])]
            if not live:
                break
            h = self._forward([drafts[i][-1] for i in live], [1] * len(live), [heads[i][2] + j for i in live],
                              [heads[i][3] for i in live])
            for i, t in zip(live, self.model.compute_logits(h).max(-1).indices.tolist()):
                drafts[i].append(t)
        for (rid, _, _, _), d in zip(heads, drafts):
            out.tokens(rid)[-1].drafts = d
