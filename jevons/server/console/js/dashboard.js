// The dashboard: polls /metrics.json every few seconds while it is on screen
// (and only then: an idle console costs the server nothing) and draws what the
// engine is doing and what a token costs at the current load.

import { metricsSnapshot } from "./api.js";
import { LineChart } from "./chart.js";
import { delta, quantile, rate, total } from "./metrics.js";

const PERIOD_MS = 2000;
const WINDOW_S = 30; // latency percentiles over the last half minute

const num = (digits) => (v) => v.toLocaleString("en-US", { maximumFractionDigits: digits });
const ms = (v) => `${(v * 1000).toFixed(v < 0.01 ? 1 : 0)} ms`;
const pct = (v) => `${(v * 100).toFixed(1)} %`;

const CHARTS = [
  { id: "tokens", title: "Output tokens/s", series: ["tok/s"], format: num(1) },
  { id: "requests", title: "Requests running / waiting", series: ["running", "waiting"], format: num(0) },
  { id: "kv", title: "KV cache use", series: ["used"], format: pct },
  { id: "prefix", title: `Prefix-cache hit rate by tier (last ${WINDOW_S} s)`, series: ["device", "host", "disk"], format: pct },
  { id: "ttft", title: `Time to first token (p50 / p95, last ${WINDOW_S} s)`, series: ["p50", "p95"], format: ms },
  { id: "itl", title: `Inter-token latency (p50 / p95, last ${WINDOW_S} s)`, series: ["p50", "p95"], format: ms },
  { id: "cost", title: "$ per million output tokens at this load", series: ["$/M"], format: (v) => `$${v.toFixed(4)}` },
];

/** One sample per chart from the latest snapshot and earlier ones. */
export function sampleCharts(history) {
  const snap = history[history.length - 1];
  const prev = history.length > 1 ? history[history.length - 2] : null;
  const old = history.find((s) => snap.time - s.time <= WINDOW_S) || history[0];
  const tokensPerS = prev ? rate(prev, snap, "generation_tokens") : null;
  // Hit rates over the window: a 2 s interval often holds no prefill at all.
  const base = old === snap ? null : old;
  const queries = base ? delta(base, snap, "prefix_cache_queries") : null;
  const tierRate = (tier) =>
    queries ? delta(base, snap, "prefix_cache_tier_hits", { labels: { tier } }) / queries : null;
  const usdPerHour = total(snap, "machine_cost_usd_per_hour");
  let usdPerM = null;
  if (usdPerHour && tokensPerS) usdPerM = (usdPerHour / 3600 / tokensPerS) * 1e6;
  return {
    tokens: [tokensPerS],
    requests: [total(snap, "num_requests_running"), total(snap, "num_requests_waiting")],
    kv: [total(snap, "kv_cache_usage_perc")],
    prefix: ["device", "host", "disk"].map(tierRate),
    ttft: [0.5, 0.95].map((q) => quantile(base, snap, "time_to_first_token_seconds", q)),
    itl: [0.5, 0.95].map((q) => quantile(base, snap, "inter_token_latency_seconds", q)),
    cost: [usdPerM],
  };
}

export class Dashboard {
  constructor(alert) {
    this.alert = alert;
    this.status = document.getElementById("dash-status");
    const parent = document.getElementById("charts");
    this.charts = Object.fromEntries(CHARTS.map((c) => [c.id, new LineChart(parent, c)]));
    this.history = [];
    this.timer = null;
    this.inflight = null;
    document.addEventListener("visibilitychange", () => {
      if (this.timer === null) return;
      if (document.hidden) this.pause();
      else this.tick();
    });
  }

  start() {
    if (this.timer !== null) return;
    this.timer = 0;
    this.tick();
  }

  pause() {
    clearTimeout(this.timer);
    if (this.inflight) this.inflight.abort();
  }

  stop() {
    this.pause();
    this.timer = null;
  }

  async tick() {
    clearTimeout(this.timer);
    this.inflight = new AbortController();
    try {
      const snap = await metricsSnapshot(this.inflight.signal);
      this.history.push(snap);
      while (this.history.length > 2 && snap.time - this.history[0].time > WINDOW_S + PERIOD_MS / 1000) {
        this.history.shift();
      }
      const values = sampleCharts(this.history);
      for (const [id, chart] of Object.entries(this.charts)) chart.push(values[id]);
      const usdPerHour = total(snap, "machine_cost_usd_per_hour");
      this.status.textContent = `Updated ${new Date(snap.time * 1000).toLocaleTimeString()}, every ${PERIOD_MS / 1000} s.` +
        (usdPerHour ? ` Machine: $${usdPerHour}/hour.` : " The machine's cost is not set (--usd-per-hour), so $/M is empty.");
    } catch (e) {
      if (e.name === "AbortError") return;
      this.status.textContent = `Cannot read metrics: ${e.message}`;
    }
    if (this.timer !== null && !document.hidden) this.timer = setTimeout(() => this.tick(), PERIOD_MS);
  }
}
