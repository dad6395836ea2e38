"""A Messages stream from the chat path's deltas, in Anthropic's events:
message_start, then per content block (thinking, text, tool_use)
content_block_start, content_block_delta (thinking_delta / text_delta /
input_json_delta) and content_block_stop, then message_delta (stop_reason, stop_sequence, usage)
and message_stop. `ping` is both the opening ping and the keep-alive while a
request waits; a failure after the 200 is an `error` event."""
from __future__ import annotations

import json
from typing import Any

from jevons.server.choices import ChoiceDelta, ChoiceState
from jevons.server.dialects.anthropic.errors import anthropic_error_body
from jevons.server.dialects.anthropic.output import (
    message_object, stop_reason, text_block, thinking_block, tool_input, tool_use_block, usage_object,
)
from jevons.server.dialects.sse_events import sse_event
from jevons.server.errors import APIError
from jevons.server.responses import Usage


def _event(kind: str, **fields: Any) -> bytes:
    return sse_event(kind, {"type": kind, **fields})


class MessagesStreamShaper:
    def __init__(self, msg_id: str, model: str, context_cut: bool = False) -> None:
        self.msg_id = msg_id
        self.model = model
        self.context_cut = context_cut  # output.stop_reason
        self.index = -1  # the open block's index
        self.open: str | None = None  # "thinking" or "text"

    def start(self, usage: Usage) -> list[bytes]:
        msg = message_object(self.msg_id, self.model, [], (None, None), usage_object(usage, output_tokens=0))
        return [_event("message_start", message=msg), self.ping()]

    def ping(self) -> bytes:
        return _event("ping")

    def _open(self, kind: str) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = kind
        block = thinking_block("") if kind == "thinking" else text_block("")
        out.append(_event("content_block_start", index=self.index, content_block=block))
        return out

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_event("content_block_stop", index=self.index)]

    def on_delta(self, d: ChoiceDelta) -> list[bytes]:
        out: list[bytes] = []
        if d.reasoning:
            if self.open != "thinking":
                out += self._open("thinking")
            out.append(_event("content_block_delta", index=self.index,
                              delta={"type": "thinking_delta", "thinking": d.reasoning}))
        if d.content:
            if self.open != "text":
                out += self._open("text")
            out.append(_event("content_block_delta", index=self.index, delta={"type": "text_delta", "text": d.content}))
        for call in d.tool_calls:  # a parsed call arrives whole: its block, its input in one delta
            out += self._close()
            self.index += 1
            out.append(_event("content_block_start", index=self.index, content_block=tool_use_block(call, whole=False)))
            partial = json.dumps(tool_input(call.arguments), ensure_ascii=False)
            out.append(_event("content_block_delta", index=self.index,
                              delta={"type": "input_json_delta", "partial_json": partial}))
            out.append(_event("content_block_stop", index=self.index))
        return out

    def finish(self, c: ChoiceState, usage: Usage) -> list[bytes]:
        reason, sequence = stop_reason(c.finish_reason, c.stop_reason, self.context_cut)
        return [*self._close(),
                _event("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
                       usage=usage_object(usage)),
                _event("message_stop")]

    def error(self, err: APIError) -> bytes:
        return sse_event("error", anthropic_error_body(err.status, err.message))
