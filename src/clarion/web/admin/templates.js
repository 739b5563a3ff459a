// Templates: the list, and an editor with a field per channel and locale, a preview that
// re-renders as you type (POST /v1/templates/preview renders the unsaved draft), version
// history with rollback, and a test send.

import { get, post, put, enc, CHANNELS, ApiError } from "/admin/api.js";
import { h, clear, badge, when, ago, field, select, table, notice, errorText, heading, link, debounce } from "/admin/dom.js";
import { renderChannel } from "/admin/preview.js";

const FIELDS = {
  email: [["subject", "Subject", "input"], ["html", "HTML body", "code"], ["text", "Text body", "textarea"]],
  sms: [["text", "Text", "textarea"]],
  push: [["title", "Title", "input"], ["body", "Body", "textarea"]],
  webpush: [["title", "Title", "input"], ["body", "Body", "textarea"], ["url", "URL", "input"]],
  inapp: [["title", "Title", "input"], ["body", "Body", "textarea"], ["action_url", "Action URL", "input"]],
  webhook: [["body", "Body (JSON, strings are templates)", "json"]],
  chat: [["text", "Text", "textarea"], ["blocks", "Blocks (JSON: Slack blocks, an Adaptive Card, Discord embeds, Google Chat cardsV2, ...)", "json"], ["parse_mode", "Telegram parse mode (HTML, MarkdownV2)", "input"]],
  whatsapp: [["template", "Template name (Meta, approved)", "input"], ["language", "Template language (en_US)", "input"], ["header", "Header (JSON: {\"type\": \"image\", \"link\": \"https://cdn.example.com/a.png\"} or {\"type\": \"text\", \"text\": ...})", "json"], ["body", "Body parameters (JSON: [\"{{ firstName }}\", ...] or {\"name\": ...})", "json"], ["buttons", "Buttons (JSON: [{\"index\": 0, \"url\": \"{{ orderId }}\"}])", "json"], ["content_sid", "Twilio Content SID (HX...)", "input"], ["content_variables", "Twilio content variables (JSON, default: from the body)", "json"], ["text", "Free-form text (only where the part has no template)", "textarea"]],
};
const NAME = /^[A-Za-z0-9_.:-]{1,200}$/;

export async function render(main, { rest }) {
  if (rest[0]) return editor(main, rest[0]);
  return list(main);
}

async function list(main) {
  const name = h("input", { name: "name", placeholder: "order_shipped", required: true, pattern: NAME.source, "aria-label": "New template name" });
  const create = h("form", {
    class: "inline-form",
    onsubmit: (event) => {
      event.preventDefault();
      location.hash = `#/templates/${enc(name.value.trim())}`;
    },
  }, name, h("button", { type: "submit", class: "primary", text: "New template" }));
  main.append(heading("Templates", create));
  const page = await get("/v1/templates", { limit: 500 });
  main.append(table(
    ["Name", "Category", "Active version", "Latest", "Updated"],
    page.data.map((t) => h("tr", { dataset: { name: t.name } },
      h("td", {}, link(`#/templates/${enc(t.name)}`, t.name)),
      h("td", {}, t.category),
      h("td", {}, `v${t.active_version}`),
      h("td", {}, `v${t.latest_version}`),
      h("td", { title: when(t.updated_at) }, ago(t.updated_at)))),
    "No templates yet: name one above to create it.",
  ));
}

// The editor's state: what a PUT would send, plus fields the form does not show (kept).
function emptyState() {
  return { category: "transactional", channels: { email: { subject: "", html: "", text: "" } }, locales: {}, fallbacks: {} };
}

function fromStored(stored) {
  return {
    category: stored.category,
    channels: structuredClone(stored.channels),
    locales: structuredClone(stored.locales || {}),
    fallbacks: structuredClone(stored.fallbacks || {}),
  };
}

function clean(content, channel) {
  const out = {};
  for (const [key, value] of Object.entries(content || {})) {
    if (value === "" || value === undefined) continue;
    const json = (FIELDS[channel] || []).some(([name, , kind]) => name === key && kind === "json");
    if (json && typeof value === "string") out[key] = JSON.parse(value);
    else out[key] = value;
  }
  return out;
}

function body(state) {
  const channels = {};
  for (const [channel, content] of Object.entries(state.channels)) channels[channel] = clean(content, channel);
  const locales = {};
  for (const [locale, overrides] of Object.entries(state.locales)) {
    const kept = {};
    for (const [channel, content] of Object.entries(overrides)) {
      if (!(channel in channels)) continue;
      const cleaned = clean(content, channel);
      if (Object.keys(cleaned).length) kept[channel] = cleaned;
    }
    locales[locale] = kept;
  }
  return { category: state.category, channels, locales, fallbacks: state.fallbacks };
}

