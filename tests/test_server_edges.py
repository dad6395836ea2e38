"""The server's network edges (jevons/server/edges.py, prompt_limits.py):
Host/Origin allowlist, CORS, /v1/models without paths, body size, the
prompt-length check before tokenizing (its bound: tests/test_prompt_limits.py), tokenizing and templating off the
event loop, and uvicorn's connection limits.

No test times anything: "the event loop is free" is shown by /health
answering while the test itself holds a tokenizer call (or a request body)
on a threading.Event; timeouts below only bound a hang."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from jevons.server.edges import parse_size, split_host, uvicorn_settings
from jevons.server.prompt_limits import prompt_char_limit

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
WAIT = 60  # seconds: only a bound on a hang


def serve(tiny_llama, **config) -> ServerThread:
    kw = {"engine": engine_config(model=str(tiny_llama)), "served_model_names": ("tiny",), **config}
    return ServerThread(build_app(ServeConfig(**kw)))


@pytest.fixture(scope="module")
def server(tiny_llama):
    with serve(tiny_llama) as srv:
        yield srv


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code, err
    return err


# --- Host and Origin -------------------------------------------------------------

def test_keyless_server_refuses_a_foreign_host(server):
    r = server.get("/v1/models", headers={"Host": "evil.example:8000"}, timeout=WAIT)
    err = assert_error(r, 403, "host_not_allowed")
    assert "evil.example" in err["message"] and "--allowed-hosts" in err["message"]
    # The same for a generation request, before anything is read or run.
    r = httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers={"Host": "rebind.attacker.test"},
                   timeout=WAIT)
    assert_error(r, 403, "host_not_allowed")


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "LOCALHOST.:{port}", "127.0.0.1:{port}",
                                  "[::1]:{port}", "app.localhost:{port}", "10.1.2.3:{port}"])
def test_loopback_names_and_ip_addresses_pass(server, host):
    r = server.get("/v1/models", headers={"Host": host.format(port=server.port)}, timeout=WAIT)
    assert r.status_code == 200, r.text


def test_docs_and_schema_stay_open(server):
    for path in ("/openapi.json", "/docs"):
        assert server.get(path, headers={"Host": "evil.example"}, timeout=WAIT).status_code == 200


def test_origin_must_be_this_server(server):
    own = f"http://127.0.0.1:{server.port}"
    assert server.get("/health", headers={"Origin": own}, timeout=WAIT).status_code == 200
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.port + 1}", "file://"):
        err = assert_error(server.get("/health", headers={"Origin": origin}, timeout=WAIT), 403,
                           "origin_not_allowed")
        assert origin in err["message"]


def test_allowed_hosts_widen_and_star_turns_the_check_off(tiny_llama):
    with serve(tiny_llama, allowed_hosts=("api.example.com", "*.corp.test")) as srv:
        for host in ("api.example.com", "api.example.com:443", "gpu1.corp.test", "localhost"):
            assert srv.get("/health", headers={"Host": host}, timeout=WAIT).status_code == 200, host
        for host in ("example.com", "corp.test.evil", "xapi.example.com"):
            assert_error(srv.get("/health", headers={"Host": host}, timeout=WAIT), 403, "host_not_allowed")
        # An explicitly allowed host may also be an Origin.
        assert srv.get("/health", headers={"Origin": "https://api.example.com"}, timeout=WAIT).status_code == 200
        # With the engine loaded, a second app on the same model is not needed for '*':
    app = build_app(ServeConfig(allowed_hosts=("*",)))
    assert not any(m.cls.__name__ == "HostGuard" for m in app.user_middleware)


def test_with_an_api_key_the_check_is_off_unless_configured(tiny_llama):
    keyed = build_app(ServeConfig(api_keys=("sk-a",)))
    assert not any(m.cls.__name__ == "HostGuard" for m in keyed.user_middleware)
    with serve(tiny_llama, api_keys=("sk-a",), allowed_hosts=("api.example.com",)) as srv:
        auth = {"Authorization": "Bearer sk-a"}
        assert srv.get("/v1/models", headers={**auth, "Host": "api.example.com"}, timeout=WAIT).status_code == 200
        assert_error(srv.get("/v1/models", headers={**auth, "Host": "evil.example"}, timeout=WAIT), 403,
                     "host_not_allowed")


def test_cors_is_off_unless_configured(server, tiny_llama):
    own = f"http://127.0.0.1:{server.port}"
    r = server.get("/health", headers={"Origin": own}, timeout=WAIT)
    assert "access-control-allow-origin" not in r.headers
    ui = "http://localhost:3000"
    with serve(tiny_llama, cors_origins=(ui,)) as srv:
        pre = httpx.options(srv.url + "/v1/chat/completions", timeout=WAIT, headers={
            "Origin": ui, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ui
        r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, headers={"Origin": ui}, timeout=WAIT)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ui
        assert_error(srv.get("/health", headers={"Origin": "http://localhost:3001"}, timeout=WAIT), 403,
                     "origin_not_allowed")


def test_split_host():
    assert split_host("Example.COM:8000") == "example.com"
    assert split_host("[::1]:8000") == "::1" and split_host("::1") == "::1"
    assert split_host("localhost.") == "localhost"


# --- /v1/models ------------------------------------------------------------------

def test_models_show_no_filesystem_path(server, tiny_llama):
    for path in ("/v1/models", "/v1/models/tiny"):
        r = server.get(path, timeout=WAIT)
        assert r.status_code == 200
        assert str(tiny_llama) not in r.text and str(tiny_llama.parent) not in r.text and "/" not in r.text, r.text
    card = server.get("/v1/models", timeout=WAIT).json()["data"][0]
    assert card["id"] == "tiny" and card["root"] == tiny_llama.name


# --- body size -------------------------------------------------------------------

FIVE_MB = 5_000_000


def test_a_5mb_body_is_413_before_parsing(server):
    body = b'{"model": "tiny", "messages": [{"role": "user", "content": "' + b"x" * FIVE_MB + b'"}]}'
    r = httpx.post(server.url + "/v1/chat/completions", content=body, timeout=WAIT,
                   headers={"content-type": "application/json"})
    err = assert_error(r, 413, "request_too_large")
    assert "4 MiB" in err["message"]
    # The server is fine afterwards, on a new connection and on the same kind of request.
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=WAIT).status_code == 200


def test_health_answers_while_a_large_body_streams_in(server):
    """A chunked body (no Content-Length) the test holds half-sent: /health
    answers meanwhile, and once the body passes the limit it is 413."""
    halfway, go_on = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for i in range(5):
            yield b"x" * 1_000_000
            if i == 1:
                halfway.set()
                assert go_on.wait(WAIT)
        yield b'"}]}'

    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.post(
        server.url + "/v1/chat/completions", content=body(), timeout=WAIT,
        headers={"content-type": "application/json"})))
    t.start()
    try:
        assert halfway.wait(WAIT)
        assert server.get("/health", timeout=WAIT).status_code == 200
    finally:
        go_on.set()
        t.join(WAIT)
    assert_error(result[0], 413, "request_too_large")


def test_a_body_under_the_limit_is_read_and_parsed(tiny_llama):
    with serve(tiny_llama, max_body_size=64 * 1024) as srv:
        ok = {**CHAT, "messages": [{"role": "user", "content": "hello " * 100}]}
        assert httpx.post(srv.url + "/v1/chat/completions", json=ok, timeout=WAIT).status_code == 200
        big = {**CHAT, "messages": [{"role": "user", "content": "y" * 70_000}]}
        err = assert_error(httpx.post(srv.url + "/v1/chat/completions", json=big, timeout=WAIT), 413)
        assert "64 KiB" in err["message"]
        # Chunked, under the limit: read whole and parsed (a schema error names the field).
        r = httpx.post(srv.url + "/v1/chat/completions", content=iter([b'{"model": "tiny", ', b'"messages": 3}']),
                       headers={"content-type": "application/json"}, timeout=WAIT)
        assert_error(r, 400)["param"] == "messages"


def test_parse_size():
    assert parse_size("4MiB") == parse_size("4M") == parse_size("4 mib") == 4 << 20
    assert parse_size("512k") == 512 << 10 and parse_size("1048576") == 1 << 20
    with pytest.raises(ValueError):
        parse_size("lots")


# --- prompt length before tokenizing ---------------------------------------------

@pytest.fixture
def encode_calls(server, monkeypatch) -> list[int]:
    """Records the length of every text the server's tokenizer encodes."""
    tok = server.app.state.jevons.engine.core.tokenizer
    calls: list[int] = []
    real = tok.encode

    def encode(text, *a, **kw):
        calls.append(len(text))
        return real(text, *a, **kw)

    monkeypatch.setattr(tok, "encode", encode)
    return calls


