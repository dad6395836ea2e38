// The line under each answer: what it took and what it cost. Token counts and
// cost come from the server's usage object (the last stream chunk); the times
// are measured here, in the browser, so they include the network.

/** A clock for one answer: started when the request is sent. */
export class AnswerClock {
  constructor(now = () => performance.now()) {
    this.now = now;
    this.sent = now();
    this.first = null; // first token (reasoning or content)
    this.last = null;
    this.chunks = 0;
  }

  token() {
    const t = this.now();
    if (this.first === null) this.first = t;
    this.last = t;
    this.chunks++;
  }

  /** {ttft_ms, tokens_per_s} given the completion token count from usage. */
  timings(completionTokens) {
    const out = { ttft_ms: null, tokens_per_s: null };
    if (this.first === null) return out;
    out.ttft_ms = this.first - this.sent;
    // Rate over the decode phase: the first token is the prefill's.
    const span = (this.last - this.first) / 1000;
    if (completionTokens > 1 && span > 0) out.tokens_per_s = (completionTokens - 1) / span;
    return out;
  }
}

/** Everything the stats line shows, in a form that survives localStorage. */
export function answerStats(usage, clock) {
  const s = { ...clock.timings(usage ? usage.completion_tokens : clock.chunks) };
  if (usage) {
    s.prompt_tokens = usage.prompt_tokens;
    s.cache_hit = usage.prompt_cache_hit_tokens ?? usage.prompt_tokens_details?.cached_tokens ?? 0;
    s.cache_miss = usage.prompt_cache_miss_tokens ?? usage.prompt_tokens - s.cache_hit;
    s.completion_tokens = usage.completion_tokens;
    s.reasoning_tokens = usage.completion_tokens_details?.reasoning_tokens ?? 0;
    if (usage.cost) s.cost = usage.cost;
  }
  return s;
}

const count = (n) => Number(n).toLocaleString("en-US");

/** Money to four significant digits, however small (a request often costs a millionth of a dollar). */
export function formatMoney(amount, currency) {
  const abs = Math.abs(amount);
  const digits = abs === 0 || abs >= 100 ? 2 : Math.min(14, 3 - Math.floor(Math.log10(abs)));
  return `${amount.toFixed(digits)} ${currency}`;
}

/** Parts of the stats line, each a short phrase, in display order. */
export function statsParts(s) {
  const parts = [];
  if (s.prompt_tokens !== undefined) {
    parts.push(`in ${count(s.prompt_tokens)} (hit ${count(s.cache_hit)} / miss ${count(s.cache_miss)})`);
    const think = s.reasoning_tokens ? `, thinking ${count(s.reasoning_tokens)}` : "";
    parts.push(`out ${count(s.completion_tokens)}${think}`);
  }
  if (s.ttft_ms !== null && s.ttft_ms !== undefined) parts.push(`TTFT ${Math.round(s.ttft_ms)} ms`);
  if (s.tokens_per_s) parts.push(`${s.tokens_per_s.toFixed(1)} tok/s`);
  if (s.cost) {
    const window = s.cost.window ? ` (${s.cost.window})` : "";
    parts.push(`cost ${formatMoney(s.cost.total, s.cost.currency)}${window}`);
  } else if (s.prompt_tokens !== undefined) {
    parts.push("cost: not priced");
  }
  if (s.stopped) parts.push("stopped");
  if (s.finish) parts.push(s.finish === "length" ? "cut at max tokens" : `finish: ${s.finish}`);
  return parts;
}

/** The stats line as an element; the cost breakdown is its tooltip. */
export function statsElement(s) {
  const node = document.createElement("div");
  node.className = "stats";
  node.textContent = statsParts(s).join(" · ");
  if (s.cost) {
    const c = s.cost;
    node.title = `input cache hit ${formatMoney(c.input_cache_hit, c.currency)}, ` +
      `input cache miss ${formatMoney(c.input_cache_miss, c.currency)}, output ${formatMoney(c.output, c.currency)}`;
  }
  return node;
}
