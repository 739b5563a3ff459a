// Categories (what a notification is about, and how recipients may opt out) and status
// webhooks (delivery events posted to the tenant, signed).

import { get, put, del, enc, CHANNELS } from "/admin/api.js";
import { h, clear, badge, ago, when, field, select, table, notice, errorText, heading, code } from "/admin/dom.js";

const EVENTS = ["*", "delivery.sent", "delivery.delivered", "delivery.failed", "delivery.dead", "delivery.suppressed", "delivery.scheduled", "delivery.opened", "delivery.clicked"];

export async function render(main) {
  const categories = h("section", { class: "card" });
  const webhooks = h("section", { class: "card" });
  main.append(heading("Categories & webhooks"), categories, webhooks);
  await Promise.all([drawCategories(categories), drawWebhooks(webhooks)]);
}

function checks(name, options, chosen) {
  return h("div", { class: "checks" }, options.map((o) => h("label", { class: "check" }, h("input", { type: "checkbox", name, value: o, checked: chosen.includes(o) }), ` ${o}`)));
}

async function drawCategories(area) {
  const page = await get("/v1/categories", { limit: 500 });
  const messages = h("div", {});
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,100}", placeholder: "billing" });
  const critical = h("input", { type: "checkbox", name: "critical" });
  const opens = h("input", { type: "checkbox", name: "tracking_opens" });
  const clicks = h("input", { type: "checkbox", name: "tracking_clicks" });
  const digest = h("input", { name: "digest", placeholder: "e.g. 1h (empty: none)" });
  const digestKey = h("input", { name: "digest_key", placeholder: "e.g. project (empty: one per channel)" });
  const maxPerHour = h("input", { name: "max_per_hour", type: "number", min: 1 });
  const maxPerDay = h("input", { name: "max_per_day", type: "number", min: 1 });
  const overflow = select("overflow", [["drop", "dropped"], ["defer", "deferred to a free slot"], ["digest", "held for the digest"]], "drop");
  const duringSnooze = select("during_snooze", [["defer", "deferred to its end"], ["drop", "dropped"]], "defer");
  const channels = checks("default_channels", CHANNELS, []);
  const form = h("form", {
    class: "stack",
    onsubmit: async (event) => {
      event.preventDefault();
      clear(messages);
      const chosen = [...channels.querySelectorAll("input:checked")].map((box) => box.value);
      const span = digest.value.trim();
      const key = digestKey.value.trim();
      // Every field of the category, so that saving an edit keeps what the form shows.
      const body = {
        critical: critical.checked,
        default_channels: chosen.length ? chosen : null,
        digest: span ? (key ? { window: span, key } : { window: span }) : null,
        max_per_hour: maxPerHour.value ? Number(maxPerHour.value) : null,
        max_per_day: maxPerDay.value ? Number(maxPerDay.value) : null,
        overflow: overflow.value,
        during_snooze: duringSnooze.value,
        tracking: { opens: opens.checked, clicks: clicks.checked },
      };
      try {
        await put(`/v1/categories/${enc(name.value.trim())}`, body);
        clear(area);
        await drawCategories(area);
      } catch (error) {
        messages.append(notice(errorText(error), "bad"));
      }
    },
  }, h("div", { class: "grid3" }, field("Name", name), field("Digest window", digest), field("Digest key", digestKey)),
  h("div", { class: "grid3" }, field("At most per hour", maxPerHour), field("At most per day", maxPerDay), field("Over a cap", overflow)),
  h("div", { class: "grid3" }, field("While snoozed", duringSnooze)),
  h("label", { class: "toggle" }, critical, " Critical (ignores opt-outs and quiet hours)"),
  h("label", { class: "toggle" }, opens, " Track email opens (an image in the HTML)"),
  h("label", { class: "toggle" }, clicks, " Track email clicks (links through a redirect)"),
  field("Default channels", channels),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: "Save category" })), messages);

  area.append(
    h("h2", { text: "Categories" }),
    table(["Name", "Critical", "Default channels", "Digest", "Caps", ""], page.data.map((c) => h("tr", { dataset: { name: c.name } },
      h("td", {}, h("strong", { text: c.name })),
      h("td", {}, c.critical ? badge("critical") : "no"),
      h("td", {}, (c.default_channels || []).join(", ") || "template's"),
      h("td", {}, c.digest ? (c.digest.key ? `${c.digest.window} per ${c.digest.key}` : c.digest.window) : "—"),
      h("td", {}, caps(c)),
      h("td", {}, c.built_in ? h("span", { class: "muted", text: "built in" }) : h("button", { type: "button", class: "small", text: "Edit", onclick: () => {
        name.value = c.name; critical.checked = c.critical; digest.value = c.digest ? c.digest.window : ""; digestKey.value = (c.digest && c.digest.key) || "";
        maxPerHour.value = c.max_per_hour || ""; maxPerDay.value = c.max_per_day || "";
        overflow.value = c.overflow || "drop"; duringSnooze.value = c.during_snooze || "defer";
        opens.checked = Boolean(c.tracking && c.tracking.opens); clicks.checked = Boolean(c.tracking && c.tracking.clicks);
        for (const box of channels.querySelectorAll("input")) box.checked = (c.default_channels || []).includes(box.value);
        name.focus();
      } })),
    ))),
    h("h3", { text: "Add or change a category" }), form,
  );
}

