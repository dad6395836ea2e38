"""`jevons perplexity` scoring against transformers on the same windows."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_no_leaks
from jevons import LLM
from jevons.runner.perplexity import perplexity

TEXT = " ".join(["Paged attention keeps the KV cache in fixed-size blocks, and the fox jumps."] * 30)


def test_perplexity_matches_transformers(tiny_llama):
    from transformers import AutoModelForCausalLM

    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    r = perplexity(llm.engine, TEXT, ctx=64)
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = llm.get_tokenizer().encode(TEXT)
    total, n = 0.0, 0
    with torch.no_grad():
        for w in range(len(ids) // 64):
            window = torch.tensor(ids[w * 64 : (w + 1) * 64])
            logits = hf(window[None]).logits[0]
            total += F.cross_entropy(logits[31:63], window[32:], reduction="sum").item()
            n += 32
    assert r.windows == len(ids) // 64 and r.scored_tokens == n
    assert math.isclose(r.perplexity, math.exp(total / n), rel_tol=1e-4)
    assert_no_leaks(llm)


def test_decode_path_matches_prefill_path(tiny_llama):
    """Teacher-forced one token per step scores what one forward per window
    scores (fp32: the same function up to summation order)."""
    llm = LLM(str(tiny_llama), dtype="float32", progress=False)
    pre = perplexity(llm.engine, TEXT, ctx=64, path="prefill")
    dec = perplexity(llm.engine, TEXT, ctx=64, path="decode")
    assert (pre.path, dec.path) == ("prefill", "decode")
    assert (dec.windows, dec.scored_tokens, dec.ctx) == (pre.windows, pre.scored_tokens, pre.ctx)
    assert math.isclose(dec.perplexity, pre.perplexity, rel_tol=1e-4)
    one = perplexity(llm.engine, TEXT, ctx=64, path="decode", max_windows=1)
    assert one.windows == 1 and one.scored_tokens == 32
    assert_no_leaks(llm)


def test_deterministic_paths_are_bitwise_equal(tiny_llama):
    """In the deterministic mode every prompt row attends as a decode row and
    every linear runs in fixed row tiles, so the two paths give the same bits."""
    llm = LLM(str(tiny_llama), dtype="float32", deterministic=True, progress=False)
    assert llm.engine.runner.every_row_decodes
    pre = perplexity(llm.engine, TEXT, ctx=64, path="prefill")
    dec = perplexity(llm.engine, TEXT, ctx=64, path="decode")
    assert dec.nll_sum == pre.nll_sum
    assert_no_leaks(llm)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_decode_path_runs_quantized(tiny_llama, method):
    """The decode path through whichever int8/int4 kernels this CPU has, close
    to the prefill path's number (the same weights on every path)."""
    llm = LLM(str(tiny_llama), dtype="float32", quantization=method, progress=False)
    assert llm.engine.quantization == method
    pre = perplexity(llm.engine, TEXT, ctx=64, path="prefill", max_windows=2)
    dec = perplexity(llm.engine, TEXT, ctx=64, path="decode", max_windows=2)
    assert math.isfinite(dec.perplexity) and dec.windows == 2
    assert math.isclose(dec.perplexity, pre.perplexity, rel_tol=1e-2)
    assert_no_leaks(llm)


def test_cli_both_paths(tiny_llama, capsys):
    from jevons.cli import build_parser

    a = build_parser().parse_args(["perplexity", "--model", str(tiny_llama), "--dtype", "float32", "--ctx", "64",
                                   "--max-windows", "1", "--path", "both"])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "path prefill: perplexity" in out and "path decode: perplexity" in out
    assert "decode vs prefill: perplexity" in out
