// The message log: notifications and deliveries, newest first, with filters and cursors;
// a notification with its deliveries (and a workflow send's runs, refreshed while they go
// on); a delivery with its timeline.

import { get, post, enc, CHANNELS, DELIVERY_STATUSES, NOTIFICATION_STATUSES } from "/admin/api.js";
import { h, badge, code, when, ago, field, select, table, notice, errorText, heading, link, pretty } from "/admin/dom.js";
import { runsCard, unfinished } from "/admin/runs.js";

const REFRESH_MS = 2000;

export async function render(main, { rest, query }) {
  if (rest[0] === "notification" && rest[1]) return notification(main, rest[1]);
  if (rest[0] === "delivery" && rest[1]) return delivery(main, rest[1]);
  return list(main, query);
}

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 16);
}

function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : "";
}

const FILTERS = {
  notifications: ["status", "template", "recipient_id", "category", "created_after", "created_before"],
  deliveries: ["status", "channel", "provider", "reason", "recipient_id", "template", "notification_id", "created_after", "created_before"],
};

function list(main, query) {
  const tab = query.get("tab") === "deliveries" ? "deliveries" : "notifications";
  const filters = {};
  for (const name of FILTERS[tab]) if (query.get(name)) filters[name] = query.get(name);

  const tabs = h(
    "div",
    { class: "tabs", role: "tablist" },
    ["notifications", "deliveries"].map((name) =>
      h("a", { href: `#/log?tab=${name}`, role: "tab", class: name === tab ? "active" : null, "aria-selected": String(name === tab), text: name[0].toUpperCase() + name.slice(1) }),
    ),
  );
  const form = filterForm(tab, filters);
  const results = h("div", { class: "results" });
  main.append(heading("Message log"), tabs, form, results);
  load(tab, filters, results, null);
}

function filterForm(tab, filters) {
  const statuses = tab === "deliveries" ? DELIVERY_STATUSES : NOTIFICATION_STATUSES;
  const controls = [
    field("Status", select("status", [["", "Any"], ...statuses.map((s) => [s, s])], filters.status || "")),
  ];
  if (tab === "deliveries") {
    controls.push(field("Channel", select("channel", [["", "Any"], ...CHANNELS.map((c) => [c, c])], filters.channel || "")));
    controls.push(field("Provider", h("input", { name: "provider", value: filters.provider || "", placeholder: "any" })));
  }
  controls.push(
    field("Recipient", h("input", { name: "recipient_id", value: filters.recipient_id || "", placeholder: "recipient id" })),
    field("Template", h("input", { name: "template", value: filters.template || "", placeholder: "template name" })),
    field("From", h("input", { type: "datetime-local", name: "created_after", value: toLocalInput(filters.created_after) })),
    field("Until", h("input", { type: "datetime-local", name: "created_before", value: toLocalInput(filters.created_before) })),
  );
  return h(
    "form",
    {
      class: "filters",
      onsubmit: (event) => {
        event.preventDefault();
        const params = new URLSearchParams({ tab });
        for (const [name, value] of new FormData(event.target).entries()) {
          const text = name.startsWith("created_") ? fromLocalInput(value) : String(value).trim();
          if (text) params.set(name, text);
        }
        location.hash = `#/log?${params}`;
      },
    },
    controls,
    h("div", { class: "filter-actions" },
      h("button", { type: "submit", class: "primary", text: "Apply" }),
      h("a", { class: "button", href: `#/log?tab=${tab}`, text: "Reset" })),
  );
}

