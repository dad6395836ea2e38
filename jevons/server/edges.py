"""The server's network edges: which Host and Origin a request may carry, how
large its body may be, and how long and how many connections stay open.

All pure ASGI (Starlette's BaseHTTPMiddleware would buffer streaming
responses), in this order from the outside in (app.py):

- `HostGuard`: a keyless server on 127.0.0.1 is reachable by any web page
  through DNS rebinding (the page's own name is re-pointed at 127.0.0.1, so
  the browser sends `Host: evil.example`); llama.cpp and Ollama both had this
  bug. Without an API key only loopback names and IP addresses pass as Host
  (a rebinding page can only send its own DNS name), and an `Origin` header
  (a browser's cross-site request) must be this server's own origin or one of
  --cors-origins. 403 otherwise, naming the host. --allowed-hosts widens the
  names (and then applies with a key too); `*` turns the check off.
- CORS (Starlette's), only when --cors-origins is given.
- API keys (auth.py).
- `BodySizeLimit`: a body beyond --max-body-size is 413 before anything is
  parsed: at once from Content-Length, else as soon as the bytes read pass
  the limit. The whole body must arrive within BODY_TIMEOUT_S (408).

And in uvicorn (`uvicorn_settings`): the keep-alive timeout, a bound on the
bytes of an unfinished request head it buffers (400 beyond), a deadline for a connection to deliver a request head
(uvicorn has none: an idle or half-sent connection was held for ever) and a
cap on open connections (`edge_protocol`)."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from jevons.server.auth import OPEN_PATHS
from jevons.server.errors import error_body

# Without an API key, these Host names pass (with any port), and any IP address.
LOOPBACK_NAMES = ("localhost", "*.localhost")
# A request body must arrive within this many seconds of its head (408 otherwise).
BODY_TIMEOUT_S = 60.0
# The most bytes of an unfinished request head uvicorn's h11 parser buffers (its default, made explicit).
MAX_HEAD_BYTES = 16 * 1024


async def send_error(send: Send, status: int, message: str, type: str, code: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """An OpenAI-style error response from middleware (no app, no exception handlers)."""
    body = json.dumps(error_body(message, type, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


# --- sizes ---------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4MiB', '4M', '512k', '1048576' -> bytes (k, M, G are powers of 1024)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 4MiB, 512k, 1048576)")
    n = float(m.group(1)) * 1024 ** " kmg".index(m.group(2).lower() or " ")
    return int(n)


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % (scale // 16) == 0:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


# --- Host and Origin -----------------------------------------------------------

def split_host(value: str) -> str:
    """'Example.COM:8000' -> 'example.com'; '[::1]:8000' -> '::1'; no port, lower case, no trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    name, sep, port = value.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class HostPatterns:
    """Host names: exact ('example.com'), subdomains ('*.example.com'), and
    optionally every IP address."""

    def __init__(self, names: tuple[str, ...] | list[str], any_ip: bool = False) -> None:
        self.exact = {split_host(n) for n in names if not n.startswith("*.")}
        self.suffixes = tuple("." + split_host(n[2:]) for n in names if n.startswith("*."))
        self.any_ip = any_ip

    def match(self, name: str) -> bool:
        return (name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))
                or (self.any_ip and _is_ip(name)))


