"""The step loop: schedule -> execute -> update -> output.

Everything here runs on one thread; AsyncEngine drives it from its own thread
and LLM drives it synchronously."""
from __future__ import annotations

import logging
import os
import time

import torch

from jevons.config import EngineConfig, ModelConfig, parse_dtype
from jevons.engine.cache_fingerprint import cache_fingerprint
from jevons.engine.cache_tiers import build_cache_tiers
from jevons.engine.kv_cache_manager import KVCacheManager
from jevons.engine.output_processor import OutputProcessor, SeqDelta, make_logprobs
from jevons.engine.reasoning_budget import ReasoningBudget
from jevons.engine.request import Request
from jevons.engine.scheduler import Scheduler
from jevons.errors import InvalidRequestError
from jevons.runner.kv_cache import allocate_kv_caches, num_blocks_for
from jevons.runner.model_loader import load_model
from jevons.runner.model_runner import ModelRunner
from jevons.sampling_params import SamplingParams

log = logging.getLogger("jevons")


class EngineCore:
    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        from jevons.loader.checkpoint import load_checkpoint
        from jevons.loader.resolve import resolve_model
        from jevons.loader.tokenizer import load_tokenizer

        self.config = config
        t0 = time.monotonic()
        self.device = torch.device(config.device)
        self.dtype = parse_dtype(config.dtype, config.device)
        weights, n_tensors, stored_bits, levels_for = None, None, None, None
        preset = self._dummy_preset(config)
        if preset is not None:
            from jevons.loader.id_tokenizer import IdTokenizer

            self.model_path, self.model_name = None, config.model
            self.model_config = ModelConfig.from_hf({**preset, **(config.hf_overrides or {})})
            self.tokenizer = IdTokenizer(self.model_config.vocab_size)
        else:
            resolved = resolve_model(config.model)
            self.model_path = resolved.path
            self.model_name = resolved.name
            ckpt = load_checkpoint(resolved)
            self.tokenizer = load_tokenizer(resolved)
            self.model_config = ModelConfig.from_hf({**ckpt.config, **(config.hf_overrides or {})})
            if config.load_format != "dummy":
                weights, n_tensors = ckpt.iter_weights(self.dtype), len(ckpt.tensor_names())
                stored_bits = ckpt.stored_bits()
                levels_for = ckpt.quantized_levels  # a GGUF's own blocks, not rounded again
        model = load_model(self.model_config, weights, self.dtype, self.device, n_tensors, progress)
        from jevons.models.layers.linear import quantize_model, resolve_quantization

        self.quantization = resolve_quantization(config.quantization, stored_bits, self.dtype, self.device)
        if self.quantization != "none":
            n = quantize_model(model, self.quantization, levels_for=levels_for)
            log.info("quantized %d linear layers to %s", n, self.quantization)
        if self.device.type == "cpu":
            from jevons.models.layers.packed_linear import pack_model
            from jevons.runner.cpu_malloc import tune_malloc

            tune_malloc()
            log.info("prepacked %d linear layers for oneDNN", pack_model(model))
        if config.deterministic:
            from jevons.models.layers.batch_invariant import make_batch_invariant

            log.info("deterministic: %d linear layers run in fixed row tiles", make_batch_invariant(model, self.dtype))
        self._setup(model, time.monotonic() - t0)

    @staticmethod
    def _dummy_preset(config: EngineConfig) -> dict | None:
        """A config-only preset (e.g. "deepseek-v2-lite") with load_format="dummy":
        random weights, nothing read from disk. A real local model wins."""
        from pathlib import Path

        from jevons.loader.presets import get_preset, list_presets

        if config.load_format != "dummy" or Path(config.model).exists():
            return None
        if config.model.lower() not in {p.lower() for p in list_presets()}:
            return None
        if config.model.lower() == "smollm2-135m-instruct":
            return None  # the embedded model exists: use its real config and tokenizer
        return get_preset(config.model)

    def _setup(self, model: torch.nn.Module, load_s: float) -> None:
        cfg = self.config
        spec = model.kv_cache_spec()
        bs = cfg.cache.block_size
        per_block = ModelRunner.kv_bytes_per_block(spec, bs, self.dtype)
        self.max_model_len = min(
            cfg.scheduler.max_model_len or self.model_config.max_position_embeddings,
            self.model_config.max_position_embeddings,
        )
        num_blocks = num_blocks_for(cfg.cache, per_block, self.device, max_num_seqs=cfg.scheduler.max_num_seqs,
                                    max_model_len=self.max_model_len)
        # More blocks than max_num_seqs full-length sequences is wasted memory.
        num_blocks = min(num_blocks, cfg.scheduler.max_num_seqs * -(-self.max_model_len // bs) + 1)
        caches = allocate_kv_caches(spec, num_blocks, bs, self.dtype, self.device)
        self.kv_bytes_per_token = per_block // bs
        log.info(
            "model %s loaded in %.1fs; KV cache: %d blocks x %d tokens = %d tokens (%.1f MiB, %d B/token)",
            self.model_name, load_s, num_blocks, bs, num_blocks * bs, num_blocks * per_block / 2**20, per_block // bs,
        )
        # Block hashes carry the model fingerprint, so no tier can mix up KV
        # from another model or configuration.
        fingerprint = cache_fingerprint(self.model_path or self.model_name, self.model_config, self.dtype, bs, caches, cfg.load_format)
        self.kv = KVCacheManager(num_blocks, bs, cfg.cache.enable_prefix_caching, fingerprint)
        sched_cfg = cfg.scheduler
        if sched_cfg.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive")
        self.scheduler = Scheduler(sched_cfg, self.kv, self.max_model_len)
        self.runner = ModelRunner(model, caches, bs, self.device, every_row_decodes=cfg.deterministic)
        if self.device.type == "cuda" and os.environ.get("JEVONS_CUDA_GRAPHS") == "1":
            self.runner.enable_cuda_graphs(sched_cfg.max_num_seqs, -(-self.max_model_len // bs))
        self.kv.attach_tiers(build_cache_tiers(cfg.cache, self.runner.kv_caches, fingerprint))
        self.outputs = OutputProcessor(self.tokenizer)
        self.reasoning = ReasoningBudget(lambda t: self.tokenizer.encode(t, add_special_tokens=False))
        self.requests: dict[str, Request] = {}
        self.children: dict[str, list[Request]] = {}
        self.num_steps = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # --- requests -------------------------------------------------------------
    def validate(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Check a request can ever be served; return its effective max_tokens."""
        if not prompt_ids:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
        n = len(prompt_ids)
        if n >= self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {n} tokens but this model's context length is {self.max_model_len} "
                f"(prompt plus at least one generated token must fit)",
                param="messages", code="context_length_exceeded",
            )
        room = self.max_model_len - n
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        need = self.kv.blocks_needed(n + max_tokens)
        if need > self.kv.num_blocks:
            raise InvalidRequestError(
                f"the request needs up to {need} KV blocks ({n} prompt + {max_tokens} new tokens) but the "
                f"cache holds {self.kv.num_blocks}; lower max_tokens or enlarge the KV cache",
                param="max_tokens",
            )
        return max_tokens

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> list[Request]:
        if request_id in self.children:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        max_tokens = self.validate(prompt_ids, params)
        eos = self.tokenizer.eos_token_ids
        reqs: list[Request] = []
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            rid = request_id if params.n == 1 else f"{request_id}#{i}"
            leader = reqs[0] if reqs else None
            req = Request(rid, prompt_ids, params, max_tokens, eos, request_id, i, seed, leader)
            reqs.append(req)
            self.requests[rid] = req
            self.outputs.add(req)
            self.scheduler.add(req)
        self.children[request_id] = reqs
        self.prompt_tokens_total += len(prompt_ids)
        return reqs

    def abort(self, request_id: str) -> list[SeqDelta]:
        """Abort a user request (all its sequences); frees their blocks now."""
        out = []
        for req in self.children.get(request_id, []):
            if not req.is_finished:
                self.scheduler.finish(req, "abort")
                out.append(SeqDelta(req.parent_id, req.index, [], "", None, "abort", None))
            self._forget(req)
        self.children.pop(request_id, None)
        return out

    def _forget(self, req: Request) -> None:
        self.reasoning.forget(req.request_id)
        self.requests.pop(req.request_id, None)
        self.outputs.remove(req.request_id)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # --- the step ---------------------------------------------------------------
    def step(self) -> list[SeqDelta]:
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        banned = {
            s.request.request_id: sorted(s.request.eos_token_ids | s.request.stop_token_ids)
            for s in sched.scheduled
            if s.samples and s.request.num_output_tokens < s.request.params.min_tokens
        }
        ids, sout = self.runner.execute(sched, banned)
        sampled: dict[str, int] = {}
        if sout is not None:
            tokens = sout.tokens.tolist()
            sampled = dict(zip(ids, tokens))
            for s in sched.scheduled:
                req = s.request
                if req.params.max_reasoning_tokens is not None and req.request_id in sampled:
                    sampled[req.request_id] = self.reasoning.override(req, sampled[req.request_id])
        advanced = self.scheduler.update(sched, sampled)
        for req in advanced:
            self.reasoning.observe(req)
        self.num_steps += 1
        self.generation_tokens_total += len(advanced)
        return self._emit(advanced, ids, sout)

    def _emit(self, advanced: list[Request], ids: list[str], sout) -> list[SeqDelta]:
        row = {rid: i for i, rid in enumerate(ids)}
        deltas = []
        lp_lists = None
        if sout is not None and sout.logprobs is not None:
            lp_lists = (sout.logprobs.tolist(), sout.ranks.tolist(),
                        None if sout.top_ids is None else sout.top_ids.tolist(),
                        None if sout.top_logprobs is None else sout.top_logprobs.tolist())
        for req in advanced:
            token = req.output_token_ids[-1]
            lps = None
            if req.params.logprobs is not None and lp_lists is not None:
                i = row[req.request_id]
                k = req.params.logprobs
                top_ids = lp_lists[2][i][:k] if lp_lists[2] is not None and k else None
                top_lps = lp_lists[3][i][:k] if lp_lists[3] is not None and k else None
                lps = [make_logprobs(token, lp_lists[0][i], lp_lists[1][i], top_ids, top_lps, self._decode_one,
                                     getattr(self.tokenizer, "token_bytes", None))]
            delta, stop_hit = self.outputs.process(req, [token], lps)
            if stop_hit is not None and not req.is_finished:
                self.scheduler.finish(req, "stop", stop_hit)
            delta.num_cached_tokens = (req.leader or req).num_cached_tokens
            if delta.finish_reason is not None:
                now = time.monotonic()
                delta.timings = {
                    "arrival": req.arrival_time,
                    "first_scheduled": req.first_scheduled_time or now,
                    "first_token": req.first_token_time or now,
                    "finished": now,
                }
                self._forget(req)
                siblings = self.children.get(req.parent_id, [])
                if all(s.is_finished for s in siblings):
                    self.children.pop(req.parent_id, None)
            deltas.append(delta)
        return deltas

    def _decode_one(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    # --- introspection ------------------------------------------------------------
    def num_free_blocks(self) -> int:
        return self.kv.pool.num_free

    def stats(self) -> dict[str, float]:
        return {
            "num_requests_running": len(self.scheduler.running),
            "num_requests_waiting": len(self.scheduler.waiting),
            "kv_cache_usage_perc": self.kv.usage(),
            "prefix_cache_queries": self.kv.prefix_queries,
            "prefix_cache_hits": self.kv.prefix_hits,
            "num_preemptions": self.scheduler.num_preemptions,
            **self.kv.cache_stats(),
        }

    def close(self) -> None:
        """Finish queued disk-cache writes and stop the writer thread."""
        self.kv.close()
