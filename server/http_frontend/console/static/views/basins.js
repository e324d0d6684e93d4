// Basins: the list (prefix filter, pages) and, where the token may, creating one.

import { call, get, query } from "../api.js";
import { actionButton, field, h } from "../dom.js";
import { pagedList } from "./list.js";
import { clear, optionalJson } from "./config.js";

export function basinsView(permissions) {
  const list = pagedList({
    what: "basins",
    testid: "basins",
    head: ["basin", "state", "created"],
    load: async (prefix, startAfter, limit) => {
      const page = await get(`/v1/basins${query({ prefix, start_after: startAfter, limit })}`);
      return { items: page.basins, has_more: page.has_more };
    },
    row: (basin) => h("tr", {},
      h("td", {}, h("a", { href: `#/basins/${basin.name}`, text: basin.name })),
      h("td", { text: basin.state }),
      h("td", { text: basin.created_at || "–" })),
  });
  const parts = [h("h1", { text: "Basins" })];
  if (permissions.can("create-basin")) parts.push(createBasin(list));
  parts.push(list.element);
  return { element: h("div", {}, parts) };
}

function createBasin(list) {
  const name = h("input", { type: "text", name: "basin", placeholder: "my-basin-1", "aria-label": "new basin name" });
  const config = h("textarea", { rows: 3, spellcheck: "false", placeholder: '{"create_stream_on_append": true}', "aria-label": "new basin config" });
  const errors = h("div");
  return h("details", { class: "card" },
    h("summary", { text: "Create a basin" }),
    field("Name", name, "8-48 characters: a-z, 0-9 and -"),
    field("Config (JSON, optional)", config),
    h("div", { class: "row" }, actionButton("Create basin", async () => {
      const body = { basin: name.value.trim() };
      const parsed = optionalJson(config, "the config");
      if (parsed !== undefined) body.config = parsed;
      await call("POST", "/v1/basins", { json: body });
      clear(name, config);
      await list.reload();
    }, errors, { class: "primary" })),
    errors);
}
