"""Server-sent events exactly as OpenAI frames them: `data: {json}\\n\\n` per
chunk, `data: [DONE]\\n\\n` at the end, and `: keep-alive` comments while a
request waits (in the queue, or for a slow step) so proxies and clients do
not time the connection out.

SSEResponse always watches for the client going away (Starlette only does
for ASGI servers older than spec 2.4) and then cancels the body iterator, so
the request is aborted within one engine step rather than at the next write."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def sse_data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


class SSEResponse(StreamingResponse):
    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None] | None = None) -> None:
        # no-cache and no proxy buffering: chunks must reach the client as they are made.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, 200, headers, media_type=self.media_type)
        # Runs however the response ends, even if the body iterator never
        # started (client gone before the first chunk), so nothing stays queued.
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._run(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                try:
                    await self.stream_response(send)
                except OSError:  # the socket went away mid-write
                    pass
                tg.cancel_scope.cancel()

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await watch()
