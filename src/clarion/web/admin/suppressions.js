// Suppressions: email addresses that bounced hard or complained, which Clarion no longer
// mails. Filter by address or reason, delete one (mail goes to it again), or add one.

import { get, post, del, enc } from "/admin/api.js";
import { h, clear, when, ago, field, select, table, notice, errorText, heading, link } from "/admin/dom.js";

const REASONS = [["", "Any"], ["bounced", "bounced"], ["complained", "complained"]];

export async function render(main, { query }) {
  const email = query.get("email") || "";
  const reason = query.get("reason") || "";
  const message = h("div", { class: "messages" });
  const results = h("div", { class: "results" });
  const form = h("form", {
    class: "filters",
    onsubmit: (event) => {
      event.preventDefault();
      const params = new URLSearchParams();
      for (const [name, value] of new FormData(event.target).entries()) if (String(value).trim()) params.set(name, String(value).trim());
      location.hash = `#/suppressions?${params}`;
    },
  },
  field("Email", h("input", { name: "email", value: email, placeholder: "any", type: "search" })),
  field("Reason", select("reason", REASONS, reason)),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: "Apply" })));

  const address = h("input", { name: "email", type: "email", required: true, placeholder: "alex@example.com" });
  const adding = h("form", {
    class: "filters",
    onsubmit: async (event) => {
      event.preventDefault();
      clear(message);
      const data = new FormData(event.target);
      const body = { email: String(data.get("email")).trim(), reason: String(data.get("reason")) };
      const note = String(data.get("detail") || "").trim();
      if (note) body.detail = note;
      try {
        const made = await post("/v1/suppressions", body);
        message.append(notice(`${made.email} is suppressed (${made.reason}).`, "ok"));
        event.target.reset();
      } catch (error) {
        message.append(notice(errorText(error), "bad"));
      }
      await reload();
    },
  },
  field("Suppress an address", address),
  field("Reason", select("reason", REASONS.slice(1), "bounced")),
  field("Note", h("input", { name: "detail", maxlength: "1000", placeholder: "optional" })),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", text: "Add" })));

  main.append(heading("Suppressions"), form, adding, message, results);

  async function remove(item, row) {
    if (!confirm(`Take ${item.email} off the suppression list? Email will be sent to it again.`)) return;
    clear(message);
    try {
      await del(`/v1/suppressions/${enc(item.email)}`);
      row.remove();
      message.append(notice(`${item.email} is no longer suppressed.`, "ok"));
    } catch (error) {
      message.append(notice(errorText(error), "bad"));
    }
  }

  async function reload() {
    clear(results);
    await load(null);
  }

  async function load(cursor) {
    let page;
    try {
      page = await get("/v1/suppressions", { email, reason, limit: 100, cursor });
    } catch (error) {
      results.append(notice(errorText(error), "bad"));
      return;
    }
    const rows = page.data.map((item) => {
      const row = h("tr", { dataset: { email: item.email } },
        h("td", {}, item.email),
        h("td", {}, item.reason),
        h("td", {}, item.source),
        h("td", { class: "error-text" }, item.detail || ""),
        h("td", {}, item.delivery_id ? link(`#/log/delivery/${enc(item.delivery_id)}`, item.delivery_id) : "—"),
        h("td", { title: when(item.updated_at) }, ago(item.created_at)),
      );
      row.append(h("td", {}, h("button", { type: "button", class: "small danger", text: "Delete", onclick: () => remove(item, row) })));
      return row;
    });
    const body = results.querySelector("tbody");
    if (body) body.append(...rows);
    else results.append(table(["Email", "Reason", "Source", "Diagnostic", "Delivery", "Since", ""], rows, "No suppressed addresses: no hard bounce or complaint has been reported."));
    if (page.next_cursor) {
      const more = h("button", { type: "button", class: "more", text: "Load more", onclick: () => { more.remove(); load(page.next_cursor); } });
      results.append(more);
    }
  }
  await load(null);
}