function caps(category) {
  const parts = [];
  if (category.max_per_hour) parts.push(`${category.max_per_hour}/hour`);
  if (category.max_per_day) parts.push(`${category.max_per_day}/day`);
  return parts.length ? `${parts.join(", ")}, then ${category.overflow || "drop"}` : "—";
}

async function drawWebhooks(area) {
  const page = await get("/v1/webhooks", { limit: 500 });
  const messages = h("div", {});
  const name = h("input", { name: "name", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,100}", placeholder: "status-events" });
  const url = h("input", { name: "url", type: "url", required: true, placeholder: "https://hooks.example.com/clarion" });
  const secret = h("input", { name: "secret", type: "password", autocomplete: "off", placeholder: "16+ characters; empty keeps the stored one" });
  const events = checks("events", EVENTS, ["*"]);
  const form = h("form", {
    class: "stack",
    onsubmit: async (event) => {
      event.preventDefault();
      clear(messages);
      const body = { url: url.value.trim(), events: [...events.querySelectorAll("input:checked")].map((box) => box.value) };
      if (secret.value) body.secret = secret.value;
      try {
        const saved = await put(`/v1/webhooks/${enc(name.value.trim())}`, body);
        secret.value = "";
        clear(area);
        await drawWebhooks(area);
        if (saved.secret && saved.secret !== "***") {
          area.prepend(notice(`Signing secret of ${saved.name} (shown once, keep it now): ${saved.secret}`, "ok"));
        }
      } catch (error) {
        messages.append(notice(errorText(error), "bad"));
      }
    },
  }, h("div", { class: "grid3" }, field("Name", name), field("URL", url), field("Signing secret", secret, "Write-only")),
  field("Events", events),
  h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: "Save webhook" })), messages);

  area.append(
    h("h2", { text: "Status webhooks" }),
    table(["Name", "URL", "Events", "Status", "Updated", ""], page.data.map((w) => h("tr", { dataset: { name: w.name } },
      h("td", {}, h("strong", { text: w.name })),
      h("td", {}, code(w.url)),
      h("td", {}, w.events.join(", ")),
      h("td", {}, badge(w.enabled ? "enabled" : "disabled")),
      h("td", { title: when(w.updated_at) }, ago(w.updated_at)),
      h("td", { class: "row-actions" },
        h("button", { type: "button", class: "small", text: "Edit", onclick: () => {
          name.value = w.name; url.value = w.url; secret.value = "";
          for (const box of events.querySelectorAll("input")) box.checked = w.events.includes(box.value);
          name.focus();
        } }),
        h("button", { type: "button", class: "small danger", text: "Delete", onclick: async () => {
          if (!confirm(`Delete webhook ${w.name}?`)) return;
          try {
            await del(`/v1/webhooks/${enc(w.name)}`);
            clear(area);
            await drawWebhooks(area);
          } catch (error) {
            messages.append(notice(errorText(error), "bad"));
          }
        } })),
    )), "No webhooks: nothing is posted back to you."),
    h("h3", { text: "Add or change a webhook" }), form,
  );
}
