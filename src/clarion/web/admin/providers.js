// Providers: the tenant's sending accounts. Secrets are write-only: the API never returns
// them (it shows "***"), the form has password fields that start empty, and a save that
// leaves one empty keeps the stored value.

import { get, put, post, del, enc, CHANNELS } from "/admin/api.js";
import { h, clear, badge, ago, when, field, select, table, notice, errorText, heading, code } from "/admin/dom.js";

const MASK = "***";
// The HTTP kinds' own outbound proxy (docs/operations.md, "Outbound proxy"): a secret, as
// its URL may hold a password; "none" to go direct; empty keeps the deployment's.
const PROXY = ["proxy", "Proxy (an http proxy URL with user:password@host:port, or none)", true];
// kind: [channels, [[field, label, secret?, kind of input]]]
const KINDS = {
  smtp: [["email"], [["host", "Host"], ["port", "Port", false, "number"], ["username", "Username"], ["password", "Password", true], ["from", "From"], ["return_path", "Return path (where bounces go; empty: the From address)"], ["tls", "TLS (starttls, implicit, none)"]]],
  ses: [["email"], [["region", "Region"], ["access_key_id", "Access key id"], ["secret_access_key", "Secret access key", true], ["from", "From"], ["feedback_topic_arns", "Feedback SNS topic ARNs (comma-separated)", false, "list"], PROXY]],
  sendgrid: [["email"], [["api_key", "API key", true], ["from", "From"], ["webhook_public_key", "Event webhook verification key"], PROXY]],
  twilio: [["sms"], [["account_sid", "Account SID"], ["auth_token", "Auth token", true], ["from", "From"], PROXY]],
  fcm: [["push"], [["service_account", "Service account (JSON key file)", true, "json"], PROXY]],
  apns: [["push"], [["team_id", "Team id"], ["key_id", "Key id"], ["private_key", "Private key (.p8 PEM)", true, "textarea"], ["topic", "Topic (bundle id)"], ["environment", "Environment (production, sandbox)"], PROXY]],
  webpush: [["webpush"], [["vapid_private_key", "VAPID private key", true, "textarea"], ["vapid_subject", "VAPID subject"], PROXY]],
  slack_webhook: [["chat"], [["webhook_url", "Incoming webhook URL (for recipients with no Slack address)", true], PROXY]],
  slack: [["chat"], [["token", "Bot token (xoxb-...)", true], ["channel", "Channel id (for recipients with no Slack channel)"], ["username", "Username"], ["icon_emoji", "Icon emoji (:package:)"], PROXY]],
  teams: [["chat"], [["webhook_url", "Workflow or webhook URL (for recipients with no Teams address)", true], PROXY]],
  discord: [["chat"], [["webhook_url", "Webhook URL (for recipients with no Discord address)", true], ["username", "Username"], ["avatar_url", "Avatar URL"], PROXY]],
  mattermost: [["chat"], [["webhook_url", "Incoming webhook URL (for recipients with no Mattermost address)", true], ["channel", "Channel"], ["username", "Username"], ["icon_url", "Icon URL"], PROXY]],
  google_chat: [["chat"], [["webhook_url", "Space webhook URL (for recipients with no Google Chat address)", true], PROXY]],
  telegram: [["chat"], [["bot_token", "Bot token", true], ["chat_id", "Chat id (for recipients with no Telegram chat)"], PROXY]],
  whatsapp_cloud: [["whatsapp"], [["phone_number_id", "Phone number id"], ["access_token", "Access token (a system user's)", true], ["app_secret", "App secret (verifies status webhooks)", true], ["verify_token", "Webhook verify token", true], ["api_version", "Graph API version (v21.0)"], PROXY]],
  twilio_whatsapp: [["whatsapp"], [["account_sid", "Account SID"], ["auth_token", "Auth token", true], ["from", "From (whatsapp:+14155238886, or a messaging service MG...)"], PROXY]],
  sandbox: [CHANNELS, []],
};

