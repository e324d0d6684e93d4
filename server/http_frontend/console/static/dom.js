// Building the page: elements are made with `h` and text is always set as text, never as
// HTML, so nothing a stream holds can run as script (the CSP forbids inline script anyway).

const SVG_NS = "http://www.w3.org/2000/svg";

function applyProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "value" && "value" in el) el.value = value;
    else if (key === "checked" || key === "disabled" || key === "selected") el[key] = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("button", {class: "x", onclick: f}, "text", child, ...). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  applyProps(el, props);
  append(el, children);
  return el;
}

/** An SVG element, the same way. */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") el.textContent = String(value);
    else if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Replace everything inside `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A labelled form field. */
export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { text: label }), input,
    hint ? h("small", { class: "muted", text: hint }) : null);
}

/** A message box for an error (an ApiError or any Error). */
export function errorBox(error) {
  const code = error && error.code ? `${error.code}: ` : "";
  return h("div", { class: "error", role: "alert", "data-testid": "error" },
    code + (error && error.message ? error.message : String(error)));
}

/** Show `error` (or nothing, with null) in the element `where`. */
export function showError(where, error) {
  fill(where, error ? errorBox(error) : null);
}

const confirmDialog = () => document.getElementById("confirm");

/**
 * Ask before doing something that cannot be undone: resolves true only if the user types
 * `expected` (the name of what goes) and confirms.
 */
export function confirmTyped(message, expected) {
  const dialog = confirmDialog();
  return new Promise((resolve) => {
    const input = h("input", { type: "text", "aria-label": "confirmation", autocomplete: "off" });
    const ok = h("button", { class: "danger", type: "submit", disabled: true, text: "Confirm" });
    input.addEventListener("input", () => { ok.disabled = input.value !== expected; });
    const close = (answer) => { dialog.close(); resolve(answer); };
    const form = h("form", {
      onsubmit: (event) => { event.preventDefault(); close(input.value === expected); },
    },
    h("p", { text: message }),
    h("p", {}, "Type ", h("code", { text: expected }), " to confirm."),
    input,
    h("div", { class: "row" }, ok,
      h("button", { type: "button", text: "Cancel", onclick: () => close(false) })));
    fill(dialog, form);
    dialog.addEventListener("cancel", () => resolve(false), { once: true });
    dialog.showModal();
    input.focus();
  });
}

/** A button that runs `action` and shows its failure in `errors`; disabled while it runs. */
export function actionButton(label, action, errors, props = {}) {
  const button = h("button", { type: "button", ...props, text: label });
  button.addEventListener("click", async () => {
    button.disabled = true;
    if (errors) showError(errors, null);
    try {
      await action();
    } catch (error) {
      if (errors) showError(errors, error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
