"""Engine logprobs (one dict per token: token id -> Logprob with .rank and
.decoded_token) in OpenAI's two formats: chat's `logprobs.content` list and
the legacy completions `{tokens, token_logprobs, top_logprobs, text_offset}`."""
from __future__ import annotations

import math
from typing import Any, Callable

from jevons.outputs import TokenLogprobs


def _finite(x: float) -> float:
    # JSON has no -inf; OpenAI clients expect a number. -9999.0 is what OpenAI sends.
    return float(x) if math.isfinite(x) else -9999.0


def _top(lps: TokenLogprobs, k: int) -> list[tuple[int, Any]]:
    ranked = sorted((lp.rank if lp.rank is not None else 1 << 30, tid) for tid, lp in lps.items())
    return [(tid, lps[tid]) for rank, tid in ranked if rank <= k][:k]


def _text(lp: Any, tid: int) -> str:
    return lp.decoded_token if lp.decoded_token is not None else str(tid)


def _bytes(lp: Any, tid: int) -> list[int]:
    """The token's raw bytes: for part of a UTF-8 character these are not the
    UTF-8 of its text (U+FFFD), and clients join them to rebuild the text."""
    raw = getattr(lp, "token_bytes", None)
    return list(raw) if raw is not None else list(_text(lp, tid).encode("utf-8"))


def stop_token_hidden(tokenizer: Any, skip_special_tokens: bool) -> Callable[[int], bool]:
    """Whether a token that ends a choice as a stop token (EOS, an end-of-turn
    token, a stop_token_ids entry) leaves no text in the content: a special
    token decoded with skip_special_tokens. OpenAI's logprobs list the tokens
    of the content, so such a token gets no entry (the RequestTracker drops it;
    usage still counts it). With skip_special_tokens=False its text is in the
    content and so is its entry."""
    if not skip_special_tokens:
        return lambda _: False
    special = getattr(tokenizer, "special_token_ids", frozenset())
    return lambda t: t in special and tokenizer.decode([t], skip_special_tokens=True) == ""


def chat_logprobs(token_ids: list[int], logprobs: list[TokenLogprobs], k: int) -> list[dict[str, Any]]:
    """Entries for `choices[i].logprobs.content` (chat completions); logprobs[i]
    is token_ids[i]'s, and a trailing token without one (a hidden stop token,
    see stop_token_hidden) is left out."""
    out = []
    for tid, lps in zip(token_ids, logprobs):
        lp = lps[tid]
        tok = _text(lp, tid)
        out.append({
            "token": tok,
            "logprob": _finite(lp),
            "bytes": _bytes(lp, tid),
            "top_logprobs": [
                {"token": _text(t, i), "logprob": _finite(t), "bytes": _bytes(t, i)}
                for i, t in _top(lps, k)
            ],
        })
    return out


class CompletionLogprobBuilder:
    """Legacy completions logprobs; tracks the running text offset so that
    stream chunks continue where the last one stopped."""

    def __init__(self, k: int, offset: int = 0) -> None:
        self.k = k
        self.offset = offset

    def build(self, token_ids: list[int], logprobs: list[TokenLogprobs]) -> dict[str, Any]:
        tokens: list[str] = []
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for tid, lps in zip(token_ids, logprobs):
            lp = lps[tid]
            tok = _text(lp, tid)
            tokens.append(tok)
            token_lps.append(_finite(lp))
            top = {_text(t, i): _finite(t) for i, t in _top(lps, self.k)}
            top.setdefault(tok, _finite(lp))  # OpenAI includes the sampled token
            tops.append(top)
            offsets.append(self.offset)
            self.offset += len(tok)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
