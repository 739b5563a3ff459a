// API keys: the tenant's keys (never their secrets), a new one made with a name and
// scopes, a key revoked after a confirmation. A new key's secret is shown once, in this
// page only: it is never written to storage, and it is gone when the operator presses
// Done or leaves the page. The key this console signed in with cannot be revoked here.

import { get, post, del, enc, key } from "/admin/api.js";
import { h, clear, badge, ago, when, field, table, notice, errorText, heading, code } from "/admin/dom.js";

const SCOPES = [
  ["send", "send notifications"],
  ["read", "read everything"],
  ["manage", "recipients, templates, providers, webhooks"],
  ["admin", "keys, dead letters, audit log"],
];

function isOwn(k) {
  return (key() || "").startsWith(`ck_${k.prefix}_`);
}

async function copy(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input.select();
    return document.execCommand("copy");
  }
}

function secretCard(made, onDone) {
  const input = h("input", { class: "code secret-value", readonly: true, value: made.secret, "aria-label": "New API key", spellcheck: "false", autocomplete: "off" });
  const status = h("span", { class: "status-line", role: "status" });
  const card = h(
    "section",
    { class: "card secret-once" },
    h("h2", { text: `Key ${made.name} created` }),
    h("p", { text: "Copy it now: Clarion keeps only its hash and will never show it again." }),
    h("div", { class: "inline-form" },
      input,
      h("button", { type: "button", class: "primary", text: "Copy", onclick: async () => {
        status.textContent = (await copy(made.secret, input)) ? "Copied" : "Select the key and copy it by hand";
      } }),
      h("button", { type: "button", text: "Done", onclick: () => { input.value = ""; card.remove(); onDone(); } })),
    status,
  );
  return card;
}

export async function render(main) {
  const messages = h("div", { class: "messages" });
  const fresh = h("div", {});
  const listArea = h("div", {});
  const name = h("input", { name: "key_name", required: true, maxlength: 100, placeholder: "billing service", "aria-label": "Key name" });
  const scopes = h("div", { class: "checks" }, SCOPES.map(([scope, hint]) => h("label", { class: "check", title: hint }, h("input", { type: "checkbox", name: "scope", value: scope, checked: scope === "send" }), ` ${scope}`)));
  const form = h("form", {
    class: "stack",
    onsubmit: async (event) => {
      event.preventDefault();
      clear(messages);
      const chosen = [...scopes.querySelectorAll("input:checked")].map((box) => box.value);
      if (!chosen.length) {
        messages.append(notice("Tick at least one scope.", "warn"));
        return;
      }
      try {
        const made = await post("/v1/keys", { name: name.value.trim(), scopes: chosen });
        name.value = "";
        clear(fresh).append(secretCard(made, () => clear(fresh)));
        await reload();
      } catch (error) {
        messages.append(notice(errorText(error), "bad"));
      }
    },
  },
  h("div", { class: "grid3" }, field("Name", name, "What the key is for, up to 100 characters")),
  field("Scopes", scopes, "A key can grant only scopes the console's own key holds"),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: "Create key" })));

  main.append(
    heading("API keys"),
    h("p", { class: "muted", text: "Keys of this tenant. A revoked key is refused at once by this server and by every other within 30 seconds; the key this console signed in with cannot revoke itself." }),
    messages, fresh, listArea,
    h("section", { class: "card" }, h("h2", { text: "Create a key" }), form),
  );

  async function revoke(k) {
    clear(messages);
    if (!confirm(`Revoke key ${k.name || k.id}? Anything using it is refused from now on.`)) return;
    try {
      await del(`/v1/keys/${enc(k.id)}`);
      messages.append(notice(`Key ${k.name || k.id} revoked`, "ok"));
    } catch (error) {
      messages.append(notice(errorText(error), "bad"));
    }
    await reload();
  }

  async function reload() {
    let page;
    try {
      page = await get("/v1/keys", { limit: 500 });
    } catch (error) {
      clear(listArea).append(notice(error.status === 403 ? "API keys need a key with the admin scope." : errorText(error), "bad"));
      return;
    }
    clear(listArea).append(table(
      ["Name", "Key", "Scopes", "Created", "Status", ""],
      page.data.map((k) => h("tr", { dataset: { id: k.id } },
        h("td", {}, k.name ? h("strong", { text: k.name }) : h("span", { class: "muted", text: "unnamed" })),
        h("td", { class: "nowrap" }, code(`ck_${k.prefix}_…`), h("div", {}, h("small", { class: "muted", text: k.id }))),
        h("td", {}, k.scopes.join(", ")),
        h("td", { class: "nowrap", title: when(k.created_at) }, ago(k.created_at)),
        h("td", { class: "nowrap", title: k.revoked_at ? when(k.revoked_at) : null }, badge(k.revoked_at ? "revoked" : "active")),
        h("td", { class: "row-actions" },
          k.revoked_at ? null
            : isOwn(k) ? h("span", { class: "muted", text: "this console's key" })
              : h("button", { type: "button", class: "small danger", text: "Revoke", onclick: () => revoke(k) })),
      )),
      "No keys.",
    ));
  }

  await reload();
}
