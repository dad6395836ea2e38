"""Batch-1 decode against the memory-bandwidth floor: the bytes a token reads.

    python -m jevons.bench.bytes_floor MODEL [-q int4] [--threads 2] [--steps 64] [--llama-tok-s R]

At batch 1 a decode step is a pass over the weights a token touches, so its
floor is (those bytes) / (the rate this machine streams memory). This counts
the bytes from the model as loaded (every parameter and buffer once, as
stored: qgemm blobs, int8 rows, floats), with the routed experts at top_k of
num_experts (one token uses exactly top_k of them a MoE layer) and the
embedding at one row; the same count over the GGUF file's own tensors is
what llama.cpp reads a token. The stream rate is a float32 sum over 1 GiB
at the same thread count (what a read-only pass gets here). Then it times
greedy batch-1 steps and prints how close each engine is to its floor
(llama.cpp's rate is given by --llama-tok-s, from `jevons bench latency
--compare` or llama-bench's tg, measured beside it).

The KV cache read (a few kB a token at short contexts) is left out.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn


def model_bytes_per_token(model: nn.Module) -> dict[str, float]:
    """Bytes a batch-1 token reads, by part (embedding, experts, head, rest),
    counting each tensor once by its storage."""
    seen: set[int] = set()
    parts: dict[str, float] = {"embedding row": 0.0, "routed experts": 0.0, "head": 0.0, "rest": 0.0}
    head = getattr(model, "fast_head", None)
    head_tensors = {id(t) for t in head.parameters()} | {id(t) for t in head.buffers()} if head is not None else set()
    fraction: dict[int, float] = {}
    for mod in model.modules():
        router = getattr(mod, "router", None)
        if router is not None and hasattr(router, "top_k") and hasattr(router, "num_experts"):
            for child_name in ("experts", "int4_experts"):
                child = getattr(mod, child_name, None)
                if isinstance(child, nn.Module):
                    for t in list(child.parameters()) + list(child.buffers()):
                        fraction[id(t)] = router.top_k / router.num_experts
    embed = _embedding(model)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if t.numel() == 0 or key in seen:
            continue
        seen.add(key)
        nbytes = t.numel() * t.element_size()
        if embed is not None and t is embed.weight:
            parts["embedding row"] += nbytes / t.shape[0]
            lm_head = getattr(model, "lm_head", None)
            if head is None and (lm_head is None or getattr(lm_head, "weight", None) is t):
                parts["head"] += nbytes  # tied, no quantized copy: the head reads all of it
        elif id(t) in fraction:
            parts["routed experts"] += nbytes * fraction[id(t)]
        elif id(t) in head_tensors or name.startswith("lm_head."):
            if head is None or id(t) in head_tensors:  # with a fast head, the float lm_head is not read
                parts["head"] += nbytes
        else:
            parts["rest"] += nbytes
    return parts


def _embedding(model: nn.Module) -> nn.Embedding | None:
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            return mod
    return None


def gguf_bytes_per_token(path: str) -> dict[str, float]:
    """The same count over a GGUF's stored tensors: what llama.cpp reads a token."""
    import gguf  # the reference reader (a test dependency here anyway)

    reader = gguf.GGUFReader(path)
    fields = {f.name: f for f in reader.fields.values()}

    def scalar(suffix: str) -> int | None:
        for name, f in fields.items():
            if name.endswith(suffix) and f.data:
                return int(f.parts[f.data[0]][0])
        return None

    used, count = scalar(".expert_used_count"), scalar(".expert_count")
    names = {t.name for t in reader.tensors}
    parts = {"embedding row": 0.0, "routed experts": 0.0, "head": 0.0, "rest": 0.0}
    for t in reader.tensors:
        nbytes = float(t.n_bytes)
        if t.name == "token_embd.weight":
            rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
            parts["embedding row"] += nbytes / rows
            if "output.weight" not in names:
                parts["head"] += nbytes
        elif t.name == "output.weight":
            parts["head"] += nbytes
        elif "_exps." in t.name and used and count:
            parts["routed experts"] += nbytes * used / count
        else:
            parts["rest"] += nbytes
    return parts


def stream_rate(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    """Bytes a second a float32 sum reads over `gib` GiB (best of reps)."""
    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def decode_step_seconds(llm: Any, steps: int) -> float:
    """Greedy batch-1 step time: (steps + 1 tokens) - (1 token), best of 3."""
    from jevons import SamplingParams

    prompt = [{"prompt_token_ids": list(range(100, 108))}]
    one = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    many = SamplingParams(temperature=0, max_tokens=steps + 1, ignore_eos=True)
    llm.generate(prompt, many, use_tqdm=False)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        llm.generate(prompt, one, use_tqdm=False)
        t1 = time.perf_counter()
        llm.generate(prompt, many, use_tqdm=False)
        t2 = time.perf_counter()
        best = min(best, ((t2 - t1) - (t1 - t0)) / steps)
    return best


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("-q", "--quantization", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--llama-tok-s", type=float, default=None, help="llama.cpp's batch-1 tok/s, measured beside")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from jevons import LLM

    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization, progress=False)
    ours = model_bytes_per_token(llm.engine.runner.model)
    theirs = gguf_bytes_per_token(args.model) if args.model.endswith(".gguf") else None
    step = decode_step_seconds(llm, args.steps)
    rate = stream_rate(args.threads)
    print(f"stream rate, {args.threads} threads (float32 sum over 1 GiB): {rate / 1e9:.1f} GB/s")
    print("| MB a batch-1 token | jevons | llama.cpp (the file's tensors) |")
    print("| --- | ---: | ---: |")
    for part in ours:
        print(f"| {part} | {_mb(ours[part])} | {_mb(theirs[part]) if theirs else '-'} |")
    total, total_l = sum(ours.values()), sum(theirs.values()) if theirs else None
    print(f"| **total** | **{_mb(total)}** | **{_mb(total_l) if total_l else '-'}** |")
    print(f"jevons: floor {total / rate * 1e3:.2f} ms, measured {step * 1e3:.2f} ms a step "
          f"({1 / step:.1f} tok/s): {total / rate / step:.0%} of the floor's speed, {total / step / 1e9:.1f} GB/s")
    if total_l and args.llama_tok_s:
        lstep = 1 / args.llama_tok_s
        print(f"llama.cpp: floor {total_l / rate * 1e3:.2f} ms, measured {lstep * 1e3:.2f} ms "
              f"({args.llama_tok_s:.1f} tok/s): {total_l / rate / lstep:.0%} of the floor's speed, "
              f"{total_l / lstep / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
