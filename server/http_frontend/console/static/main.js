// The console's entry point: sign-in, navigation and the route table. Routes live in the
// URL's fragment (`#/basins/b/streams/s`), which names only resources, never a secret.

import { ApiError, get, setToken, token, whenUnauthenticated } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { Permissions } from "./scope.js";
import { basinsView } from "./views/basins.js";
import { basinView } from "./views/basin.js";
import { healthView } from "./views/health.js";
import { lakeView } from "./views/lake.js";
import { streamView } from "./views/stream.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const identity = document.getElementById("identity");

let permissions = null;
let leaving = null; // stops the current view's timers and streams

const ROUTES = [
  [/^#\/basins\/([^/]+)\/streams\/(.+)$/,
    (m, p) => streamView(p, decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/basins\/([^/]+)$/, (m, p) => basinView(p, decodeURIComponent(m[1]))],
  [/^#\/lake$/, (m, p) => lakeView(p)],
  [/^#\/health$/, (m, p) => healthView(p)],
  [/^#\/basins$/, (m, p) => basinsView(p)],
];

function signInView(message) {
  const input = h("input", {
    type: "password", name: "token", autocomplete: "off", required: true,
    placeholder: "s2s_…", "aria-label": "access token",
  });
  const form = h("form", {
    class: "card signin",
    onsubmit: async (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      await start();
    },
  },
  h("h1", { text: "Sign in" }),
  h("p", { text: "Access control is on: give an access token. It is kept in this browser tab only, and sent only in the authorization header." }),
  h("p", { class: "muted" }, "The root token is in ", h("code", { text: "DATA_DIR/root.token" }), " on the server."),
  input,
  h("button", { type: "submit", class: "primary", text: "Sign in" }));
  fill(nav);
  fill(identity);
  fill(main, message ? errorBox(message) : null, form);
  input.focus();
}

function renderNav() {
  const links = [["#/basins", "Basins"]];
  if (permissions.group("account", false)) links.push(["#/lake", "Lake"]);
  if (permissions.can("account-metrics")) links.push(["#/health", "Health"]);
  const here = location.hash || "#/basins";
  fill(nav, links.map(([href, label]) => h("a", {
    href, text: label, class: here.startsWith(href) ? "active" : null,
  })));
  const who = permissions.accessControl ? `token ${permissions.info.id}` : "access control off";
  fill(identity, h("span", { class: "muted", "data-testid": "identity", text: who }),
    permissions.accessControl ? h("button", {
      type: "button", class: "link", text: "Sign out",
      onclick: () => {
        setToken(null);
        permissions = null;
        if (leaving) { leaving(); leaving = null; }
        signInView();
      },
    }) : null);
}

function route() {
  if (!permissions) return;
  if (leaving) { leaving(); leaving = null; }
  const hash = location.hash || "#/basins";
  renderNav();
  for (const [pattern, view] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      const shown = view(match, permissions);
      fill(main, shown.element);
      leaving = shown.leave || null;
      return;
    }
  }
  location.hash = "#/basins";
}

/** Ask the server who the token is; true once signed in (or when access control is off). */
async function start() {
  try {
    permissions = new Permissions(await get("/v1/whoami"));
  } catch (error) {
    permissions = null;
    // A 401 has already brought the sign-in form back (whenUnauthenticated).
    if (!(error instanceof ApiError && error.status === 401)) fill(main, errorBox(error));
    return false;
  }
  route();
  return true;
}

whenUnauthenticated((error) => {
  const refused = token() !== null; // a token was given and refused: say why
  setToken(null);
  permissions = null;
  if (leaving) { leaving(); leaving = null; }
  signInView(refused ? error : null);
});
window.addEventListener("hashchange", route);
start();
