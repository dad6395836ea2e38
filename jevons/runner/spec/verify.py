"""Verifying drafts against the target model's own draws.

For a request with drafts d_1..d_k the runner feeds [last token, d_1..d_k]
and draws one token t_0..t_k at each of those k+1 positions, each with the
request's ordinary sampling rules (temperature, top-p, penalties, its seeded
generator), t_j from the target's distribution p_j given the prefix up to
d_j. The output is t_0..t_a, where a is the first position at which t_a != d_{a+1}
(or k, when every draft matched: t_k is the bonus token).

This is the rejection-sampling rule of Leviathan et al. (2023) for drafts
that are a single token each (a point-mass proposal q = delta(d), as every
proposer here produces): the rule accepts d with probability
min(1, p(d)/q(d)) = p(d), which is exactly P(t == d); on rejection it samples
from norm(max(0, p - q)), which is p with d removed and renormalised, exactly
the law of t given t != d. So each emitted token has the target's
distribution, and a greedy request emits the tokens non-speculative decoding
would: each t_j is the argmax at its position, and the drafts after the first
mismatch are thrown away with their rows. Logprobs are the draws' own."""
from __future__ import annotations

from collections.abc import Sequence

from jevons.runner.step_io import SampledToken


def accept(drafts: Sequence[int], draws: Sequence[SampledToken]) -> list[SampledToken]:
    """draws[j] is the draw after drafts[:j] (len(draws) == len(drafts) + 1):
    the accepted prefix, then the first draw that differs from its draft or
    the bonus draw after the last draft."""
    assert len(draws) == len(drafts) + 1, (len(draws), len(drafts))
    out: list[SampledToken] = []
    for j, draw in enumerate(draws):
        out.append(draw)
        if j == len(drafts) or draw.token != drafts[j]:
            break
    return out
