// Workflows: the list by key, 50 at a time; a workflow's page with its active version (or
// another one, picked by number) drawn as a step diagram.

import { get, enc } from "/admin/api.js";
import { h, badge, when, ago, table, notice, errorText, heading, link, field } from "/admin/dom.js";
import { diagram } from "/admin/flow.js";

export async function render(main, { rest, query }) {
  if (rest[0]) return workflow(main, rest[0], query.get("version"));
  const results = h("div", { class: "results" });
  main.append(heading("Workflows"), results);
  await load(results, null);
}

async function load(results, cursor) {
  let page;
  try {
    page = await get("/v1/workflows", { limit: 50, cursor });
  } catch (error) {
    results.append(notice(errorText(error), "bad"));
    return;
  }
  const rows = page.data.map((item) => h(
    "tr",
    { dataset: { key: item.key } },
    h("td", {}, link(`#/workflows/${enc(item.key)}`, item.key)),
    h("td", {}, item.name),
    h("td", {}, item.category || "—"),
    h("td", {}, `v${item.active_version}`),
    h("td", {}, `v${item.latest_version}`),
    h("td", { title: when(item.updated_at) }, ago(item.updated_at)),
  ));
  const body = results.querySelector("tbody");
  if (body) body.append(...rows);
  else results.append(table(["Key", "Name", "Category", "Active version", "Latest", "Updated"], rows, "No workflows yet: PUT /v1/workflows/{key} stores one."));
  if (page.next_cursor) {
    const more = h("button", { class: "more", type: "button", text: "Load more", onclick: () => { more.remove(); load(results, page.next_cursor); } });
    results.append(more);
  }
}

// Versions are numbered from 1 and none is ever removed alone, so a number is a version.
function picker(key, shown) {
  const number = h("input", { type: "number", name: "version", min: 1, step: 1, required: true, value: String(shown) });
  return h("form", {
    class: "inline-form version-picker",
    onsubmit: (event) => {
      event.preventDefault();
      location.hash = `#/workflows/${enc(key)}?version=${enc(number.value)}`;
    },
  }, field("Version", number), h("button", { type: "submit", text: "Show" }));
}

async function workflow(main, key, asked) {
  let active;
  let shown;
  try {
    active = await get(`/v1/workflows/${enc(key)}`);
    shown = asked && Number(asked) !== active.version ? await get(`/v1/workflows/${enc(key)}`, { version: asked }) : active;
  } catch (error) {
    main.append(heading(`Workflow ${key}`, link("#/workflows", "All workflows")),
      notice(error.status === 404 ? (active ? `Workflow ${key} has no version ${asked}.` : `No workflow ${key}.`) : errorText(error), "bad"),
      active ? link(`#/workflows/${enc(key)}`, "Its active version") : null);
    return;
  }
  const isActive = shown.version === active.version;
  main.append(
    heading(`Workflow ${key}`, link("#/workflows", "All workflows"), picker(key, shown.version)),
    h("section", { class: "card" },
      h("dl", { class: "facts" },
        [["Name", shown.name], ["Category", shown.category || "—"],
          ["Version", h("span", {}, `v${shown.version} `, isActive ? badge("active") : link(`#/workflows/${enc(key)}`, `active is v${active.version}`))],
          ["Stored", when(shown.created_at)], ["Steps", String(shown.steps.length)]]
          .map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]))),
    h("section", { class: "card" }, h("h2", { text: isActive ? "Steps (active version)" : `Steps (version ${shown.version})` }), diagram(shown)),
  );
}
