// Building the page: every piece of data becomes a text node or an attribute value, never
// markup, so whatever a tenant stored (template bodies, recipient fields) shows as text.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

export function ago(iso) {
  if (!iso) return "";
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.max(seconds, 0)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

const TONES = {
  sent: "ok", delivered: "ok", completed: "ok", closed: "ok", success: "ok", enabled: "ok",
  failed: "bad", dead: "bad", open: "bad", failure: "bad",
  partial: "warn", retry_scheduled: "warn", retry: "warn", half_open: "warn", suppressed: "muted",
  cancelled: "muted", cancelling: "warn", disabled: "muted", skipped: "muted", delete: "bad", erase: "bad", revoke: "bad",
  create: "ok", pending: "info", running: "warn", active: "ok", revoked: "bad",
  passed: "ok", throttled: "warn", digested: "muted", unavailable: "bad",
};

export function badge(status) {
  const text = status === null || status === undefined ? "—" : String(status);
  return h("span", { class: `badge ${TONES[text] || "info"}`, text });
}

export function code(text) {
  return h("code", { text });
}

export function pretty(value) {
  return h("pre", { class: "json", text: JSON.stringify(value, null, 2) });
}

export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { text: label }), input, hint ? h("small", { text: hint }) : null);
}

export function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([optValue, text]) => h("option", { value: optValue, selected: optValue === value, text })),
  );
}

export function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return h("p", { class: "empty", text: empty });
  return h(
    "table",
    {},
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", { text })))),
    h("tbody", {}, rows),
  );
}

export function notice(text, tone = "info") {
  return h("div", { class: `notice ${tone}`, role: tone === "bad" ? "alert" : "status", text });
}

export function errorText(error) {
  if (error && error.code) {
    const details = (error.details || [])
      .map((d) => (typeof d === "object" ? Object.values(d).join(": ") : String(d)))
      .join("; ");
    return `${error.code}: ${error.message}${details ? ` (${details})` : ""}`;
  }
  return String(error && error.message ? error.message : error);
}

export function heading(title, ...actions) {
  return h("header", { class: "page-head" }, h("h1", { text: title }), h("div", { class: "actions" }, actions));
}

// A link inside the console; `route` is a hash route such as "#/deliveries/dlv_1".
export function link(route, text) {
  return h("a", { href: route, text });
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
