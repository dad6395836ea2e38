"""--data-parallel-size 2 behind one server, with the real `openai` client:
every request answers; a repeated long prefix lands on the replica that
cached it (cached tokens in usage); killing one replica's worker process
fails that replica's request in flight, and the server keeps answering from
the other. Each replica runs its model in a worker process of its own (the
mp executor, the default for data parallelism)."""
from __future__ import annotations

import json
import os
import signal
import threading

import openai
import pytest
import torch

from jevons.config import engine_config


@pytest.fixture(scope="module")
def server(tiny_llama):
    from jevons.server.app import build_app
    from jevons.server.background import ServerThread
    from jevons.server.config import ServeConfig

    cfg = engine_config(model=str(tiny_llama), dtype="float32", data_parallel_size=2)
    with ServerThread(build_app(ServeConfig(engine=cfg, served_model_names=("tiny",)))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def prompts(tiny_llama):
    vocab = json.loads((tiny_llama / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in [64, 30, 20, 25]]


def complete(client, prompt, max_tokens=6, **kw):
    return client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0, **kw)


def test_requests_answer_and_a_prefix_returns_to_its_replica(server, client, prompts):
    dp = server.app.state.jevons.engine
    assert len(dp.engines) == 2
    outs = [complete(client, p) for p in prompts[:2]] + [complete(client, "hello there")]
    assert all(o.choices[0].finish_reason == "length" and o.usage.completion_tokens == 6 for o in outs)
    steps = [e.core.num_steps for e in dp.engines]
    again = complete(client, prompts[0][:48] + [7, 8, 9])
    assert again.usage.prompt_tokens_details.cached_tokens == 48
    assert sum(e.core.num_steps > s for e, s in zip(dp.engines, steps)) == 1  # one replica served it


def test_killing_one_replica_fails_its_request_only(server, client, prompts):
    dp = server.app.state.jevons.engine
    results: dict[int, object] = {}
    started = threading.Barrier(3)

    def stream(i):
        try:
            # Prompts no replica has seen: the router balances them, one on each.
            chunks = client.completions.create(model="tiny", prompt=prompts[2 + i], max_tokens=400, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True})
            first = True
            n = 0
            for c in chunks:
                n += len(c.choices[0].text) if c.choices else 0
                if first:
                    first = False
                    started.wait(timeout=120)
            results[i] = n
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    started.wait(timeout=120)  # both streams are generating, one on each replica
    assert sorted(dp.owner.values()) == [0, 1], (dp.owner, dp.router.load, dp.alive(), [e.core.num_steps for e in dp.engines])
    proc = dp.engines[1].core.executor.procs[0]  # replica 1's model process
    os.kill(proc.pid, signal.SIGKILL)
    for t in threads:
        t.join(timeout=300)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert len(errors) == 1, results  # the killed replica's stream failed, the other finished
    assert dp.alive() == [True, False]
    # The server keeps answering, from the live replica.
    assert complete(client, prompts[1]).usage.completion_tokens == 6
    assert server.app.state.jevons.health()[0] == 200
    # /metrics: the replicas summed, and each one's own gauges.
    import urllib.request

    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    assert 'jevons:replica_up{model_name="tiny",replica="0"} 1.0' in text
    assert 'jevons:replica_up{model_name="tiny",replica="1"} 0.0' in text
    total = sum(e.core.generation_tokens_total for e in dp.engines)
    assert f'jevons:generation_tokens_total{{model_name="tiny"}} {float(total)}' in text
