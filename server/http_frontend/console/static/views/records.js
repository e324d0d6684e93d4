// A stream's records: read from a sequence number, a timestamp or N from the tail; follow
// the tail live (SSE over fetch); show bodies as text, JSON or hex, with headers; filter
// what is shown; append one record or a JSON array of records.

import { call, followRecords, get, query, seg } from "../api.js";
import { actionButton, fill, field, h, showError } from "../dom.js";
import { bodyView, commandText, fromBase64, msText, utf8 } from "../format.js";

const SHOWN_RECORDS_MAX = 1000;
const READ_COUNT_DEFAULT = 100;

/** `encryption()` gives the headers of the stream's key (none if it has no key). */
export function recordsPanel({ basin, stream, may, encryption, onAppended }) {
  const path = `/v1/streams/${seg(stream)}/records`;
  const startKind = h("select", { "aria-label": "read from" },
    h("option", { value: "tail_offset", text: "last N records" }),
    h("option", { value: "seq_num", text: "sequence number" }),
    h("option", { value: "timestamp", text: "timestamp (ms)" }));
  const startValue = h("input", { type: "number", min: 0, value: 10, "aria-label": "start" });
  const count = h("input", { type: "number", min: 1, max: 1000, value: READ_COUNT_DEFAULT, "aria-label": "count" });
  const mode = h("select", { "aria-label": "body format" },
    ["text", "json", "hex"].map((m) => h("option", { value: m, text: m })));
  const filter = h("input", { type: "search", placeholder: "filter shown records", "aria-label": "filter records" });
  const list = h("tbody", { "data-testid": "records" });
  const state = h("span", { class: "muted", "data-testid": "records-state" });
  const errors = h("div");
  let records = []; // {seq_num, timestamp, headers: [[Uint8Array, Uint8Array]], body: Uint8Array}
  let live = null; // AbortController of the live tail

  function decoded(record) {
    return {
      seq_num: record.seq_num,
      timestamp: record.timestamp,
      headers: (record.headers || []).map(([k, v]) => [fromBase64(k), fromBase64(v)]),
      body: fromBase64(record.body || ""),
    };
  }

  function matches(record, needle) {
    if (!needle) return true;
    const text = [utf8(record.body), ...record.headers.flat().map(utf8)].join("\n").toLowerCase();
    return text.includes(needle);
  }

  function rowFor(record) {
    const command = commandText(record.headers, record.body);
    const view = bodyView(record.body, mode.value);
    const headers = command ? null : record.headers.map(([k, v]) => h("div", { class: "header" },
      h("b", { text: utf8(k) }), ": ", utf8(v)));
    return h("tr", { "data-seq-num": record.seq_num },
      h("td", { class: "num", text: record.seq_num }),
      h("td", { class: "time", text: msText(record.timestamp) }),
      h("td", {}, headers && headers.length ? headers : h("span", { class: "muted", text: command ? "" : "–" })),
      h("td", {}, command ? h("em", { class: "command", text: command })
        : [h("pre", { class: "body", text: view.text }), view.note ? h("small", { class: "muted", text: view.note }) : null]));
  }

  function render() {
    const needle = filter.value.trim().toLowerCase();
    const shown = records.filter((record) => matches(record, needle));
    fill(list, shown.length ? shown.map(rowFor)
      : h("tr", {}, h("td", { colspan: 4, class: "muted", text: records.length ? "No record matches the filter." : "No records." })));
  }

  function add(batch) {
    records = records.concat(batch.map(decoded));
    if (records.length > SHOWN_RECORDS_MAX) records = records.slice(records.length - SHOWN_RECORDS_MAX);
    render();
  }

  function start() {
    const value = startValue.value.trim();
    if (!/^\d+$/.test(value)) throw new Error("the start must be a whole number");
    return { [startKind.value]: value };
  }

  function stopLive() {
    if (live) live.abort();
    live = null;
    followButton.textContent = "Live tail";
    followButton.classList.remove("on");
  }

  async function read() {
    stopLive();
    const n = count.value.trim();
    const batch = await get(`${path}${query({ ...start(), count: n, clamp: "true" })}`, {
      basin, headers: { "s2-format": "base64", ...encryption() },
    });
    records = [];
    add(batch.records);
    state.textContent = `${batch.records.length} records read${batch.tail ? `; tail ${batch.tail.seq_num}` : ""}`;
  }

  async function follow() {
    if (live) { stopLive(); state.textContent = "live tail stopped"; return; }
    const params = startKind.value === "tail_offset" ? start() : { ...start(), clamp: "true" };
    live = new AbortController();
    const mine = live;
    records = [];
    render();
    followButton.textContent = "Stop";
    followButton.classList.add("on");
    state.textContent = "following…";
    showError(errors, null);
    followRecords(basin, stream, params, (event) => {
      if (event.event === "batch") {
        add(JSON.parse(event.data).records);
        state.textContent = `following: ${records.length} records shown`;
      } else if (event.event === "ping") {
        const ping = JSON.parse(event.data);
        state.textContent = `following: caught up at ${ping.tail.seq_num}`;
      } else if (event.event === "error") {
        const body = JSON.parse(event.data);
        showError(errors, Object.assign(new Error(body.message || event.data), { code: body.code }));
      }
    }, mine.signal, encryption()).catch((error) => {
      if (error.name !== "AbortError") showError(errors, error);
    }).finally(() => {
      if (live === mine) { stopLive(); state.textContent = "live tail ended"; }
    });
  }

  const followButton = actionButton("Live tail", follow, errors, { "data-testid": "live-tail" });
  mode.addEventListener("change", render);
  filter.addEventListener("input", render);
  const parts = [h("h2", { text: "Records" })];
  if (may("read")) {
    parts.push(h("div", { class: "row toolbar" },
      field("Read from", startKind), field("", startValue), field("Count", count),
      actionButton("Read", read, errors, { class: "primary" }), followButton,
      field("Body as", mode), filter),
    state, errors,
    h("table", { class: "records" },
      h("thead", {}, h("tr", {}, ["seq_num", "timestamp", "headers", "body"].map((c) => h("th", { text: c })))),
      list));
    render();
  } else {
    parts.push(h("p", { class: "muted", text: "This token may not read this stream." }));
  }
  if (may("append")) parts.push(appendForm(basin, path, encryption, onAppended));
  return { element: h("section", {}, parts), leave: stopLive };
}

