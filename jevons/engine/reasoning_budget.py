"""Capping a reasoning model's thinking: after `max_reasoning_tokens` tokens
inside `<think>`, the engine emits `</think>` itself and the answer follows.

State is tracked on token ids (the tags' own token sequences), so it works
whether the tag is one special token (DeepSeek-R1 distills) or several, and
whether the chat template pre-fills `<think>` into the prompt."""
from __future__ import annotations

from dataclasses import dataclass, field

from jevons.engine.request import Request


def _ends_with(seq: list[int], tail: list[int]) -> bool:
    return bool(tail) and len(seq) >= len(tail) and seq[-len(tail) :] == tail


def _last_index(seq: list[int], sub: list[int]) -> int:
    n = len(sub)
    for i in range(len(seq) - n, -1, -1):
        if seq[i : i + n] == sub:
            return i
    return -1


@dataclass
class _ThinkState:
    inside: bool
    count: int = 0
    forced: list[int] = field(default_factory=list)


class ReasoningBudget:
    def __init__(self, encode) -> None:
        self.start = encode("<think>")
        self.end = encode("</think>")
        self.after = encode("\n\n")
        self._state: dict[str, _ThinkState] = {}

    def _get(self, req: Request) -> _ThinkState:
        st = self._state.get(req.request_id)
        if st is None:
            p = req.prompt_token_ids
            st = _ThinkState(inside=_last_index(p, self.start) > _last_index(p, self.end))
            self._state[req.request_id] = st
        return st

    def override(self, req: Request, token: int) -> int:
        """The token to append instead of the sampled one, if the cap says so."""
        cap = req.params.max_reasoning_tokens
        if cap is None or not self.end:
            return token
        st = self._get(req)
        if st.forced:
            return st.forced.pop(0)
        if st.inside and st.count >= cap:
            st.forced = self.end[1:] + self.after
            return self.end[0]
        return token

    def observe(self, req: Request) -> None:
        if req.params.max_reasoning_tokens is None:
            return
        st = self._get(req)
        out = req.output_token_ids
        if st.inside:
            if _ends_with(out, self.end):
                st.inside = False
            else:
                st.count += 1
        elif _ends_with(out, self.start) and len(out) <= len(self.start) + 1:
            st.inside = True

    def forget(self, request_id: str) -> None:
        self._state.pop(request_id, None)
