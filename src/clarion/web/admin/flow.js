// A workflow version as a step diagram: its steps top to bottom, each a box with its id,
// type and key fields, and a step's `if` written on the edge that leads into it. Plain DOM
// and CSS; every value from the definition goes in as text.

import { enc } from "/admin/api.js";
import { h, code, link } from "/admin/dom.js";

// A channel step's channels: the order a first_success step tries them in, or all at once.
function channels(step) {
  if (step.channel) return code(step.channel);
  const names = (step.channels || []).map((name) => code(name));
  const joined = names.flatMap((name, index) => (index ? [step.mode === "first_success" ? " → " : " + ", name] : [name]));
  return h("span", {}, joined, " ", h("span", { class: "chip", text: step.mode || "all" }));
}

// The key fields of each step type, as [label, value] pairs.
function fields(step) {
  switch (step.type) {
    case "channel":
      return [
        [step.channel ? "channel" : "channels", channels(step)],
        ["template", step.template ? link(`#/templates/${enc(step.template)}`, step.template) : "—"],
      ];
    case "delay":
      return step.duration ? [["wait", code(step.duration)]] : [["until", code(step.until)]];
    case "digest":
      return [["window", code(step.window)], ["key", step.key ? code(step.key) : "the recipient"]];
    case "throttle":
      return [["limit", h("span", {}, code(String(step.limit)), " per ", code(step.window))], ["key", step.key ? code(step.key) : "the recipient"]];
    case "exit":
      return [["then", "the run ends (completed)"]];
    default:
      return [];
  }
}

// The edge into a step: a plain arrow, or the condition under which the step runs (a step
// whose `if` is false is skipped and the run goes on to the next).
function edge(step) {
  if (!step.if) return h("div", { class: "flow-edge", "aria-hidden": "true" });
  const otherwise = step.type === "exit" ? "else the run goes on" : "else skipped";
  return h("div", { class: "flow-edge conditional" },
    h("span", { class: "flow-if" }, "if ", code(step.if), h("small", { class: "muted", text: ` ${otherwise}` })));
}

function box(step) {
  return h("div", { class: `flow-box ${step.type}` },
    h("div", { class: "flow-box-head" }, h("strong", { class: "flow-id", text: step.id }), h("span", { class: "chip", text: step.type })),
    h("dl", { class: "flow-fields" }, fields(step).map(([label, value]) => [h("dt", { text: label }), h("dd", {}, value)])));
}

export function diagram(version) {
  return h("ol", { class: "flow", "aria-label": `Steps of version ${version.version}` },
    h("li", { class: "flow-terminal" }, h("div", { class: "flow-end", text: "Start: a run per recipient" })),
    version.steps.map((step) => h("li", { class: "flow-step", dataset: { step: step.id, type: step.type } }, edge(step), box(step))),
    h("li", { class: "flow-terminal" }, h("div", { class: "flow-edge", "aria-hidden": "true" }), h("div", { class: "flow-end", text: "End: completed" })));
}
