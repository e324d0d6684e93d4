// A resource's configuration as editable JSON: shown as the server resolves it, saved with
// PATCH, which changes the fields given (null clears one), as `s2s ... config` does.

import { actionButton, h, showError } from "../dom.js";

/** `load()` resolves to the config; `save(patch)` to the new one; `canSave` shows the editor. */
export function configEditor({ title, load, save, canSave }) {
  const shown = h("pre", { class: "json", "data-testid": "config" });
  const editor = h("textarea", { rows: 10, spellcheck: "false", "aria-label": `${title} JSON` });
  const errors = h("div");
  const editing = h("div", { class: "editing", hidden: true },
    h("p", { class: "muted", text: "Edit the fields to change; null clears a field." }),
    editor,
    h("div", { class: "row" },
      actionButton("Save", async () => {
        let patch;
        try { patch = JSON.parse(editor.value); } catch (error) { throw new Error(`not JSON: ${error.message}`); }
        render(await save(patch));
        editing.hidden = true;
      }, errors, { class: "primary" }),
      h("button", { type: "button", text: "Cancel", onclick: () => { editing.hidden = true; } })),
    errors);
  let current = null;
  function render(config) {
    current = config;
    shown.textContent = JSON.stringify(config, null, 2);
  }
  const edit = canSave ? h("button", {
    type: "button", text: "Edit",
    onclick: () => { editor.value = JSON.stringify(current, null, 2); editing.hidden = false; editor.focus(); },
  }) : null;
  const loadErrors = h("div");
  load().then(render, (error) => showError(loadErrors, error));
  return h("section", { class: "card" }, loadErrors, shown, edit, editing);
}

/** A JSON textarea's value: undefined when blank, else the parsed JSON (or an Error thrown). */
export function optionalJson(textarea, what) {
  const text = textarea.value.trim();
  if (!text) return undefined;
  try { return JSON.parse(text); } catch (error) { throw new Error(`${what} is not JSON: ${error.message}`); }
}

export function clear(...inputs) {
  for (const input of inputs) input.value = "";
}
