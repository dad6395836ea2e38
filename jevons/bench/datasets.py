"""Benchmark workloads: seeded synthetic datasets plus ShareGPT files.

Every synthetic dataset is a pure function of its arguments and seed, so a
result in docs/benchmarks.md can be rerun token for token. Prompts are built
as token ids (what the offline benchmarks feed the engine); servers get text,
made by decoding those ids, with `prompt_len` re-counted on the text so the
reported input tokens are what the server actually sees."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

DATASETS = ("random", "shared-prefix", "multi-turn", "sharegpt")


class TextTokenizer(Protocol):
    vocab_size: int
    special_token_ids: frozenset[int]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@dataclass
class SampleRequest:
    prompt_ids: list[int]
    output_len: int
    prompt: str | None = None  # the text sent to a server (None: offline only)
    prompt_len: int = 0  # input tokens; len(prompt_ids) until attach_text re-counts
    conv_id: int | None = None  # multi-turn: turn k waits for turn k-1 of its conversation
    turn: int = 0

    def __post_init__(self) -> None:
        if not self.prompt_len:
            self.prompt_len = len(self.prompt_ids)


_WORD = re.compile(r"^ [A-Za-z]{2,}$")


def token_pool(vocab_size: int, special_ids: frozenset[int] | set[int] = frozenset(),
               tokenizer: TextTokenizer | None = None, min_words: int = 100) -> list[int]:
    """Ids to draw prompts from. With a tokenizer, prefer whole-word tokens
    (" word"): text made of them re-tokenizes to (nearly) the same ids, so a
    prompt keeps its length on the way through a server. Without one, or when a
    vocabulary has too few such words, use every non-special id."""
    everything = [i for i in range(vocab_size) if i not in special_ids]
    if tokenizer is None:
        return everything
    words = [i for i in everything if _WORD.match(tokenizer.decode([i], skip_special_tokens=False) or "")]
    return words if len(words) >= min_words else everything


def _lengths(rng: random.Random, n: int, lo_hi: tuple[int, int]) -> list[int]:
    lo, hi = lo_hi
    if not 1 <= lo <= hi:
        raise ValueError(f"a length range needs 1 <= min <= max, got {lo}..{hi}")
    return [rng.randint(lo, hi) for _ in range(n)]


def _ids(rng: random.Random, pool: Sequence[int], n: int) -> list[int]:
    return [pool[rng.randrange(len(pool))] for _ in range(n)]


def random_dataset(n: int, input_range: tuple[int, int], output_range: tuple[int, int],
                   pool: Sequence[int], seed: int = 0) -> list[SampleRequest]:
    """n independent prompts with uniform random lengths (inclusive ranges)."""
    rng = random.Random(seed)
    ins, outs = _lengths(rng, n, input_range), _lengths(rng, n, output_range)
    return [SampleRequest(_ids(rng, pool, i), o) for i, o in zip(ins, outs)]


def shared_prefix_dataset(n: int, num_prefixes: int, prefix_len: int, input_range: tuple[int, int],
                          output_range: tuple[int, int], pool: Sequence[int], seed: int = 0) -> list[SampleRequest]:
    """n prompts, each one of `num_prefixes` common prefixes (a system prompt, a
    shared document) plus its own suffix drawn from `input_range`. Request i uses
    prefix i % num_prefixes, so every prefix recurs throughout the run."""
    if num_prefixes < 1 or prefix_len < 1:
        raise ValueError("shared-prefix needs num_prefixes >= 1 and prefix_len >= 1")
    rng = random.Random(seed)
    prefixes = [_ids(rng, pool, prefix_len) for _ in range(num_prefixes)]
    ins, outs = _lengths(rng, n, input_range), _lengths(rng, n, output_range)
    return [SampleRequest(prefixes[k % num_prefixes] + _ids(rng, pool, i), o)
            for k, (i, o) in enumerate(zip(ins, outs))]


def multi_turn_dataset(n: int, turns: int, input_range: tuple[int, int], output_range: tuple[int, int],
                       pool: Sequence[int], seed: int = 0) -> list[SampleRequest]:
    """Conversations of `turns` turns; turn k's prompt is the whole history
    (user 0, reply 0, ..., user k). The replies are synthetic (seeded ids of that
    turn's output length), not the server's, so the dataset stays fixed. Ordered
    turn by turn across conversations (all first turns, then all second turns),
    so a history comes back after other traffic, as in real chat."""
    if turns < 1:
        raise ValueError("multi-turn needs turns >= 1")
    rng = random.Random(seed)
    n_conv = -(-n // turns)
    convs: list[list[SampleRequest]] = []
    for c in range(n_conv):
        history: list[int] = []
        conv = []
        for t in range(turns):
            user = _ids(rng, pool, rng.randint(*input_range))
            out = rng.randint(*output_range)
            conv.append(SampleRequest(history + user, out, conv_id=c, turn=t))
            history = history + user + _ids(rng, pool, out)
        convs.append(conv)
    ordered = [convs[c][t] for t in range(turns) for c in range(n_conv)]
    return ordered[:n]


def sharegpt_dataset(path: str | Path, n: int, tokenizer: TextTokenizer, seed: int = 0,
                     output_len: int | None = None, max_prompt_len: int = 1024,
                     max_total_len: int = 2048) -> list[SampleRequest]:
    """First human turn as prompt, the next turn's token count as output length,
    filtered as vLLM filters ShareGPT (4 <= lengths, prompt <= 1024, total <= 2048)."""
    data: list[dict[str, Any]] = json.loads(Path(path).read_text())
    rng = random.Random(seed)
    order = list(range(len(data)))
    rng.shuffle(order)
    out: list[SampleRequest] = []
    for i in order:
        if len(out) >= n:
            break
        conv = data[i].get("conversations") or data[i].get("conversation") or []
        if len(conv) < 2:
            continue
        prompt, reply = str(conv[0].get("value", "")), str(conv[1].get("value", ""))
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        olen = output_len or len(tokenizer.encode(reply, add_special_tokens=False))
        if len(ids) < 4 or olen < 4 or len(ids) > max_prompt_len or len(ids) + olen > max_total_len:
            continue
        out.append(SampleRequest(ids, olen, prompt=prompt))
    if len(out) < n:
        raise ValueError(f"{path} has only {len(out)} usable conversations; asked for {n}")
    return out


def attach_text(reqs: list[SampleRequest], tokenizer: TextTokenizer) -> list[SampleRequest]:
    """Give each request its text form and re-count its tokens on that text."""
    for r in reqs:
        if r.prompt is None:
            r.prompt = tokenizer.decode(r.prompt_ids, skip_special_tokens=False)
        r.prompt_len = len(tokenizer.encode(r.prompt, add_special_tokens=False))
    return reqs
