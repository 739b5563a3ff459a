/*
 * <clarion-inbox token="..." base-url="https://notify.example.com">
 *
 * Optional: transport="sse" uses Server-Sent Events from the start.
 *
 * Clarion's drop-in in-app inbox: a bell with the unread count, a panel with the
 * recipient's messages (mark read, mark all read, archive), kept live over a WebSocket
 * (Server-Sent Events when WebSockets are unavailable) that resumes after a reconnect.
 * No dependencies, no build step. The token is a recipient token minted by your backend
 * with POST /v1/recipients/{id}/token.
 *
 * Theming: CSS custom properties on the element (or any ancestor):
 *   --clarion-accent, --clarion-bg, --clarion-fg, --clarion-muted, --clarion-border,
 *   --clarion-badge-bg, --clarion-badge-fg, --clarion-radius, --clarion-font,
 *   --clarion-panel-width, --clarion-unread-bg
 *
 * Events: "clarion-inbox:message" (detail: the message) when one arrives live,
 *         "clarion-inbox:count" (detail: {unread, unseen, total}).
 */
(() => {
  "use strict";

  const STYLE = `
    :host { position: relative; display: inline-block; font: 14px/1.4 var(--clarion-font, system-ui, sans-serif);
            color: var(--clarion-fg, #1f2328); }
    button { font: inherit; cursor: pointer; }
    .bell { position: relative; background: none; border: 0; padding: 6px; border-radius: var(--clarion-radius, 8px);
            color: inherit; }
    .bell:focus-visible, button:focus-visible, .item:focus-visible { outline: 2px solid var(--clarion-accent, #2f6feb);
            outline-offset: 2px; }
    .bell svg { width: 24px; height: 24px; display: block; }
    .badge { position: absolute; top: 0; right: 0; min-width: 18px; height: 18px; padding: 0 5px; box-sizing: border-box;
             border-radius: 9px; background: var(--clarion-badge-bg, #d1242f); color: var(--clarion-badge-fg, #fff);
             font-size: 11px; font-weight: 600; line-height: 18px; text-align: center; }
    .badge[hidden] { display: none; }
    .panel { position: absolute; right: 0; top: calc(100% + 6px); z-index: 1000; width: var(--clarion-panel-width, 360px);
             max-height: 480px; display: flex; flex-direction: column; background: var(--clarion-bg, #fff);
             border: 1px solid var(--clarion-border, #d0d7de); border-radius: var(--clarion-radius, 8px);
             box-shadow: 0 8px 24px rgba(0,0,0,.15); overflow: hidden; }
    .panel[hidden] { display: none; }
    .panel:focus { outline: none; }
    header { display: flex; align-items: center; justify-content: space-between; padding: 10px 12px;
             border-bottom: 1px solid var(--clarion-border, #d0d7de); }
    header h2 { margin: 0; font-size: 15px; }
    .link { background: none; border: 0; color: var(--clarion-accent, #2f6feb); padding: 2px 4px; }
    .list { list-style: none; margin: 0; padding: 0; overflow-y: auto; }
    .item { display: flex; gap: 8px; padding: 10px 12px; border-bottom: 1px solid var(--clarion-border, #d0d7de); }
    .item.unread { background: var(--clarion-unread-bg, #f0f6ff); }
    .item .text { flex: 1; min-width: 0; }
    .item .title { display: block; font-weight: 600; margin: 0; color: inherit; }
    .item a.title { color: var(--clarion-accent, #2f6feb); }
    .item .body { margin: 2px 0 0; color: var(--clarion-muted, #59636e); overflow-wrap: anywhere; }
    .item time { font-size: 12px; color: var(--clarion-muted, #59636e); }
    .item .actions { display: flex; flex-direction: column; gap: 4px; }
    .item .actions button { background: none; border: 1px solid var(--clarion-border, #d0d7de); border-radius: 6px;
             padding: 2px 6px; font-size: 12px; color: inherit; }
    .empty { padding: 24px 12px; text-align: center; color: var(--clarion-muted, #59636e); }
    .status { padding: 4px 12px; font-size: 12px; color: var(--clarion-muted, #59636e); }
  `;

  const BELL = `<svg viewBox="0 0 24 24" aria-hidden="true" fill="none" stroke="currentColor" stroke-width="2"
    stroke-linecap="round" stroke-linejoin="round"><path d="M18 8a6 6 0 0 0-12 0c0 7-3 9-3 9h18s-3-2-3-9"/>
    <path d="M13.73 21a2 2 0 0 1-3.46 0"/></svg>`;

  const MAX_BACKOFF_MS = 30000;
  // Close reasons after which only a new token helps.
  const SIGNED_OUT = ["revoked", "token_expired"];

  class ClarionInbox extends HTMLElement {
    static get observedAttributes() { return ["token", "base-url", "transport"]; }

    constructor() {
      super();
      this.messages = [];          // newest first
      this.counts = { unread: 0, unseen: 0, total: 0 };
      this.cursor = null;          // the cursor of the last event received: where a resume starts
      this.socket = null;
      this.source = null;
      this.useSse = !("WebSocket" in window);
      this.failures = 0;
      this.retryTimer = null;
      this.generation = 0;         // one more on every connect and stop: late answers are dropped
      this.root = this.attachShadow({ mode: "open" });
      this.render();
    }

    connectedCallback() { this.start(); }
    disconnectedCallback() { this.stop(); }
    attributeChangedCallback(_name, before, after) {
      if (before !== after && this.isConnected) { this.stop(); this.start(); }
    }

    get token() { return this.getAttribute("token") || ""; }
    get baseUrl() { return (this.getAttribute("base-url") || window.location.origin).replace(/\/+$/, ""); }

    // ---- HTTP -------------------------------------------------------------------
    async api(method, path) {
      const response = await fetch(this.baseUrl + path, {
        method,
        headers: { Authorization: "Bearer " + this.token },
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || response.statusText);
      }
      return response.json();
    }

    async reload() {
      const [page, counts] = await Promise.all([this.api("GET", "/v1/inbox?limit=50"), this.api("GET", "/v1/inbox/count")]);
      this.messages = page.data;
      this.setCounts(counts);
      this.renderList();
    }

    async act(id, action) {
      try {
        const updated = await this.api("POST", `/v1/inbox/${encodeURIComponent(id)}/${action}`);
        this.replace(updated);
        this.setCounts(await this.api("GET", "/v1/inbox/count"));
      } catch (error) { this.showStatus(String(error.message || error)); }
    }

    async readAll() {
      try {
        await this.api("POST", "/v1/inbox/read-all");
        await this.reload();
      } catch (error) { this.showStatus(String(error.message || error)); }
    }

    // ---- live -------------------------------------------------------------------
    start() {
      if (!this.token) { this.showStatus("no token"); return; }
      if (this.getAttribute("transport") === "sse") this.useSse = true;
      this.reload().catch((error) => this.showStatus(String(error.message || error)));
      this.connect();
    }

    stop() {
      this.generation += 1;
      clearTimeout(this.retryTimer);
      if (this.socket) { this.socket.onclose = null; this.socket.close(); this.socket = null; }
      if (this.source) { this.source.close(); this.source = null; }
    }

    // A live connection's URL carries a single-use ticket, never the token (URLs stay in
    // proxies' and servers' logs): one is asked for before every connection.
    connect() {
      const generation = ++this.generation;
      this.api("POST", "/v1/inbox/ticket").then(
        (body) => { if (generation === this.generation) this.openLive(body.ticket); },
        () => {
          if (generation !== this.generation) return;
          this.tokenRefused().then((refused) => (refused ? this.signedOut() : this.retry()));
        },
      );
    }

    liveQuery(ticket) {
      return "?ticket=" + encodeURIComponent(ticket) +
        (this.cursor ? "&after=" + encodeURIComponent(this.cursor) : "");
    }

    openLive(ticket) {
      if (this.useSse) { this.connectSse(ticket); return; }
      // The cursor goes in the URL: what was missed comes before anything else.
      const url = this.baseUrl.replace(/^http/, "ws") + "/v1/inbox/ws" + this.liveQuery(ticket);
      let opened = false;
      const socket = new WebSocket(url);
      this.socket = socket;
      socket.onopen = () => {
        opened = true;
        this.failures = 0;
        this.showStatus("");
      };
      socket.onmessage = (frame) => {
        try { this.onEvent(JSON.parse(frame.data)); } catch (_) { /* not ours */ }
      };
      socket.onclose = (close) => {
        this.socket = null;
        if (close.code === 4401 || close.code === 4403 || SIGNED_OUT.includes(close.reason)) {
          this.signedOut();
          return;
        }
        if (opened) { this.retry(); return; }
        // Never opened: a refused token (the handshake's 401/403 is not shown to pages,
        // so ask over HTTP), a limit on connections, or a proxy that blocks WebSockets
        // (Server-Sent Events then).
        this.tokenRefused().then((refused) => {
          if (refused) { this.signedOut(); return; }
          if (++this.failures >= 2) this.useSse = true;
          this.retry();
        });
      };
    }

    async tokenRefused() {
      try {
        const response = await fetch(this.baseUrl + "/v1/inbox/count", {
          headers: { Authorization: "Bearer " + this.token },
        });
        return response.status === 401 || response.status === 403;
      } catch (_) { return false; }
    }

    signedOut() {
      this.stop();
      this.showStatus("signed out of notifications");
    }

    connectSse(ticket) {
      const source = new EventSource(this.baseUrl + "/v1/inbox/stream" + this.liveQuery(ticket));
      this.source = source;
      source.onopen = () => { this.failures = 0; this.showStatus(""); };
      source.onmessage = (event) => {
        try { this.onEvent(JSON.parse(event.data)); } catch (_) { /* not ours */ }
      };
      // EventSource would reconnect by itself with the same, spent ticket: the component
      // reconnects instead, with a new ticket and the last cursor.
      source.onerror = () => {
        source.close();
        if (this.source !== source) return;
        this.source = null;
        this.tokenRefused().then((refused) => (refused ? this.signedOut() : this.retry()));
      };
    }

    retry() {
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(this.failures, 6)) * (0.5 + Math.random() / 2);
      this.failures += 1;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.connect(), delay);
    }

    onEvent(event) {
      if (typeof event.cursor === "string") this.cursor = event.cursor;
      switch (event.type) {
        case "message":
          if (!this.messages.some((m) => m.id === event.message.id)) {
            this.messages.unshift(event.message);
            this.renderList();
            this.dispatchEvent(new CustomEvent("clarion-inbox:message", { detail: event.message }));
          }
          break;
        case "count":
          this.setCounts(event);
          break;
        case "changed":
        case "reset":
          this.reload().catch(() => {});
          break;
        case "closed":
          if (SIGNED_OUT.includes(event.reason)) this.signedOut();
          break;
        default:
          break;
      }
    }

    // ---- rendering --------------------------------------------------------------
    render() {
      this.root.innerHTML = `
        <style>${STYLE}</style>
        <button class="bell" part="bell" aria-haspopup="dialog" aria-expanded="false" aria-label="Notifications">
          ${BELL}<span class="badge" part="badge" hidden aria-hidden="true"></span>
        </button>
        <div class="panel" part="panel" role="dialog" aria-label="Notifications" tabindex="-1" hidden>
          <header>
            <h2>Notifications</h2>
            <button class="link read-all" type="button">Mark all read</button>
          </header>
          <div class="status" role="status" aria-live="polite"></div>
          <ul class="list" role="list" aria-label="Messages"></ul>
        </div>`;
      this.bell = this.root.querySelector(".bell");
      this.badge = this.root.querySelector(".badge");
      this.panel = this.root.querySelector(".panel");
      this.list = this.root.querySelector(".list");
      this.status = this.root.querySelector(".status");
      this.bell.addEventListener("click", () => this.toggle());
      this.root.querySelector(".read-all").addEventListener("click", () => this.readAll());
      this.panel.addEventListener("keydown", (event) => this.onKey(event));
      this.list.addEventListener("click", (event) => this.onListClick(event));
    }

    toggle(open = this.panel.hidden) {
      this.panel.hidden = !open;
      this.bell.setAttribute("aria-expanded", String(open));
      if (open) {
        const first = this.list.querySelector(".item");
        (first || this.root.querySelector(".read-all")).focus();
        // Everything shown has now been seen.
        this.messages.filter((m) => !m.seen_at).forEach((m) => this.act(m.id, "seen"));
      }
    }

    onKey(event) {
      if (event.key === "Escape") { this.toggle(false); this.bell.focus(); return; }
      if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
      const items = [...this.list.querySelectorAll(".item")];
      const at = items.indexOf(this.root.activeElement);
      const next = items[event.key === "ArrowDown" ? Math.min(at + 1, items.length - 1) : Math.max(at - 1, 0)];
      if (next) { event.preventDefault(); next.focus(); }
    }

    onListClick(event) {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      this.act(button.closest(".item").dataset.id, button.dataset.action);
    }

    setCounts(counts) {
      this.counts = { unread: counts.unread, unseen: counts.unseen, total: counts.total };
      const unread = this.counts.unread;
      this.badge.hidden = unread === 0;
      this.badge.textContent = unread > 99 ? "99+" : String(unread);
      this.bell.setAttribute("aria-label", unread ? `Notifications, ${unread} unread` : "Notifications");
      this.dispatchEvent(new CustomEvent("clarion-inbox:count", { detail: this.counts }));
    }

    replace(updated) {
      const index = this.messages.findIndex((m) => m.id === updated.id);
      if (updated.archived_at) {
        if (index >= 0) this.messages.splice(index, 1);
      } else if (index >= 0) {
        this.messages[index] = updated;
      }
      this.renderList();
    }

    renderList() {
      // Keep the keyboard where it was: on the same message, else on the panel.
      const focused = this.root.activeElement;
      const hadFocus = focused && this.list.contains(focused);
      const focusedId = hadFocus && focused.closest(".item") ? focused.closest(".item").dataset.id : null;
      this.list.replaceChildren();
      if (!this.messages.length) {
        const empty = document.createElement("li");
        empty.className = "empty";
        empty.textContent = "You are all caught up.";
        this.list.append(empty);
      } else {
        for (const message of this.messages) this.list.append(this.item(message));
      }
      if (hadFocus) {
        const again = focusedId && this.list.querySelector(`.item[data-id="${CSS.escape(focusedId)}"]`);
        (again || this.panel).focus();
      }
    }

    item(message) {
      const li = document.createElement("li");
      li.className = "item" + (message.read_at ? "" : " unread");
      li.dataset.id = message.id;
      li.tabIndex = 0;
      li.setAttribute("role", "listitem");
      li.setAttribute("aria-label", (message.read_at ? "" : "Unread: ") + (message.title || ""));
      const text = document.createElement("div");
      text.className = "text";
      const title = document.createElement(message.action_url ? "a" : "p");
      title.className = "title";
      title.textContent = message.title || "";
      if (message.action_url && /^(https?:\/\/|\/)/.test(message.action_url)) {
        title.href = message.action_url;
        title.addEventListener("click", () => { if (!message.read_at) this.act(message.id, "read"); });
      }
      const body = document.createElement("p");
      body.className = "body";
      body.textContent = message.body || "";
      const time = document.createElement("time");
      time.dateTime = message.created_at;
      time.textContent = new Date(message.created_at).toLocaleString();
      text.append(title, body, time);
      const actions = document.createElement("div");
      actions.className = "actions";
      if (!message.read_at) actions.append(this.button("read", "Mark read", message));
      actions.append(this.button("archive", "Archive", message));
      li.append(text, actions);
      return li;
    }

    button(action, label, message) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.action = action;
      button.textContent = label;
      button.setAttribute("aria-label", `${label}: ${message.title || ""}`);
      return button;
    }

    showStatus(text) { this.status.textContent = text; }
  }

  if (!customElements.get("clarion-inbox")) customElements.define("clarion-inbox", ClarionInbox);
})();
