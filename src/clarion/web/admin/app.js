// The console's shell: sign-in, navigation and a hash router. Each screen is a module
// whose `render(main, params)` draws into `main` and may return a function that stops it
// (a poll, a timer) when the operator moves on.

import { api, key, signIn, signOut } from "/admin/api.js";
import { clear, h, notice, errorText } from "/admin/dom.js";
import * as dashboard from "/admin/dashboard.js";
import * as log from "/admin/log.js";
import * as templates from "/admin/templates.js";
import * as workflows from "/admin/workflows.js";
import * as sandbox from "/admin/sandbox.js";
import * as deadLetters from "/admin/dead-letters.js";
import * as suppressions from "/admin/suppressions.js";
import * as providers from "/admin/providers.js";
import * as settings from "/admin/settings.js";
import * as recipients from "/admin/recipients.js";
import * as schedules from "/admin/schedules.js";
import * as topics from "/admin/topics.js";
import * as audit from "/admin/audit.js";
import * as keys from "/admin/keys.js";

const SCREENS = [
  ["dashboard", "Dashboard", dashboard.render],
  ["log", "Message log", log.render],
  ["templates", "Templates", templates.render],
  ["workflows", "Workflows", workflows.render],
  ["sandbox", "Sandbox", sandbox.render],
  ["dead-letters", "Dead letters", deadLetters.render],
  ["suppressions", "Suppressions", suppressions.render],
  ["recipients", "Recipients", recipients.render],
  ["topics", "Topics", topics.render],
  ["schedules", "Schedules", schedules.render],
  ["providers", "Providers", providers.render],
  ["settings", "Categories & webhooks", settings.render],
  ["keys", "API keys", keys.render],
  ["audit", "Audit log", audit.render],
];

const root = document.getElementById("app");
let stop = null;

function parseRoute() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { screen: parts[0] || "log", rest: parts.slice(1), query: new URLSearchParams(search || "") };
}

function loginView() {
  const input = h("input", {
    type: "password", name: "key", autocomplete: "off", spellcheck: "false", required: true,
    placeholder: "ck_…", "aria-label": "API key",
  });
  const message = h("div", { class: "login-message" });
  const form = h(
    "form",
    {
      class: "login-card",
      onsubmit: async (event) => {
        event.preventDefault();
        clear(message);
        const value = input.value.trim();
        try {
          await api("GET", "/v1/templates", { query: { limit: 1 }, keyOverride: value });
          signIn(value);
          if (!location.hash || location.hash === "#/login") location.hash = "#/log";
          route();
        } catch (error) {
          const text = error.status === 401
            ? "That key is not valid."
            : error.status === 403
              ? "That key lacks the read scope the console needs."
              : errorText(error);
          message.append(notice(text, "bad"));
        }
      },
    },
    h("div", { class: "brand big" }, h("span", { class: "logo", "aria-hidden": "true" }), "Clarion"),
    h("h1", { text: "Sign in to the console" }),
    h("p", { class: "muted", text: "Paste a tenant API key. It is kept for this tab only and forgotten when the tab closes." }),
    input,
    h("button", { type: "submit", class: "primary", text: "Sign in" }),
    message,
  );
  clear(root).append(h("main", { class: "login" }, form));
  input.focus();
}

function shell(active) {
  const nav = h(
    "nav",
    { class: "sidebar", "aria-label": "Console" },
    h("div", { class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }), "Clarion"),
    h(
      "ul",
      {},
      SCREENS.map(([id, label]) =>
        h("li", {}, h("a", { href: `#/${id}`, class: id === active ? "active" : null, "aria-current": id === active ? "page" : null, text: label })),
      ),
    ),
    h(
      "div",
      { class: "sidebar-foot" },
      h("a", { href: "/docs", target: "_blank", rel: "noopener", text: "API reference" }),
      h("button", { class: "link", type: "button", onclick: () => { signOut(); location.hash = "#/login"; route(); }, text: "Sign out" }),
    ),
  );
  const main = h("main", { class: "content", id: "main" });
  clear(root).append(h("div", { class: "layout" }, nav, main));
  return main;
}

async function route() {
  if (stop) {
    stop();
    stop = null;
  }
  const { screen, rest, query } = parseRoute();
  if (!key() || screen === "login") {
    loginView();
    return;
  }
  const found = SCREENS.find(([id]) => id === screen) || SCREENS[1];
  const main = shell(found[0]);
  try {
    const result = await found[2](main, { rest, query });
    if (typeof result === "function") stop = result;
  } catch (error) {
    main.append(notice(errorText(error), "bad"));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("clarion:signed-out", () => {
  location.hash = "#/login";
});
route();
