// Topics: open one by name to see its size and its subscribers a page at a time; subscribe
// or unsubscribe recipients by a list of ids. A topic exists from its first subscriber (or its
// creation through the API) until it is deleted.

import { get, api, enc } from "/admin/api.js";
import { h, clear, when, ago, field, table, notice, errorText, heading, link } from "/admin/dom.js";

const MAX_IDS = 10000;

export async function render(main, { rest }) {
  const name = h("input", { name: "topic", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,200}", placeholder: "daily-summary", value: rest[0] || "", "aria-label": "Topic name" });
  const find = h("form", { class: "inline-form", onsubmit: (event) => { event.preventDefault(); location.hash = `#/topics/${enc(name.value.trim())}`; } },
    name, h("button", { type: "submit", class: "primary", text: "Open" }));
  main.append(heading(rest[0] ? `Topic ${rest[0]}` : "Topics", find));
  if (!rest[0]) {
    main.append(h("p", { class: "muted", text: "Open a topic by name to see its subscribers, or to subscribe recipients to a new one." }));
    return;
  }
  await topic(main, rest[0]);
}

// Ids separated by commas, spaces or new lines, each once, in the order given.
export function parseIds(text) {
  return [...new Set(text.split(/[\s,]+/).map((id) => id.trim()).filter(Boolean))];
}

async function topic(main, name) {
  const messages = h("div", { class: "messages" });
  const summary = h("p", { class: "topic-size" });
  const members = h("section", { class: "card wide" }, h("h2", { text: "Subscribers" }));
  const ids = h("textarea", { name: "recipient_ids", class: "code id-list", spellcheck: "false", placeholder: "u-1, u-2\nu-3", "aria-label": "Recipient ids" });

  async function change(method) {
    clear(messages);
    const list = parseIds(ids.value);
    if (!list.length) {
      messages.append(notice("List at least one recipient id.", "bad"));
      return;
    }
    if (list.length > MAX_IDS) {
      messages.append(notice(`At most ${MAX_IDS.toLocaleString("en")} ids at a time.`, "bad"));
      return;
    }
    let result;
    try {
      result = await api(method, `/v1/topics/${enc(name)}/subscribers`, { body: { recipient_ids: list } });
    } catch (error) {
      messages.append(notice(error.status === 404 ? `No topic ${name}.` : errorText(error), "bad"));
      return;
    }
    const verb = method === "PUT" ? `Subscribed ${result.added}` : `Unsubscribed ${result.removed}`;
    messages.append(notice(`${verb} of ${list.length}; ${result.subscribers} subscriber${result.subscribers === 1 ? "" : "s"} now.`, "ok"));
    for (const error of result.errors || []) messages.append(notice(`${error.recipient_id}: ${(error.error && error.error.message) || "unknown recipient"}`, "bad"));
    ids.value = "";
    await refresh();
  }

  async function refresh() {
    clear(summary);
    for (const el of [...members.children].slice(1)) el.remove();
    let info;
    try {
      info = await get(`/v1/topics/${enc(name)}`);
    } catch (error) {
      if (error.status === 404) {
        summary.append(notice(`No topic ${name} yet. Subscribing recipients below creates it.`, "info"));
      } else {
        summary.append(notice(errorText(error), "bad"));
      }
      members.append(h("p", { class: "empty", text: "No subscribers." }));
      return;
    }
    summary.append(h("strong", { text: info.subscribers.toLocaleString("en") }), ` subscriber${info.subscribers === 1 ? "" : "s"}`);
    await loadMembers(null);
  }

  async function loadMembers(cursor) {
    let page;
    try {
      page = await get(`/v1/topics/${enc(name)}/subscribers`, { limit: 100, cursor });
    } catch (error) {
      members.append(notice(errorText(error), "bad"));
      return;
    }
    const rows = page.data.map((member) => h("tr", { dataset: { id: member.recipient_id } },
      h("td", {}, link(`#/recipients/${enc(member.recipient_id)}`, member.recipient_id)),
      h("td", { title: when(member.subscribed_at) }, member.subscribed_at ? ago(member.subscribed_at) : "—"),
      h("td", { class: "row-actions" }, h("button", { type: "button", class: "small danger", text: "Remove", onclick: async () => {
        ids.value = member.recipient_id;
        await change("DELETE");
      } })),
    ));
    const body = members.querySelector("tbody");
    if (body) body.append(...rows);
    else members.append(table(["Recipient", "Subscribed", ""], rows, "No subscribers."));
    if (page.next_cursor) {
      const more = h("button", { class: "more", type: "button", text: "Load more", onclick: () => { more.remove(); loadMembers(page.next_cursor); } });
      members.append(more);
    }
  }

  main.append(
    summary,
    messages,
    h("section", { class: "card" }, h("h2", { text: "Subscribe or unsubscribe" }),
      h("div", { class: "stack" },
        field("Recipient ids", ids, `Separated by commas, spaces or new lines; up to ${MAX_IDS.toLocaleString("en")}`),
        h("div", { class: "filter-actions" },
          h("button", { type: "button", class: "primary", text: "Subscribe", onclick: () => change("PUT") }),
          h("button", { type: "button", class: "danger", text: "Unsubscribe", onclick: () => change("DELETE") })))),
    members,
  );
  await refresh();
}