async function editor(main, name) {
  let stored = null;
  try {
    stored = await get(`/v1/templates/${enc(name)}`);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
  }
  const categories = (await get("/v1/categories", { limit: 500 })).data.map((c) => c.name);
  const state = stored ? fromStored(stored) : emptyState();
  let channel = Object.keys(state.channels)[0] || "email";
  let locale = "";
  let sequence = 0;

  const status = h("div", { class: "status-line", role: "status" });
  const history = h("section", { class: "card history" });
  const formArea = h("div", { class: "editor-fields" });
  const previewArea = h("div", { class: "preview-pane", "aria-live": "polite" });
  const previewMeta = h("div", { class: "muted preview-meta" });
  const sample = h("textarea", { class: "code", name: "sample", rows: 6, spellcheck: "false", value: '{\n  "firstName": "Alex",\n  "orderId": "ord_1"\n}' });
  const previewRecipient = h("input", { name: "preview_recipient", placeholder: "optional recipient id" });
  const category = select("category", categories.map((c) => [c, c]), state.category);
  category.addEventListener("change", () => { state.category = category.value; changed(); });

  const refresh = debounce(async () => {
    const mine = ++sequence;
    let data;
    try {
      data = JSON.parse(sample.value || "{}");
    } catch {
      show(mine, notice("The sample data is not valid JSON.", "warn"));
      return;
    }
    let draft;
    try {
      draft = body(state);
    } catch {
      show(mine, notice("A JSON field (the webhook body, the chat blocks, the WhatsApp parameters) is not valid JSON.", "warn"));
      return;
    }
    if (!draft.channels[channel]) {
      show(mine, h("p", { class: "empty", text: "This channel is not part of the template." }));
      return;
    }
    try {
      const result = await post("/v1/templates/preview", {
        template: draft, data, channel, locale: locale || null,
        recipient_id: previewRecipient.value.trim() || null,
      });
      show(mine, renderChannel(channel, result.channels[channel]), `${channel} · locale ${result.locale || "default"}`);
    } catch (error) {
      show(mine, notice(errorText(error), "warn"));
    }
  }, 200);

  function show(mine, content, meta = "") {
    if (mine !== sequence) return; // an older answer, overtaken by a newer request
    previewArea.replaceChildren(content);
    previewMeta.textContent = meta;
  }

  function changed() {
    status.textContent = "Unsaved changes";
    status.className = "status-line warn";
    refresh();
  }

  function drawFields() {
    clear(formArea);
    const channelTabs = h("div", { class: "tabs", role: "tablist", "aria-label": "Channel" },
      CHANNELS.map((c) => h("button", {
        type: "button", role: "tab", class: [c === channel ? "active" : "", c in state.channels ? "on" : "off"].join(" "),
        "aria-selected": String(c === channel), dataset: { channel: c },
        onclick: () => { channel = c; drawFields(); refresh(); }, text: c,
      })));
    const localeTabs = h("div", { class: "tabs small", role: "tablist", "aria-label": "Locale" },
      ["", ...Object.keys(state.locales)].map((l) => h("button", {
        type: "button", role: "tab", class: l === locale ? "active" : null, dataset: { locale: l },
        onclick: () => { locale = l; drawFields(); refresh(); }, text: l || "default",
      })),
      h("form", {
        class: "add-locale",
        onsubmit: (event) => {
          event.preventDefault();
          const tag = event.target.elements.locale.value.trim();
          if (!/^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$/.test(tag)) return;
          state.locales[tag] = state.locales[tag] || {};
          locale = tag;
          drawFields();
          changed();
        },
      }, h("input", { name: "locale", placeholder: "fr-CA", size: 6, "aria-label": "New locale" }), h("button", { type: "submit", class: "small", text: "+ locale" })),
    );
    formArea.append(channelTabs, localeTabs);
    const enabled = channel in state.channels;
    if (!locale) {
      formArea.append(h("label", { class: "toggle" },
        h("input", {
          type: "checkbox", name: "channel_enabled", checked: enabled,
          onchange: (event) => {
            if (event.target.checked) state.channels[channel] = {};
            else delete state.channels[channel];
            drawFields();
            changed();
          },
        }), ` Send on ${channel}`));
    }
    if (!enabled) {
      formArea.append(h("p", { class: "muted", text: locale ? "Enable the channel in the default locale first." : "This channel is off for the template." }));
      return;
    }
    const target = locale ? ((state.locales[locale][channel] = state.locales[locale][channel] || {})) : state.channels[channel];
    for (const [key, label, kind] of FIELDS[channel]) {
      let value = target[key];
      if (kind === "json" && value !== undefined && typeof value !== "string") value = JSON.stringify(value, null, 2);
      const fallback = locale ? state.channels[channel][key] : undefined;
      const placeholder = locale ? `(default) ${typeof fallback === "string" ? fallback : JSON.stringify(fallback || "")}` : "";
      const props = {
        name: `${channel}.${key}`, value: value || "", placeholder, spellcheck: "false",
        oninput: (event) => { target[key] = event.target.value; changed(); },
      };
      const input = kind === "input" ? h("input", props) : h("textarea", { ...props, rows: kind === "code" || kind === "json" ? 10 : 3, class: kind === "textarea" ? null : "code" });
      formArea.append(field(label, input));
    }
  }

  async function save() {
    let draft;
    try {
      draft = body(state);
    } catch {
      status.textContent = "A JSON field (the webhook body, the chat blocks, the WhatsApp parameters) is not valid JSON.";
      status.className = "status-line bad";
      return;
    }
    try {
      const result = await put(`/v1/templates/${enc(name)}`, draft);
      status.textContent = `Saved as version ${result.version}`;
      status.className = "status-line ok";
      await drawHistory();
    } catch (error) {
      status.textContent = errorText(error);
      status.className = "status-line bad";
    }
  }

  async function drawHistory() {
    clear(history).append(h("h2", { text: "Versions" }));
    let page;
    let active;
    try {
      [page, active] = await Promise.all([get(`/v1/templates/${enc(name)}/versions`, { limit: 50 }), get(`/v1/templates/${enc(name)}`)]);
    } catch (error) {
      history.append(h("p", { class: "empty", text: error.status === 404 ? "Not saved yet." : errorText(error) }));
      return;
    }
    history.append(h("ol", { class: "versions" }, page.data.map((v) => h("li", { dataset: { version: v.version } },
      h("span", { class: "version", text: `v${v.version}` }),
      v.version === active.version ? badge("active") : null,
      h("small", { class: "muted", title: when(v.created_at), text: ago(v.created_at) }),
      h("span", { class: "version-actions" },
        h("button", { type: "button", class: "small", text: "Load", onclick: async () => {
          const loaded = await get(`/v1/templates/${enc(name)}`, { version: v.version });
          Object.assign(state, fromStored(loaded));
          category.value = state.category;
          locale = "";
          drawFields();
          changed();
          status.textContent = `Loaded version ${v.version} into the editor (save to make it a new version)`;
        } }),
        v.version === active.version ? null : h("button", { type: "button", class: "small", text: "Roll back", onclick: async () => {
          try {
            const back = await post(`/v1/templates/${enc(name)}/rollback`, { version: v.version });
            Object.assign(state, fromStored(back));
            category.value = state.category;
            drawFields();
            refresh();
            status.textContent = `Version ${v.version} is active again`;
            status.className = "status-line ok";
            await drawHistory();
          } catch (error) {
            status.textContent = errorText(error);
            status.className = "status-line bad";
          }
        } })),
    ))));
  }

  const testRecipient = h("input", { name: "test_recipient", placeholder: "recipient id", required: true });
  const testResult = h("div", { class: "test-result" });
  const testForm = h("form", {
    class: "inline-form",
    onsubmit: async (event) => {
      event.preventDefault();
      clear(testResult);
      try {
        const data = JSON.parse(sample.value || "{}");
        const sent = await post("/v1/notifications", { template: name, to: { recipient_id: testRecipient.value.trim() }, data });
        testResult.append(notice("Accepted: ", "ok"));
        testResult.firstChild.append(link(`#/log/notification/${enc(sent.id)}`, sent.id));
      } catch (error) {
        testResult.append(notice(error instanceof SyntaxError ? "The sample data is not valid JSON." : errorText(error), "bad"));
      }
    },
  }, testRecipient, h("button", { type: "submit", text: "Send test" }));

  main.append(
    heading(`Template ${name}`, h("button", { type: "button", class: "primary", onclick: save, text: "Save version" })),
    status,
    h("div", { class: "editor" },
      h("section", { class: "card" }, field("Category", category), formArea),
      h("section", { class: "card" },
        h("h2", { text: "Preview" }), previewMeta, previewArea,
        h("details", { class: "sample", open: true }, h("summary", { text: "Sample data" }),
          field("Data (JSON)", sample), field("Recipient", previewRecipient, "Their data and locale are used too"))),
      h("div", { class: "side" }, history,
        h("section", { class: "card" }, h("h2", { text: "Send a test" }),
          h("p", { class: "muted", text: "Sends the saved active version with the sample data." }), testForm, testResult))),
  );
  if (!stored) {
    status.textContent = "New template: fill it in and save";
    status.className = "status-line";
  }
  sample.addEventListener("input", refresh);
  previewRecipient.addEventListener("input", refresh);
  drawFields();
  refresh();
  await drawHistory();
}
