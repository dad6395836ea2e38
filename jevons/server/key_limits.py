"""Sequences in flight per API key (`--max-seqs-per-key`), counting n.

One client with a valid key must not take every slot: a request for n
choices (or a completions batch) holds n leases' worth until it ends, and a
request that would take its key past the limit gets a 429 naming the key's
count. All of it runs on the event loop, so plain ints need no lock. Without
API keys every client is one anonymous key, and the limit is global."""
from __future__ import annotations

from jevons.server.errors import APIError


class Lease:
    def __init__(self, limiter: "KeyLimiter", key: str, seqs: int) -> None:
        self.limiter, self.key, self.seqs = limiter, key, seqs
        self.released = False

    def release(self) -> None:
        """Idempotent: a request can end by more than one path."""
        if self.released:
            return
        self.released = True
        left = self.limiter.inflight.get(self.key, 0) - self.seqs
        if left > 0:
            self.limiter.inflight[self.key] = left
        else:
            self.limiter.inflight.pop(self.key, None)


class KeyLimiter:
    def __init__(self, limit: int | None, retry_after_s: int = 1) -> None:
        self.limit = limit or None  # 0 / None: off
        self.retry_after_s = retry_after_s
        self.inflight: dict[str, int] = {}

    def acquire(self, key: str, seqs: int, param: str = "n") -> Lease:
        if self.limit is not None:
            if seqs > self.limit:
                raise APIError(400, f"this request asks for {seqs} sequences; one API key may have at most "
                                    f"{self.limit} in flight (--max-seqs-per-key)", param=param)
            now = self.inflight.get(key, 0)
            if now + seqs > self.limit:
                raise APIError(429, f"this API key has {now} sequences in flight and may have at most {self.limit}; "
                                    f"retry when one finishes", type="rate_limit_error", code="rate_limit_exceeded",
                               headers={"Retry-After": str(self.retry_after_s)})
        self.inflight[key] = self.inflight.get(key, 0) + seqs
        return Lease(self, key, seqs)