async function load(tab, filters, results, cursor) {
  const more = results.querySelector(".more");
  if (more) more.remove();
  let page;
  try {
    page = await get(`/v1/${tab}`, { ...filters, limit: 50, cursor });
  } catch (error) {
    results.append(notice(errorText(error), "bad"));
    return;
  }
  let body = results.querySelector("tbody");
  const rows = page.data.map(tab === "deliveries" ? deliveryRow : notificationRow);
  // A delivery list filtered by what no index holds (status, channel, provider...) examines
  // a stretch of deliveries per page: a page may be empty while there is more to look
  // through (docs/message-log.md).
  const notYet = results.querySelector(".not-yet");
  if (notYet) notYet.remove();
  if (body) {
    body.append(...rows);
  } else if (!rows.length && page.next_cursor) {
    results.append(h("p", { class: "empty not-yet", text: "None among the latest examined: load more to look further back." }));
  } else {
    const headers = tab === "deliveries"
      ? ["Delivery", "Status", "Channel", "Recipient", "Provider", "Attempts", "Reason", "Created"]
      : ["Notification", "Status", "Template", "To", "Deliveries", "Created"];
    results.append(table(headers, rows, tab === "deliveries" ? "No delivery matches." : "No notification matches."));
  }
  if (page.next_cursor) {
    results.append(h("button", { class: "more", type: "button", onclick: () => load(tab, filters, results, page.next_cursor), text: "Load more" }));
  }
}

function to(target) {
  if (!target) return "";
  if (target.topic) return `topic ${target.topic}`;
  const ids = target.recipient_ids || [];
  return ids.length > 3 ? `${ids.slice(0, 3).join(", ")} +${ids.length - 3}` : ids.join(", ");
}

function totals(counts) {
  const entries = Object.entries(counts || {});
  if (!entries.length) return "—";
  return h("span", { class: "totals" }, entries.map(([status, n]) => h("span", { class: "total" }, badge(status), ` ${n}`)));
}

// What a notification sends: its template, or the workflow it runs.
function sent(item) {
  if (item.template || !item.workflow) return item.template || "—";
  return h("span", {}, h("span", { class: "chip", text: "workflow" }), " ", link(`#/workflows/${enc(item.workflow)}`, item.workflow));
}

function notificationRow(item) {
  return h(
    "tr",
    { dataset: { id: item.id } },
    h("td", {}, link(`#/log/notification/${enc(item.id)}`, item.id)),
    h("td", {}, badge(item.status)),
    h("td", {}, sent(item)),
    h("td", {}, to(item.to)),
    h("td", {}, totals(item.totals)),
    h("td", { title: when(item.created_at) }, ago(item.created_at)),
  );
}

function deliveryRow(item) {
  return h(
    "tr",
    { dataset: { id: item.id } },
    h("td", {}, link(`#/log/delivery/${enc(item.id)}`, item.id)),
    h("td", {}, badge(item.status)),
    h("td", {}, item.channel),
    h("td", {}, item.recipient_id ? link(`#/recipients/${enc(item.recipient_id)}`, item.recipient_id) : "—"),
    h("td", {}, item.provider || "—"),
    h("td", {}, String(item.attempts)),
    h("td", {}, item.reason || item.last_error || ""),
    h("td", { title: when(item.created_at) }, ago(item.created_at)),
  );
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v === null || v === "" ? "—" : v)]));
}

