// The sandbox viewer: what the sandbox provider captured instead of sending, by channel,
// newest first; each message rendered as its recipient would see it.

import { get, enc, CHANNELS } from "/admin/api.js";
import { h, clear, when, ago, notice, errorText, heading, link, code } from "/admin/dom.js";
import { renderChannel } from "/admin/preview.js";

function summary(message) {
  const content = message.content || {};
  const line = content.subject || content.title || content.text || content.body || "";
  return typeof line === "string" ? line : JSON.stringify(line);
}

export async function render(main, { query }) {
  const channel = CHANNELS.includes(query.get("channel")) ? query.get("channel") : "";
  const recipient = query.get("recipient_id") || "";
  const tabs = h("div", { class: "tabs", role: "tablist" },
    ["", ...CHANNELS].map((c) => h("a", {
      href: `#/sandbox${c ? `?channel=${c}` : ""}`, role: "tab", class: c === channel ? "active" : null,
      "aria-selected": String(c === channel), text: c || "all",
    })));
  const listPane = h("ul", { class: "mail-list", "aria-label": "Captured messages" });
  const viewer = h("div", { class: "mail-view card" }, h("p", { class: "empty", text: "Pick a message." }));
  const refresh = h("button", { type: "button", text: "Refresh", onclick: () => { clear(listPane); load(null); } });
  main.append(
    heading("Sandbox", refresh),
    h("p", { class: "muted", text: "Messages to channels that use the sandbox provider are captured here instead of being sent." }),
    tabs,
    h("div", { class: "mail" }, h("div", { class: "mail-column" }, listPane), viewer),
  );
  let selected = null;

  function open(message, row) {
    if (selected) selected.classList.remove("active");
    selected = row;
    row.classList.add("active");
    clear(viewer).append(
      h("div", { class: "mail-meta" },
        h("div", {}, h("span", { class: "muted", text: "To " }), typeof message.to === "string" ? message.to : JSON.stringify(message.to)),
        h("div", {}, h("span", { class: "muted", text: "Recipient " }), link(`#/recipients/${enc(message.recipient_id)}`, message.recipient_id),
          h("span", { class: "muted", text: " · delivery " }), link(`#/log/delivery/${enc(message.delivery_id)}`, message.delivery_id)),
        h("div", {}, h("span", { class: "muted", text: "Captured " }), when(message.created_at), " · ", code(message.channel))),
      renderChannel(message.channel, message.content),
    );
  }

  async function load(cursor) {
    let page;
    try {
      page = await get("/v1/sandbox/messages", { channel, recipient_id: recipient, limit: 50, cursor });
    } catch (error) {
      listPane.append(h("li", {}, notice(errorText(error), "bad")));
      return;
    }
    if (!page.data.length && !cursor) listPane.append(h("li", { class: "empty", text: "Nothing captured yet." }));
    for (const message of page.data) {
      const row = h("li", { class: "mail-item", tabindex: "0", dataset: { id: message.id, channel: message.channel } },
        h("div", { class: "mail-item-head" }, h("strong", { text: typeof message.to === "string" ? message.to : message.recipient_id }), h("small", { class: "muted", text: ago(message.created_at) })),
        h("div", { class: "mail-item-line" }, h("span", { class: "chip", text: message.channel }), " ", summary(message)));
      row.addEventListener("click", () => open(message, row));
      row.addEventListener("keydown", (event) => { if (event.key === "Enter") open(message, row); });
      listPane.append(row);
      if (!selected) open(message, row);
    }
    if (page.next_cursor) {
      const more = h("li", {}, h("button", { type: "button", class: "more", text: "Load more", onclick: () => { more.remove(); load(page.next_cursor); } }));
      listPane.append(more);
    }
  }
  await load(null);
}