export async function render(main) {
  const messages = h("div", { class: "messages" });
  const listArea = h("div", {});
  const formArea = h("section", { class: "card" });
  const testRecipient = h("input", { name: "test_recipient", placeholder: "recipient id", "aria-label": "Test recipient" });
  const testBar = h("div", { class: "inline-form" }, h("span", { class: "muted", text: "Test sends go to" }), testRecipient);
  main.append(heading("Providers", testBar), h("p", { class: "muted", text: "A channel with no provider of its own uses the deployment's default (the sandbox unless configured). The lowest priority number is tried first; the next is the fallback. Test sends one message through one provider to the recipient's address on its channel." }), messages, listArea, formArea);

  async function test(p) {
    clear(messages);
    const rid = testRecipient.value.trim();
    if (!rid) {
      messages.append(notice("Type the id of a recipient to send the test to.", "warn"));
      testRecipient.focus();
      return;
    }
    try {
      const result = await post(`/v1/providers/${enc(p.name)}/test`, { recipient_id: rid });
      messages.append(result.ok
        ? notice(`${p.name}: sent (${result.provider_message_id || "no message id"})`, "ok")
        : notice(`${p.name}: failed, ${result.transient ? "transient" : "permanent"} (${result.reason}): ${result.error}`, "bad"));
    } catch (error) {
      messages.append(notice(errorText(error), "bad"));
    }
    await reload();
  }

  async function reload() {
    const [page, health] = await Promise.all([get("/v1/providers", { limit: 500 }), get("/v1/health/providers")]);
    const breakers = Object.fromEntries(health.data.map((b) => [b.provider, b]));
    clear(listArea).append(table(
      ["Name", "Channel", "Kind", "Priority", "Status", "Breaker", "Settings", "Updated", ""],
      page.data.map((p) => h("tr", { dataset: { name: p.name } },
        h("td", {}, h("strong", { text: p.name })),
        h("td", {}, p.channel),
        h("td", {}, p.kind),
        h("td", {}, String(p.priority)),
        h("td", {}, badge(p.enabled ? "enabled" : "disabled")),
        h("td", {}, breakers[p.name] ? badge(breakers[p.name].state) : h("span", { class: "muted", text: "idle" })),
        h("td", {}, Object.entries(p.config).filter(([, v]) => v !== null && v !== "").map(([k, v]) => h("div", { class: "config-line" }, code(k), " ", v === MASK ? h("span", { class: "muted", text: "••• (write-only)" }) : typeof v === "string" ? v : JSON.stringify(v)))),
        h("td", { title: when(p.updated_at) }, ago(p.updated_at)),
        h("td", { class: "row-actions" },
          h("button", { type: "button", class: "small", text: p.enabled ? "Disable" : "Enable", onclick: () => act(() => put(`/v1/providers/${enc(p.name)}`, { channel: p.channel, kind: p.kind, config: p.config, priority: p.priority, rate_limit_per_second: p.rate_limit_per_second, enabled: !p.enabled }), `${p.name} ${p.enabled ? "disabled" : "enabled"}`) }),
          h("button", { type: "button", class: "small", text: "Test", onclick: () => test(p) }),
          h("button", { type: "button", class: "small", text: "Edit", onclick: () => drawForm(p) }),
          h("button", { type: "button", class: "small danger", text: "Delete", onclick: () => confirm(`Delete provider ${p.name}?`) && act(() => del(`/v1/providers/${enc(p.name)}`), `${p.name} deleted`) })),
      )),
      "No providers: every channel uses the deployment's default.",
    ));
  }

  async function act(call, done) {
    clear(messages);
    try {
      await call();
      messages.append(notice(done, "ok"));
    } catch (error) {
      messages.append(notice(errorText(error), "bad"));
    }
    await reload();
  }

  function drawForm(existing) {
    let kind = existing ? existing.kind : "smtp";
    const name = h("input", { name: "name", required: true, value: existing ? existing.name : "", readonly: Boolean(existing), pattern: "[A-Za-z0-9_.:\\-]{1,100}" });
    const kindSelect = select("kind", Object.keys(KINDS).map((k) => [k, k]), kind);
    const channel = select("channel", KINDS[kind][0].map((c) => [c, c]), existing ? existing.channel : KINDS[kind][0][0]);
    const priority = h("input", { name: "priority", type: "number", min: 1, max: 1000, value: existing ? existing.priority : 1 });
    const rate = h("input", { name: "rate_limit_per_second", type: "number", min: 0, step: "any", value: existing && existing.rate_limit_per_second ? existing.rate_limit_per_second : "" });
    const enabled = h("input", { type: "checkbox", name: "enabled", checked: existing ? existing.enabled : true });
    const settings = h("div", { class: "grid2" });
    const baseUrl = h("input", { name: "base_url", placeholder: "optional: another endpoint", value: existing && existing.config.base_url ? existing.config.base_url : "" });
    const result = h("div", {});

    function drawSettings() {
      clear(settings);
      for (const [key, label, secret, type] of KINDS[kind][1]) {
        const stored = existing && existing.kind === kind ? existing.config[key] : undefined;
        const props = { name: `config.${key}`, dataset: { key, secret: secret ? "1" : "", type: type || "" }, autocomplete: "off", spellcheck: "false" };
        let input;
        if (secret) {
          props.placeholder = stored === MASK ? "stored: leave empty to keep" : "";
          input = type === "textarea" || type === "json" ? h("textarea", { ...props, rows: 4, class: "code secret" }) : h("input", { ...props, type: "password" });
        } else {
          const shown = stored === undefined ? "" : Array.isArray(stored) ? stored.join(", ") : String(stored);
          input = h("input", { ...props, type: type === "number" ? "number" : "text", value: shown });
        }
        settings.append(field(label, input, secret ? "Write-only: never shown again" : null));
      }
    }
    kindSelect.addEventListener("change", () => {
      kind = kindSelect.value;
      channel.replaceChildren(...KINDS[kind][0].map((c) => h("option", { value: c, text: c })));
      drawSettings();
    });
    drawSettings();

    const form = h("form", {
      class: "stack",
      onsubmit: async (event) => {
        event.preventDefault();
        clear(result);
        const config = {};
        try {
          for (const input of settings.querySelectorAll("[data-key]")) {
            const { key, secret, type } = input.dataset;
            let value = input.value.trim();
            if (!value) {
              if (secret && existing && existing.kind === kind && existing.config[key] === MASK) config[key] = MASK;
              continue;
            }
            if (type === "number") value = Number(value);
            else if (type === "json") value = JSON.parse(value);
            else if (type === "list") value = value.split(",").map((item) => item.trim()).filter(Boolean);
            config[key] = value;
          }
        } catch {
          result.append(notice("A JSON field is not valid JSON.", "bad"));
          return;
        }
        if (baseUrl.value.trim()) config.base_url = baseUrl.value.trim();
        const payload = { channel: channel.value, kind, config, priority: Number(priority.value || 1), enabled: enabled.checked };
        if (rate.value) payload.rate_limit_per_second = Number(rate.value);
        try {
          await put(`/v1/providers/${enc(name.value.trim())}`, payload);
          result.append(notice(`Saved ${name.value.trim()}`, "ok"));
          for (const secretInput of settings.querySelectorAll("[data-secret='1']")) secretInput.value = "";
          await reload();
          drawForm(null);
          messages.replaceChildren(notice(`Saved ${payload.kind} provider ${name.value.trim()}`, "ok"));
        } catch (error) {
          result.append(notice(errorText(error), "bad"));
        }
      },
    },
    h("div", { class: "grid3" }, field("Name", name), field("Kind", kindSelect), field("Channel", channel), field("Priority", priority), field("Rate limit (per second)", rate), h("label", { class: "toggle" }, enabled, " Enabled")),
    settings,
    field("Base URL", baseUrl, "A regional endpoint or a test server"),
    h("div", { class: "filter-actions" }, h("button", { type: "submit", class: "primary", text: existing ? "Save provider" : "Add provider" }), existing ? h("button", { type: "button", text: "Cancel", onclick: () => drawForm(null) }) : null),
    result);
    clear(formArea).append(h("h2", { text: existing ? `Edit ${existing.name}` : "Add a provider" }), form);
  }

  await reload();
  drawForm(null);
}
