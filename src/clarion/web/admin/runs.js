// A workflow send's runs, one per recipient, 50 at a time (GET /v1/notifications/{id}/runs):
// how many are in each status, and each run's path: the steps it reached with their status,
// when each started and ended, how long it took, and the deliveries it made.

import { get, enc } from "/admin/api.js";
import { h, badge, code, when, notice, errorText, link } from "/admin/dom.js";

const LIVE = new Set(["running", "waiting"]);
// The built-in workflow of a template send whose in-app part falls back (docs/inbox.md).
const TEMPLATE_FLOW = "~template";
// The built-in workflow that carries a category digest's window (docs/digests.md).
const DIGEST_FLOW = "~digest";

// Whether the notification may still change: a run has not ended, or none is stored yet.
export function unfinished(item) {
  const statuses = Object.keys(item.run_totals || {});
  return statuses.some((status) => LIVE.has(status)) || ["accepted", "processing"].includes(item.status);
}

export function duration(from, to) {
  const ms = new Date(to).getTime() - new Date(from).getTime();
  if (Number.isNaN(ms) || ms < 0) return "";
  if (ms < 1000) return `${ms} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(2)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${Math.floor(seconds % 60)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

function wait(until) {
  const left = duration(new Date().toISOString(), until);
  return left ? `in ${left}` : "due";
}

function totals(counts) {
  const entries = Object.entries(counts || {});
  if (!entries.length) return h("span", { class: "muted", text: "no run stored yet" });
  return h("span", { class: "totals" }, entries.map(([status, n]) => h("span", { class: "total", dataset: { status } }, badge(status), ` ${n}`)));
}

function deliveryLinks(ids, channels) {
  if (!ids.length) return null;
  return h("span", { class: "path-deliveries" }, ids.map((id) =>
    h("span", { class: "path-delivery" }, channels.get(id) ? h("span", { class: "chip", text: channels.get(id) }) : null, " ", link(`#/log/delivery/${enc(id)}`, id))));
}

function timing(step) {
  const started = h("time", { datetime: step.started_at, text: when(step.started_at) });
  if (!step.ended_at) return h("span", { class: "path-time" }, started, " → …");
  return h("span", { class: "path-time" }, started, " → ", h("time", { datetime: step.ended_at, text: when(step.ended_at) }),
    h("span", { class: "path-took", text: ` (${duration(step.started_at, step.ended_at)})` }));
}

function path(run, channels) {
  if (!run.steps.length) return h("p", { class: "empty", text: "No step reached yet." });
  return h("ol", { class: "path" }, run.steps.map((step) => h(
    "li",
    { class: `path-step ${step.ended_at ? "" : "open"}`, dataset: { step: step.id, status: step.status } },
    h("div", { class: "path-head" }, code(step.id), badge(step.status), timing(step)),
    step.until ? h("div", { class: "path-until", text: `${step.count === undefined ? "delay until" : "window closed"} ${when(step.until)}` }) : null,
    step.count !== undefined ? h("div", { class: "path-digest", text: `${step.count} collected` }) : null,
    step.into ? h("div", { class: "path-digest" }, "digested into ", code(step.into)) : null,
    deliveryLinks(step.delivery_ids, channels),
  )));
}

function runView(run, channels) {
  return h(
    "article",
    { class: "run", dataset: { recipient: run.recipient_id, status: run.status } },
    h("div", { class: "run-head" },
      link(`#/recipients/${enc(run.recipient_id)}`, run.recipient_id),
      badge(run.status),
      // A template send's run (its in-app fallback) follows the template's built-in workflow;
      // a digest's, the built-in workflow that carried its category's window.
      run.workflow === TEMPLATE_FLOW
        ? h("span", { class: "muted", text: `in-app fallback, template version ${run.version}` })
        : run.workflow === DIGEST_FLOW
          ? h("span", { class: "muted", text: "category digest window" })
          : link(`#/workflows/${enc(run.workflow)}?version=${run.version}`, `version ${run.version}`),
      run.step ? h("span", {}, "at ", code(run.step)) : null,
      run.waiting_until ? h("span", { class: "run-wait", text: `waiting until ${when(run.waiting_until)} (${wait(run.waiting_until)})` }) : null,
      run.cancellation_key ? h("span", { class: "muted" }, "key ", code(run.cancellation_key)) : null),
    path(run, channels),
  );
}

async function load(item, list, channels, cursor, onMore) {
  let page;
  try {
    page = await get(`/v1/notifications/${enc(item.id)}/runs`, { limit: 50, cursor });
  } catch (error) {
    list.append(notice(errorText(error), "bad"));
    return;
  }
  if (!page.data.length && !cursor) list.append(h("p", { class: "empty", text: "No runs yet: they are stored when the send is planned." }));
  list.append(...page.data.map((run) => runView(run, channels)));
  if (page.next_cursor) {
    const more = h("button", {
      class: "more", type: "button", text: "Load more",
      onclick: () => { more.remove(); onMore(); load(item, list, channels, page.next_cursor, onMore); },
    });
    list.append(more);
  }
}

// The runs card of a workflow send, its first page loaded; `status` is a line the caller
// keeps up to date (whether the view refreshes), `onMore` is told when a page is added.
export async function runsCard(item, status, onMore) {
  const channels = new Map((item.deliveries || []).map((d) => [d.id, d.channel]));
  const list = h("div", { class: "run-list" });
  await load(item, list, channels, null, onMore);
  return h("section", { class: "card runs" },
    h("div", { class: "runs-head" }, h("h2", { text: "Runs" }), totals(item.run_totals), status),
    list);
}
