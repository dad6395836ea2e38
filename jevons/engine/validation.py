"""Whether a request can ever be served, checked once when it arrives: its
token ids, the ids its parameters name, its grammar, and that prompt plus
output fit the context and the KV cache. The engine raises in its own terms
(InvalidRequestError with the field it concerns); the server maps that to a 400."""
from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

from jevons.errors import InvalidRequestError
from jevons.sampling_params import SamplingParams
from jevons.structured import GrammarError

if TYPE_CHECKING:
    from jevons.engine.kv_cache_manager import KVCacheManager
    from jevons.structured import StructuredOutputManager


def check_request(prompt_ids: list[int], params: SamplingParams, vocab: int, max_model_len: int,
                  kv: KVCacheManager, structured: StructuredOutputManager) -> int:
    """Raise InvalidRequestError if the request can never be served; else
    return its effective max_tokens (what is left of the context when unset)."""
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
        raise InvalidRequestError(
            f"the prompt has {n} tokens but this model's context length is {max_model_len} "
            f"(prompt plus at least one generated token must fit)",
            param="messages", code="context_length_exceeded",
        )
    room = max_model_len - n
    max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
    need = kv.blocks_needed(n + max_tokens)
    if need > kv.num_blocks:
        raise InvalidRequestError(
            f"the request needs up to {need} KV blocks ({n} prompt + {max_tokens} new tokens) but the "
            f"cache holds {kv.num_blocks}; lower max_tokens or enlarge the KV cache",
            param="max_tokens",
        )
    return max_tokens
