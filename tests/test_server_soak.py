"""A bounded soak: a few hundred mixed requests (plain, streamed, n > 1,
streams the client drops half way, bad requests) against one server, and the
server's memory stays flat: Python objects and every engine-side table back
to where they were after the warm-up, every KV block free, no sequence left.

Bounded in count (WARMUP + ROUNDS rounds of 6 requests), not in time, and it
measures objects rather than RSS, which the allocator and the OS blur."""
from __future__ import annotations

import gc
import json

import httpx

from test_server_fuzz import TIMEOUT, assert_unhurt, fuzz_server

WARMUP, ROUNDS = 10, 40
CHAT = "/v1/chat/completions"


def one_round(client: httpx.Client, i: int) -> None:
    msgs = [{"role": "user", "content": f"soak {i}: say something"}]
    r = client.post(CHAT, json={"model": "tiny", "messages": msgs, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    r = client.post(CHAT, json={"model": "tiny", "messages": msgs, "max_tokens": 3, "n": 3, "temperature": 1,
                                "seed": i})
    assert r.status_code == 200 and len(r.json()["choices"]) == 3, r.text
    with client.stream("POST", CHAT, json={"model": "tiny", "messages": msgs, "max_tokens": 4, "stream": True,
                                           "stream_options": {"include_usage": True}}) as s:
        assert s.status_code == 200
        assert any(line.startswith("data: [DONE]") for line in s.iter_lines())
    with client.stream("POST", CHAT, json={"model": "tiny", "messages": msgs, "max_tokens": 40, "stream": True,
                                           "ignore_eos": True}) as s:
        for line in s.iter_lines():  # the client walks away after the first chunk
            if line.startswith("data: "):
                break
    r = client.post(CHAT, json={"model": "tiny", "messages": msgs, "top_k": 10**30})
    assert r.status_code == 400
    r = client.post("/v1/completions", content=json.dumps({"model": "tiny", "prompt": "x"})[:-3],
                    headers={"content-type": "application/json"})
    assert r.status_code in (400, 422)


def engine_tables(srv) -> dict[str, int]:
    core = srv.app.state.jevons.engine.core
    return {"requests": len(core.requests), "children": len(core.children),
            "free_blocks": core.num_free_blocks(), "blocks": core.kv.num_blocks}


def test_memory_is_flat_over_a_soak(tiny_llama):
    with fuzz_server(tiny_llama) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as client:
        for i in range(WARMUP):
            one_round(client, i)
        assert_unhurt(srv)
        gc.collect()
        before = len(gc.get_objects())
        for i in range(WARMUP, WARMUP + ROUNDS):
            one_round(client, i)
        assert_unhurt(srv)
        gc.collect()
        after = len(gc.get_objects())
        tables = engine_tables(srv)
        assert tables["requests"] == 0 and tables["children"] == 0
        assert tables["free_blocks"] == tables["blocks"]
        # 240 requests later: a leak of even one object per request would show
        # as 240+; allow for caches that fill once (tokenizer, metrics labels).
        assert after - before < 200, (before, after)
