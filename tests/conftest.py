from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests run tiny models whose ops are too small to gain from a second thread,
# and an OpenMP barrier waiting on a core that another process holds costs
# milliseconds per op. One thread keeps the suite fast on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from tiny_models import build_model  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _fresh_runtime_switches():
    """A test that sets a JEVONS_* switch (jevons/runtime.py) leaves it behind
    in the process-wide runtime config; the next test reads the environment anew."""
    yield
    from jevons import runtime

    runtime.reset()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> Path:
    return build_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


def assert_no_leaks(llm) -> None:
    """Every KV block is back in the pool after the engine drained."""
    core = llm.engine if hasattr(llm, "engine") else llm
    assert not core.has_work()
    assert core.num_free_blocks() == core.kv.num_blocks


@pytest.fixture(scope="module")
def server(tiny_llama):
    """The tiny model behind the real HTTP server, one per test module (a module
    that needs other settings defines its own `server`)."""
    from jevons.config import engine_config
    from jevons.server.app import build_app
    from jevons.server.background import ServerThread
    from jevons.server.config import ServeConfig

    app = build_app(ServeConfig(engine=engine_config(model=str(tiny_llama)), served_model_names=("tiny",)))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    """The real `openai` client against `server`."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
