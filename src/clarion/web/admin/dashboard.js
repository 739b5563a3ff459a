// The dashboard: the last hour per minute and channel (GET /v1/stats), polled every five
// seconds while the screen is open.

import { get, CHANNELS } from "/admin/api.js";
import { h, append, clear, badge, notice, errorText, heading, when } from "/admin/dom.js";

const POLL_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const child of children) el.append(child);
  return el;
}

// Accepted, sent and failed per minute for one channel, as bars.
function chart(series, since, minutes) {
  const width = 360;
  const height = 90;
  const max = Math.max(1, ...series.map((m) => Math.max(m.accepted, m.sent, m.failed)));
  const slot = width / minutes;
  const bars = [];
  for (const m of series) {
    const index = Math.round((new Date(m.minute) - since) / 60000);
    if (index < 0 || index >= minutes) continue;
    [["accepted", 0], ["sent", 1], ["failed", 2]].forEach(([kind, offset]) => {
      const value = m[kind];
      if (!value) return;
      const barHeight = Math.max(1, (value / max) * (height - 4));
      bars.push(svg("rect", { class: `bar ${kind}`, x: index * slot + offset * (slot / 3), y: height - barHeight, width: Math.max(slot / 3 - 0.5, 0.5), height: barHeight },
        svg("title", {}, document.createTextNode(`${new Date(m.minute).toISOString().slice(11, 16)} ${kind} ${value}`))));
    });
  }
  return svg("svg", { class: "chart", preserveAspectRatio: "none", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "per minute" }, svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }), ...bars);
}

function tile(label, value, tone = "") {
  return h("div", { class: `tile ${tone}` }, h("span", { class: "tile-label", text: label }), h("strong", { class: "tile-value", text: value }));
}

export async function render(main) {
  const body = h("div", { class: "dashboard" });
  const updated = h("small", { class: "muted", "aria-live": "off" });
  main.append(heading("Dashboard", updated), body);
  let timer = null;
  let stopped = false;

  async function draw() {
    let stats;
    try {
      stats = await get("/v1/stats", { minutes: 60 });
    } catch (error) {
      clear(body).append(notice(errorText(error), "bad"));
      return;
    }
    if (stopped) return;
    const since = new Date(stats.since);
    const totals = { accepted: 0, sent: 0, failed: 0 };
    const perChannel = {};
    for (const m of stats.per_minute) {
      for (const k of Object.keys(totals)) totals[k] += m[k];
      (perChannel[m.channel] = perChannel[m.channel] || []).push(m);
    }
    const open = stats.breakers.filter((b) => b.state !== "closed").length;
    const channels = CHANNELS.filter((c) => perChannel[c] || stats.latency_ms[c]);
    append(clear(body), [
      h("div", { class: "tiles" },
        tile("Accepted, last hour", totals.accepted.toLocaleString()),
        tile("Sent", totals.sent.toLocaleString(), "ok"),
        tile("Failed", totals.failed.toLocaleString(), totals.failed ? "bad" : ""),
        h("a", { class: "tile-link", href: "#/dead-letters" }, tile("Dead letters", `${stats.dead_letters.toLocaleString()}${stats.dead_letters_capped ? "+" : ""}`, stats.dead_letters ? "bad" : "")),
        tile("Open breakers", String(open), open ? "warn" : "")),
      stats.truncated ? notice("Busy hour: only the newest deliveries are counted.", "warn") : null,
      h("div", { class: "legend" }, h("span", { class: "key accepted" }), "accepted ", h("span", { class: "key sent" }), "sent ", h("span", { class: "key failed" }), "failed"),
      h("div", { class: "channel-grid" },
        channels.length ? channels.map((c) => {
          const latency = stats.latency_ms[c];
          return h("section", { class: "card channel-card", dataset: { channel: c } },
            h("div", { class: "channel-head" }, h("h2", { text: c }),
              latency ? h("span", { class: "muted", text: `p50 ${latency.p50} ms · p99 ${latency.p99} ms` }) : h("span", { class: "muted", text: "no sends" })),
            chart(perChannel[c] || [], since, 60),
            h("div", { class: "chart-axis" }, h("span", { text: "60 min ago" }), h("span", { text: "30" }), h("span", { text: "now" })));
        }) : h("p", { class: "empty", text: "Nothing sent in the last hour." })),
      h("section", { class: "card" }, h("h2", { text: "Circuit breakers" }),
        stats.breakers.length
          ? h("table", {}, h("thead", {}, h("tr", {}, ["Provider", "State", "Failure rate", "Calls", "Retry in"].map((t) => h("th", { text: t })))),
            h("tbody", {}, stats.breakers.map((b) => h("tr", {}, h("td", { text: b.provider }), h("td", {}, badge(b.state)), h("td", { text: `${Math.round(b.failure_rate * 100)}%` }), h("td", { text: String(b.calls) }), h("td", { text: b.retry_in ? `${b.retry_in}s` : "—" })))))
          : h("p", { class: "empty", text: "No provider has been called lately." })),
    ]);
    updated.textContent = `Updated ${when(stats.until)} · refreshes every 5 s`;
  }

  async function loop() {
    await draw();
    if (!stopped) timer = setTimeout(loop, POLL_MS);
  }
  await loop();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
