// How each channel's rendered content looks: shared by the template editor's live preview
// and the sandbox viewer. An email's HTML goes into an iframe with an empty `sandbox`
// attribute (no script, no form, no navigation, a unique origin) through `srcdoc`; every
// other field is text.

import { h, pretty } from "/admin/dom.js";

function text(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function emailFrame(html, title = "Email preview") {
  return h("iframe", { class: "email-frame", sandbox: "", srcdoc: text(html), title, referrerpolicy: "no-referrer" });
}

function email(content) {
  const parts = h("div", { class: "email-parts" });
  const views = {
    HTML: () => (content.html ? emailFrame(content.html) : h("p", { class: "empty", text: "No HTML part." })),
    Text: () => h("pre", { class: "email-text", text: text(content.text) || "No text part." }),
    Source: () => pretty(content),
  };
  const tabs = h("div", { class: "tabs small", role: "tablist" });
  const show = (name) => {
    for (const tab of tabs.children) tab.classList.toggle("active", tab.dataset.view === name);
    parts.replaceChildren(views[name]());
  };
  for (const name of Object.keys(views)) {
    tabs.append(h("button", { type: "button", role: "tab", dataset: { view: name }, onclick: () => show(name), text: name }));
  }
  show(content.html ? "HTML" : "Text");
  return h(
    "div",
    { class: "preview-email" },
    h("div", { class: "email-head" },
      content.from ? h("div", {}, h("span", { class: "muted", text: "From " }), text(content.from)) : null,
      h("div", { class: "email-subject" }, h("span", { class: "muted", text: "Subject " }), h("strong", { class: "subject", text: text(content.subject) }))),
    tabs,
    parts,
  );
}

function sms(content) {
  return h("div", { class: "phone" }, h("div", { class: "bubble", text: text(content.text || content.body) }),
    h("small", { class: "muted", text: `${text(content.text || content.body).length} characters` }));
}

function push(content, kind) {
  return h("div", { class: "push-card" },
    h("div", { class: "push-app" }, h("span", { class: "logo small", "aria-hidden": "true" }), kind === "webpush" ? "Browser notification" : "Push notification"),
    h("strong", { class: "push-title", text: text(content.title) }),
    h("p", { class: "push-body", text: text(content.body) }),
    content.url ? h("small", { class: "muted", text: text(content.url) }) : null,
    content.data ? pretty(content.data) : null);
}

function inapp(content) {
  return h("div", { class: "inapp-card" },
    h("span", { class: "dot", "aria-hidden": "true" }),
    h("div", {},
      h("strong", { class: "inapp-title", text: text(content.title) }),
      h("p", { class: "inapp-body", text: text(content.body) }),
      content.action_url ? h("small", { class: "muted", text: `→ ${text(content.action_url)}` }) : null));
}

function chat(content) {
  return h("div", { class: "preview-chat" },
    h("p", { class: "chat-text", text: text(content.text) }),
    content.blocks !== undefined ? pretty(content.blocks) : null);
}

function whatsapp(content) {
  const named = content.template ? `${text(content.template)} (${text(content.language)})` : null;
  return h("div", { class: "preview-chat" },
    named ? h("small", { class: "muted", text: `Template ${named}` }) : null,
    content.body !== undefined ? pretty(content.body) : null,
    content.text ? h("p", { class: "chat-text", text: text(content.text) }) : null);
}

export function renderChannel(channel, content) {
  const value = content || {};
  if (channel === "email") return email(value);
  if (channel === "sms") return sms(value);
  if (channel === "push" || channel === "webpush") return push(value, channel);
  if (channel === "inapp") return inapp(value);
  if (channel === "chat") return chat(value);
  if (channel === "whatsapp") return whatsapp(value);
  return pretty(value.body !== undefined ? value.body : value);
}
