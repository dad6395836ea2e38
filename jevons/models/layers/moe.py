"""DeepSeekMoE: a router, routed experts stored as stacked [E, ...] tensors, and
optional always-on shared experts.

Stacking the experts (rather than E separate Linear modules) is what lets a
fused kernel take the whole layer in one call; the torch backend slices it.

Over tensor-parallel ranks (layers/tensor_parallel.py) the router and its
bias are replicated, so every rank picks the same experts for every token
(it routes the same all-reduced hidden state with the same weights). The
routed experts split one of two ways: by default each expert's intermediate
size is cut like a dense MLP's (every rank holds every expert, 1/N of each);
with expert parallelism each rank holds E/N whole experts and runs only the
(token, expert) pairs routed to them. The shared experts are cut like a
dense MLP either way. Both give each rank a partial sum of the layer's
output, and one all-reduce (the same one a dense MLP block costs) adds the
ranks' routed and shared parts together. An all-to-all dispatch would send
fewer bytes only if the ranks held different tokens (DP-attention); here
every rank already has every token, so the all-reduce is the whole exchange.

Under DP-attention (TensorParallel.dp_attention) each rank holds only its own
requests' tokens: the layer all-gathers every rank's rows first, runs its
experts on all of them, all-reduces and keeps its own rows; the shared
experts are whole on each rank and run on its own tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from jevons.kernels.registry import ops_for
from jevons.kernels.torch_ref.moe import fused_experts
from jevons.kernels.torch_ref.moe_routing import RouterConfig, gate_logits
from jevons.models.layers.tensor_parallel import TensorParallel
from jevons.models.llama import LlamaMLP

# Checkpoint projection name -> (stacked parameter, row offset in units of the shard size)
_EXPERT_SHARDS = {"gate_proj": ("w13", 0), "up_proj": ("w13", 1), "down_proj": ("w2", 0)}


class MoEGate(nn.Module):
    def __init__(self, hidden: int, num_experts: int, with_bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        # V3's selection bias stays float32 whatever the model dtype: it decides
        # near-ties between experts, and bf16 would round many of them away.
        self.e_score_correction_bias = (
            nn.Parameter(torch.zeros(num_experts, dtype=torch.float32), requires_grad=False) if with_bias else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Router logits, computed in float32 as the reference implementations do."""
        return gate_logits(x, self.weight)


class StackedExperts(nn.Module):
    """w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I].

    FP8 checkpoints leave their block scales here (`w13_scale_inv`
    [E, 2*ceil(I/b), ceil(H/b)], `w2_scale_inv`) for a future FP8 backend."""

    def __init__(self, num_experts: int, hidden: int, inter: int) -> None:
        super().__init__()
        self.num_experts, self.hidden, self.inter = num_experts, hidden, inter
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * inter, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, inter))
        self.w13_scale_inv: torch.Tensor | None = None
        self.w2_scale_inv: torch.Tensor | None = None

    def load(self, expert: int, proj: str, tensor: torch.Tensor, scale: torch.Tensor | None) -> str:
        """Copy one checkpoint tensor `experts.{expert}.{proj}.weight` in; return its tag."""
        name, shard = _EXPERT_SHARDS[proj]
        dst = getattr(self, name).data[expert]
        if name == "w13":
            dst = dst[shard * self.inter : (shard + 1) * self.inter]
        dst.copy_(tensor)
        if scale is not None:
            self._keep_scale(name, expert, shard, scale)
        return f"{name}#{expert}#{proj}"

    def load_stacked(self, proj: str, tensor: torch.Tensor) -> set[str]:
        """Copy one projection of every expert at once (a GGUF's 3-D
        `ffn_{gate,up,down}_exps`, [E, out, in]); return their tags."""
        name, shard = _EXPERT_SHARDS[proj]
        dst = getattr(self, name).data
        if name == "w13":
            dst = dst[:, shard * self.inter : (shard + 1) * self.inter]
        if tuple(tensor.shape) != tuple(dst.shape):
            raise ValueError(f"stacked experts {proj}: got {tuple(tensor.shape)}, expected {tuple(dst.shape)}")
        dst.copy_(tensor)
        return {f"{name}#{e}#{proj}" for e in range(self.num_experts)}

    def _keep_scale(self, name: str, expert: int, shard: int, scale: torch.Tensor) -> None:
        attr = f"{name}_scale_inv"
        rows = scale.shape[0]
        if getattr(self, attr) is None:
            parts = 2 if name == "w13" else 1
            setattr(self, attr, torch.empty(self.num_experts, parts * rows, scale.shape[1], dtype=scale.dtype))
        getattr(self, attr)[expert, shard * rows : (shard + 1) * rows].copy_(scale)

    def expected(self, prefix: str) -> set[str]:
        return {f"{prefix}{_EXPERT_SHARDS[p][0]}#{e}#{p}" for e in range(self.num_experts) for p in _EXPERT_SHARDS}


