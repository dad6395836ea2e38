"""Tiny random DeepSeek-V2/V3 checkpoints built with transformers' own classes
(the independent implementation jevons is checked against), shared by the
test_deepseek_* files. Nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import build_tokenizer

V3_BASE = dict(
    hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
    n_shared_experts=1, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=24,
    v_head_dim=20, first_k_dense_replace=1, n_group=2, topk_group=1, norm_topk_prob=True,
    routed_scaling_factor=2.5, max_position_embeddings=512, initializer_range=0.06,
    eos_token_id=2, bos_token_id=None, tie_word_embeddings=False,
)
V2_BASE = dict(V3_BASE, topk_method="greedy", n_group=None, topk_group=None, norm_topk_prob=False,
               routed_scaling_factor=1.5, n_shared_experts=2)


def hf_classes(version: str):
    import transformers

    if version == "v3":
        return transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM
    return transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM


def build_deepseek(path: Path, version: str = "v3", seed: int = 0, **overrides) -> Path:
    """Save a tiny random DeepSeek `version` ("v2" | "v3") model to path, with a
    tokenizer, and return path. Norm weights, biases and V3's selection bias
    are randomized: transformers initializes them to constants, which would
    hide a missing or misplaced tensor."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(path)
    kw = dict(V3_BASE if version == "v3" else V2_BASE, vocab_size=vocab)
    kw.update(overrides)
    cfg_cls, model_cls = hf_classes(version)
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.2)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.05)
    model.save_pretrained(path)
    return path


def hf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def load_jevons(path: Path, dtype: torch.dtype = torch.float32):
    """jevons' model for a checkpoint folder, built the way the engine builds it."""
    from jevons.config import ModelConfig
    from jevons.loader.safetensors_reader import SafetensorsCheckpoint
    from jevons.runner.model_loader import load_model

    ckpt = SafetensorsCheckpoint(path)
    cfg = ModelConfig.from_hf(ckpt.config)
    return load_model(cfg, ckpt.iter_weights(dtype), dtype, torch.device("cpu"), progress=False)


class PagedDriver:
    """Feeds a jevons model step by step over a paged cache with scattered
    blocks, the way the runner does, without the scheduler in between."""

    def __init__(self, model, num_blocks: int = 96, block_size: int = 4, extra_layers: int = 0, seed: int = 0) -> None:
        from jevons.runner.kv_cache import allocate_kv_caches

        self.model, self.block_size = model, block_size
        layout = model.kv_cache_layout(block_size) if hasattr(model, "kv_cache_layout") else None
        spec = layout.main if layout else model.kv_cache_spec() + (model.mtp_kv_cache_spec() if extra_layers else [])
        dtype = next(model.parameters()).dtype
        self.caches = allocate_kv_caches(spec, num_blocks, block_size, dtype, torch.device("cpu"))
        if layout:  # DeepSeek-V4's window pool, here under the main pool's block ids
            self.caches += allocate_kv_caches(layout.window, num_blocks, block_size, dtype, torch.device("cpu"))
            self.caches += allocate_kv_caches(layout.short, num_blocks, block_size, dtype, torch.device("cpu"))
        self.free = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)).tolist()
        self.tables: dict[int, list[int]] = {}
        self.lens: dict[int, int] = {}

    def context(self, feeds: list[tuple[int, list[int]]]):
        """Reserve blocks and build (input_ids, positions, ForwardContext) for one step."""
        from jevons.kernels.attention_metadata import AttentionMetadata
        from jevons.models.forward_context import ForwardContext

        qlens, clens, ids, pos = [], [], [], []
        for seq, toks in feeds:
            ctx = self.lens.get(seq, 0)
            table = self.tables.setdefault(seq, [])
            while len(table) * self.block_size < ctx + len(toks):
                table.append(self.free.pop())
            qlens.append(len(toks))
            clens.append(ctx)
            ids += toks
            pos += range(ctx, ctx + len(toks))
        width = max(len(self.tables[s]) for s, _ in feeds)
        bt = torch.tensor([self.tables[s] + [0] * (width - len(self.tables[s])) for s, _ in feeds])
        meta = AttentionMetadata.build(qlens, clens, bt, self.block_size)
        return torch.tensor(ids), torch.tensor(pos), ForwardContext(meta, self.caches)

    @torch.no_grad()
    def step(self, feeds: list[tuple[int, list[int]]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run one flat batch; return per-feed logits and hidden states."""
        ids, pos, ctx = self.context(feeds)
        hidden = self.model(ids, pos, ctx)
        logits = self.model.compute_logits(hidden)
        sizes = [len(t) for _, t in feeds]
        for seq, toks in feeds:
            self.lens[seq] = self.lens.get(seq, 0) + len(toks)
        return list(logits.split(sizes)), list(hidden.split(sizes))
