"""`jevons perplexity` scoring against transformers on the same windows."""
import math

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
