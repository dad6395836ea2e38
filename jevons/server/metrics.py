"""Prometheus metrics named as vLLM names them (`vllm:x` -> `jevons:x`) so that
existing Grafana dashboards work after a prefix change.

Engine state (queue lengths, KV usage, token and prefix-cache counters) is
read from the engine when Prometheus scrapes, so it costs nothing per step;
latencies are observed by the server as requests finish. Each app gets its own
registry, so several servers can live in one process (tests)."""
from __future__ import annotations

from typing import Any, Iterator, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jevons.cost.serving import ServingCostMeter


class MetricsSource(Protocol):
    """What the metrics read of the server (server/state.py's ServerState), named
    here so that this module need not import the state that owns it."""

    engine: Any  # engine.async_engine.AsyncEngine, or None while loading
    serving: ServingCostMeter | None

    @property
    def model_name(self) -> str: ...

P = "jevons:"

# vLLM's buckets, so that quantiles line up with dashboards built for it.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)


class _EngineCollector(Collector):
    """Reads engine gauges and counters at scrape time."""

    def __init__(self, state: MetricsSource) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        eng = self.state.engine
        if eng is None:
            return
        core = eng.core
        name = [self.state.model_name]

        def gauge(metric: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(P + metric, doc, labels=["model_name"])
            g.add_metric(name, value)
            return g

        def counter(metric: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(P + metric, doc, labels=["model_name"])
            c.add_metric(name, value)
            return c

        # One read of the engine's own counters (summed over data-parallel replicas).
        stats = eng.stats() if hasattr(eng, "replica_stats") else core.stats()
        yield gauge("num_requests_running", "Sequences in model execution batches.", stats["num_requests_running"])
        # The server's count: it includes requests still on their way into the engine.
        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", eng.num_waiting())
        yield gauge("kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.", stats["kv_cache_usage_perc"])
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", stats["prefix_cache_queries"])
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", stats["prefix_cache_hits"])
        yield counter("prompt_tokens", "Prefill tokens processed.", stats["prompt_tokens"])
        yield counter("generation_tokens", "Generation tokens processed.", stats["generation_tokens"])
        yield counter("num_preemptions", "Preemptions (blocks ran out).", stats["num_preemptions"])
        yield from _tier_metrics(stats, name)
        if hasattr(eng, "replica_stats"):
            yield from _replica_metrics(eng.replica_stats(), eng.alive(), name)
        if core.scheduler.proposer is not None:
            yield from _spec_metrics(core.scheduler.spec_stats, name)
        yield from self._serving_cost(gauge, counter)

    def _serving_cost(self, gauge, counter) -> Iterator[Metric]:
        """The machine's side (docs/cost.md): $/hour, $ spent since serving began,
        and $ per million output tokens made since then, idle time included."""
        meter = self.state.serving
        if meter is None:
            return
        snap = meter.snapshot()
        yield gauge("machine_cost_usd_per_hour", "The machine's cost (--usd-per-hour).", snap.usd_per_hour)
        yield counter("serving_cost_usd", "Machine cost since serving began, in USD.", snap.usd_spent)
        if snap.usd_per_million_output_tokens is not None:  # no tokens yet: no figure
            yield gauge("serving_cost_usd_per_million_output_tokens",
                        "Machine cost per million output tokens since serving began.",
                        snap.usd_per_million_output_tokens)


def _replica_metrics(per: list[dict[str, float]], alive: list[bool], name: list[str]) -> Iterator[Metric]:
    """Data parallelism: each replica's load, cache and liveness, labelled by its index."""
    for metric, doc, key in (
        ("replica_num_requests_running", "Sequences running on each data-parallel replica.", "num_requests_running"),
        ("replica_num_requests_waiting", "Sequences waiting on each data-parallel replica.", "num_requests_waiting"),
        ("replica_kv_cache_usage_perc", "KV-cache usage of each data-parallel replica.", "kv_cache_usage_perc"),
        ("replica_prefix_cache_hits", "Prompt tokens found in each replica's prefix cache.", "prefix_cache_hits"),
        ("replica_up", "1 while a data-parallel replica serves, 0 once it died.", None),
    ):
        g = GaugeMetricFamily(P + metric, doc, labels=["model_name", "replica"])
        for i, stats in enumerate(per):
            g.add_metric(name + [str(i)], float(alive[i]) if key is None else stats[key])
        yield g


def _tier_metrics(stats: dict[str, float], name: list[str]) -> Iterator[Metric]:
    """The prefix cache by tier (device, host RAM, disk): hit tokens, evicted
    blocks, and what the lower tiers hold."""
    hits = CounterMetricFamily(P + "prefix_cache_tier_hits", "Prompt tokens served by each prefix-cache tier.",
                               labels=["model_name", "tier"])
    evictions = CounterMetricFamily(P + "prefix_cache_tier_evictions", "Blocks evicted from each prefix-cache tier.",
                                    labels=["model_name", "tier"])
    for tier in ("device", "host", "disk"):
        hits.add_metric(name + [tier], stats[f"prefix_cache_hits_{tier}"])
        evictions.add_metric(name + [tier], stats[f"prefix_cache_evictions_{tier}"])
    yield hits
    yield evictions
    for metric, doc, kind in (
        ("host_cache_bytes", "Bytes held by the host-RAM prefix-cache tier.", GaugeMetricFamily),
        ("disk_cache_bytes", "Bytes of KV blocks in the disk prefix-cache tier.", GaugeMetricFamily),
        ("disk_cache_files", "KV block files in the disk prefix-cache tier.", GaugeMetricFamily),
        ("disk_cache_writes", "KV blocks written to the disk tier.", CounterMetricFamily),
        ("disk_cache_corrupt", "Disk-tier files found corrupt or truncated (deleted, treated as misses).",
         CounterMetricFamily),
        ("disk_cache_dropped_writes", "Blocks not written because the disk writer fell behind.", CounterMetricFamily),
    ):
        m = kind(P + metric, doc, labels=["model_name"])
        m.add_metric(name, stats[metric])
        yield m


def _spec_metrics(st, name: list[str]) -> Iterator[Metric]:
    """Speculative decoding, as vLLM reports it; acceptance rate =
    accepted / draft tokens, mean acceptance length = 1 + accepted / drafts."""
    for metric, doc, value in (
        ("spec_decode_num_drafts", "Verification steps that carried drafts.", st.num_drafts),
        ("spec_decode_num_draft_tokens", "Draft tokens proposed and verified.", st.num_draft_tokens),
        ("spec_decode_num_accepted_tokens", "Draft tokens accepted.", st.num_accepted_tokens),
    ):
        c = CounterMetricFamily(P + metric, doc, labels=["model_name"])
        c.add_metric(name, value)
        yield c
    per_pos = CounterMetricFamily(P + "spec_decode_num_accepted_tokens_per_pos",
                                  "Draft tokens accepted at each draft position.", labels=["model_name", "position"])
    for i, n in enumerate(st.accepted_per_pos):
        per_pos.add_metric(name + [str(i)], n)
    yield per_pos


class ServerMetrics:
    def __init__(self, state: MetricsSource) -> None:
        self.state = state
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.request_success = Counter(
            P + "request_success", "Finished sequences by finish reason.", ["model_name", "finished_reason"],
            registry=self.registry,
        )
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between output tokens.", labels,
                             buckets=ITL_BUCKETS, registry=self.registry)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "End-to-end request latency.", labels,
                             buckets=E2E_BUCKETS, registry=self.registry)
        self.queue = Histogram(P + "request_queue_time_seconds", "Time waiting before first scheduled.", labels,
                               buckets=E2E_BUCKETS, registry=self.registry)
        self.billed_amount = Counter(
            P + "billed_amount", "Amount billed to clients (usage.cost.total), per currency.",
            ["model_name", "currency"], registry=self.registry,
        )
        self.registry.register(_EngineCollector(state))

    def billed(self, model: str, currency: str, amount: float) -> None:
        self.billed_amount.labels(model, currency).inc(amount)

    def finished(self, reason: str) -> None:
        self.request_success.labels(self.state.model_name, reason).inc()

    def request_timings(self, timings: dict[str, float]) -> None:
        """Engine timings of one finished request (monotonic seconds)."""
        if not timings:
            return
        m = self.state.model_name
        t0 = timings["arrival"]
        self.queue.labels(m).observe(max(0.0, timings["first_scheduled"] - t0))
        self.ttft.labels(m).observe(max(0.0, timings["first_token"] - t0))
        self.e2e.labels(m).observe(max(0.0, timings["finished"] - t0))

    def inter_token(self, seconds_per_token: float, num_tokens: int) -> None:
        h = self.itl.labels(self.state.model_name)
        for _ in range(num_tokens):
            h.observe(seconds_per_token)

    def render(self) -> bytes:
        return generate_latest(self.registry)
