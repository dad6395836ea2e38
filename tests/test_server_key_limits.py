"""--max-seqs-per-key: one API key's sequences in flight (n counts) are capped;
other keys are not affected, and a finished or dropped request gives its
sequences back."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig
from jevons.server.errors import APIError
from jevons.server.key_limits import KeyLimiter

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hello"}]


def test_leases_count_n_and_release_once():
    lim = KeyLimiter(4)
    a = lim.acquire("k1", 3)
    with pytest.raises(APIError) as e:
        lim.acquire("k1", 2)
    assert e.value.status == 429 and "3 sequences in flight" in e.value.message
    with pytest.raises(APIError) as e:
        lim.acquire("k2", 5)
    assert e.value.status == 400 and e.value.param == "n"
    b = lim.acquire("k2", 4)
    a.release()
    a.release()  # idempotent
    assert lim.inflight == {"k2": 4}
    b.release()
    assert lim.inflight == {}
    assert KeyLimiter(None).acquire("k", 10**6) is not None  # off


def _body(**kw):
    return {"model": "tiny", "messages": MSGS, "max_tokens": 4, "temperature": 0, **kw}


def test_server_caps_one_keys_sequences(tiny_llama):
    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama), dtype="float32"),
                                served_model_names=("tiny",), api_keys=("k1", "k2"), max_seqs_per_key=4))
    with ServerThread(app) as srv:
        limits = app.state.jevons.key_limits
        core = app.state.jevons.engine.core
        k1, k2 = ({"Authorization": f"Bearer {k}"} for k in ("k1", "k2"))
        r = httpx.post(srv.url + CHAT, json=_body(n=5), headers=k1, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "n"
        # Hold the engine so the first request stays in flight while the others arrive.
        gate = threading.Event()
        core.fault_injector = lambda where, req: gate.wait(60) if where == "forward" else None
        try:
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(httpx.post, srv.url + CHAT, json=_body(n=3), headers=k1, timeout=60)
                deadline = time.monotonic() + 30
                while sum(limits.inflight.values()) < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                busy = httpx.post(srv.url + CHAT, json=_body(n=2), headers=k1, timeout=60)
                assert busy.status_code == 429, busy.text
                assert "3 sequences in flight" in busy.json()["error"]["message"]
                other = pool.submit(httpx.post, srv.url + CHAT, json=_body(n=2), headers=k2, timeout=60)
                while sum(limits.inflight.values()) < 5 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert sum(limits.inflight.values()) == 5  # another key is not limited by k1's count
                gate.set()
                assert first.result().status_code == 200 and other.result().status_code == 200
        finally:
            gate.set()
            core.fault_injector = None
        assert limits.inflight == {}  # finished requests give their sequences back
        assert httpx.post(srv.url + CHAT, json=_body(n=4), headers=k1, timeout=60).status_code == 200
        assert limits.inflight == {}
