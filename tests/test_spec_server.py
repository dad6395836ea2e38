"""Speculative decoding behind the HTTP server: the same text and usage as
plain decoding, streamed or not, and the spec_decode metrics."""
import httpx
import pytest

from jevons import LLM, SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
PROMPT = "one two three four one two three four one two three four one two"


@pytest.fixture(scope="module")
def server(tiny_llama):
    from jevons.config import engine_config
    from jevons.server.app import build_app
    from jevons.server.background import ServerThread
    from jevons.server.config import ServeConfig

    cfg = engine_config(model=str(tiny_llama), dtype="float32", speculative_config=NGRAM)
    with ServerThread(build_app(ServeConfig(engine=cfg, served_model_names=("tiny",)))) as srv:
        yield srv


def test_same_text_and_usage_as_plain_decoding(server, tiny_llama):
    plain = LLM(str(tiny_llama), dtype="float32", progress=False)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    for extra in ({}, {"stop": None}):
        want = plain.generate(PROMPT, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), use_tqdm=False)[0]
        got = httpx.post(server.url + "/v1/completions", json=body | extra, timeout=60).json()
        assert got["choices"][0]["text"] == want.outputs[0].text
        assert got["usage"]["completion_tokens"] == len(want.outputs[0].token_ids) == 30
    # Streamed, with a stop string taken from the middle of the answer.
    text = want.outputs[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    want = plain.generate(PROMPT, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]),
                          use_tqdm=False)[0]
    chunks = []
    with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                      json=body | {"stream": True, "stop": [stop], "stream_options": {"include_usage": True}}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(httpx.Response(200, content=line[6:]).json())
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == want.outputs[0].text
    assert chunks[-1]["usage"]["completion_tokens"] == len(want.outputs[0].token_ids)
    m = httpx.get(server.url + "/metrics").text
    for name in ("jevons:spec_decode_num_drafts_total", "jevons:spec_decode_num_draft_tokens_total",
                 "jevons:spec_decode_num_accepted_tokens_total", "jevons:spec_decode_num_accepted_tokens_per_pos_total"):
        assert name in m, name
    accepted = next(line for line in m.splitlines() if line.startswith("jevons:spec_decode_num_accepted_tokens_total"))
    assert float(accepted.rsplit(" ", 1)[1]) > 0
