"""The offline API, shaped like vLLM's: `LLM(model=...).generate(prompts, params)`."""
from __future__ import annotations

import itertools
from typing import Any, Sequence

from tqdm import tqdm

from jevons.config import EngineConfig, engine_config
from jevons.engine.engine_core import EngineCore
from jevons.engine.output_processor import RequestAggregate
from jevons.loader.generation_config import log_defaults, read_generation_defaults
from jevons.outputs import RequestOutput
from jevons.sampling_params import SamplingParams

Prompt = str | dict[str, Any]


class LLM:
    """`LLM("path/or/preset", dtype="float32", num_kv_blocks=64)` takes the
    engine's settings by their flat names (config.ENGINE_SETTINGS; the defaults
    live in jevons/config.py), or `LLM(config=EngineConfig(...))` a whole config."""

    def __init__(self, model: str | None = None, *, config: EngineConfig | None = None, progress: bool = True,
                 **settings: Any) -> None:
        if config is None:
            config = engine_config(**({"model": model} if model is not None else {}), **settings)
        elif model is not None or settings:
            raise TypeError("pass either config=EngineConfig(...) or the settings themselves, not both")
        self.config = config
        if config.parallel.data_parallel_size > 1:  # say so rather than quietly run one replica
            raise ValueError("data parallelism (data_parallel_size > 1) runs behind `jevons serve`; "
                             "LLM, generate, chat and bench throughput run one engine")
        self.engine = EngineCore(config, progress=progress)
        # The model's sampling defaults ("auto"), or none ("vllm"), or a folder's;
        # the server and `jevons chat` read the same ones.
        self.generation_defaults = read_generation_defaults(self.engine.model_path, config.generation_config)
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
