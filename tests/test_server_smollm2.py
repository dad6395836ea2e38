"""The embedded default model behind the server answers a real question
(the only server test with real weights: it takes ~10 s to load on CPU)."""
from __future__ import annotations

import openai
import pytest

from jevons.config import engine_config
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig


def test_default_model_answers():
    from jevons.loader.resolve import ModelNotFoundError, resolve_model

    try:
        resolve_model("smollm2-135m-instruct")
    except ModelNotFoundError as e:
        pytest.skip(str(e))
    cfg = ServeConfig(engine=engine_config(model="smollm2-135m-instruct", num_kv_blocks=64, max_model_len=1024))
    with ServerThread(build_app(cfg)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=20,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        )
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
        assert r.choices[0].message.model_extra.get("reasoning_content") is None  # no think tags in this tokenizer
        # Logprob bytes are each token's raw bytes (parts of a character too): joined, they are the text.
        r = client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=24, logprobs=True, top_logprobs=2,
            messages=[{"role": "user", "content": "Repeat exactly: 日本語 🙂"}],
        )
        content = r.choices[0].logprobs.content
        joined = b"".join(bytes(c.bytes) for c in content)
        assert joined.decode("utf-8", errors="replace") == r.choices[0].message.content
        assert all(t.bytes is not None for c in content for t in c.top_logprobs)
        # The <|im_end|> that ended it has no entry (its text is not in the content), but usage counts it.
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == len(content) + 1
        # Streamed, the same: the last chunk carries no entry for <|im_end|>.
        text, joined = "", b""
        for chunk in client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=24, logprobs=True, stream=True,
            messages=[{"role": "user", "content": "Repeat exactly: 日本語 🙂"}],
        ):
            for ch in chunk.choices:
                text += ch.delta.content or ""
                joined += b"".join(bytes(c.bytes) for c in (ch.logprobs.content if ch.logprobs else []))
        assert text == r.choices[0].message.content and joined.decode("utf-8", errors="replace") == text
        # skip_special_tokens=False: the stop token's text is in the content, and so is its entry.
        r = client.chat.completions.create(
            model="smollm2-135m-instruct", temperature=0, max_tokens=24, logprobs=True,
            messages=[{"role": "user", "content": "Repeat exactly: 日本語 🙂"}],
            extra_body={"skip_special_tokens": False},
        )
        content = r.choices[0].logprobs.content
        assert r.choices[0].message.content.endswith("<|im_end|>") and content[-1].token == "<|im_end|>"
        assert b"".join(bytes(c.bytes) for c in content).decode("utf-8", errors="replace") == r.choices[0].message.content


def test_hidden_stop_token_has_no_logprob_entry():
    """RequestTracker drops the entry of a stop token whose text the content
    leaves out (EOS, end of turn: special, skip_special_tokens), and only that."""
    from unittest.mock import MagicMock

    from jevons.engine.async_engine import StepEvent
    from jevons.engine.output_processor import SeqDelta
    from jevons.outputs import Logprob
    from jevons.server.choices import RequestTracker
    from jevons.server.logprobs import stop_token_hidden

    class Tok:
        special_token_ids = frozenset({2})

        def decode(self, ids, skip_special_tokens=True):
            return "".join("" if (i == 2 and skip_special_tokens) else f"<{i}>" for i in ids)

    def run(hidden, token_ids, finish_reason="stop", stop_reason=None):
        tr = RequestTracker(MagicMock(), 1, [3], stop_token_hidden=hidden)
        lps = [{t: Logprob(-0.5, 1, f"<{t}>")} for t in token_ids]
        tr.on_event(0, StepEvent([SeqDelta("r", 0, token_ids[:-1], "x", lps[:-1])]))
        (d,) = tr.on_event(0, StepEvent([SeqDelta("r", 0, token_ids[-1:], "", lps[-1:], finish_reason, stop_reason)],
                                        finished=True))
        c = tr.choices[0]
        return [next(iter(x)) for x in c.logprobs], len(d.logprobs or []), tr.usage().completion_tokens

    skip, keep = stop_token_hidden(Tok(), True), stop_token_hidden(Tok(), False)
    assert run(skip, [5, 6, 2]) == ([5, 6], 0, 3)  # EOS ended it: no entry, still counted
    assert run(keep, [5, 6, 2]) == ([5, 6, 2], 1, 3)  # skip_special_tokens=False: its text is in the content
    assert run(skip, [5, 6, 7], stop_reason=7) == ([5, 6, 7], 1, 3)  # a stop token that is plain text
    assert run(skip, [5, 6, 2], finish_reason="length") == ([5, 6, 2], 1, 3)  # ignore_eos / max_tokens
    assert run(skip, [5, 2, 6], stop_reason="<6>") == ([5, 2, 6], 1, 3)  # a stop string: not a stop token
