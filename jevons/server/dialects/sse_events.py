"""Named server-sent events, as the Responses and Messages APIs frame them:
`event: <type>` then `data: {json}` (their clients dispatch on the type; no
`[DONE]` line ends these streams)."""
from __future__ import annotations

import json
from typing import Any


def sse_event(name: str, obj: Any) -> bytes:
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {data}\n\n".encode("utf-8")
