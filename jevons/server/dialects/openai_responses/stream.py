"""A Responses stream from the chat path's deltas: response.created and
response.in_progress, then per output item output_item.added, its content
(reasoning_text / output_text: content_part.added, deltas, .done,
content_part.done; a function call: function_call_arguments.delta and .done)
and output_item.done, and last response.completed (or response.incomplete
when max_output_tokens ran out) carrying the whole Response. Every event has a
sequence_number.

The items the last event carries are built by output.py from the finished
choice, the same builders as the JSON answer; the deltas sum to their texts
because both come from the one RequestTracker."""
from __future__ import annotations

from typing import Any

from jevons.server.choices import ChoiceDelta, ChoiceState
from jevons.server.dialects.openai_responses.output import (
    ResponseHead, function_call_item, message_item, output_items, reasoning_item, response_object, status_of,
    text_part,
)
from jevons.server.dialects.sse_events import sse_event
from jevons.server.logprobs import chat_logprobs
from jevons.server.responses import Usage
from jevons.server.tool_calls.types import ToolCall


class ResponsesStreamShaper:
    def __init__(self, head: ResponseHead, k: int | None) -> None:
        self.head = head
        self.k = k
        self.seq = 0
        self.items: list[str] = []  # ids of the items opened so far, in output order
        self.open: str | None = None  # the text item (reasoning or message) taking deltas
        self.texts: dict[str, str] = {head.reasoning_id: "", head.message_id: ""}

    def event(self, kind: str, **fields: Any) -> bytes:
        out = sse_event(kind, {"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        return out

    def start(self) -> list[bytes]:
        snapshot = response_object(self.head, "in_progress", [])
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=snapshot)]

    def _ids(self, item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, "output_index": self.items.index(item_id), "content_index": 0}

    def _open(self, item_id: str) -> list[bytes]:
        out = self._close()
        self.items.append(item_id)
        self.open = item_id
        if item_id == self.head.reasoning_id:
            item, part = reasoning_item(self.head, "", "in_progress"), {"type": "reasoning_text", "text": ""}
        else:
            item, part = message_item(self.head, [], "in_progress"), text_part("", None)
        ids = self._ids(item_id)
        out.append(self.event("response.output_item.added", output_index=ids["output_index"], item=item))
        out.append(self.event("response.content_part.added", **ids, part=part))
        return out

    def _close(self, final: dict[str, Any] | None = None, status: str = "completed") -> list[bytes]:
        """End the open text item: its text's .done, content_part.done, output_item.done.
        `final` is the finished item from output.py, else built from the deltas seen."""
        item_id = self.open
        if item_id is None:
            return []
        self.open = None
        ids, text = self._ids(item_id), self.texts[item_id]
        if item_id == self.head.reasoning_id:
            item = final or reasoning_item(self.head, text, status)
            part = {"type": "reasoning_text", "text": text}
            done = self.event("response.reasoning_text.done", **ids, text=text)
        else:
            item = final or message_item(self.head, [text_part(text, None)], status)
            part = item["content"][0]
            done = self.event("response.output_text.done", **ids, text=text, logprobs=part.get("logprobs", []))
        return [done, self.event("response.content_part.done", **ids, part=part),
                self.event("response.output_item.done", output_index=ids["output_index"], item=item)]

    def _call(self, call: ToolCall) -> list[bytes]:
        """A parsed call arrives whole: its item, its arguments in one delta, done."""
        out = self._close()
        item = function_call_item(call)
        self.items.append(item["id"])
        index = len(self.items) - 1
        ids = {"item_id": item["id"], "output_index": index}
        out.append(self.event("response.output_item.added", output_index=index,
                              item=function_call_item(call, "", "in_progress")))
        out.append(self.event("response.function_call_arguments.delta", **ids, delta=call.arguments))
        out.append(self.event("response.function_call_arguments.done", **ids, name=call.name,
                              arguments=call.arguments))
        out.append(self.event("response.output_item.done", output_index=index, item=item))
        return out

    def _text(self, item_id: str, kind: str, delta: str, **extra: Any) -> list[bytes]:
        out = self._open(item_id) if self.open != item_id and item_id not in self.items else []
        self.open = item_id
        self.texts[item_id] += delta
        out.append(self.event(kind, **self._ids(item_id), delta=delta, **extra))
        return out

    def on_delta(self, d: ChoiceDelta) -> list[bytes]:
        out: list[bytes] = []
        if d.reasoning:
            out += self._text(self.head.reasoning_id, "response.reasoning_text.delta", d.reasoning)
        if d.content:
            lps = chat_logprobs(d.token_ids, d.logprobs, self.k) if self.k is not None and d.logprobs else []
            out += self._text(self.head.message_id, "response.output_text.delta", d.content, logprobs=lps)
        for call in d.tool_calls:
            out += self._call(call)
        return out

    def finish(self, c: ChoiceState, usage: Usage) -> tuple[list[bytes], dict[str, Any]]:
        """The closing events and the final Response (also what is stored)."""
        status, incomplete = status_of(c.finish_reason)
        final = {item["id"]: item for item in output_items(self.head, c, self.k)}
        out: list[bytes] = []
        if self.open is not None:
            out += self._close(final.get(self.open), status)
        mid = self.head.message_id
        if mid in final and mid not in self.items:  # nothing was said: the answer is still one (empty) message
            out += self._open(mid)
            out += self._close(final[mid], status)
        output = [final[i] for i in self.items if i in final]
        response = response_object(self.head, status, output, usage=usage, incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self.event(kind, response=response))
        return out, response

    def failed(self, message: str, code: str | None) -> bytes:
        """The engine failed after the stream began: response.failed with the error."""
        error = {"code": code or "server_error", "message": message}
        return self.event("response.failed", response=response_object(self.head, "failed", [], error=error))
