"""The on-disk cache of packed GGUF layers (runner/packed_cache.py): off by
default; a second start maps the blobs the first wrote and computes the same
tokens and logprobs without packing anything; any change to the file, the
code or the settings is another entry; a damaged entry is never read."""
from __future__ import annotations

import os
import pathlib
import threading
import time

import pytest
import torch

from loader_fixtures import Q, smollm2_gguf, write_model_gguf
from jevons import LLM, SamplingParams
from jevons.kernels.cpu import gguf_pack, qgemm, qgemm_quant
from jevons.loader import gguf_reader
from jevons.runner import packed_cache
from test_direct_load import _KINDS, _tiny_llama

needs_kernel = pytest.mark.skipif(not qgemm.available(), reason="needs the C kernels with AVX2 or AVX512-VNNI")

# Every layer on a C path (no Q5_1, which is dequantized in Python): the cache takes them all.
_ALL_C = {**_KINDS, "layers.1.self_attn.v_proj": Q.Q4_0}


def _gguf(tmp_path: pathlib.Path, kinds: dict) -> pathlib.Path:
    path = tmp_path / "tiny.gguf"
    write_model_gguf(path, "qwen2", _tiny_llama("qwen2", False), kinds,
                     tokenizer_from=gguf_reader.open_gguf(smollm2_gguf()))
    return path


def _run(path: pathlib.Path) -> list:
    llm = LLM(str(path), dtype="float32", quantization="int4", progress=False)
    for t in threading.enumerate():  # the cache is written on a background thread
        if t.name == "jevons-packed-cache":
            t.join()
    out = llm.generate([{"prompt_token_ids": list(range(3, 20))}], SamplingParams(temperature=0, max_tokens=6,
                                                                                     logprobs=3), use_tqdm=False)
    o = out[0].outputs[0]
    return [o.token_ids, [sorted((t, lp.logprob) for t, lp in step.items()) for step in o.logprobs]]


class _Packs:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        for mod, fn in ((gguf_pack, "pack_blocks"), (qgemm_quant, "quantize_blocks")):
            real = getattr(mod, fn)

            def spy(*a, _real=real, **k):
                self.calls += 1
                return _real(*a, **k)
            monkeypatch.setattr(mod, fn, spy)


@needs_kernel
def test_second_start_maps_the_blobs_and_answers_the_same(tmp_path: pathlib.Path, monkeypatch) -> None:
    path = _gguf(tmp_path, _ALL_C)
    monkeypatch.delenv(packed_cache.ENV_VAR, raising=False)
    plain = _run(path)
    cache = tmp_path / "cache"
    assert not cache.exists()
    monkeypatch.setenv(packed_cache.ENV_VAR, str(cache))
    with monkeypatch.context() as m:
        packs = _Packs(m)
        cold = _run(path)
        assert packs.calls > 0
    assert sorted(p.suffix for p in cache.iterdir()) == [".bin", ".json"]
    with monkeypatch.context() as m:
        packs = _Packs(m)
        warm = _run(path)
        assert packs.calls == 0  # every layer came from the file
    assert plain == cold == warm


@needs_kernel
def test_a_layer_off_the_c_paths_leaves_no_entry(tmp_path: pathlib.Path, monkeypatch) -> None:
    path = _gguf(tmp_path, _KINDS)  # layer 1's q/k/v are quantized from floats (a Q5_1 part)
    monkeypatch.setenv(packed_cache.ENV_VAR, str(tmp_path / "cache"))
    _run(path)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_the_key_follows_the_file_the_code_and_the_settings(tmp_path: pathlib.Path, monkeypatch) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 100)
    plan = [("layers.0.qkv_proj", ("q", "k", "v"))]
    key = packed_cache.cache_key(f, "int4", torch.float32, plan)
    assert key == packed_cache.cache_key(f, "int4", torch.float32, plan)
    assert key != packed_cache.cache_key(f, "int8", torch.float32, plan)
    assert key != packed_cache.cache_key(f, "int4", torch.bfloat16, plan)
    assert key != packed_cache.cache_key(f, "int4", torch.float32, plan[:0])
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert packed_cache.cache_key(f, "int4", torch.float32, plan) != key
    key = packed_cache.cache_key(f, "int4", torch.float32, plan)
    time.sleep(0.05)  # past the file system's clock tick
    f.write_bytes(b"y" * 100)  # same size, rewritten in place, mtime set back: the ctime still moves
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert packed_cache.cache_key(f, "int4", torch.float32, plan) != key
    key = packed_cache.cache_key(f, "int4", torch.float32, plan)
    monkeypatch.setattr(packed_cache, "_source_digest", lambda: b"other code")
    assert packed_cache.cache_key(f, "int4", torch.float32, plan) != key


def test_a_damaged_entry_is_never_read(tmp_path: pathlib.Path) -> None:
    qw = qgemm.QWeight(torch.arange(2 * 1 * 96, dtype=torch.uint8).view(2, 1, 96), 32, 32, 4, True)
    c = packed_cache.PackedCache(tmp_path, "k")
    c.put("a", qw)
    c.save(background=False)
    again = packed_cache.PackedCache(tmp_path, "k")
    assert again.hit and torch.equal(again.get("a").blob, qw.blob) and again.get("a").has_zero
    with open(tmp_path / "k.bin", "ab") as f:  # a payload that does not match its index
        f.write(b"\0")
    assert not packed_cache.PackedCache(tmp_path, "k").hit
    (tmp_path / "k.json").write_text("{not json")
    assert not packed_cache.PackedCache(tmp_path, "k").hit
    other = packed_cache.PackedCache(tmp_path, "other")
    assert not other.hit and other.get("a") is None


def test_old_entries_are_evicted_least_recently_used_first(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setattr(packed_cache, "MAX_ENTRIES", 2)
    qw = qgemm.QWeight(torch.zeros(1, 1, 96, dtype=torch.uint8), 16, 32, 4, True)
    for i, key in enumerate(("a", "b")):
        c = packed_cache.PackedCache(tmp_path, key)
        c.put("x", qw)
        c.save(background=False)
        os.utime(tmp_path / f"{key}.json", ns=(i * 10**9, i * 10**9))  # a before b
    assert packed_cache.PackedCache(tmp_path, "a").hit  # a read: a is now the most recent
    c = packed_cache.PackedCache(tmp_path, "c")
    c.put("x", qw)
    c.save(background=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "c.bin", "c.json"]
