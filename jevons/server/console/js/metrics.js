// Reading /metrics.json snapshots: sums, rates between two snapshots, and
// histogram percentiles from bucket counts (as Prometheus's
// histogram_quantile does: linear within the bucket).

const P = "jevons:";

/** Sum of the samples named `sample` (default: the family's own name) whose labels match. */
export function total(snap, family, { sample, labels = {} } = {}) {
  const fam = snap.metrics[P + family];
  if (!fam) return null;
  // A gauge's sample has the family's name; a counter's ends in _total (not _created).
  const names = sample ? [P + sample] : [P + family, `${P}${family}_total`];
  let sum = null;
  for (const s of fam.samples) {
    if (!names.includes(s.name)) continue;
    if (!Object.entries(labels).every(([k, v]) => s.labels[k] === v)) continue;
    if (s.value === null) continue;
    sum = (sum ?? 0) + s.value;
  }
  return sum;
}

/** Per-second rate of a counter between two snapshots. */
export function rate(prev, snap, family, opts) {
  const a = total(prev, family, opts);
  const b = total(snap, family, opts);
  const dt = snap.time - prev.time;
  if (a === null || b === null || dt <= 0) return null;
  return Math.max(0, b - a) / dt;
}

/** Change of a counter between two snapshots. */
export function delta(prev, snap, family, opts) {
  const a = total(prev, family, opts);
  const b = total(snap, family, opts);
  return a === null || b === null ? null : Math.max(0, b - a);
}

/** Cumulative bucket counts of a histogram: [[le, count], ...] sorted by le. */
function buckets(snap, family) {
  const fam = snap.metrics[P + family];
  if (!fam) return [];
  const byLe = new Map();
  for (const s of fam.samples) {
    if (s.name !== `${P}${family}_bucket`) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) ?? 0) + (s.value ?? 0));
  }
  return [...byLe.entries()].sort((x, y) => x[0] - y[0]);
}

/**
 * The q-quantile (0..1) of what a histogram observed between `prev` and
 * `snap` (everything so far when prev is null); null when nothing was observed.
 */
export function quantile(prev, snap, family, q) {
  const now = buckets(snap, family);
  const before = prev ? new Map(buckets(prev, family)) : new Map();
  const counts = now.map(([le, c]) => [le, c - (before.get(le) ?? 0)]);
  const n = counts.length ? counts[counts.length - 1][1] : 0;
  if (n <= 0) return null;
  const rank = q * n;
  let lower = 0;
  let below = 0;
  for (const [le, c] of counts) {
    if (c >= rank) {
      if (le === Infinity) return lower; // beyond the last finite bucket: its bound is all we know
      const inBucket = c - below;
      return inBucket > 0 ? lower + ((le - lower) * (rank - below)) / inBucket : le;
    }
    lower = le;
    below = c;
  }
  return lower;
}
