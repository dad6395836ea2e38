"""GET /v1/responses/{id}/input_items: the items a stored response was made
from (its previous_response_id chain included), as OpenAI lists them: each
with an id (given when stored, if the client sent none), message content as
parts, newest first unless `order=asc`, `limit` per page with `after` and
`before` cursors."""
from __future__ import annotations

from typing import Any, Literal

from jevons.server.dialects.openai_responses.output import new_id
from jevons.server.errors import APIError

_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items as stored: each has a type and an id; message content is a list of parts."""
    out = []
    for item in items:
        item = {"type": "message", **item}
        if item["type"] == "message" and isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        if not isinstance(item.get("id"), str):
            item["id"] = new_id(_ID_PREFIX.get(item["type"], "item"))
        out.append(item)
    return out


def page(items: list[dict[str, Any]], limit: int, order: Literal["asc", "desc"], after: str | None,
         before: str | None) -> dict[str, Any]:
    if not 1 <= limit <= 100:
        raise APIError(400, f"limit must be in [1, 100], got {limit}", param="limit")
    ordered = items if order == "asc" else items[::-1]
    ids = [i["id"] for i in ordered]
    start, end = 0, len(ordered)
    for cursor, name in ((after, "after"), (before, "before")):
        if cursor is not None and cursor not in ids:
            raise APIError(400, f"{name}: no input item {cursor!r} in this response", param=name)
    if after is not None:
        start = ids.index(after) + 1
    if before is not None:
        end = ids.index(before)
    data = ordered[start:end][:limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": start + len(data) < end}
