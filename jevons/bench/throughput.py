"""`jevons bench throughput`: offline, in-process. All requests are queued at
once and the engine runs until they drain, so this measures what continuous
batching sustains with no HTTP or client in the way."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from jevons.bench.datasets import SampleRequest, token_pool


@dataclass
class ThroughputResult:
    num_requests: int
    elapsed_s: float
    total_input_tokens: int
    total_output_tokens: int

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def input_tok_s(self) -> float:
        return self.total_input_tokens / self.elapsed_s

    @property
    def output_tok_s(self) -> float:
        return self.total_output_tokens / self.elapsed_s

    @property
    def total_tok_s(self) -> float:
        return (self.total_input_tokens + self.total_output_tokens) / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"requests_per_s": self.requests_per_s, "input_tok_s": self.input_tok_s,
                               "output_tok_s": self.output_tok_s, "total_tok_s": self.total_tok_s}


def engine_token_pool(llm: Any) -> list[int]:
    """Ids a synthetic prompt may use: the tokenizer's real ids (the model's
    embedding table may be padded past them), special tokens excluded."""
    tok = llm.get_tokenizer()
    vocab = min(tok.vocab_size, llm.engine.model_config.vocab_size)
    return token_pool(vocab, tok.special_token_ids)


def warm_up(llm: Any, pool: list[int]) -> None:
    """One short request first, so one-time costs (allocator growth, first-call
    dispatch, lazy inits) are not billed to the measurement."""
    from jevons.sampling_params import SamplingParams

    llm.generate([{"prompt_token_ids": pool[:16]}], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True),
                 use_tqdm=False)


def run_throughput(llm: Any, reqs: list[SampleRequest], progress: bool = True) -> ThroughputResult:
    from jevons.sampling_params import SamplingParams

    prompts = [{"prompt_token_ids": r.prompt_ids} for r in reqs]
    params = [SamplingParams(temperature=0, max_tokens=r.output_len, ignore_eos=True) for r in reqs]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=progress)
    elapsed = time.perf_counter() - t0
    return ThroughputResult(
        num_requests=len(reqs),
        elapsed_s=elapsed,
        total_input_tokens=sum(len(r.prompt_ids) for r in reqs),
        total_output_tokens=sum(len(o.outputs[0].token_ids) for o in outs),
    )
