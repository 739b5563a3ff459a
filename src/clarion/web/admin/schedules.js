// Recurring schedules: the list; one schedule with its run history; create or edit one
// (cron, time zone, the notification as JSON, a start and an end), enable, disable, delete.

import { get, put, del, enc } from "/admin/api.js";
import { h, clear, badge, when, ago, field, table, notice, errorText, heading, link, code, pretty } from "/admin/dom.js";

const EXAMPLE = { template: "daily_summary", to: { topic: "daily-summary" }, data: {} };

export async function render(main, { rest }) {
  if (rest[0]) return schedule(main, rest[0]);
  return list(main);
}

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function fromLocalInput(value) {
  return value ? new Date(value).toISOString() : null;
}

// The PUT body of a schedule as the API returns it, with `enabled` possibly changed.
function bodyOf(item, enabled) {
  return {
    cron: item.cron,
    timezone: item.timezone,
    notification: item.notification,
    enabled,
    starts_at: item.starts_at,
    ends_at: item.ends_at,
  };
}

async function list(main) {
  const messages = h("div", { class: "messages" });
  const results = h("div", { class: "results" });
  main.append(heading("Schedules"), messages, results, h("section", { class: "card" }, h("h2", { text: "New schedule" }), editor(null, messages)));
  await load(results, messages, null);
}

async function load(results, messages, cursor) {
  let page;
  try {
    page = await get("/v1/schedules", { limit: 100, cursor });
  } catch (error) {
    results.append(notice(errorText(error), "bad"));
    return;
  }
  const rows = page.data.map((item) => h(
    "tr",
    { dataset: { name: item.name } },
    h("td", {}, link(`#/schedules/${enc(item.name)}`, item.name)),
    h("td", {}, code(item.cron)),
    h("td", {}, item.timezone),
    h("td", {}, sends(item.notification)),
    h("td", {}, badge(item.enabled ? "enabled" : "disabled")),
    h("td", { title: when(item.next_run_at) }, item.next_run_at ? when(item.next_run_at) : "—"),
    h("td", { class: "row-actions" }, toggleButton(item, messages, () => reloadList(results, messages)), deleteButton(item, messages, () => reloadList(results, messages))),
  ));
  const body = results.querySelector("tbody");
  if (body) body.append(...rows);
  else results.append(table(["Name", "Cron", "Time zone", "Sends", "State", "Next run", ""], rows, "No schedules: nothing is sent on a timetable."));
  if (page.next_cursor) {
    const more = h("button", { class: "more", type: "button", text: "Load more", onclick: () => { more.remove(); load(results, messages, page.next_cursor); } });
    results.append(more);
  }
}

// What a schedule sends: its template, or its workflow.
function sends(note) {
  if (note && note.template) return note.template;
  if (note && note.workflow) return `workflow ${note.workflow}`;
  return "—";
}

async function reloadList(results, messages) {
  clear(results);
  await load(results, messages, null);
}

function toggleButton(item, messages, after) {
  return h("button", {
    type: "button", class: "small", text: item.enabled ? "Disable" : "Enable",
    onclick: async () => {
      clear(messages);
      try {
        await put(`/v1/schedules/${enc(item.name)}`, bodyOf(item, !item.enabled));
        messages.append(notice(`${item.name} ${item.enabled ? "disabled" : "enabled"}.`, "ok"));
      } catch (error) {
        messages.append(notice(errorText(error), "bad"));
      }
      await after();
    },
  });
}

function deleteButton(item, messages, after) {
  return h("button", {
    type: "button", class: "small danger", text: "Delete",
    onclick: async () => {
      if (!confirm(`Delete schedule ${item.name} and its run history?`)) return;
      clear(messages);
      try {
        await del(`/v1/schedules/${enc(item.name)}`);
        messages.append(notice(`${item.name} deleted.`, "ok"));
      } catch (error) {
        messages.append(notice(errorText(error), "bad"));
      }
      await after();
    },
  });
}

