"""The embedded SmolLM2-135M-Instruct GGUF through jevons against transformers'
own Llama code loading the same GGUF, float32: greedy tokens on varied chat
prompts and prefill logits."""
import pytest
import torch

from jevons import LLM, SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three prime numbers greater than 100.",
    "Translate 'good morning' into Spanish and German.",
    "def fibonacci(n):\n    # complete this Python function",
    "What is 17 * 23? Show your work.",
    "Give me a short motivational quote.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "Why is the sky blue? Answer for a child.",
    "Name a famous painting by Leonardo da Vinci. 🎨",
    "写一句关于春天的话。",
]


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    from jevons.loader.resolve import resolve_model

    path = resolve_model("smollm2-135m-instruct").path
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    # The dequantized float model, as transformers loads the GGUF; the 4-bit
    # path `auto` picks on qgemm CPUs has its own gate (perplexity beside
    # llama-perplexity, tests/test_int4_linear.py and docs/benchmarks.md).
    llm = LLM("smollm2-135m-instruct", dtype="float32", quantization="none", progress=False)
    return hf, llm


def chat_ids(llm, text):
    tok = llm.get_tokenizer()
    return tok.encode(tok.apply_chat_template([{"role": "user", "content": text}]), add_special_tokens=False)


def test_greedy_matches_transformers(models):
    """Token for token: transformers' greedy choice at every position of our
    output, given the same prefix, is our token. One teacher-forced forward per
    prompt checks all 48 steps (by induction this is transformers' own greedy
    generation), and a plain generate() double-checks the first prompt."""
    hf, llm = models
    ids = [chat_ids(llm, p) for p in PROMPTS]
    outs = llm.generate([{"prompt_token_ids": i} for i in ids],
                        SamplingParams(temperature=0, max_tokens=48, ignore_eos=True), use_tqdm=False)
    for i, o in zip(ids, outs):
        got = o.outputs[0].token_ids
        assert len(got) == 48
        with torch.no_grad():
            logits = hf(torch.tensor([i + got[:-1]])).logits[0, len(i) - 1 :]
        assert logits.argmax(-1).tolist() == got, llm.get_tokenizer().decode(i)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids[0]]), max_new_tokens=48, min_new_tokens=48, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    assert outs[0].outputs[0].token_ids == ref[0, len(ids[0]):].tolist()
    assert llm.engine.num_free_blocks() == llm.engine.kv.num_blocks


def test_prefill_logits_match(models):
    hf, llm = models
    ids = chat_ids(llm, PROMPTS[2])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=1, logprobs=20),
                       use_tqdm=False)[0].outputs[0].logprobs[0]
    for tok, lp in out.items():
        assert abs(lp - ref[tok].item()) <= 1e-3 * max(1.0, abs(ref[tok].item()))
