"""The embedded default model behind the server answers a real question
(the only server test with real weights: it takes ~10 s to load on CPU)."""
from __future__ import annotations

import openai
import pytest

from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig


def test_default_model_answers():
    from jevons.loader.resolve import ModelNotFoundError, resolve_model

    try:
        resolve_model("smollm2-135m-instruct")
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    cfg = ServeConfig(engine_kwargs={"model": "smollm2-135m-instruct", "num_kv_blocks": 64, "max_model_len": 1024})
    with ServerThread(build_app(cfg)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=20,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.model_extra.get("reasoning_content") is None  # no think tags in this tokenizer
        # Logprob bytes are each token's raw bytes (parts of a character too): joined, they are the text.
        r = client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=24, logprobs=True, top_logprobs=2,
            messages=[{"role": "user", "content": "Repeat exactly: 日本語のテキスト 🙂"}],
        )
        content = r.choices[0].logprobs.content
        joined = b"".join(bytes(c.bytes) for c in content)
        assert joined.decode("utf-8", errors="replace") == r.choices[0].message.content
        assert all(t.bytes is not None for c in content for t in c.top_logprobs)
