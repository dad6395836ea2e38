"""Benchmark workloads are seeded and shaped as asked; arrivals pace as defined."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jevons.bench.arrivals import arrival_offsets, parse_rate
from jevons.bench.datasets import (attach_text, multi_turn_dataset, random_dataset, sharegpt_dataset,
                                   shared_prefix_dataset, token_pool)

POOL = list(range(10, 500))


class WordTokenizer:
    """Whitespace 'tokenizer': one token per word; enough to test the plumbing."""

    vocab_size = 1000
    special_token_ids = frozenset({0, 1})

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(w) for w in text.split()]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(f" w{i}" for i in ids)


def test_random_dataset_is_seeded_and_in_range() -> None:
    a = random_dataset(64, (64, 512), (64, 256), POOL, seed=7)
    b = random_dataset(64, (64, 512), (64, 256), POOL, seed=7)
    c = random_dataset(64, (64, 512), (64, 256), POOL, seed=8)
    assert [(r.prompt_ids, r.output_len) for r in a] == [(r.prompt_ids, r.output_len) for r in b]
    assert [r.prompt_ids for r in a] != [r.prompt_ids for r in c]
    assert len(a) == 64
    assert all(64 <= r.prompt_len == len(r.prompt_ids) <= 512 for r in a)
    assert all(64 <= r.output_len <= 256 for r in a)
    assert all(t in set(POOL) for r in a for t in r.prompt_ids)
    # the lengths really spread over the range
    assert max(r.prompt_len for r in a) - min(r.prompt_len for r in a) > 200


def test_fixed_lengths_and_bad_range() -> None:
    reqs = random_dataset(5, (32, 32), (8, 8), POOL)
    assert {r.prompt_len for r in reqs} == {32} and {r.output_len for r in reqs} == {8}
    with pytest.raises(ValueError):
        random_dataset(1, (10, 5), (1, 1), POOL)


def test_shared_prefix_dataset() -> None:
    reqs = shared_prefix_dataset(12, 3, 20, (5, 9), (4, 4), POOL, seed=1)
    assert len(reqs) == 12
    prefixes = [r.prompt_ids[:20] for r in reqs]
    assert len({tuple(p) for p in prefixes}) == 3
    for i, r in enumerate(reqs):
        assert r.prompt_ids[:20] == prefixes[i % 3]
        assert 25 <= r.prompt_len <= 29
    assert reqs[0].prompt_ids == shared_prefix_dataset(12, 3, 20, (5, 9), (4, 4), POOL, seed=1)[0].prompt_ids


def test_multi_turn_dataset_history_and_order() -> None:
    reqs = multi_turn_dataset(7, 3, (5, 5), (4, 4), POOL, seed=2)
    assert len(reqs) == 7  # 3 conversations x 3 turns, cut to 7 from the end
    assert [r.turn for r in reqs] == [0, 0, 0, 1, 1, 1, 2]
    by = {(r.conv_id, r.turn): r for r in reqs}
    for c in range(3):
        t0, t1 = by[(c, 0)], by[(c, 1)]
        assert t0.prompt_len == 5
        # turn 1 = user0 + reply0 (output_len 4) + user1
        assert t1.prompt_ids[:5] == t0.prompt_ids and t1.prompt_len == 5 + 4 + 5
    assert by[(0, 2)].prompt_ids[:14] == by[(0, 1)].prompt_ids


def test_token_pool_prefers_words_and_skips_specials() -> None:
    tok = WordTokenizer()
    pool = token_pool(200, {0, 1}, tok)
    assert 0 not in pool and 1 not in pool and len(pool) == 198
    assert token_pool(5, {0}) == [1, 2, 3, 4]


def test_attach_text_recounts_tokens() -> None:
    reqs = attach_text(random_dataset(3, (4, 6), (2, 2), POOL), WordTokenizer())
    for r in reqs:
        assert r.prompt is not None and r.prompt.startswith(" w")
        assert r.prompt_len == len(r.prompt_ids)


def test_sharegpt_dataset(tmp_path) -> None:
    data = [{"conversations": [{"from": "human", "value": "a b c d e"}, {"from": "gpt", "value": "x y z w v u"}]},
            {"conversations": [{"from": "human", "value": "too short"}, {"from": "gpt", "value": "x y z w"}]},
            {"conversations": [{"from": "human", "value": "only one turn here"}]}] * 3
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    reqs = sharegpt_dataset(path, 3, WordTokenizer(), seed=0)
    assert all(r.prompt == "a b c d e" and r.prompt_len == 5 and r.output_len == 6 for r in reqs)
    assert all(r.output_len == 9 for r in sharegpt_dataset(path, 2, WordTokenizer(), output_len=9))
    with pytest.raises(ValueError, match="only 3 usable"):
        sharegpt_dataset(path, 4, WordTokenizer())


def test_arrivals() -> None:
    assert arrival_offsets(4, math.inf) == [0.0] * 4
    offs = arrival_offsets(4001, 10.0, 1.0, seed=3)
    assert offs[0] == 0.0 and offs == sorted(offs)
    assert offs == arrival_offsets(4001, 10.0, 1.0, seed=3)
    gaps = np.diff(offs)
    assert abs(gaps.mean() - 0.1) < 0.01  # mean gap is 1/rate
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.1  # Poisson: CV 1
    bursty = np.diff(arrival_offsets(4001, 10.0, 0.25, seed=3))
    assert abs(bursty.mean() - 0.1) < 0.015 and bursty.std() / bursty.mean() > 1.5  # CV = 1/sqrt(shape)
    assert parse_rate("inf") == math.inf
    with pytest.raises(ValueError):
        parse_rate("0")
