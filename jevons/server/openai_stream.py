"""The SSE stream of the two OpenAI routes (/v1/chat/completions and
/v1/completions): one chunk per choice delta that says something, keep-alives
in silence, a last chunk with the usage when asked, the ledger row committed
before [DONE], and an error event if the engine fails after the 200 went out.
What differs between the two is passed in: the object name, how a delta
becomes a choice, and the chunks that open the stream."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from jevons.server.chat_run import Run
from jevons.server.choices import ChoiceDelta
from jevons.server.routes_common import stream_error
from jevons.server.sse import DONE, KEEPALIVE, sse_data


def chunk(run: Run, obj: str, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": run.meta.id, "object": obj, "created": run.meta.created, "model": run.meta.model,
                           "system_fingerprint": None, "choices": choices}
    if include_usage:
        out["usage"] = None  # OpenAI sends null on every chunk but the last when usage is asked for
    return out


async def openai_events(run: Run, obj: str, choice: Callable[[ChoiceDelta], dict[str, Any] | None],
                        include_usage: bool, opening: list[dict[str, Any]],
                        open_at_first_event: bool) -> AsyncIterator[bytes]:
    """`opening`: choices sent one chunk each before the deltas, at once or,
    with `open_at_first_event`, once the engine's first step is in (chat's
    role chunks)."""
    opened = False
    try:
        if not open_at_first_event:
            opened = True
            for c in opening:
                yield sse_data(chunk(run, obj, [c], include_usage))
        async for deltas in run.deltas():
            if deltas is None:
                yield KEEPALIVE
                continue
            if not opened:
                opened = True
                for c in opening:
                    yield sse_data(chunk(run, obj, [c], include_usage))
            for d in deltas:
                c = choice(d)
                if c is not None:
                    yield sse_data(chunk(run, obj, [c], include_usage))
        if include_usage:
            final = chunk(run, obj, [], False)
            final["usage"] = run.usage().model_dump()
            yield sse_data(final)
        await run.finish()  # the ledger row is committed before [DONE]
        yield DONE
    except Exception as e:  # the engine died mid-stream (or the ledger failed); the 200 is already out
        run.end()
        for part in stream_error(e):
            yield part
    finally:
        run.end()
