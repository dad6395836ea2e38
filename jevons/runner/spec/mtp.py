"""DeepSeek multi-token prediction as the proposer (`"method": "mtp"`).

The checkpoint's MTP block (models/layers/mtp.py) maps (h_i, t_{i+1}) to the
logits of t_{i+2}. It has its own attention and so its own KV cache layer
(index num_hidden_layers), paged with the request's block table like every
other layer: rejected drafts roll back with the request's slots, prefix-cache
blocks carry it, and a recompute after preemption refills it.

After each forward the runner calls this with the step's hidden states: one
MTP pass over every position the step computed and kept (next tokens: the
fed tokens shifted by one, then the tokens the step produced, or a chunk's
next prompt token), which fills the MTP cache; the last kept position of a
request that sampled yields draft 1, and each further draft chains the MTP
block on its own output (DeepSeek's and SGLang's recipe for k > 1). Drafts
are greedy (a point mass, which the verifier's rule requires) and ride on
the request's last SampledToken."""
from __future__ import annotations

import torch

from jevons.kernels.attention_metadata import AttentionMetadata
from jevons.models.forward_context import ForwardContext
from jevons.runner.step_io import RunnerInput, RunnerOutput


class MTPProposer:
    def __init__(self, num_drafts: int, block_size: int, device: torch.device, every_row_decodes: bool) -> None:
        self.k = num_drafts
        self.block_size = block_size
        self.device = device
        self.build = AttentionMetadata.build_rows if every_row_decodes else AttentionMetadata.build

    def _ctx(self, qlens: list[int], clens: list[int], tables: list[list[int]], kv_caches: list) -> ForwardContext:
        width = max(max(len(t) for t in tables), 1)
        bt = torch.zeros(len(tables), width, dtype=torch.int64)
        for i, t in enumerate(tables):
            bt[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
        return ForwardContext(self.build(qlens, clens, bt, self.block_size, self.device), kv_caches)

    @torch.inference_mode()
    def __call__(self, model: torch.nn.Module, kv_caches: list, inp: RunnerInput, hidden: torch.Tensor,
                 out: RunnerOutput) -> None:
        rows: list[int] = []
        next_ids: list[int] = []
        positions: list[int] = []
        qlens, clens, tables = [], [], []
        heads: list[tuple[str, int, int, list[int]]] = []  # request id, last MTP row, its position, block ids
        flat = 0
        for r in inp.requests:
            m = len(r.token_ids)
            known = m - r.num_drafts
            if r.samples:
                new = [t.token for t in out.tokens(r.request_id)]
                kept = known + len(new) - 1  # the fed tokens and the accepted drafts
                nxt = (r.token_ids[:known] + new)[1 : kept + 1]
            elif r.next_token_id is not None:
                kept, nxt = m, r.token_ids[1:] + [r.next_token_id]
            else:
                kept, nxt = m - 1, r.token_ids[1:]
            if kept > 0:
                rows.extend(range(flat, flat + kept))
                next_ids.extend(nxt)
                positions.extend(range(r.context_len, r.context_len + kept))
                qlens.append(kept)
                clens.append(r.context_len)
                tables.append(r.block_ids)
                if r.samples:
                    heads.append((r.request_id, len(rows) - 1, r.context_len + kept - 1, r.block_ids))
            flat += m
        if not rows:
            return
        dev = self.device
        h = model.forward_mtp(torch.tensor(next_ids, device=dev), torch.tensor(positions, device=dev),
                              hidden[torch.tensor(rows, device=dev)], self._ctx(qlens, clens, tables, kv_caches))
        if not heads:
            return
        h = h[torch.tensor([row for _, row, _, _ in heads], device=dev)]
        drafts = [[t] for t in model.compute_logits(h).max(-1).indices.tolist()]
        live = list(range(len(heads)))  # h's rows are these heads, in order
        for j in range(1, self.k):
            # Chain at position P + j (P: the last kept position), only where the
            # request's blocks already cover it (the slot must be its own).
            keep = [n for n, i in enumerate(live) if heads[i][2] + j < len(heads[i][3]) * self.block_size]
            if not keep:
                break
            live = [live[n] for n in keep]
            ctx = self._ctx([1] * len(live), [heads[i][2] + j for i in live], [heads[i][3] for i in live], kv_caches)
            h = model.forward_mtp(torch.tensor([drafts[i][-1] for i in live], device=dev),
                                  torch.tensor([heads[i][2] + j for i in live], device=dev),
                                  h[torch.tensor(keep, device=dev)], ctx)
            for i, t in zip(live, model.compute_logits(h).max(-1).indices.tolist()):
                drafts[i].append(t)
        for (rid, _, _, _), d in zip(heads, drafts):
            out.tokens(rid)[-1].drafts = d
