// One stream: where its tail is, how big it is, when it was last written, whether it is
// fenced and encrypted; its configuration; trim, fence and delete; and its records
// (views/records.js). The key of an encrypted stream is asked for on the page and kept only
// in this view's memory: it goes in the `s2-encryption-key` header of its reads and appends
// and is gone once the page is left, as the server never stores it either.

import { call, get, query, seg } from "../api.js";
import { actionButton, confirmTyped, fill, field, h, showError } from "../dom.js";
import { agoText, bytesText, encodeUtf8, msText, numberText, toBase64 } from "../format.js";
import { configEditor } from "./config.js";
import { recordsPanel } from "./records.js";

const STATUS_REFRESH_MS = 2000;

function command(op, payload) {
  return { headers: [["", toBase64(encodeUtf8(op))]], body: toBase64(payload) };
}

export function streamView(permissions, basin, stream) {
  const path = `/v1/streams/${seg(stream)}`;
  const may = (op) => permissions.can(op, { basin, stream });
  const errors = h("div");
  const summary = h("dl", { class: "facts", "data-testid": "stream-status" });
  let timer = null;
  const key = h("input", {
    type: "password", autocomplete: "off", spellcheck: "false", "aria-label": "encryption key",
    placeholder: "base64 of 32 bytes",
  });
  const keyField = field("Encryption key", key, "the stream is encrypted: reads and appends need the key it was written with");
  keyField.hidden = true;
  const encryption = () => (key.value.trim() ? { "s2-encryption-key": key.value.trim() } : {});

  async function refresh() {
    const facts = [];
    try {
      if (may("check-tail")) {
        const status = await get(`${path}/status`, { basin });
        facts.push(["tail seq_num", numberText(status.tail.seq_num)],
          ["tail timestamp", msText(status.tail.timestamp)],
          ["trim point", numberText(status.trim_point)],
          ["last write", agoText(status.last_write_at), status.last_write_at],
          ["fencing token", status.fenced ? "set" : "not set"],
          ["encryption", status.cipher || "none"]);
        keyField.hidden = !status.cipher;
      }
      if (may("stream-metrics")) {
        const now = Math.floor(Date.now() / 1000);
        const metrics = await get(`/v1/metrics/${basin}/${seg(stream)}${query({ set: "storage", start: now - 120, end: now })}`);
        const points = metrics.values.length ? metrics.values[0].gauge.values : [];
        facts.push(["size", points.length ? bytesText(points[points.length - 1][1]) : "–"]);
      }
      fill(summary, facts.map(([name, value, title]) => h("div", {},
        h("dt", { text: name }), h("dd", { text: value, title }))));
    } catch (error) {
      showError(errors, error);
    }
  }

  const parts = [
    h("p", { class: "crumbs" }, h("a", { href: "#/basins", text: "Basins" }), " / ",
      h("a", { href: `#/basins/${basin}`, text: basin }), " / ", stream),
    h("div", { class: "row spread" }, h("h1", { text: stream }),
      may("delete-stream") ? actionButton("Delete stream", async () => {
        if (!(await confirmTyped(`Delete stream ${stream} and all its records?`, stream))) return;
        await call("DELETE", path, { basin });
        location.hash = `#/basins/${basin}`;
      }, errors, { class: "danger" }) : null),
    errors,
    summary,
    keyField,
  ];
  const records = recordsPanel({ basin, stream, may, encryption, onAppended: refresh });
  parts.push(records.element);
  const tools = [];
  if (may("trim")) tools.push(trimForm(basin, path, encryption, refresh));
  if (may("fence")) tools.push(fenceForm(basin, path, encryption, refresh));
  if (tools.length) parts.push(h("div", { class: "grid2" }, tools));
  if (may("get-stream-config")) {
    parts.push(h("details", { class: "plain" }, h("summary", { text: "Stream configuration" }),
      configEditor({
        title: "Stream configuration",
        load: () => get(path, { basin }),
        save: (patch) => call("PATCH", path, { basin, json: patch }),
        canSave: may("reconfigure-stream"),
      })));
  }
  refresh();
  timer = setInterval(refresh, STATUS_REFRESH_MS);
  return {
    element: h("div", {}, parts),
    leave: () => { clearInterval(timer); records.leave(); },
  };
}

function trimForm(basin, path, encryption, done) {
  const point = h("input", { type: "number", min: 0, step: 1, placeholder: "seq_num", "aria-label": "trim before seq_num" });
  const errors = h("div");
  return h("section", { class: "card" }, h("h2", { text: "Trim" }),
    field("Delete the records before", point),
    actionButton("Trim", async () => {
      const text = point.value.trim();
      if (!/^\d+$/.test(text)) throw new Error("give the first sequence number to keep");
      if (!(await confirmTyped(`Delete every record before ${text}? This cannot be undone.`, text))) return;
      const payload = new Uint8Array(8);
      new DataView(payload.buffer).setBigUint64(0, BigInt(text));
      await call("POST", `${path}/records`, {
        basin, headers: { "s2-format": "base64", ...encryption() },
        json: { records: [command("trim", payload)] },
      });
      await done();
    }, errors, { class: "danger" }),
    errors);
}

function fenceForm(basin, path, encryption, done) {
  const token = h("input", { type: "text", maxlength: 36, placeholder: "new fencing token", "aria-label": "new fencing token" });
  const errors = h("div");
  return h("section", { class: "card" }, h("h2", { text: "Fence" }),
    field("Fencing token (empty clears it)", token, "appends that name another token are refused once this lands"),
    actionButton("Fence", async () => {
      await call("POST", `${path}/records`, {
        basin, headers: { "s2-format": "base64", ...encryption() },
        json: { records: [command("fence", encodeUtf8(token.value))] },
      });
      token.value = "";
      await done();
    }, errors),
    errors);
}