function parseHeaders(text) {
  return text.split("\n").filter((line) => line.trim()).map((line) => {
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error(`header line ${JSON.stringify(line)} is not "name: value"`);
    return [line.slice(0, colon).trim(), line.slice(colon + 1).trim()];
  });
}

/** The records of the JSON array form: {body, headers?, timestamp?}; a body that is not a
 * string is sent as its JSON text (as `s2s append --ndjson` does). */
function recordsFromJson(text) {
  let value;
  try { value = JSON.parse(text); } catch (error) { throw new Error(`not JSON: ${error.message}`); }
  if (!Array.isArray(value) || !value.length) throw new Error("give a non-empty JSON array of records");
  return value.map((item, i) => {
    if (!item || typeof item !== "object" || Array.isArray(item) || !("body" in item)) {
      throw new Error(`record ${i} must be an object with a "body"`);
    }
    const record = { body: typeof item.body === "string" ? item.body : JSON.stringify(item.body) };
    if (item.headers !== undefined) record.headers = item.headers;
    if (item.timestamp !== undefined) record.timestamp = item.timestamp;
    return record;
  });
}

function appendForm(basin, path, encryption, onAppended) {
  const kind = h("select", { "aria-label": "append what" },
    h("option", { value: "one", text: "one record" }),
    h("option", { value: "array", text: "a JSON array of records" }));
  const body = h("textarea", { rows: 4, spellcheck: "false", "aria-label": "record body", placeholder: "body text" });
  const headers = h("textarea", { rows: 2, spellcheck: "false", "aria-label": "record headers", placeholder: "name: value (one per line)" });
  const headersField = field("Headers", headers);
  const matchSeqNum = h("input", { type: "number", min: 0, "aria-label": "match seq_num", placeholder: "optional" });
  const fencingToken = h("input", { type: "text", maxlength: 36, "aria-label": "fencing token", placeholder: "optional" });
  const result = h("div", { class: "muted", "data-testid": "append-result" });
  const errors = h("div");
  kind.addEventListener("change", () => {
    headersField.hidden = kind.value === "array";
    body.placeholder = kind.value === "array" ? '[{"body": {"id": 1}}, {"body": "text", "headers": [["k", "v"]]}]' : "body text";
  });
  return h("section", { class: "card" }, h("h2", { text: "Append" }),
    h("div", { class: "row" }, field("Append", kind), field("match_seq_num", matchSeqNum), field("fencing_token", fencingToken)),
    field("Body", body), headersField,
    h("div", { class: "row" }, actionButton("Append", async () => {
      const input = {
        records: kind.value === "array" ? recordsFromJson(body.value)
          : [{ body: body.value, headers: parseHeaders(headers.value) }],
      };
      if (matchSeqNum.value.trim()) input.match_seq_num = Number(matchSeqNum.value);
      if (fencingToken.value) input.fencing_token = fencingToken.value;
      const ack = await call("POST", path, { basin, json: input, headers: encryption() });
      fill(result, `appended ${ack.end.seq_num - ack.start.seq_num} record(s) at ${ack.start.seq_num}; tail ${ack.tail.seq_num}`);
      body.value = "";
      if (onAppended) onAppended();
    }, errors, { class: "primary" })),
    result, errors);
}
