// The server's Prometheus text (`GET /metrics`, format 0.0.4) as samples, and the sums and
// histogram quantiles the health page charts.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/** [{name, labels, value}] of every sample in `text`. */
export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(SAMPLE);
    if (!match) continue;
    const labels = {};
    for (const [, key, value] of (match[2] || "").matchAll(LABEL)) {
      labels[key] = value.replace(/\\n/g, "\n").replace(/\\(.)/g, "$1");
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of every sample of `name` whose labels include `where`. */
export function total(samples, name, where = {}) {
  let sum = 0;
  for (const sample of samples) {
    if (sample.name !== name) continue;
    if (Object.entries(where).every(([k, v]) => sample.labels[k] === v)) sum += sample.value;
  }
  return sum;
}

/** A histogram's cumulative buckets: [[upper bound, count]] sorted by bound. */
export function buckets(samples, name) {
  const byBound = new Map();
  for (const sample of samples) {
    if (sample.name !== `${name}_bucket`) continue;
    const bound = sample.labels.le === "+Inf" ? Infinity : Number(sample.labels.le);
    byBound.set(bound, (byBound.get(bound) || 0) + sample.value);
  }
  return [...byBound.entries()].sort((a, b) => a[0] - b[0]);
}

/**
 * The q-quantile of what a histogram observed between two scrapes (bucket counts `before`
 * and `after`), interpolated within its bucket as Prometheus's histogram_quantile does;
 * null when nothing was observed in between.
 */
export function quantileBetween(before, after, q) {
  const counts = after.map(([bound, count], i) => [bound, count - (before[i] ? before[i][1] : 0)]);
  const observed = counts.length ? counts[counts.length - 1][1] : 0;
  if (observed <= 0) return null;
  const rank = q * observed;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, count] of counts) {
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      return lowerBound + (bound - lowerBound) * (inBucket > 0 ? (rank - lowerCount) / inBucket : 1);
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}
