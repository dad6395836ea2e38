"""API-key check, as pure ASGI middleware (Starlette's BaseHTTPMiddleware
would buffer and delay streaming responses and disconnect notices).

Default-deny: every path needs `Authorization: Bearer <key>` (or Anthropic's
`x-api-key: <key>`) except the
OpenAPI docs and, unless configured otherwise, /health and /metrics. SHA-256
digests of the keys are compared with hmac.compare_digest against every
configured key, so neither which key matched, nor a matching prefix, nor a
key's length shows in the timing."""
from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from jevons.server.dialects.anthropic.errors import anthropic_error_body, is_anthropic_path
from jevons.server.errors import error_body

OPEN_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PROBE_PATHS = frozenset({"/health", "/metrics"})
# The web console's page and static files (routes_console.py): nothing private;
# the page asks for the key and sends it with every API call.
CONSOLE_PATHS = ("/", "/console/")


def read_keys_file(path: str | Path) -> list[str]:
    """One key per line; blank lines and #-comments ignored."""
    keys = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def key_digest(key: str) -> bytes:
    # Comparing fixed-length digests also keeps a key's length out of the timing.
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_id(key: str) -> str:
    """A stable, non-secret name for a key in the ledger and logs: the first 8 hex
    digits of its SHA-256 (32 bits: enough to tell an operator's keys apart, far
    too few to recover or guess the key from)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


def api_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>`, else
    `x-api-key: <key>` (the header Anthropic's clients send)."""
    token = bearer_token(headers)
    if token:
        return token
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def key_matches(given: str, digests: list[bytes]) -> bool:
    candidate = key_digest(given)
    ok = False
    for d in digests:  # no early exit: the time taken does not depend on which key matched
        ok |= hmac.compare_digest(candidate, d)
    return ok


class APIKeyAuth:
    def __init__(self, app: ASGIApp, keys: list[str], protect_probes: bool = False) -> None:
        self.app = app
        self.keys = [key_digest(k) for k in keys if k]
        self.protect_probes = protect_probes

    def _needs_key(self, path: str) -> bool:
        if path in OPEN_PATHS or path == CONSOLE_PATHS[0]:
            return False
        if path.startswith(CONSOLE_PATHS[1]) and ".." not in path:  # no way out of the folder, even unnormalized
            return False
        return self.protect_probes or path not in PROBE_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["method"] == "OPTIONS" or not self._needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = api_key(scope["headers"])
        if token is not None and key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        sent = any(name in (b"authorization", b"x-api-key") for name, _ in scope["headers"])
        msg = "incorrect API key provided" if sent else "missing API key: send Authorization: Bearer <key>"
        if is_anthropic_path(scope["path"]):  # Anthropic's clients read their own error shape
            msg = msg.replace("Bearer <key>", "Bearer <key> or x-api-key: <key>")
            body = json.dumps(anthropic_error_body(401, msg)).encode()
        else:
            body = json.dumps(error_body(msg, "invalid_request_error", None, "invalid_api_key")).encode()
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b"Bearer")],
        })
        await send({"type": "http.response.body", "body": body})
