// The audit log: every change to the tenant's configuration, newest first, filtered by
// resource, name, key and action and a time range, a page of 50 at a time; each change's
// fields shown as "field: from → to" text.

import { get, enc } from "/admin/api.js";
import { h, when, ago, field, select, table, notice, errorText, heading, badge, code } from "/admin/dom.js";

const RESOURCES = ["template", "provider", "webhook", "category", "api_key", "tenant", "recipient"];
const ACTIONS = ["create", "update", "delete", "rollback", "revoke", "rotate", "reencrypt", "erase"];
const FILTERS = ["resource", "name", "key_id", "action", "after", "before"];

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : "";
}

export async function render(main, { query }) {
  const filters = {};
  for (const name of FILTERS) if (query.get(name)) filters[name] = query.get(name);
  const form = h(
    "form",
    {
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        const params = new URLSearchParams();
        for (const [name, value] of new FormData(event.target).entries()) {
          const text = name === "after" || name === "before" ? fromLocalInput(value) : String(value).trim();
          if (text) params.set(name, text);
        }
        location.hash = `#/audit?${params}`;
      },
    },
    field("Resource", select("resource", [["", "Any"], ...RESOURCES.map((r) => [r, r])], filters.resource || "")),
    field("Name", h("input", { name: "name", value: filters.name || "", placeholder: "any" })),
    field("Key", h("input", { name: "key_id", value: filters.key_id || "", placeholder: "key id or cli" })),
    field("Action", select("action", [["", "Any"], ...ACTIONS.map((a) => [a, a])], filters.action || "")),
    field("From", h("input", { type: "datetime-local", name: "after", value: toLocalInput(filters.after) })),
    field("Until", h("input", { type: "datetime-local", name: "before", value: toLocalInput(filters.before) })),
    h("div", { class: "filter-actions" },
      h("button", { type: "submit", class: "primary", text: "Apply" }),
      h("a", { class: "button", href: "#/audit", text: "Reset" })),
  );
  const results = h("div", { class: "results" });
  main.append(heading("Audit log"), form, results);
  await load(filters, results, null);
}

function show(value) {
  if (value === undefined) return "—";
  return JSON.stringify(value);
}

// `{"field": {"from": a, "to": b}}` as lines of text; any other shape as its JSON.
export function diffText(diff) {
  const lines = [];
  for (const [name, change] of Object.entries(diff || {})) {
    if (change && typeof change === "object" && !Array.isArray(change) && ("from" in change || "to" in change)) {
      lines.push(`${name}: ${show(change.from)} → ${show(change.to)}`);
    } else {
      lines.push(`${name}: ${show(change)}`);
    }
  }
  return lines.join("\n");
}

function row(entry) {
  const text = diffText(entry.diff);
  return h(
    "tr",
    { dataset: { id: entry.id } },
    h("td", { class: "nowrap", title: when(entry.at) }, h("div", { text: when(entry.at) }), h("small", { class: "muted", text: ago(entry.at) })),
    h("td", { class: "nowrap" }, h("a", { href: `#/audit?key_id=${enc(entry.key_id)}`, title: "Changes by this key" }, code(entry.key_id))),
    h("td", {}, badge(entry.action)),
    h("td", {}, entry.resource),
    h("td", { class: "name-cell" }, h("a", { href: `#/audit?resource=${enc(entry.resource)}&name=${enc(entry.name)}`, title: "Changes to this one" }, h("strong", { text: entry.name }))),
    h("td", {}, text ? h("pre", { class: "diff", text }) : h("span", { class: "muted", text: "—" })),
  );
}

async function load(filters, results, cursor) {
  let page;
  try {
    page = await get("/v1/audit", { ...filters, limit: 50, cursor });
  } catch (error) {
    results.append(notice(error.status === 403 ? "The audit log needs a key with the admin scope." : errorText(error), "bad"));
    return;
  }
  const rows = page.data.map(row);
  const body = results.querySelector("tbody");
  if (body) body.append(...rows);
  else results.append(table(["When", "Key", "Action", "Resource", "Name", "Changes"], rows, "No change matches."));
  if (page.next_cursor) {
    const more = h("button", { class: "more", type: "button", text: "Load more", onclick: () => { more.remove(); load(filters, results, page.next_cursor); } });
    results.append(more);
  }
}
