// Health at a glance: append and read rates, ack-latency percentiles, storage used and open
// sessions, from the server's Prometheus text, scraped every 2 s and charted over 2 minutes.

import { call } from "../api.js";
import { fill, h, showError } from "../dom.js";
import { sparkline } from "../charts.js";
import { buckets, parsePrometheus, quantileBetween, total } from "../prometheus.js";
import { bytesText, numberText } from "../format.js";

const SCRAPE_MS = 2000;
const POINTS_MAX = 60;
const ACK = "s2s_append_ack_latency_seconds";

const rate = (n) => `${numberText(n, n < 10 ? 1 : 0)}/s`;
const bytesRate = (n) => `${bytesText(Math.round(n))}/s`;
const ms = (seconds) => `${numberText(seconds * 1000, 2)} ms`;

const SERIES = [
  ["append-records", "appended records", rate],
  ["append-bytes", "appended bytes", bytesRate],
  ["read-records", "read records", rate],
  ["read-bytes", "read bytes", bytesRate],
  ["ack-p50", "ack latency p50", ms],
  ["ack-p99", "ack latency p99", ms],
  ["storage", "storage used", bytesText],
  ["sessions-append", "open append sessions", numberText],
  ["sessions-read", "open read sessions", numberText],
  ["errors", "errors answered", rate],
];

export function healthView(permissions) {
  const grid = h("div", { class: "charts" });
  const errors = h("div");
  const history = Object.fromEntries(SERIES.map(([key]) => [key, []]));
  let previous = null;
  let timer = null;

  function push(key, value) {
    const points = history[key];
    points.push(value);
    if (points.length > POINTS_MAX) points.shift();
  }

  async function scrape() {
    let samples;
    try {
      const response = await call("GET", "/metrics", { raw: true });
      samples = parsePrometheus(await response.text());
      showError(errors, null);
    } catch (error) {
      showError(errors, error);
      return;
    }
    const now = performance.now();
    const current = {
      at: now,
      appendRecords: total(samples, "s2s_append_records_total"),
      appendBytes: total(samples, "s2s_append_bytes_total"),
      readRecords: total(samples, "s2s_read_records_total"),
      readBytes: total(samples, "s2s_read_bytes_total"),
      errors: total(samples, "s2s_errors_total"),
      ack: buckets(samples, ACK),
    };
    if (previous) {
      const seconds = (now - previous.at) / 1000;
      push("append-records", (current.appendRecords - previous.appendRecords) / seconds);
      push("append-bytes", (current.appendBytes - previous.appendBytes) / seconds);
      push("read-records", (current.readRecords - previous.readRecords) / seconds);
      push("read-bytes", (current.readBytes - previous.readBytes) / seconds);
      push("errors", (current.errors - previous.errors) / seconds);
      push("ack-p50", quantileBetween(previous.ack, current.ack, 0.5));
      push("ack-p99", quantileBetween(previous.ack, current.ack, 0.99));
    }
    push("storage", total(samples, "s2s_storage_bytes"));
    push("sessions-append", total(samples, "s2s_open_sessions", { kind: "append" }));
    push("sessions-read", total(samples, "s2s_open_sessions", { kind: "read" }));
    previous = current;
    fill(grid, SERIES.map(([key, title, format]) => sparkline(title, history[key], format, `chart-${key}`)));
  }

  const element = h("div", {},
    h("h1", { text: "Health" }),
    h("p", { class: "muted", text: "From the server's metrics (GET /metrics), every 2 seconds; rates and latencies over each interval." }),
    errors, grid);
  if (permissions.can("account-metrics")) {
    scrape();
    timer = setInterval(scrape, SCRAPE_MS);
  } else {
    fill(element, h("p", { class: "muted", text: "This token may not read the server's metrics (account-metrics)." }));
  }
  return { element, leave: () => clearInterval(timer) };
}
