// A paged, filtered list of named things (basins, streams): a prefix filter, a page size,
// next and previous pages by `start_after`, as the API pages them.

import { fill, h, showError } from "../dom.js";

const PAGE_SIZES = [10, 20, 50, 100];

/**
 * `load(prefix, startAfter, limit)` resolves to {items, has_more}; `head` is the table's
 * header cells, `row(item)` makes a <tr>. Returns {element, reload}.
 */
export function pagedList({ load, head, row, what, testid }) {
  const prefix = h("input", { type: "search", placeholder: "name prefix", "aria-label": `filter ${what} by prefix` });
  const size = h("select", { "aria-label": "page size" },
    PAGE_SIZES.map((n) => h("option", { value: n, text: `${n} per page`, selected: n === 20 })));
  const body = h("tbody");
  const status = h("span", { class: "muted" });
  const errors = h("div");
  const previous = h("button", { type: "button", text: "‹ Previous", disabled: true });
  const next = h("button", { type: "button", text: "Next ›", disabled: true });
  let starts = [""]; // start_after of each page shown so far
  let generation = 0;

  async function show() {
    const mine = ++generation;
    showError(errors, null);
    try {
      const page = await load(prefix.value, starts[starts.length - 1], Number(size.value));
      if (mine !== generation) return;
      fill(body, page.items.length ? page.items.map(row)
        : h("tr", {}, h("td", { colspan: head.length, class: "muted", text: `No ${what}.` })));
      previous.disabled = starts.length === 1;
      next.disabled = !page.has_more;
      next.onclick = () => { starts.push(page.items[page.items.length - 1].name); show(); };
      status.textContent = `page ${starts.length}`;
    } catch (error) {
      if (mine === generation) { fill(body); showError(errors, error); }
    }
  }

  previous.addEventListener("click", () => { starts.pop(); show(); });
  const restart = () => { starts = [""]; show(); };
  prefix.addEventListener("input", restart);
  size.addEventListener("change", restart);
  show();
  const element = h("section", { class: "list" },
    h("div", { class: "row toolbar" }, prefix, size, previous, next, status),
    errors,
    h("table", { "data-testid": testid }, h("thead", {}, h("tr", {}, head.map((cell) => h("th", { text: cell })))), body));
  return { element, reload: show };
}