class HostGuard:
    """403 for a Host that is not an allowed name, or an Origin (a browser's
    cross-site request) that is neither this server's own origin, one of
    `cors_origins`, nor on an explicitly allowed host. The OpenAPI schema and
    /docs are open (as with API keys): nothing in them is private."""

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] = (),
                 cors_origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.hosts = HostPatterns([*LOOPBACK_NAMES, *allowed_hosts], any_ip=True)
        self.origin_hosts = HostPatterns(allowed_hosts)  # explicit names only: not every local page
        self.origins = {o.rstrip("/").lower() for o in cors_origins}
        self.hint = ",".join(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        # No Host at all (HTTP/1.0) cannot come from a browser: nothing to rebind.
        if host is not None and not self.hosts.match(split_host(host)):
            name = split_host(host)
            extra = f"{self.hint},{name}" if self.hint else name
            await send_error(send, 403, (
                f"Host {host!r} is not allowed: this server answers only to its allowed names (loopback names "
                f"and IP addresses by default). Start it with --allowed-hosts {extra} to serve {name!r}, or with "
                f"an --api-key."), "permission_error", "host_not_allowed")
            return
        origin = _header(scope, b"origin")
        if origin is not None and not self._origin_ok(origin, host):
            await send_error(send, 403, (
                f"Origin {origin!r} is not allowed: cross-origin requests need --cors-origins {origin} "
                f"(or an --api-key)."), "permission_error", "origin_not_allowed")
            return
        await self.app(scope, receive, send)

    def _origin_ok(self, origin: str, host: str | None) -> bool:
        o = origin.strip().rstrip("/").lower()
        if "*" in self.origins or o in self.origins:
            return True
        parts = urlsplit(o)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (a sandboxed frame or a file), or nonsense
        if host is not None and parts.netloc == host.strip().lower():
            return True  # same origin
        return self.origin_hosts.match(split_host(parts.netloc))


def host_guard_names(allowed_hosts: tuple[str, ...] | None, has_api_key: bool) -> tuple[str, ...] | None:
    """The extra names HostGuard allows, or None when there is no check: `*`,
    or an API key and no --allowed-hosts."""
    if allowed_hosts is None:
        return None if has_api_key else ()
    names = tuple(h.strip() for h in allowed_hosts if h.strip())
    return None if "*" in names else names


# --- body size -----------------------------------------------------------------

class BodySizeLimit:
    """Reads a request's body (without parsing it) and hands it to the app in
    one piece, or answers 413 once it is larger than `max_bytes`: at once when
    Content-Length says so, else as soon as the bytes received pass it. The
    rest of a refused body is discarded by the server as it arrives (bounded
    by the connection's header deadline, `edge_protocol`)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def _too_large(self, send: Send, size: str) -> None:
        await send_error(send, 413, (
            f"the request body is {size}, more than this server's limit of {format_size(self.max_bytes)} "
            f"(--max-body-size)"), "invalid_request_error", "request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is None and _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body
            return
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await self._too_large(send, f"{int(length)} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await send_error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s",
                                 "invalid_request_error", "request_timeout", [(b"connection", b"close")])
                return
            if message["type"] != "http.request":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send, f"over {size} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: the disconnect watchers' wait

        await self.app(scope, replay, send)


# --- connections ---------------------------------------------------------------

async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send_error(send, 503, "the server has too many open connections (--max-connections); retry later",
                     "service_unavailable", "too_many_connections",
                     [(b"retry-after", b"1"), (b"connection", b"close")])


def edge_protocol(header_timeout_s: float, max_connections: int | None) -> type:
    """uvicorn's HTTP protocol (h11, or httptools where installed) with two
    limits it lacks: a connection that has no request in progress (new, or
    idle between requests, or sending a head slowly) is closed once
    `header_timeout_s` pass without a complete request head; and a connection
    opened while `max_connections` are open gets 503 (OpenAI error JSON,
    Connection: close) for its request. uvicorn's own limit_concurrency also
    counts in-flight requests and answers plain text, so it is not used."""

    class EdgeProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                self.app = _over_capacity
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request head (or the rest of a refused body) has as long

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            cycle = getattr(self, "cycle", None)
            if (cycle is None or cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()  # no request in progress, none arrived in time

    return EdgeProtocol


def uvicorn_settings(header_timeout_s: float, max_connections: int | None, timeout_keep_alive_s: int) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config that set the network limits."""
    return {
        "http": edge_protocol(header_timeout_s, max_connections),
        "timeout_keep_alive": timeout_keep_alive_s,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }
