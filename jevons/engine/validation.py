"""Whether a request can ever be served, checked once when it arrives: its
token ids, the ids its parameters name, its grammar, and that prompt plus
output fit the context and the KV cache. The engine raises in its own terms
(InvalidRequestError naming the SamplingParams field, or "prompt"; a
ContextLengthError with the numbers); the server maps that to a 400 in its
dialect's field names and words."""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

from jevons.errors import InvalidRequestError
from jevons.sampling_params import SamplingParams
from jevons.structured import GrammarError

if TYPE_CHECKING:
    from jevons.engine.kv_cache_manager import KVCacheManager
    from jevons.structured import StructuredOutputManager


class ContextLengthError(InvalidRequestError):
    """Prompt plus max_tokens do not fit the context (param "max_tokens"), or
    the prompt alone fills it (param "prompt", max_tokens None). Carries the
    numbers, so a front end can say it in its own words and field names."""

    def __init__(self, prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> None:
        if max_tokens is None:
            msg = (f"the prompt has {prompt_tokens} tokens but this model's context length is {max_model_len} "
                   f"(prompt plus at least one generated token must fit)")
        else:
            msg = (f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is "
                   f"{prompt_tokens + max_tokens} tokens, more than this model's context length ({max_model_len})")
        super().__init__(msg, param="prompt" if max_tokens is None else "max_tokens", code="context_length_exceeded")
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


def check_request(prompt_ids: list[int], params: SamplingParams, vocab: int, max_model_len: int,
                  kv: KVCacheManager, structured: StructuredOutputManager, fit_context: bool = True) -> int:
    """Raise InvalidRequestError if the request can never be served; else
    return its effective max_tokens, the one the request keeps: what is left of
    the context when unset, and when larger than that, the same if `fit_context`
    (LLM.generate, as vLLM's offline API) else a ContextLengthError (the server,
    as OpenAI answers)."""
    if not prompt_ids:
        raise InvalidRequestError("the prompt is empty", param="prompt")
    bad = [t for t in prompt_ids if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < vocab]
    if bad:
        raise InvalidRequestError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})", param="prompt")
    try:
        params.check_vocab(vocab)  # stop_token_ids, logit_bias
    except ValueError as e:
        raise InvalidRequestError(str(e), param=getattr(e, "param", None)) from None
    if params.structured_outputs is not None:
        try:
            structured.validate(params.structured_outputs)
        except GrammarError as e:
            raise InvalidRequestError(str(e), param=e.param) from None
    n = len(prompt_ids)
    if n >= max_model_len:
        raise ContextLengthError(n, None, max_model_len)
    room = max_model_len - n
    if params.max_tokens is not None and params.max_tokens > room and not fit_context:
        raise ContextLengthError(n, params.max_tokens, max_model_len)
    max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
    need = kv.blocks_needed(n + max_tokens)
    if need > kv.num_blocks:
        raise InvalidRequestError(
            f"the request needs up to {need} KV blocks ({n} prompt + {max_tokens} new tokens) but the "
            f"cache holds {kv.num_blocks}; lower max_tokens or enlarge the KV cache",
            param="max_tokens",
        )
    return max_tokens
