// The lake: materializations (state, lag, rows, last snapshot; pause and resume), the recent
// rejections of a table (dead letters), and a read-only SQL pane with downloads.

import { ApiError, call, get, query, seg } from "../api.js";
import { actionButton, fill, h, showError } from "../dom.js";
import { numberText } from "../format.js";

const REFRESH_MS = 2000;
const DOWNLOADS = [
  ["CSV", "text/csv", "result.csv"],
  ["Parquet", "application/vnd.apache.parquet", "result.parquet"],
];

export function lakeView(permissions) {
  const parts = [h("h1", { text: "Lake" })];
  const mats = materializations(permissions);
  parts.push(mats.element);
  if (permissions.group("account", false) && permissions.everything()) parts.push(sqlPane());
  return { element: h("div", {}, parts), leave: mats.leave };
}

function materializations(permissions) {
  const body = h("tbody", { "data-testid": "materializations" });
  const errors = h("div");
  const letters = h("section", { class: "card", hidden: true, "data-testid": "dead-letters" });
  const canControl = permissions.group("account", true);
  let timer = null;

  async function showDeadLetters(table) {
    letters.hidden = false;
    fill(letters, h("h2", { text: `Recent rejections: ${table}` }), h("p", { class: "muted", text: "Loading…" }));
    try {
      const answer = await get(`/v2/stream/errors${query({ table, limit: 50 })}`);
      fill(letters, h("h2", { text: `Recent rejections: ${table}` }),
        answer.errors.length ? h("table", {},
          h("thead", {}, h("tr", {}, ["seq_num", "rejected at", "reason", "body"].map((c) => h("th", { text: c })))),
          h("tbody", {}, answer.errors.map((e) => h("tr", {},
            h("td", { class: "num", text: e.seq_num }),
            h("td", { class: "time", text: e.rejected_at }),
            h("td", { text: e.reason }),
            h("td", {}, h("pre", { class: "body", text: e.body ?? "" }))))))
          : h("p", { class: "muted", text: "No rejected records." }));
    } catch (error) {
      fill(letters, h("h2", { text: `Recent rejections: ${table}` }), h("div", {}, error.message));
    }
  }

  function row(m) {
    const control = canControl ? actionButton(m.state === "paused" ? "Resume" : "Pause", async () => {
      await call("POST", `/v1/lake/materializations/${seg(m.name)}/${m.state === "paused" ? "resume" : "pause"}`);
      await refresh();
    }, errors) : null;
    return h("tr", { "data-name": m.name },
      h("td", { text: m.name }),
      h("td", { text: `${m.source.basin}/${m.source.stream}` }),
      h("td", { text: `${m.table} (${m.mode})` }),
      h("td", { class: `state-${m.state}`, text: m.state, title: m.last_error || "" }),
      h("td", { class: "num", "data-testid": "lag-records", text: numberText(m.lag_records) }),
      h("td", { class: "num", "data-testid": "lag-seconds", text: m.lag_seconds === null ? "–" : numberText(m.lag_seconds, 2) }),
      h("td", { class: "num", text: numberText(m.rows_applied) }),
      h("td", { class: "num", text: numberText(m.rows_rejected) }),
      h("td", { class: "num", text: m.last_snapshot_id ?? "–" }),
      h("td", { class: "time", text: m.last_commit_at ? new Date(m.last_commit_at * 1000).toISOString() : "–" }),
      h("td", { class: "row" }, control,
        h("button", { type: "button", text: "Rejections", onclick: () => showDeadLetters(m.table) })));
  }

  async function refresh() {
    try {
      const answer = await get("/v1/lake/materializations");
      showError(errors, null);
      fill(body, answer.materializations.length ? answer.materializations.map(row)
        : h("tr", {}, h("td", { colspan: 11, class: "muted", text: "No materializations: declare one with `s2s materializations create`." })));
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        clearInterval(timer);
        showError(errors, new Error("The lake is off on this server."));
      } else {
        showError(errors, error);
      }
    }
  }

  const element = h("section", {},
    h("h2", { text: "Materializations" }),
    errors,
    h("table", {},
      h("thead", {}, h("tr", {}, ["name", "source", "table", "state", "lag (records)", "lag (s)",
        "rows applied", "rows rejected", "last snapshot", "last commit", ""].map((c) => h("th", { text: c })))),
      body),
    letters);
  if (permissions.group("account", false)) {
    refresh();
    timer = setInterval(refresh, REFRESH_MS);
  } else {
    fill(element, h("p", { class: "muted", text: "This token may not see the lake's materializations." }));
  }
  return { element, leave: () => clearInterval(timer) };
}

function resultTable(answer) {
  return h("table", { "data-testid": "sql-result" },
    h("thead", {}, h("tr", {}, answer.columns.map((c) => h("th", { text: c.name, title: c.type })))),
    h("tbody", {}, answer.rows.map((r) => h("tr", {}, r.map((v) => h("td", {
      class: typeof v === "number" ? "num" : null,
      text: v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v),
    }))))));
}

function sqlPane() {
  const sql = h("textarea", {
    rows: 5, spellcheck: "false", "aria-label": "SQL",
    placeholder: "SELECT * FROM bronze.events LIMIT 100",
  });
  const result = h("div", { class: "scroll" });
  const note = h("p", { class: "muted" });
  const errors = h("div");

  async function run() {
    // An earlier query's rows must not stand under this one's error.
    note.textContent = "";
    fill(result);
    const answer = await call("POST", "/v1/lake/query", { json: { sql: sql.value } });
    note.textContent = `${answer.row_count} rows${answer.truncated ? " (cut off at the server's limit)" : ""}`;
    fill(result, resultTable(answer));
  }

  async function download(accept, filename) {
    const response = await call("POST", "/v1/lake/query", {
      json: { sql: sql.value }, raw: true, headers: { accept },
    });
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  const runButton = actionButton("Run", run, errors, { class: "primary" });
  sql.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); runButton.click(); }
  });
  return h("section", { class: "card" },
    h("h2", { text: "SQL (read-only)" }),
    h("p", { class: "muted", text: "One query over the lake's tables; Ctrl+Enter runs it." }),
    sql,
    h("div", { class: "row" }, runButton,
      DOWNLOADS.map(([label, accept, filename]) => actionButton(`Download ${label}`, () => download(accept, filename), errors))),
    errors, note, result);
}