def test_a_prompt_too_long_to_fit_is_400_without_tokenizing(server, encode_calls):
    core = server.app.state.jevons.engine.core
    limit = prompt_char_limit(core.tokenizer, core.max_model_len)
    assert limit is not None and limit < 4 << 20
    r = httpx.post(server.url + "/v1/chat/completions", timeout=WAIT,
                   json={**CHAT, "messages": [{"role": "user", "content": "z" * limit}]})
    err = assert_error(r, 400, "context_length_exceeded")
    assert err["param"] == "messages" and str(core.max_model_len) in err["message"]
    for prompt in ("z" * (limit + 1), ["ok", "z" * (limit + 1)]):
        r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": prompt}, timeout=WAIT)
        assert assert_error(r, 400, "context_length_exceeded")["param"] == "prompt"
    assert encode_calls == []
    # Under the bound the real check still runs on the tokens (and tokenizes).
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "z " * 600}, timeout=WAIT)
    assert_error(r, 400, "context_length_exceeded")
    assert encode_calls == [1200]


# --- off the event loop ----------------------------------------------------------

def _held(server, monkeypatch, attr: str):
    """Make the server's tokenizer block in `attr` until the test lets go.
    Returns (entered, release)."""
    tok = server.app.state.jevons.engine.core.tokenizer
    entered, release = threading.Event(), threading.Event()
    real = getattr(tok, attr)

    def held(*a, **kw):
        entered.set()
        assert release.wait(WAIT)
        return real(*a, **kw)

    monkeypatch.setattr(tok, attr, held)
    return entered, release


