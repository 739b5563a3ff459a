// The JSON API with the operator's key. The key lives in sessionStorage only: it is gone
// when the tab closes, it is never sent as a cookie, and no other tab or origin sees it.

const STORE = "clarion.console.key";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || { code: `http_${status}`, message: `HTTP ${status}`, details: [] };
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error.details || [];
  }
}

export function key() {
  return sessionStorage.getItem(STORE);
}

export function signIn(value) {
  sessionStorage.setItem(STORE, value);
}

export function signOut() {
  sessionStorage.removeItem(STORE);
}

export function url(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") params.set(name, value);
  }
  const search = params.toString();
  return search ? `${path}?${search}` : path;
}

export async function api(method, path, { query, body, keyOverride, headers } = {}) {
  const token = keyOverride || key();
  const init = { method, headers: { Accept: "application/json", ...(headers || {}) }, cache: "no-store" };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, query), init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    if (response.status === 401 && !keyOverride) {
      signOut();
      window.dispatchEvent(new Event("clarion:signed-out"));
    }
    throw new ApiError(response.status, parsed);
  }
  return parsed;
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body, options) => api("POST", path, { body, ...(options || {}) });
export const put = (path, body) => api("PUT", path, { body });
export const del = (path) => api("DELETE", path);

export const CHANNELS = ["email", "sms", "push", "webpush", "inapp", "webhook", "chat", "whatsapp"];
export const DELIVERY_STATUSES = ["scheduled", "queued", "sending", "sent", "delivered", "failed", "suppressed", "dead", "cancelled"];
export const NOTIFICATION_STATUSES = ["accepted", "scheduled", "processing", "completed", "partial", "failed", "cancelling", "cancelled"];

export function enc(part) {
  return encodeURIComponent(part);
}
