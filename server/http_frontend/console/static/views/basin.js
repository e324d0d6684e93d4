// One basin: its configuration, deleting it, and its streams (list with each stream's tail,
// last write and fence, and creating one).

import { call, get, query, seg } from "../api.js";
import { actionButton, confirmTyped, field, h, showError } from "../dom.js";
import { agoText, numberText } from "../format.js";
import { clear, configEditor, optionalJson } from "./config.js";
import { pagedList } from "./list.js";

export function basinView(permissions, basin) {
  const errors = h("div");
  const parts = [
    h("p", { class: "crumbs" }, h("a", { href: "#/basins", text: "Basins" }), " / ", basin),
    h("div", { class: "row spread" }, h("h1", { text: basin }),
      permissions.can("delete-basin", { basin }) ? actionButton("Delete basin", async () => {
        if (!(await confirmTyped(`Delete basin ${basin} and every stream in it?`, basin))) return;
        await call("DELETE", `/v1/basins/${basin}`);
        location.hash = "#/basins";
      }, errors, { class: "danger" }) : null),
    errors,
  ];
  if (permissions.can("get-basin-config", { basin })) {
    parts.push(h("details", { class: "plain" }, h("summary", { text: "Basin configuration" }),
      configEditor({
        title: "Basin configuration",
        load: () => get(`/v1/basins/${basin}`),
        save: (patch) => call("PATCH", `/v1/basins/${basin}`, { json: patch }),
        canSave: permissions.can("reconfigure-basin", { basin }),
      })));
  }
  const showTail = (stream) => permissions.can("check-tail", { basin, stream });
  const list = pagedList({
    what: "streams",
    testid: "streams",
    head: ["stream", "tail (next seq_num)", "last write", "fenced", "created", "state"],
    load: async (prefix, startAfter, limit) => {
      const page = await get(`/v1/streams${query({ prefix, start_after: startAfter, limit })}`, { basin });
      return { items: page.streams, has_more: page.has_more };
    },
    row: (stream) => {
      const tail = h("td", { text: "…" });
      const written = h("td", { text: "…" });
      const fenced = h("td", { text: "…" });
      if (!stream.deleted_at && showTail(stream.name)) {
        get(`/v1/streams/${seg(stream.name)}/status`, { basin }).then((status) => {
          tail.textContent = numberText(status.tail.seq_num);
          written.textContent = agoText(status.last_write_at);
          fenced.textContent = status.fenced ? "yes" : "no";
        }, () => { tail.textContent = written.textContent = fenced.textContent = "–"; });
      } else {
        tail.textContent = written.textContent = fenced.textContent = "–";
      }
      return h("tr", {},
        h("td", {}, h("a", { href: `#/basins/${basin}/streams/${seg(stream.name)}`, text: stream.name })),
        tail, written, fenced,
        h("td", { text: stream.created_at || "–" }),
        h("td", { text: stream.deleted_at ? "deleting" : stream.cipher ? `active (${stream.cipher})` : "active" }));
    },
  });
  parts.push(h("h2", { text: "Streams" }));
  if (permissions.can("create-stream", { basin })) parts.push(createStream(basin, list));
  parts.push(permissions.can("list-streams", { basin }) ? list.element
    : h("p", { class: "muted", text: "This token may not list this basin's streams." }));
  return { element: h("div", {}, parts) };
}

function createStream(basin, list) {
  const name = h("input", { type: "text", name: "stream", placeholder: "events", "aria-label": "new stream name" });
  const config = h("textarea", { rows: 3, spellcheck: "false", placeholder: '{"retention_policy": {"age": 86400}}', "aria-label": "new stream config" });
  const errors = h("div");
  return h("details", { class: "card" },
    h("summary", { text: "Create a stream" }),
    field("Name", name, "1-512 bytes of UTF-8"),
    field("Config (JSON, optional)", config),
    h("div", { class: "row" }, actionButton("Create stream", async () => {
      const body = { stream: name.value };
      const parsed = optionalJson(config, "the config");
      if (parsed !== undefined) body.config = parsed;
      await call("POST", "/v1/streams", { basin, json: body });
      clear(name, config);
      showError(errors, null);
      await list.reload();
    }, errors, { class: "primary" })),
    errors);
}
