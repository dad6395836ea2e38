"""A reasoning model's thinking, in one module for every front end.

Parsing (the server, every API dialect, the chat CLI) splits the output into
`reasoning_content` and `content`, DeepSeek-R1 style: `<think> ... </think>
answer`. It works on text, incrementally, so it is indifferent to how the tags
fall into tokens (one added token, or `</`, `think`, `>` across steps): a tail
that may still become a tag is held back until the next piece decides it.
Templates that pre-fill `<think>` into the prompt make the output start inside
the block; `prompt_ends_in_think` detects that from the rendered prompt, so no
per-model table is needed.

The budget (the engine) caps the thinking: after `max_reasoning_tokens` tokens
inside `<think>`, the engine emits `</think>` itself and the answer follows.
Its state is tracked on token ids (the tags' own token sequences), so it works
whether the tag is one special token (DeepSeek-R1 distills) or several, and
whether the chat template pre-fills `<think>` into the prompt."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

THINK_START = "<think>"
THINK_END = "</think>"

START, REASONING, CONTENT = "start", "reasoning", "content"


def prompt_ends_in_think(prompt: str, start: str = THINK_START, end: str = THINK_END) -> bool:
    """Whether the prompt leaves an open think block (the template pre-filled it)."""
    return prompt.rfind(start) > prompt.rfind(end)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser:
    """One sequence's splitter. States: START (nothing decided; the output may
    open with <think>), REASONING (inside the block), CONTENT (the answer).
    Leading whitespace of each section is dropped (R1 writes "<think>\\n" and
    "</think>\\n\\n"), which gives the same result however the text is split."""

    def __init__(self, starts_in_reasoning: bool, start: str = THINK_START, end: str = THINK_END) -> None:
        self.start = start
        self.end = end
        self.state = REASONING if starts_in_reasoning else START
        self._held = ""
        self._fresh = True  # nothing emitted yet in the current section

    @property
    def in_reasoning(self) -> bool:
        return self.state == REASONING

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """Add generated text; return (reasoning, content) that is now certain.
        With final=True everything held back is released."""
        buf = self._held + text
        self._held = ""
        reasoning: list[str] = []
        content: list[str] = []
        while True:
            if self.state == START:
                s = buf.lstrip()
                if s.startswith(self.start):
                    self._enter(REASONING)
                    buf = s[len(self.start) :]
                    continue
                if not final and (not s or self.start.startswith(s)):
                    self._held = buf  # could still become <think>
                    break
                self._enter(CONTENT)
                continue
            if self.state == REASONING:
                if self._fresh:
                    # A model may write <think> itself although the template pre-filled it.
                    s = buf.lstrip()
                    if s.startswith(self.start):
                        buf = s[len(self.start) :]
                    elif not final and s and self.start.startswith(s):
                        self._held = buf
                        break
                i = buf.find(self.end)
                if i >= 0:
                    self._emit(reasoning, buf[:i])
                    buf = buf[i + len(self.end) :]
                    self._enter(CONTENT)
                    continue
                keep = 0 if final else _partial_suffix(buf, self.end)
                self._emit(reasoning, buf[: len(buf) - keep])
                self._held = buf[len(buf) - keep :]
                break
            self._emit(content, buf)
            break
        return "".join(reasoning), "".join(content)

    def _enter(self, state: str) -> None:
        self.state = state
        self._fresh = True

    def _emit(self, out: list[str], piece: str) -> None:
        if self._fresh:
            piece = piece.lstrip()
            if not piece:
                return
            self._fresh = False
        out.append(piece)


class _Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


def tokenizer_has_think_tags(tokenizer: _Encoder) -> bool:
    """Both tags are single tokens: the mark of a model trained to think."""
    return all(len(tokenizer.encode(t, add_special_tokens=False)) == 1 for t in (THINK_START, THINK_END))


def reasoning_enabled(mode: str, tokenizer: _Encoder) -> bool:
    if mode == "none":
        return False
    if mode == "deepseek_r1":
        return True
    if mode != "auto":
        raise ValueError(f"unknown reasoning parser {mode!r}; choose auto, deepseek_r1 or none")
    return tokenizer_has_think_tags(tokenizer)


# --- the budget ------------------------------------------------------------

def _ends_with(seq: list[int], tail: list[int]) -> bool:
    return bool(tail) and len(seq) >= len(tail) and seq[-len(tail) :] == tail


def _last_index(seq: list[int], sub: list[int]) -> int:
    n = len(sub)
    for i in range(len(seq) - n, -1, -1):
        if seq[i : i + n] == sub:
            return i
    return -1


@dataclass
class ThinkState:
    """One sequence's place in its think block: its cap (max_reasoning_tokens),
    inside or not, thinking tokens so far, the tokens of `</think>` still to
    force, and the last few output tokens (enough to see a tag end)."""

    cap: int
    inside: bool
    count: int = 0
    forced: list[int] = field(default_factory=list)
    tail: list[int] = field(default_factory=list)
    num_output: int = 0


class ReasoningBudget:
    """The transition rule; engine/stopping.py applies it once per new token
    (`override` before the token is kept, `observe` after)."""

    def __init__(self, encode) -> None:
        self.start = encode("<think>")
        self.end = encode("</think>")
        self.after = encode("\n\n")
        self._keep = max(len(self.start), len(self.end), 1)

    def begin(self, prompt_ids: list[int], cap: int) -> ThinkState:
        """A sequence's state before its first token: inside if the prompt
        leaves a think block open (the template pre-filled `<think>`)."""
        return ThinkState(cap, inside=_last_index(prompt_ids, self.start) > _last_index(prompt_ids, self.end))

    def override(self, st: ThinkState, token: int) -> int:
        """The token to keep instead of the sampled one, if the cap says so."""
        if not self.end:
            return token
        if st.forced:
            return st.forced.pop(0)
        if st.inside and st.count >= st.cap:
            st.forced = self.end[1:] + self.after
            return self.end[0]
        return token

    def observe(self, st: ThinkState, token: int) -> None:
        """After `token` is kept: leave the block at `</think>`, count a thinking token, or enter
        at an opening `<think>`."""
        st.num_output += 1
        st.tail = (st.tail + [token])[-self._keep :]
        if st.inside:
            if _ends_with(st.tail, self.end):
                st.inside = False
            else:
                st.count += 1
        elif _ends_with(st.tail, self.start) and st.num_output <= len(self.start) + 1:
            st.inside = True