// A notification's page. A workflow send's view is drawn again every REFRESH_MS while a
// run has not ended, until the operator loads more runs (a redraw would drop them).
async function notification(main, id) {
  let stopped = false;
  let more = false;
  let timer = null;
  const status = h("small", { class: "muted refresh-line", "aria-live": "off" });
  const onMore = () => {
    more = true;
    clearTimeout(timer);
    status.textContent = "Not refreshing: more runs loaded. Reload the page to refresh.";
  };

  async function draw() {
    const item = await get(`/v1/notifications/${enc(id)}`);
    // A workflow send's runs, or a template send's whose in-app part falls back.
    const runs = item.run_totals ? await runsCard(item, status, onMore) : null;
    // Left (the screen is gone) or more runs loaded meanwhile: keep what is shown.
    if (stopped || more || !main.isConnected) return false;
    const live = Boolean(item.run_totals) && unfinished(item);
    status.textContent = live ? `Refreshes every ${REFRESH_MS / 1000} s while runs go on.` : "";
    main.replaceChildren(...notificationView(item, runs));
    return live;
  }

  async function refresh() {
    let live = false;
    try {
      live = await draw();
    } catch (error) {
      status.textContent = "";
      main.append(notice(errorText(error), "bad"));
    }
    if (live) timer = setTimeout(refresh, REFRESH_MS);
  }

  if (await draw()) timer = setTimeout(refresh, REFRESH_MS);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function notificationView(item, runs) {
  return [
    heading(`Notification ${item.id}`, link(`#/log?tab=deliveries&notification_id=${enc(item.id)}`, "All its deliveries")),
    h("section", { class: "card" },
      facts([
        ["Status", badge(item.status)],
        item.workflow ? ["Workflow", link(`#/workflows/${enc(item.workflow)}`, item.workflow)] : ["Template", item.template],
        ["Priority", item.priority],
        ["To", to(item.to)],
        ["Channels", (item.channels || []).join(", ") || (item.workflow ? "its steps'" : "template's")],
        ["Created", when(item.created_at)],
        ["Send at", when(item.send_at)],
        ["Idempotency key", item.idempotency_key],
      ]),
    ),
    runs,
    h("section", { class: "card" }, h("h2", { text: "Data" }), pretty(item.data)),
    h("section", { class: "card" }, h("h2", { text: "Deliveries" }),
      table(["Delivery", "Status", "Channel", "Recipient", "Provider", "Attempts", "Reason", "Created"],
        item.deliveries.map(deliveryRow), "No deliveries planned yet.")),
  ].filter(Boolean);
}

async function delivery(main, id) {
  const item = await get(`/v1/deliveries/${enc(id)}`);
  const actions = [];
  if (item.status === "dead") {
    actions.push(h("button", {
      type: "button", class: "primary", text: "Replay",
      onclick: async (event) => {
        event.target.disabled = true;
        try {
          await post(`/v1/dead-letters/${enc(item.id)}/replay`);
          location.reload();
        } catch (error) {
          main.append(notice(errorText(error), "bad"));
        }
      },
    }));
  }
  main.append(
    heading(`Delivery ${item.id}`, link(`#/log/notification/${enc(item.notification_id)}`, "Its notification"), actions),
    h("section", { class: "card" },
      facts([
        ["Status", badge(item.status)],
        ["Channel", item.channel],
        ["Recipient", item.recipient_id ? link(`#/recipients/${enc(item.recipient_id)}`, item.recipient_id) : null],
        ["Provider", item.provider],
        ["Attempts", String(item.attempts)],
        ["Reason", item.reason],
        ["Last error", item.last_error],
        ["Provider message id", item.provider_message_id],
        ["Category", item.category],
        ["Created", when(item.created_at)],
        ["Sent", when(item.sent_at)],
      ]),
    ),
    h("section", { class: "card" }, h("h2", { text: "Timeline" }), timeline(item.events)),
  );
}

function timeline(events) {
  if (!events.length) return h("p", { class: "empty", text: "No events recorded." });
  return h(
    "ol",
    { class: "timeline" },
    events.map((event) =>
      h(
        "li",
        { class: `event ${event.outcome || ""}`, dataset: { type: event.type } },
        h("div", { class: "event-head" }, badge(event.type), h("time", { datetime: event.at || "", text: when(event.at) })),
        h("div", { class: "event-body" },
          event.attempt ? h("span", { text: `#${event.attempt} ` }) : null,
          event.provider ? h("span", {}, "provider ", code(event.provider)) : null,
          event.outcome ? h("span", {}, " outcome ", code(event.outcome)) : null,
          event.latency_ms !== null && event.latency_ms !== undefined ? h("span", { text: ` ${event.latency_ms} ms` }) : null,
          event.error_class ? h("span", {}, " error ", code(event.error_class)) : null,
          event.reason ? h("span", {}, " reason ", code(event.reason)) : null,
          event.error ? h("div", { class: "error-text", text: event.error }) : null,
        ),
      ),
    ),
  );
}
