// A recipient: profile, preferences, in-app inbox and delivery history; export everything
// stored about them, or erase them.

import { get, post, del, api, enc } from "/admin/api.js";
import { h, append, clear, badge, when, ago, field, table, notice, errorText, heading, link, pretty, code } from "/admin/dom.js";

export async function render(main, { rest }) {
  const id = h("input", { name: "recipient_id", required: true, placeholder: "u-123", value: rest[0] || "", "aria-label": "Recipient id" });
  const find = h("form", { class: "inline-form", onsubmit: (event) => { event.preventDefault(); location.hash = `#/recipients/${enc(id.value.trim())}`; } },
    id, h("button", { type: "submit", class: "primary", text: "Open" }));
  main.append(heading("Recipients", find));
  if (!rest[0]) {
    main.append(h("p", { class: "muted", text: "Open a recipient by id (the tenant's own user id) to see their profile, preferences, inbox and history." }));
    return;
  }
  await recipient(main, rest[0]);
}

async function recipient(main, id) {
  let profile;
  try {
    profile = await get(`/v1/recipients/${enc(id)}`);
  } catch (error) {
    main.append(notice(error.status === 404 ? `No recipient ${id}.` : errorText(error), "bad"));
    return;
  }
  const messages = h("div", {});
  const exportButton = h("button", { type: "button", text: "Export JSON", onclick: async () => {
    try {
      const everything = await get(`/v1/recipients/${enc(id)}/export`);
      const blob = new Blob([JSON.stringify(everything, null, 2)], { type: "application/json" });
      const anchor = h("a", { href: URL.createObjectURL(blob), download: `recipient-${id}.json` });
      document.body.append(anchor);
      anchor.click();
      anchor.remove();
      setTimeout(() => URL.revokeObjectURL(anchor.href), 1000);
    } catch (error) {
      messages.append(notice(errorText(error), "bad"));
    }
  } });
  const eraseButton = h("button", { type: "button", class: "danger", text: "Erase", onclick: async () => {
    const typed = prompt(`Erasing removes ${id}'s contact data, inbox, preferences and topic memberships for good. Type the id to confirm.`);
    if (typed !== id) return;
    try {
      await del(`/v1/recipients/${enc(id)}`);
      clear(main).append(heading("Recipients"), notice(`${id} was erased.`, "ok"));
    } catch (error) {
      messages.append(notice(errorText(error), "bad"));
    }
  } });
  const preferences = h("section", { class: "card" }, h("h2", { text: "Preferences" }));
  const inbox = h("section", { class: "card" }, h("h2", { text: "In-app inbox" }));
  const history = h("section", { class: "card wide" }, h("h2", { text: "History" }));
  main.append(
    heading(`Recipient ${profile.id}`, exportButton, eraseButton),
    messages,
    h("div", { class: "cards" },
      h("section", { class: "card" }, h("h2", { text: "Profile" }),
        h("dl", { class: "facts" },
          [["Email", profile.email], ["Phone", profile.phone], ["WhatsApp", profile.whatsapp || (profile.phone ? "(the phone)" : null)], ["Locale", profile.locale], ["Time zone", profile.timezone], ["Webhook URL", profile.webhook_url],
            ["Push tokens", String((profile.push_tokens || []).length)], ["Web push", String((profile.webpush || []).length)], ["Chat", (profile.chat || []).map((c) => c.kind).join(", ")], ["Created", when(profile.created_at)], ["Updated", when(profile.updated_at)]]
            .map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v || "—" })])),
        h("h3", { text: "Data" }), pretty(profile.data || {})),
      preferences, inbox),
    history,
  );
  get(`/v1/recipients/${enc(id)}/preferences`).then((prefs) => {
    const channelRows = Object.entries(prefs.channels || {}).map(([c, on]) => h("tr", {}, h("td", {}, c), h("td", {}, badge(on ? "enabled" : "disabled"))));
    const categoryRows = Object.entries(prefs.categories || {}).flatMap(([cat, channels]) => Object.entries(channels).map(([c, on]) => h("tr", {}, h("td", {}, `${cat} · ${c}`), h("td", {}, badge(on ? "enabled" : "disabled")))));
    append(preferences, [
      table(["Channel or category", "Setting"], [...channelRows, ...categoryRows], "No opt-outs: everything is on."),
      prefs.quiet_hours ? h("p", {}, "Quiet hours ", code(`${prefs.quiet_hours.start}–${prefs.quiet_hours.end}`), ` ${prefs.quiet_hours.timezone || ""}`) : null,
    ]);
  }).catch((error) => preferences.append(notice(errorText(error), "bad")));
  (async () => {
    const token = await post(`/v1/recipients/${enc(id)}/token`);
    const [feed, counts] = await Promise.all([
      api("GET", "/v1/inbox", { query: { limit: 20 }, keyOverride: token.token }),
      api("GET", "/v1/inbox/count", { keyOverride: token.token }),
    ]);
    append(inbox, [
      h("p", { class: "muted", text: `${counts.unread} unread · ${counts.total} in all` }),
      h("ul", { class: "inbox-list" }, feed.data.map((m) => h("li", { class: m.read_at ? "read" : "unread" },
        h("strong", { text: typeof m.title === "string" ? m.title : JSON.stringify(m.title) }),
        h("p", { text: typeof m.body === "string" ? m.body : JSON.stringify(m.body) }),
        h("small", { class: "muted", text: ago(m.created_at) })))),
      feed.data.length ? null : h("p", { class: "empty", text: "The inbox is empty." }),
    ]);
  })().catch((error) => inbox.append(notice(errorText(error), "bad")));
  get("/v1/deliveries", { recipient_id: id, limit: 50 }).then((page) => {
    append(history, [table(["Delivery", "Status", "Channel", "Provider", "Reason", "Created", "Notification"], page.data.map((d) => h("tr", {},
      h("td", {}, link(`#/log/delivery/${enc(d.id)}`, d.id)),
      h("td", {}, badge(d.status)),
      h("td", {}, d.channel),
      h("td", {}, d.provider || "—"),
      h("td", {}, d.reason || ""),
      h("td", { title: when(d.created_at) }, ago(d.created_at)),
      h("td", {}, link(`#/log/notification/${enc(d.notification_id)}`, d.notification_id)))), "Nothing sent to this recipient yet."),
    page.next_cursor ? link(`#/log?tab=deliveries&recipient_id=${enc(id)}`, "All of it in the message log") : null]);
  }).catch((error) => history.append(notice(errorText(error), "bad")));
}
