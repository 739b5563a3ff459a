// Dead letters: deliveries out of attempts. Inspect one (its timeline), replay the ones
// ticked, or every one that matches the filter.

import { get, post, enc, CHANNELS } from "/admin/api.js";
import { h, clear, badge, when, ago, field, select, table, notice, errorText, heading, link } from "/admin/dom.js";

export async function render(main, { query }) {
  const channel = query.get("channel") || "";
  const provider = query.get("provider") || "";
  const message = h("div", { class: "messages" });
  const results = h("div", { class: "results" });
  const form = h("form", {
    class: "filters",
    onsubmit: (event) => {
      event.preventDefault();
      const params = new URLSearchParams();
      for (const [name, value] of new FormData(event.target).entries()) if (String(value).trim()) params.set(name, String(value).trim());
      location.hash = `#/dead-letters?${params}`;
    },
  },
  field("Channel", select("channel", [["", "Any"], ...CHANNELS.map((c) => [c, c])], channel)),
  field("Provider", h("input", { name: "provider", value: provider, placeholder: "any" })),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: "Apply" })));

  const replaySelected = h("button", { type: "button", class: "primary", disabled: true, text: "Replay selected", onclick: async () => {
    const ids = [...results.querySelectorAll("input[name=pick]:checked")].map((box) => box.value);
    clear(message);
    let done = 0;
    const failures = [];
    for (const id of ids) {
      try {
        await post(`/v1/dead-letters/${enc(id)}/replay`);
        done += 1;
      } catch (error) {
        failures.push(`${id}: ${errorText(error)}`);
      }
    }
    message.append(notice(`Replayed ${done} of ${ids.length}.`, failures.length ? "warn" : "ok"));
    for (const failure of failures) message.append(notice(failure, "bad"));
    await reload();
  } });
  const replayAll = h("button", { type: "button", text: "Replay all matching", onclick: async () => {
    if (!confirm("Replay every dead letter that matches the filter?")) return;
    clear(message);
    try {
      const body = {};
      if (channel) body.channel = channel;
      if (provider) body.provider = provider;
      const result = await post("/v1/dead-letters/replay", body);
      message.append(notice(`Replayed ${result.replayed}${result.more ? " (more remain: replay again)" : ""}.`, "ok"));
    } catch (error) {
      message.append(notice(errorText(error), "bad"));
    }
    await reload();
  } });

  main.append(heading("Dead letters", replaySelected, replayAll), form, message, results);

  function pickChanged() {
    replaySelected.disabled = !results.querySelector("input[name=pick]:checked");
  }

  async function reload() {
    clear(results);
    await load(null);
    pickChanged();
  }

  async function load(cursor) {
    let page;
    try {
      page = await get("/v1/dead-letters", { channel, provider, limit: 100, cursor });
    } catch (error) {
      results.append(notice(errorText(error), "bad"));
      return;
    }
    const rows = page.data.map((item) => h("tr", { dataset: { id: item.id } },
      h("td", {}, h("input", { type: "checkbox", name: "pick", value: item.id, "aria-label": `Select ${item.id}`, onchange: pickChanged })),
      h("td", {}, link(`#/log/delivery/${enc(item.id)}`, item.id)),
      h("td", {}, badge(item.status)),
      h("td", {}, item.channel),
      h("td", {}, item.provider || "—"),
      h("td", {}, item.recipient_id || "—"),
      h("td", {}, String(item.attempts)),
      h("td", { class: "error-text" }, item.last_error || item.reason || ""),
      h("td", { title: when(item.updated_at || item.created_at) }, ago(item.updated_at || item.created_at)),
    ));
    // Filtered by channel or provider, a page examines a stretch of dead letters: it may be
    // empty while there is more to look through (docs/message-log.md, Lists).
    const notYet = results.querySelector(".not-yet");
    if (notYet) notYet.remove();
    const body = results.querySelector("tbody");
    if (body) body.append(...rows);
    else if (!rows.length && page.next_cursor) {
      results.append(h("p", { class: "empty not-yet", text: "None among the latest examined: load more to look further back." }));
    } else {
      const all = h("input", { type: "checkbox", "aria-label": "Select all", onchange: (event) => {
        for (const box of results.querySelectorAll("input[name=pick]")) box.checked = event.target.checked;
        pickChanged();
      } });
      const built = table(["", "Delivery", "Status", "Channel", "Provider", "Recipient", "Attempts", "Last error", "Died"], rows, "No dead letters. Everything was delivered or is still being tried.");
      const first = built.querySelector("th");
      if (first) first.append(all);
      results.append(built);
    }
    if (page.next_cursor) {
      const more = h("button", { type: "button", class: "more", text: "Load more", onclick: () => { more.remove(); load(page.next_cursor); } });
      results.append(more);
    }
  }
  await load(null);
}
