"""DeepSeek-V4 (DeepseekV4ForCausalLM): V4-Flash and V4-Pro.

Per layer: mHC (manifold-constrained hyper-connections, kernels/torch_ref/
mhc.py) carries `hc_mult` residual streams; the attention block is
layers/v4_attention.py (sliding window, + CSA or HCA compressed entries);
the MLP block is a MoE with a sqrtsoftplus router (hash routing by token id
in the first layers) and a clamped SwiGLU, plus a shared expert
(kernels/torch_ref/v4_routing.py). The final streams collapse through the
hyper head, then the norm and the output head.

Names are the checkpoints' own (`layers.N.attn.wq_a`, `layers.N.ffn.experts.E.w1`,
`layers.N.hc_attn_fn`, `head.weight`, ...), so loading is by name. The MTP
layer of the checkpoint is not served (transformers does not build it
either); FP8 weights (`X.weight` + an e8m0 `X.scale` per 128 x 128 block) are
dequantized at load, and so are FP4-packed experts (two e2m1 per byte, an e8m0
scale per 32 columns).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from jevons.config import ModelConfig
from jevons.kernels.torch_ref.fp4 import dequant_fp4
from jevons.kernels.torch_ref.v4_attention import rms_norm
from jevons.kernels.torch_ref.mhc import hc_collapse, hc_expand, hc_head, hc_weights
from jevons.kernels.torch_ref.v4_routing import clamped_swiglu, hash_experts_v4, select_experts_v4
from jevons.models.forward_context import ForwardContext
from jevons.models.layers.fp8 import FP8_DTYPES, SCALE_SUFFIX, block_size_from_config, pair_fp8_weights
from jevons.models.layers.rotary import rope_inv_freq
from jevons.models.layers.v4_attention import CSA, HCA, SLIDING, V4Attention, V4AttentionConfig, Weight
from jevons.models.layers.v4_cache import V4CacheLayout, V4Step, build_step

CacheSpec = list[tuple[tuple[int, ...], tuple[int, ...]]]
# DeepSeek's own top-level names -> ours (transformers' save writes ours).
_TOP_LEVEL = {"embed.weight": "embed_tokens.weight", "hc_head_fn": "hc_head.hc_fn", "hc_head_base": "hc_head.hc_base",
              "hc_head_scale": "hc_head.hc_scale"}
_RATIO_TYPES = {0: SLIDING, 1: SLIDING}


def v4_layer_types(hf: dict, rates: dict[str, int]) -> list[str]:
    """`layer_types` (transformers) or `compress_ratios` (DeepSeek's configs)."""
    n = int(hf["num_hidden_layers"])
    if hf.get("layer_types"):
        return list(hf["layer_types"][:n])
    by_rate = {**_RATIO_TYPES, rates[CSA]: CSA, rates[HCA]: HCA}
    if hf.get("compress_ratios"):
        return [by_rate[int(r)] for r in hf["compress_ratios"][:n]]
    return [HCA] * min(n, 2) + [CSA if i % 2 else HCA for i in range(max(n - 2, 0))]


def _rope(hf: dict, kind: str, rope_dim: int) -> torch.Tensor:
    """inv_freq of the "main" rope (sliding layers: rope_theta, no scaling) or
    the "compress" one (compress_rope_theta, with the config's YaRN but no
    attention-factor scaling of cos/sin)."""
    params = hf.get("rope_parameters") or {}
    if isinstance(params.get(kind), dict):
        p = dict(params[kind])
    elif kind == "main":
        p = {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    else:
        p = dict(hf.get("rope_scaling") or {}, rope_theta=hf.get("compress_rope_theta", 160000.0))
    base = float(p.pop("rope_theta"))
    kind_name = p.get("rope_type", p.get("type", "default"))
    scaling = None if kind_name == "default" else dict(p, attention_factor=1.0)
    with torch.device("cpu"):  # models are built on the meta device; this table is real
        inv, _ = rope_inv_freq(rope_dim, base, scaling, int(hf.get("max_position_embeddings", 4096)))
    return inv


_FP4_DTYPES = {torch.int8, torch.uint8} | ({torch.float4_e2m1fn_x2} if hasattr(torch, "float4_e2m1fn_x2") else set())


def v4_scales(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
    """V4 checkpoints name a scale `X.scale` (float8_e8m0: powers of two)
    where V3 wrote `X.weight_scale_inv`. FP4-packed weights (the routed
    experts of `expert_dtype: fp4`) are dequantized here with their per-32
    scales; FP8 ones get their scale renamed for the shared FP8 pairing."""
    fp4: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for name, t in weights:
        if name.endswith(".scale") and not name.endswith("_scale"):
            base = name[: -len(".scale")] + ".weight"
            if base in fp4:
                yield base, dequant_fp4(fp4.pop(base), t)
            else:
                scales[base] = t
        elif name.endswith(".weight") and t.dtype in _FP4_DTYPES:
            if name in scales:
                yield name, dequant_fp4(t, scales.pop(name))
            else:
                fp4[name] = t
        elif name in scales:  # an FP8 weight whose scale came first
            yield name + SCALE_SUFFIX, scales.pop(name).float()
            yield name, t
        else:
            yield name, t
    if fp4:
        raise ValueError(f"FP4 weights without their scale: {sorted(fp4)[:5]}")
    for base, s in scales.items():  # scales of FP8 weights that came first, or after
        yield base + SCALE_SUFFIX, s.float()


class SharedExpert(nn.Module):
    def __init__(self, hidden: int, inter: int, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.w1 = nn.Linear(hidden, inter, bias=False)  # gate
        self.w2 = nn.Linear(inter, hidden, bias=False)  # down
        self.w3 = nn.Linear(hidden, inter, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(clamped_swiglu(self.w1(x), self.w3(x), self.limit))


class Experts(nn.Module):
    """All routed experts' w1 / w2 / w3 stacked: [E, I, H], [E, H, I], [E, I, H]."""

    def __init__(self, num: int, hidden: int, inter: int, limit: float) -> None:
        super().__init__()
        self.limit = limit
        self.w1 = nn.Parameter(torch.empty(num, inter, hidden))
        self.w2 = nn.Parameter(torch.empty(num, hidden, inter))
        self.w3 = nn.Parameter(torch.empty(num, inter, hidden))

    def forward(self, x: torch.Tensor, ids: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in ids.unique().tolist():
            tok, slot = torch.where(ids == e)
            h = clamped_swiglu(F.linear(x[tok], self.w1[e]), F.linear(x[tok], self.w3[e]), self.limit)
            out.index_add_(0, tok, F.linear(h, self.w2[e]) * gates[tok, slot, None].to(x.dtype))
        return out


class Gate(nn.Module):
    def __init__(self, num: int, hidden: int, vocab: int, top_k: int, hashed: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, hidden))
        self.hashed = hashed
        self.num = num
        if hashed:  # token id -> its k experts: integers, a buffer the checkpoint fills
            self.register_buffer("tid2eid", torch.zeros(vocab, top_k, dtype=torch.int64))
        else:
            self.bias = nn.Parameter(torch.zeros(num))  # selection bias (e_score_correction_bias)


class V4MoE(nn.Module):
    def __init__(self, hf: dict, hashed: bool) -> None:
        super().__init__()
        h, inter, limit = int(hf["hidden_size"]), int(hf["moe_intermediate_size"]), float(hf.get("swiglu_limit", 10.0))
        self.top_k, self.scale = int(hf["num_experts_per_tok"]), float(hf.get("routed_scaling_factor", 1.0))
        num = int(hf["n_routed_experts"])
        self.gate = Gate(num, h, int(hf["vocab_size"]), self.top_k, hashed)
        self.experts = Experts(num, h, inter, limit)
        self.shared_experts = SharedExpert(h, inter * int(hf.get("n_shared_experts") or 1), limit)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.gate.weight)
        if self.gate.hashed:
            gates, ids = hash_experts_v4(logits, input_ids, self.gate.tid2eid, self.scale)
        else:
            gates, ids = select_experts_v4(logits, self.top_k, self.gate.bias, self.scale)
        return self.experts(x, ids, gates) + self.shared_experts(x)


class V4Block(nn.Module):
    def __init__(self, hf: dict, c: V4AttentionConfig, idx: int, kind: str, hashed: bool, rope: torch.Tensor) -> None:
        super().__init__()
        n, h = int(hf.get("hc_mult") or 1), c.hidden
        mixes = (2 + n) * n
        self.hc_iters, self.hc_eps = int(hf.get("hc_sinkhorn_iters", 20)), float(hf.get("hc_eps", 1e-6))
        self.attn = V4Attention(c, idx, kind, rope)
        self.ffn = V4MoE(hf, hashed)
        self.attn_norm, self.ffn_norm = Weight(h), Weight(h)
        self.hc_attn_fn = nn.Parameter(torch.empty(mixes, n * h))
        self.hc_attn_base = nn.Parameter(torch.empty(mixes))
        self.hc_attn_scale = nn.Parameter(torch.empty(3))
        self.hc_ffn_fn = nn.Parameter(torch.empty(mixes, n * h))
        self.hc_ffn_base = nn.Parameter(torch.empty(mixes))
        self.hc_ffn_scale = nn.Parameter(torch.empty(3))

    def forward(
        self, positions: torch.Tensor, streams: torch.Tensor, input_ids: torch.Tensor, ctx: ForwardContext,
        step: V4Step,
    ) -> torch.Tensor:
        """streams [T, hc_mult, hidden] -> the same after attention and MoE."""
        iters, hc_eps, eps = self.hc_iters, self.hc_eps, self.attn.c.eps
        pre, post, comb = hc_weights(streams, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale, eps, hc_eps, iters)
        a = self.attn(positions, rms_norm(hc_collapse(streams, pre), self.attn_norm.weight, eps), ctx, step)
        streams = hc_expand(a, streams, post, comb)
        pre, post, comb = hc_weights(streams, self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale, eps, hc_eps, iters)
        f = self.ffn(rms_norm(hc_collapse(streams, pre), self.ffn_norm.weight, eps), input_ids)
        return hc_expand(f, streams, post, comb)


class HyperHead(nn.Module):
    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        self.hc_fn = nn.Parameter(torch.empty(n, n * hidden))
        self.hc_base = nn.Parameter(torch.empty(n))
        self.hc_scale = nn.Parameter(torch.empty(1))


class DeepseekV4ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hf = cfg.hf
        rates = {CSA: 4, HCA: 128, **(hf.get("compress_rates") or {})}
        d = int(hf["head_dim"])
        rope_dim = int(hf.get("qk_rope_head_dim") or d * float(hf.get("partial_rotary_factor") or 64 / 512))
        self.attn_cfg = c = V4AttentionConfig(
            hidden=cfg.hidden_size, heads=cfg.num_attention_heads, head_dim=d, q_lora_rank=int(hf["q_lora_rank"]),
            o_groups=int(hf["o_groups"]), o_lora_rank=int(hf["o_lora_rank"]),
            window=int(hf.get("sliding_window") or 128), eps=cfg.rms_norm_eps,
            index_heads=int(hf["index_n_heads"]), index_head_dim=int(hf["index_head_dim"]),
            index_topk=int(hf["index_topk"]), csa_rate=int(rates[CSA]), hca_rate=int(rates[HCA]),
        )
        types = v4_layer_types(hf, rates)
        n_hash = hf.get("num_hash_layers", 3)
        mlp_types = hf.get("mlp_layer_types") or ["hash_moe"] * n_hash + ["moe"] * (len(types) - n_hash)
        ropes = {"main": _rope(hf, "main", rope_dim), "compress": _rope(hf, "compress", rope_dim)}
        self.hc_mult = int(hf.get("hc_mult") or 1)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            V4Block(hf, c, i, kind, mlp_types[i] == "hash_moe", ropes["main" if kind == SLIDING else "compress"])
            for i, kind in enumerate(types)
        )
        self.norm = Weight(cfg.hidden_size)
        self.hc_head = HyperHead(self.hc_mult, cfg.hidden_size)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        c, kinds = self.attn_cfg, set(types)
        # Tokens before a step whose window entries (and HCA's inputs) it reads;
        # CSA's inputs, in their own short lane, only 2m - 1 (v4_cache.py).
        self._retain = max([c.window - 1] + [c.hca_rate - 1] * (HCA in kinds))
        self._short_retain = 2 * c.csa_rate - 1 if CSA in kinds else 0

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        streams = x[:, None].expand(-1, self.hc_mult, -1).contiguous()
        n = len(self.layers)
        if len(ctx.kv_caches) < (3 if self._short_retain else 2) * n:
            raise ValueError("DeepSeek-V4 needs its window pool: kv_caches = main pairs, then window pairs, "
                             "then short-lane pairs (kv_cache_layout)")
        step = build_step(ctx.attn, ctx.kv_caches[0][0].shape[0], n, self._retain, ctx.kv_caches[n][0].shape[0],
                          self._short_retain)
        for layer in self.layers:
            streams = layer(positions, streams, input_ids, ctx, step)
        h = self.hc_head
        eps = self.attn_cfg.eps
        return rms_norm(hc_head(streams, h.hc_fn, h.hc_base, h.hc_scale, eps, self.layers[0].hc_eps), self.norm.weight, eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # Called as a module, so --deterministic's row-tiled wrapper applies.
        return self.head(hidden).float()

    def kv_cache_spec(self, block_size: int = 16) -> CacheSpec:
        """The engine's blocks: compressed entries only (models/layers/v4_cache.py)."""
        return self.kv_cache_layout(block_size).main

    def kv_cache_layout(self, block_size: int) -> V4CacheLayout:
        """Every pool: the engine's blocks, the window pool with how many
        tokens before a step's first one it reads there (the window, and HCA's
        raw inputs of groups still open: m' - 1), and the short lane for CSA's
        raw inputs (2m - 1, its overlapping series)."""
        pairs = [layer.attn.cache_entries(block_size) for layer in self.layers]
        short = [p[2] for p in pairs] if self._short_retain else []
        return V4CacheLayout([p[0] for p in pairs], [p[1] for p in pairs], self._retain, short, self._short_retain)

    # --- weights --------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        params.update((k, b) for k, b in self.named_buffers() if k.endswith("tid2eid"))
        loaded: set[str] = set()
        n = len(self.layers)
        for hf_name, t, _scale in pair_fp8_weights(v4_scales(weights), block_size_from_config(self.cfg.hf)):
            name = hf_name.removeprefix("model.")
            name = _TOP_LEVEL.get(name, name)
            if name.startswith("mtp.") or (name.startswith("layers.") and int(name.split(".")[1]) >= n):
                continue  # the MTP layer is not served
            parts = name.split(".")
            if ".ffn.experts." in name and parts[-1] == "weight":  # layers.L.ffn.experts.E.wK.weight
                target = ".".join(parts[:4] + [parts[5]])
                params[target].data[int(parts[4])].copy_(t)
                loaded.add(f"{target}#{parts[4]}")
                continue
            if name not in params:
                raise KeyError(f"checkpoint tensor {hf_name!r} has no place in the DeepSeek-V4 model")
            if t.dtype in FP8_DTYPES:
                raise ValueError(f"FP8 tensor {hf_name!r} came without its block scale")
            params[name].data.copy_(t.reshape(params[name].shape))
            loaded.add(name)
        self._loaded = loaded
        return loaded

    def post_load(self) -> None:
        """Dummy weights (nothing loaded): give hash layers a valid token table."""
        if getattr(self, "_loaded", None):
            return
        for m in self.modules():
            if isinstance(m, Gate) and m.hashed:
                v, k = m.tid2eid.shape
                m.tid2eid.copy_((torch.arange(v)[:, None] * k + torch.arange(k)[None, :]) % m.num)

    def expected_weights(self) -> set[str]:
        out: set[str] = {k for k, _ in self.named_buffers() if k.endswith("tid2eid")}
        for name, p in self.named_parameters():
            if ".ffn.experts.w" in name:
                out |= {f"{name}#{e}" for e in range(p.shape[0])}
            else:
                out.add(name)
        return out