// The create/edit form; `item` is the schedule being edited, or null for a new one.
function editor(item, outer) {
  const messages = h("div", { class: "messages" });
  const name = h("input", {
    name: "name", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,200}", placeholder: "daily-summary",
    value: item ? item.name : "", readonly: item ? true : null,
  });
  const cron = h("input", { name: "cron", required: true, placeholder: "0 9 * * MON-FRI", value: item ? item.cron : "" });
  const zone = h("input", { name: "timezone", required: true, placeholder: "UTC, Europe/Paris or recipient", value: item ? item.timezone : "UTC" });
  const notification = h("textarea", {
    name: "notification", class: "code notification", required: true, spellcheck: "false", rows: 8,
    value: JSON.stringify(item ? item.notification : EXAMPLE, null, 2),
  });
  const enabled = h("input", { type: "checkbox", name: "enabled", checked: item ? item.enabled : true });
  const starts = h("input", { type: "datetime-local", name: "starts_at", value: toLocalInput(item && item.starts_at) });
  const ends = h("input", { type: "datetime-local", name: "ends_at", value: toLocalInput(item && item.ends_at) });
  return h("form", {
    class: "stack",
    onsubmit: async (event) => {
      event.preventDefault();
      clear(messages);
      let parsed;
      try {
        parsed = JSON.parse(notification.value);
      } catch (error) {
        messages.append(notice(`The notification is not valid JSON: ${error.message}`, "bad"));
        return;
      }
      const body = {
        cron: cron.value.trim(), timezone: zone.value.trim(), notification: parsed, enabled: enabled.checked,
        starts_at: fromLocalInput(starts.value), ends_at: fromLocalInput(ends.value),
      };
      const target = name.value.trim();
      try {
        await put(`/v1/schedules/${enc(target)}`, body);
      } catch (error) {
        messages.append(notice(errorText(error), "bad"));
        return;
      }
      if (outer) clear(outer);
      const next = `#/schedules/${enc(target)}`;
      if (location.hash === next) window.dispatchEvent(new HashChangeEvent("hashchange"));
      else location.hash = next;
    },
  },
  h("div", { class: "grid3" },
    field("Name", name),
    field("Cron", cron, "minute hour day-of-month month day-of-week"),
    field("Time zone", zone, "An IANA zone, or recipient: each recipient's own")),
  field("Notification (JSON)", notification, "A POST /v1/notifications body without send_at or idempotency_key"),
  h("div", { class: "grid3" },
    field("Starts", starts, "Empty: now"),
    field("Ends", ends, "Empty: never"),
    h("label", { class: "toggle" }, enabled, " Enabled")),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: item ? "Save schedule" : "Create schedule" })),
  messages);
}

async function schedule(main, name) {
  let item;
  try {
    item = await get(`/v1/schedules/${enc(name)}`);
  } catch (error) {
    main.append(heading("Schedules"), notice(error.status === 404 ? `No schedule ${name}.` : errorText(error), "bad"));
    return;
  }
  const messages = h("div", { class: "messages" });
  const redraw = async () => {
    window.dispatchEvent(new HashChangeEvent("hashchange"));
  };
  const runs = h("section", { class: "card wide" }, h("h2", { text: "Runs" }));
  main.append(
    heading(`Schedule ${item.name}`, link("#/schedules", "All schedules"), toggleButton(item, messages, redraw),
      deleteButton(item, messages, async () => { location.hash = "#/schedules"; })),
    messages,
    h("div", { class: "cards" },
      h("section", { class: "card" }, h("h2", { text: "Timetable" }),
        h("dl", { class: "facts" },
          [["State", badge(item.enabled ? "enabled" : "disabled")], ["Cron", code(item.cron)], ["Time zone", item.timezone],
            ["Next run", item.next_run_at ? when(item.next_run_at) : "—"], ["Starts", when(item.starts_at) || "—"], ["Ends", when(item.ends_at) || "—"],
            ["Created", when(item.created_at)], ["Updated", when(item.updated_at)]]
            .map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]))),
      h("section", { class: "card" }, h("h2", { text: "Notification" }), pretty(item.notification))),
    runs,
    h("section", { class: "card" }, h("h2", { text: "Edit" }), editor(item, null)),
  );
  await loadRuns(runs, item.name, null);
}

async function loadRuns(area, name, cursor) {
  let page;
  try {
    page = await get(`/v1/schedules/${enc(name)}/runs`, { limit: 50, cursor });
  } catch (error) {
    area.append(notice(errorText(error), "bad"));
    return;
  }
  const rows = page.data.map((run) => h(
    "tr",
    { dataset: { id: run.id } },
    h("td", { title: when(run.due_at) }, when(run.due_at)),
    h("td", {}, run.zone),
    h("td", {}, badge(run.status)),
    h("td", { title: when(run.fired_at) }, run.fired_at ? ago(run.fired_at) : "—"),
    h("td", {}, run.notification_ids.length
      ? run.notification_ids.slice(0, 3).map((id) => h("div", {}, link(`#/log/notification/${enc(id)}`, id)))
      : "—", run.notification_ids.length > 3 ? h("small", { class: "muted", text: `+${run.notification_ids.length - 3} more` }) : null),
    h("td", {}, String(run.recipients)),
    h("td", { class: "error-text" }, run.error || ""),
  ));
  const body = area.querySelector("tbody");
  if (body) body.append(...rows);
  else area.append(table(["Due", "Zone", "Status", "Fired", "Notifications", "Recipients", "Error"], rows, "No runs yet."));
  if (page.next_cursor) {
    const more = h("button", { class: "more", type: "button", text: "Load more", onclick: () => { more.remove(); loadRuns(area, name, page.next_cursor); } });
    area.append(more);
  }
}