class DeepseekMoE(nn.Module):
    def __init__(
        self,
        hidden: int,
        moe_inter: int,
        router: RouterConfig,
        n_shared: int,
        shared_bias: bool = False,
        tp: TensorParallel = TensorParallel(),
    ) -> None:
        super().__init__()
        self.router = router
        self.tp = tp
        self.gate = MoEGate(hidden, router.num_experts, with_bias=router.method == "noaux_tc")
        # Global ids [first_expert, first_expert + len) live here (all of them without EP).
        self.first_expert, n_local = tp.experts(router.num_experts)
        whole = tp.expert_parallel or tp.dp_attention
        inter = moe_inter if whole else tp.split(moe_inter, "moe_intermediate_size")
        self.experts = StackedExperts(n_local, hidden, inter)
        # Cut like a dense MLP, or whole under DP-attention (each rank's own tokens).
        self.shared_experts = LlamaMLP(hidden, moe_inter * n_shared, shared_bias, tp.dense()) if n_shared else None
        self.int4_experts: nn.Module | None = None  # quantize_experts_int4()

    def quantize_experts_int4(self) -> None:
        """Serve the routed experts at 4 bits on the CPU (layers/moe_int4.py);
        the float stacked weights are freed."""
        from jevons.models.layers.moe_int4 import Int4Experts

        self.int4_experts = Int4Experts(self.experts.w13.data, self.experts.w2.data)
        self.experts.w13 = nn.Parameter(torch.empty(0), requires_grad=False)
        self.experts.w2 = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.dp_attention and self.tp.size > 1:
            return self._forward_dp(x)
        weights, ids = self._select(x)
        if self.tp.expert_parallel and self.tp.size > 1:
            out = self._local_experts(x, weights, ids)
        else:
            out = self._routed(x, weights, ids)
        if self.shared_experts is not None:
            s = self.shared_experts  # its partial sum; the one all-reduce below adds the ranks'
            out += s.down_proj(ops_for(x.device).silu_and_mul(s.gate_up_proj(x)))  # out is this call's own
        return self.tp.all_reduce(out)

    def _forward_dp(self, x: torch.Tensor) -> torch.Tensor:
        """DP-attention: x holds this rank's tokens only. Gather every rank's
        tokens, route them all (identically on every rank), run this rank's
        experts on the pairs routed to them, sum the ranks' partials with one
        all-reduce and keep this rank's rows; the shared experts run here on
        the rank's own tokens, whole."""
        rows, mine = self.tp.gather_rows(x)
        if rows.shape[0] == 0:  # no rank has a token: every rank skips alike
            return x.clone()
        weights, ids = self._select(rows)
        out = self.tp.all_reduce(self._local_experts(rows, weights, ids))[mine]
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out

    def _select(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The gate and the selection: one C call on the cpu backend
        # (kernels/cpu/moe_router.py), the gate then Triton's top-k on CUDA.
        return ops_for(x.device).route_experts(x, self.gate.weight, self.router, self.gate.e_score_correction_bias)

    def _routed(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """sum_k weight * expert(x) over the experts held here, ids local."""
        if x.device.type == "cuda":
            # The fused Triton kernels when available (kernels/registry.py).
            return ops_for(x.device).fused_experts(x, self.experts.w13, self.experts.w2, weights, ids)
        if self.int4_experts is not None:
            return self.int4_experts(x, weights, ids)
        return fused_experts(x, self.experts.w13, self.experts.w2, weights, ids)

    def _local_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Expert parallelism: only the (token, expert) pairs whose expert is
        held here, each as a row of its own (top-1 into the local experts), so
        any backend's kernel runs them unchanged; zeros for tokens with none."""
        local = ids - self.first_expert
        mine = (local >= 0) & (local < self.experts.num_experts)
        tok, slot = mine.nonzero(as_tuple=True)
        out = torch.zeros_like(x)
        if tok.numel():
            y = self._routed(x[tok], weights[tok, slot].unsqueeze(1), local[tok, slot].unsqueeze(1))
            out.index_add_(0, tok, y)
        return out

