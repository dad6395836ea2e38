"""The offline API, shaped like vLLM's: `LLM(model=...).generate(prompts, params)`."""
from __future__ import annotations

import itertools
from typing import Any, Sequence

from tqdm import tqdm

from jevons.config import DEFAULT_MODEL, CacheConfig, EngineConfig, SchedulerConfig, parse_bytes
from jevons.engine.engine_core import EngineCore
from jevons.engine.output_processor import RequestAggregate
from jevons.loader.generation_config import log_defaults, read_generation_defaults
from jevons.outputs import RequestOutput
from jevons.sampling_params import SamplingParams

Prompt = str | dict[str, Any]


class LLM:
    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        dtype: str = "auto",
        *,
        device: str = "cpu",
        seed: int = 0,
        load_format: str = "auto",
        quantization: str = "auto",
        deterministic: bool = False,
        hf_overrides: dict[str, Any] | None = None,
        block_size: int = 16,
        kv_cache_bytes: int | None = None,
        kv_cache_memory_fraction: float = 0.25,
        num_kv_blocks: int | None = None,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        cpu_cache_size: int | str = 0,
        disk_cache_dir: str | None = None,
        disk_cache_size: int | str = 10 * 2**30,
        generation_config: str = "auto",
        progress: bool = True,
    ) -> None:
        cfg = EngineConfig(
            model=model,
            dtype=dtype,
            device=device,
            seed=seed,
            load_format=load_format,
            quantization=quantization,
            deterministic=deterministic,
            hf_overrides=hf_overrides,
            cache=CacheConfig(
                block_size=block_size, cache_bytes=kv_cache_bytes, memory_fraction=kv_cache_memory_fraction,
                num_blocks=num_kv_blocks, enable_prefix_caching=enable_prefix_caching,
                cpu_cache_bytes=parse_bytes(cpu_cache_size),
                disk_cache_dir=None if disk_cache_dir is None else str(disk_cache_dir),
                disk_cache_bytes=parse_bytes(disk_cache_size),
            ),
            scheduler=SchedulerConfig(max_num_batched_tokens, max_num_seqs, max_model_len),
        )
        self.engine = EngineCore(cfg, progress=progress)
        # The model's sampling defaults ("auto"), or none ("vllm"), or a folder's;
        # the server and `jevons chat` read the same ones.
        self.generation_defaults = read_generation_defaults(self.engine.model_path, generation_config)
        log_defaults(self.generation_defaults)
        self._ids = itertools.count()

    def get_default_sampling_params(self) -> SamplingParams:
        """What generate() uses without sampling_params: the model's defaults (as vLLM)."""
        return self.generation_defaults.sampling_params()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def _encode(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.engine.tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return prompt.get("prompt"), [int(t) for t in prompt["prompt_token_ids"]]
        if isinstance(prompt, dict) and "prompt" in prompt:
            return prompt["prompt"], self.engine.tokenizer.encode(prompt["prompt"])
        raise TypeError(f"a prompt is a string or {{'prompt_token_ids': [...]}}, got {type(prompt).__name__}")

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        params = sampling_params or self.get_default_sampling_params()
        plist = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError("pass one SamplingParams or one per prompt")
        aggs: dict[str, RequestAggregate] = {}
        firsts: dict[str, Any] = {}
        order: list[str] = []
        try:
            for p in plist:
                p.check_vocab(self.engine.model_config.vocab_size)  # logit_bias ids
            for prompt, p in zip(prompts, plist):
                text, ids = self._encode(prompt)
                rid = str(next(self._ids))
                firsts[rid] = self.engine.add_request(rid, ids, p)[0]
                aggs[rid] = RequestAggregate.start(rid, text, ids, p.n, p.logprobs is not None)
                order.append(rid)
            bar = tqdm(total=len(order), desc="Generating", unit="req", disable=not use_tqdm or len(order) < 2, leave=False)
            while self.engine.has_work():
                for d in self.engine.step():
                    agg = aggs.get(d.parent_id)
                    if agg is None:
                        continue
                    agg.apply(d)
                    if agg.output.finished:
                        bar.update(1)
            bar.close()
        finally:
            # On any error (or KeyboardInterrupt) nothing stays in the engine.
            for rid in order:
                if not aggs[rid].output.finished:
                    self.engine.abort(rid)
        for rid in order:
            aggs[rid].output.num_cached_tokens = firsts[rid].num_cached_tokens
        return [aggs[rid].output for rid in order]

    def chat(
        self,
        messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        tok = self.engine.tokenizer
        prompts = [
            {"prompt": None, "prompt_token_ids": tok.encode(
                tok.apply_chat_template(c, add_generation_prompt=add_generation_prompt, **(chat_template_kwargs or {})),
                add_special_tokens=False)}
            for c in convs
        ]
        return self.generate(prompts, sampling_params, use_tqdm)
