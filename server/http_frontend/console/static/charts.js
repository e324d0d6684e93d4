// Small live charts: an SVG sparkline per series, drawn by hand (a few dozen lines, where a
// chart library would be a dependency to pin and ship for the same picture; ADR 0014).

import { h, svg } from "./dom.js";

const WIDTH = 240;
const HEIGHT = 48;

/** A chart card: its title, the latest value as `format` writes it, and the line of `values`
 * (null is a gap). */
export function sparkline(title, values, format, testid) {
  const known = values.filter((v) => v !== null && v !== undefined);
  const latest = known.length ? known[known.length - 1] : null;
  const peak = Math.max(0, ...known);
  const scale = peak || 1;
  const step = values.length > 1 ? WIDTH / (values.length - 1) : WIDTH;
  let path = "";
  let pen = false;
  let last = null;
  values.forEach((value, i) => {
    if (value === null || value === undefined) { pen = false; return; }
    last = [(i * step).toFixed(1), (HEIGHT - 2 - (value / scale) * (HEIGHT - 4)).toFixed(1)];
    path += `${pen ? "L" : "M"}${last[0]} ${last[1]} `;
    pen = true;
  });
  return h("figure", { class: "chart", "data-testid": testid },
    h("figcaption", {}, h("span", { text: title }), h("b", { class: "value", text: latest === null ? "–" : format(latest) })),
    svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT, role: "img", "aria-label": title },
      svg("line", { x1: 0, y1: HEIGHT - 1, x2: WIDTH, y2: HEIGHT - 1, class: "axis" }),
      path ? svg("path", { d: path.trim(), class: "line" }) : null,
      last ? svg("circle", { cx: last[0], cy: last[1], r: 2.5, class: "dot" }) : null),
    h("small", { class: "muted", text: `max ${format(peak)}` }));
}