@pytest.mark.parametrize("attr,path,body", [
    ("encode", "/v1/chat/completions", CHAT),
    ("apply_chat_template", "/v1/chat/completions", CHAT),
    ("encode", "/v1/completions", {"model": "tiny", "prompt": "hello", "max_tokens": 2}),
    ("encode", "/tokenize", {"prompt": "hello"}),
    ("apply_chat_template", "/tokenize", {"messages": CHAT["messages"]}),
])
def test_health_answers_while_a_prompt_is_templated_or_tokenized(server, monkeypatch, attr, path, body):
    entered, release = _held(server, monkeypatch, attr)
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.post(server.url + path, json=body, timeout=WAIT)))
    t.start()
    try:
        assert entered.wait(WAIT)  # the request is inside the tokenizer now, and stays there
        assert server.get("/health", timeout=WAIT).status_code == 200
        assert server.get("/v1/models", timeout=WAIT).status_code == 200
    finally:
        release.set()
        t.join(WAIT)
    assert result[0].status_code == 200, result[0].text


# --- connections -----------------------------------------------------------------

def _edge_server(tiny_llama, header_timeout_s: float, max_connections: int | None) -> ServerThread:
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",)))
    return ServerThread(app, **uvicorn_settings(header_timeout_s, max_connections, 5))


def _connect(srv: ServerThread) -> socket.socket:
    s = socket.create_connection((srv.host, srv.port), timeout=WAIT)
    return s


def _request(s: socket.socket, path: str = "/health") -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0


def _closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""  # blocks until the server closes (or WAIT passes: a timeout error)
    except ConnectionResetError:
        return True


def _until(cond, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the server did not get there"
        time.sleep(0.01)


def test_idle_and_half_sent_connections_are_closed(tiny_llama):
    with _edge_server(tiny_llama, header_timeout_s=0.3, max_connections=None) as srv:
        idle, half = _connect(srv), _connect(srv)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert _closed_by_server(idle) and _closed_by_server(half)
        # A connection that asks in time is answered, and kept alive for the next request.
        s = _connect(srv)
        assert _request(s).startswith(b"HTTP/1.1 200")
        assert _request(s).startswith(b"HTTP/1.1 200")
        assert _closed_by_server(s)  # and closed once idle
        for c in (idle, half, s):
            c.close()


def test_a_connection_beyond_max_connections_gets_503(tiny_llama):
    with _edge_server(tiny_llama, header_timeout_s=WAIT, max_connections=2) as srv:
        a, b = _connect(srv), _connect(srv)
        assert _request(a).startswith(b"HTTP/1.1 200")
        c = _connect(srv)
        reply = _request(c)
        assert reply.startswith(b"HTTP/1.1 503")
        err = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
        assert err["code"] == "too_many_connections"
        assert _closed_by_server(c)
        b.close()
        c.close()
        _until(lambda: len(srv.server.server_state.connections) <= 1)
        d = _connect(srv)  # room again
        assert _request(d).startswith(b"HTTP/1.1 200")
        for s in (a, d):
            s.close()


def test_an_oversized_request_head_is_refused(tiny_llama):
    with _edge_server(tiny_llama, header_timeout_s=WAIT, max_connections=None) as srv:
        s = _connect(srv)
        # A head that keeps coming: uvicorn holds at most MAX_HEAD_BYTES of an unfinished one.
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000)
        reply = s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 4"), reply[:100]
        s.close()


# --- the CLI ----------------------------------------------------------------------

def test_serve_flags_reach_the_config():
    from jevons.cli import build_parser
    from jevons.server.cli import serve_config

    a = build_parser().parse_args(["serve", "--allowed-hosts", "a.example, *.corp", "--cors-origins",
                                   "http://localhost:3000", "--max-body-size", "1MiB", "--max-connections", "0",
                                   "--timeout-keep-alive", "7"])
    c = serve_config(a)
    assert c.allowed_hosts == ("a.example", "*.corp") and c.cors_origins == ("http://localhost:3000",)
    assert c.max_body_size == 1 << 20 and c.max_connections is None and c.timeout_keep_alive_s == 7
    d = serve_config(build_parser().parse_args(["serve"]))
    assert d.allowed_hosts is None and d.cors_origins == () and d.max_body_size == 4 << 20
    assert d.max_connections == 1024
